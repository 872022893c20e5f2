"""`stdistill eval`: a saved student's top-1 and top-5 on a config's validation split."""
from __future__ import annotations

from typing import Dict

from ..training.builders import amp_dtype, load_student_checkpoint, resolve_norm
from ..config import TrainConfig
from ..utils.distributed import init_distributed, resolve_device
from ..training.engine import evaluate
from ..data.loaders import build_eval_loader

__all__ = ['evaluate_checkpoint']


def evaluate_checkpoint(cfg: TrainConfig, checkpoint: str, ema: bool = False) -> Dict[str, float]:
    """Top-1/top-5 of a saved student (see load_student_checkpoint), or with ema=True of its EMA
    weights, on cfg's val split, labelled with the class names the checkpoint was trained on."""
    info = init_distributed(cfg.device)
    device = resolve_device(cfg.device, info)
    student, classes = load_student_checkpoint(cfg, checkpoint, ema)
    student.to(device)
    loader = build_eval_loader(cfg, info, *resolve_norm(cfg), classes=classes)
    # the student's own head: cfg's, or for inference_head auto the one its checkpoint records
    return evaluate(student, loader, device, info, amp_dtype(cfg, device), getattr(student, 'inference_head', 'cls'))
