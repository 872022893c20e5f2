"""examples/timm_loop.py: STDTask in a timm-style loop is stdistill train, step for step.

On the same batches (stdistill's loader, whose augmentation is scheduled from the data seed)
and from the same initial weights, the example's `train_one_epoch` with timm's optimizer,
scheduler and the task's EMA gives the same losses, weights and EMA weights as `stdistill
train` (fp32, 2 steps). The example itself also runs, with timm's own loader.
"""
import json
import os
import runpy
import subprocess
import sys

import torch
from safetensors.torch import load_file
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import random_seed

from stdistill.apps.cli import main
from stdistill.config import load_config
from stdistill.utils.distributed import DistInfo
from stdistill.data.loaders import build_data
from stdistill.training.builders import build_objective, student_contract
from test_train import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, 'examples', 'timm_loop.py')
# TINY (a tiny STD Mixer, a ResNet teacher, MINE, EMA), without mixup and drop-path: the batches
# are the loader's own, and the forward pass draws nothing
SAME = [*TINY, 'mixup=0', 'cutmix=0', 'drop_path=0', 'amp=false', 'channels_last=false', 'epochs=1',
        'warmup_epochs=0', 'train_samples=64', 'clip_grad=1.0']


def test_the_timm_loop_updates_exactly_as_stdistill_train(tmp_path):
    run = tmp_path / 'run'
    assert main(['train', *SAME, f'output={run}']) == 0
    cfg = load_config(str(run / 'config.yaml'))
    logged = [json.loads(line) for line in (run / 'log.jsonl').read_text().splitlines()]
    assert logged[0]['updates'] == 2

    # what train() does before its first step: seed, data, task (student, teacher, MINE)
    random_seed(cfg.seed, 0)
    contract = student_contract(cfg)
    data = build_data(cfg, DistInfo(), contract.mean, contract.std)
    task = build_objective(cfg, data.num_classes, torch.device('cpu'), False, classes=data.classes)
    optimizer = create_optimizer_v2(task.trainable_module, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum)
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=cfg.epochs, warmup_epochs=0,
                                       warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, step_on_epochs=False,
                                       updates_per_epoch=len(data.train_loader))
    ema = task.setup_ema(decay=cfg.model_ema_decay)
    data.train_loader.sampler.set_epoch(0)
    data.loader_generator.manual_seed(cfg.seed * 100003)
    losses = []
    loader = [(images, targets) for images, targets, *_ in data.train_loader]

    class Recording:  # the loss of each step, as stdistill logs it
        def __init__(self, task):
            self.task = task

        def __getattr__(self, name):
            return getattr(self.task, name)

        def __call__(self, *args):
            result = self.task(*args)
            losses.append(result['loss'].item())
            return result
    train_one_epoch = runpy.run_path(EXAMPLE)['train_one_epoch']
    updates = train_one_epoch(0, Recording(task), loader, optimizer, scheduler, 0, ema, clip_grad=cfg.clip_grad)
    assert updates == 2
    assert abs(sum(losses) / len(losses) - logged[0]['loss']) < 1e-6, (losses, logged[0]['loss'])
    for name, saved in load_file(run / 'last' / 'model.safetensors').items():
        assert torch.equal(task.student.state_dict()[name], saved), name
    for name, saved in load_file(run / 'last' / 'model_ema.safetensors').items():
        assert torch.equal(ema.module.state_dict()[name], saved), name


def test_the_example_runs_with_timms_loader(tmp_path):
    done = subprocess.run([sys.executable, EXAMPLE, '--teacher', 'labels', '--epochs', '1', '--train-samples', '128',
                           '--batch-size', '32', '--workers', '0', '--val-samples', '256'], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert done.returncode == 0, done.stderr
    assert 'epoch 1/1: test top-1 ' in done.stdout
