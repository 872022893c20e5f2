"""STD in a timm training script: timm's loader, optimizer, scheduler and EMA around stdistill's STDTask.

    python3 examples/timm_loop.py --teacher-checkpoint runs/quickstart/teacher/best/model.safetensors
    python3 examples/timm_loop.py --teacher labels --epochs 1 --train-samples 2000     # no teacher file

timm 1.0.31 trains through tasks (`timm.task`): its train.py builds a `TrainingTask` and runs
`result = task(input, target); result['loss'].backward()`. `stdistill.method.task.STDTask` is such a
task, so STD drops into an existing timm script in place of `LogitDistillationTask`: build the
student with its token pairs (`STDStudent`), the teachers, the loss and MINE, wrap them in the
task, and keep the rest of the script. `train_one_epoch` below is the loop of timm's train.py,
cut down to what a single-process CPU run needs (add `task.prepare_distributed(...)` under
torchrun); tests/test_timm_loop.py checks that on the same batches it updates the weights and
the EMA exactly as `stdistill train` does.

Here on Fashion-MNIST (Debian's dataset-fashion-mnist): a Mixer for 28x28 images with one STD
token pair, distilling a ResNet-18 trained by `stdistill quickstart` (or the labels, the
control that needs no teacher).
"""
import argparse
import time
from typing import Optional

import torch
import torch.nn as nn
from timm.data import create_loader
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import dispatch_clip_grad

import stdistill  # noqa: F401  (registers mixer_t4_28 and the other small students with timm)
from stdistill.data.fashion_mnist import FashionMNIST
from stdistill.method.losses import DistillationLoss, LabelsTeacher
from stdistill.method.mine import MIRegularizer
from stdistill.models.students import STDStudent, create_student
from stdistill.method.task import STDTask
from stdistill.method.teacher_input import InputContract
from stdistill.method.teachers import create_teacher

MEAN, STD = (0.2860,), (0.3530,)  # Fashion-MNIST's


def build_task(teacher: str, checkpoint: Optional[str], num_classes: int = 10) -> STDTask:
    """An STD student (mixer_t4_28, one token pair at its last block), its teacher, the losses and MINE."""
    student = STDStudent(create_student('mixer_t4_28', num_classes=num_classes, in_chans=1), num_teachers=1)
    if teacher == 'labels':
        teachers = [LabelsTeacher(num_classes)]
    else:  # stdistill's teacher adapts the student's 1-channel batch to its own input (channels, size, mean/std)
        teachers = [create_teacher(teacher, num_classes, checkpoint=checkpoint).adapt_to(
            InputContract(MEAN, STD, 1, (28, 28), 'bicubic'))]
    criterion = LabelSmoothingCrossEntropy(0.1)
    return STDTask(student, 'std', criterion, teachers, DistillationLoss(criterion, alpha=0.5, distill='hard'),
                   MIRegularizer(student, weight=0.1, hidden=64))


def train_one_epoch(epoch: int, task: STDTask, loader, optimizer, lr_scheduler, num_updates: int,
                    model_ema=None, clip_grad: Optional[float] = None, log_interval: int = 50) -> int:
    """One epoch, as timm's train.py runs it; returns the update count."""
    task.train()
    params = [p for p in task.parameters() if p.requires_grad]  # the student's and MINE's
    for batch_idx, (input, target) in enumerate(loader):
        result = task(input, target)
        loss = result['loss']
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad is not None:
            dispatch_clip_grad(params, clip_grad)
        optimizer.step()
        num_updates += 1
        lr_scheduler.step_update(num_updates=num_updates)
        if model_ema is not None:
            task.update_ema(step=num_updates)
        if batch_idx % log_interval == 0:
            terms = ', '.join(f'{k} {float(v):.3f}' for k, v in result.items() if k not in ('loss', 'output'))
            print(f'epoch {epoch + 1} step {batch_idx + 1}/{len(loader)}: loss {loss.item():.3f} ({terms}), '
                  f'lr {optimizer.param_groups[0]["lr"]:.2e}', flush=True)
    return num_updates


@torch.no_grad()
def validate(model: nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for input, target in loader:
        correct += int((model(input).argmax(-1) == target).sum())
        total += target.shape[0]
    return 100.0 * correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-dir', default=None, help='Fashion-MNIST IDX files (default: Debian\'s)')
    parser.add_argument('--teacher', default='resnet18', help='a timm name, or labels')
    parser.add_argument('--teacher-checkpoint', default=None, help='its weights (e.g. a stdistill run\'s best/)')
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--train-samples', type=int, default=12000, help='the first N training images')
    parser.add_argument('--val-samples', type=int, default=10000, help='the first N test images')
    parser.add_argument('--workers', type=int, default=2)
    args = parser.parse_args()
    if args.teacher != 'labels' and not args.teacher_checkpoint:
        parser.error('give --teacher-checkpoint (e.g. runs/quickstart/teacher/best/model.safetensors), '
                     'or --teacher labels')
    if args.teacher == 'labels' and args.teacher_checkpoint:
        parser.error('the labels teacher has no weights: leave out --teacher-checkpoint')

    train_set = FashionMNIST(args.data_dir, 'train')  # create_loader sets its .transform
    train_set.images, train_set.targets = train_set.images[:args.train_samples], train_set.targets[:args.train_samples]
    val_set = FashionMNIST(args.data_dir, 'test')
    val_set.images, val_set.targets = val_set.images[:args.val_samples], val_set.targets[:args.val_samples]
    loader_train = create_loader(train_set, (1, 28, 28), args.batch_size, is_training=True, mean=MEAN, std=STD,
                                 scale=(0.7, 1.0), hflip=0.5, re_prob=0.25, num_workers=args.workers,
                                 use_prefetcher=False)  # the prefetcher is for GPUs
    loader_eval = create_loader(val_set, (1, 28, 28), 256, mean=MEAN, std=STD, crop_pct=1.0,
                                num_workers=args.workers, use_prefetcher=False)

    task = build_task(args.teacher, args.teacher_checkpoint)
    optimizer = create_optimizer_v2(task.trainable_module, opt='adamw', lr=args.lr, weight_decay=0.05)
    lr_scheduler, num_epochs = create_scheduler_v2(optimizer, sched='cosine', num_epochs=args.epochs,
                                                   warmup_epochs=1, step_on_epochs=False,
                                                   updates_per_epoch=len(loader_train))
    model_ema = task.setup_ema(decay=0.998)
    num_updates, start = 0, time.perf_counter()
    for epoch in range(num_epochs):
        num_updates = train_one_epoch(epoch, task, loader_train, optimizer, lr_scheduler, num_updates, model_ema)
        lr_scheduler.step(epoch + 1)
        top1 = validate(task.get_eval_model(), loader_eval)
        ema_top1 = validate(task.get_eval_model(ema=True), loader_eval)
        print(f'epoch {epoch + 1}/{num_epochs}: test top-1 {top1:.2f} (EMA {ema_top1:.2f}), '
              f'{time.perf_counter() - start:.0f} s', flush=True)


if __name__ == '__main__':
    main()
