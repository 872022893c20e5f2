"""`stdistill fold`: a token student folded into its plain backbone, the model timm loads alone.

    stdistill fold runs/my_std                     # -> runs/my_std_fold
    stdistill fold runs/my_std epochs=10 output=runs/my_folded

STD's gain lives in the token heads: a token student's class head alone scores about what the
plain student does (RESULTS.md, "What you deploy"), and the token heads cost their token layers at
inference. The fold is a second stage of training that moves the gain into the plain network:
the run's backbone, without tokens (method kd), learns from the run's student predicting with its
chosen head (what inference_head auto chose on the holdout images, or the run's head), as
Hinton's KD from one teacher (distill soft, the run's tau and alpha). The teacher's outputs for
every training view are computed once into a teacher-output store (store.py) in the fold's run
folder, then read by the training: the fold costs one forward pass of the token student per view
and a plain run. Every other key is the run's (data, augmentation, schedule, epochs, seed);
key=value overrides apply on top. The result is an ordinary run folder: eval, export and
predict take it, and its export is the plain backbone, which timm loads without stdistill when
the architecture is timm's own.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Sequence

from ..training.checkpoint import MODEL_FILE, verify_checkpoint
from ..config import TrainConfig, apply_overrides, config_from_dict, load_config
from ..models.deit import deit_model_name
from ..utils.errors import UserError
from ..utils.locks import check_folder
from ..methods import method_of
from ..models.students import std_model_name
from .teacher_pass import teacher_pass
from ..training.train import train

__all__ = ['fold_config', 'fold', 'STORE_FOLDER']

STORE_FOLDER = 'teacher_outputs'  # the store, inside the fold's run folder
# what makes the fold a fold: refused as overrides
FOLD_KEYS = ('method', 'teachers', 'distill', 'inference_head', 'holdout', 'cls_distill', 'model', 'model_kwargs',
             'mine', 'tokens', 'token_depth')


def fold_config(run: str, overrides: Sequence[str] = (), which: str = 'best') -> TrainConfig:
    """The config of the fold of `run` (a run folder of method std or deit): the run's config with
    method kd, its student's `which` checkpoint as the one teacher (std_<model> or deit_<model>,
    rebuilt as its checkpoint records it, with the head it predicts with), and output
    <run>_fold; then `overrides` ('key=value'). Raises UserError for a folder that is no run,
    a run without token heads, or a missing checkpoint."""
    path = os.path.join(run, 'config.yaml')
    if not os.path.isfile(path):
        raise UserError(f'{run} is not a run folder (no config.yaml)')
    cfg = load_config(path)
    method = method_of(cfg.method)
    if not method.has_distillation_heads:
        raise UserError(f'{run} trained method {cfg.method}: its student is already the plain backbone, with no token '
                        f'heads to fold; fold a run of method std (or deit)')
    checkpoint = os.path.join(run, which, MODEL_FILE)
    if not os.path.isfile(checkpoint):
        raise UserError(f'{run} has no {which}/ checkpoint to fold: train it first (or give --which last)')
    verify_checkpoint(os.path.join(run, which))
    fixed = sorted({o.split('=', 1)[0].split('.')[0] for o in overrides} & set(FOLD_KEYS))
    if fixed:
        raise UserError(f'{fixed[0]} is what the fold is (the plain backbone taught by {run}\'s student): drop it; '
                        f'train another recipe with stdistill train for anything else')
    name = (std_model_name if method.student == 'std' else deit_model_name)(cfg.model.split('.')[0])
    values = dataclasses.asdict(cfg)
    soft = cfg.distill == 'soft' or cfg.cls_distill  # the run's own temperature, where it used one
    values.update(method='kd', teachers=[{'model': name, 'checkpoint': os.path.abspath(checkpoint)}],
                  distill='soft', tau=cfg.tau if soft else 1.0, inference_head='cls', holdout=0,
                  cls_distill=False, mine=False, mine_warmup_epochs=0, teacher_outputs=None,
                  output=f'{os.path.normpath(run)}_fold')
    folded = config_from_dict(apply_overrides(values, overrides))
    check_folder(folded.output, 'the fold')  # before its teacher pass writes a store there
    inside = os.path.relpath(os.path.realpath(folded.output), os.path.realpath(run)).split(os.sep)[0]
    if inside != '..' and not os.path.isabs(inside):
        raise UserError(f'output {folded.output} is inside the run {run}: give the fold a folder of its own')
    return folded


def fold(run: str, overrides: Sequence[str] = (), which: str = 'best') -> Dict[str, Any]:
    """Fold `run` (fold_config): its teacher's outputs into the store <output>/teacher_outputs
    (kept; a killed pass continues), then train the plain backbone from them. Returns train()'s
    summary. Raises UserError as fold_config, teacher_pass and train do."""
    cfg = fold_config(run, overrides, which)
    store = cfg.teacher_outputs or os.path.join(cfg.output, STORE_FOLDER)
    if os.path.isdir(os.path.join(cfg.output, 'last')) or os.path.isdir(os.path.join(cfg.output, 'previous')):
        raise UserError(f'{cfg.output} already holds a run: continue it with stdistill train --resume '
                        f'{cfg.output}, or give output=... a new folder')
    teacher_pass(dataclasses.replace(cfg, teacher_outputs=None), store)
    return train(dataclasses.replace(cfg, teacher_outputs=store))
