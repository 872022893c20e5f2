"""What the teacher-output store saves: a training step with two teachers online vs from a store.

    python benchmarks/teacher_store.py                      # CPU, fp32, batch 16, about 5 minutes
    python benchmarks/teacher_store.py --device cuda --dtype bf16 --batch-size 128

1. Step time. The Mixer-S16 + STD objective of `recipes/imagenet/mixer_s16_std.yaml` (two
   token pairs, ResNet-50-D at an intermediate block and ResNet-101-D at the last, MINE on,
   hard distillation, 1000 classes, random weights, 224x224 random images) takes one
   optimisation step (forward, loss, backward, AdamW) either with the two teachers running
   in the step ("online") or with their outputs read from a teacher-output store ("store":
   the store's lookup of the step, with its check of the batch's image indices, is inside
   the timing). The store is a real one, written by the same `StoreWriter` as
   `stdistill teacher-pass` from the same teachers on the same images. The two rows are timed
   in paired rounds (one step of each a round, the order alternating), and the speed-up is
   the median over rounds of online / store within a round, so that a shared machine's drift
   falls on both alike.
2. The pass. `stdistill teacher-pass` (the function behind it) over a folder of 224x224 RGB
   PNG images made from Fashion-MNIST (10 classes), with the same two teachers (random
   weights), one epoch, once for hard distillation and once for top-10 soft: its img/s,
   and the store's bytes per image and epoch: its tensors (what grows with the data; the
   files' headers and store.json are a fixed cost, printed beside). Top-10 of 1000 ImageNet
   classes takes as many bytes as top-10 of 10 (int16 class indices either way).

Last line:
    store_speedup=R bytes_per_image_epoch=B        (B: hard; the top-10 soft figure is above it)
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from typing import List, Optional

import torch
from PIL import Image
from safetensors.torch import load_file
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_time import DTYPES, build, device_name, sync  # noqa: E402  (a sibling script)

from stdistill.config import load_config  # noqa: E402
from stdistill.data.fashion_mnist import FashionMNIST  # noqa: E402
from stdistill.training.engine import train_step  # noqa: E402
from stdistill.training.store import StoreWriter, TeacherStore  # noqa: E402
from stdistill.apps.teacher_pass import teacher_pass  # noqa: E402

RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'recipes', 'imagenet', 'mixer_s16_std.yaml')


def make_folder(root: str, per_class: int) -> int:
    """An ImageFolder of 224x224 RGB PNGs from the first Fashion-MNIST training images, per_class
    a class in train/ and 1 a class in validation/; returns the training image count."""
    data = FashionMNIST(split='train')
    seen = {c: 0 for c in range(10)}
    for i in range(len(data)):
        label = int(data.targets[i])
        if seen[label] >= per_class + 1:
            continue
        split = 'train' if seen[label] < per_class else 'validation'
        folder = os.path.join(root, split, f'class{label}')
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(data.images[i]).convert('RGB').resize((224, 224), Image.BICUBIC).save(
            os.path.join(folder, f'{i}.png'))
        seen[label] += 1
        if all(v >= per_class + 1 for v in seen.values()):
            break
    return 10 * per_class


def pass_figures(folder: str, store: str, kind: str, device: str, batch_size: int, amp: bool) -> dict:
    """teacher_pass over `folder` into `store`: its summary, with the store's bytes per image-epoch."""
    cfg = load_config(RECIPE, ["dataset=''", f'data_dir={folder}', 'num_classes=null', 'epochs=1', 'workers=1',
                               f'batch_size={batch_size}', 'progress=false', f'amp={str(amp).lower()}',
                               f'device={device}', 'teachers.0.pretrained=false', 'teachers.1.pretrained=false',
                               f'distill={kind}', 'store_topk=10', 'repeated_aug=false'])
    summary = teacher_pass(cfg, store)
    shards = [os.path.join(d, f) for d, _, files in os.walk(store) for f in files if f.endswith('.safetensors')]
    tensor_bytes = sum(t.numel() * t.element_size() for path in shards for t in load_file(path).values())
    files = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(store) for f in fs)
    summary['bytes_per_image_epoch'] = tensor_bytes / (summary['images'] * cfg.epochs)
    summary['file_bytes_per_image_epoch'] = files / (summary['images'] * cfg.epochs)
    return summary


def step_figures(device: torch.device, dtype: torch.dtype, batch_size: int, warmup: int, rounds: int,
                 root: str) -> List[float]:
    """Paired online / store step-time ratios, one per round (and prints the medians)."""
    objective, cfg = build('mixer_s16_std', device)
    images = torch.randn(batch_size, 3, 224, 224, device=device)
    targets = torch.randint(0, 1000, (batch_size,), device=device)
    indices = torch.arange(batch_size)
    steps = warmup + rounds
    fingerprint = {'epochs': 1, 'teachers': [{}, {}]}
    writer = StoreWriter(os.path.join(root, 'step_store'), fingerprint, {'kind': 'hard'}, steps, 0, 1000, {},
                         shard_steps=steps)
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        logits = objective.teacher_logits(images)
    writer.start(0, 0)
    for _ in range(steps):
        writer.add(indices, logits)
    writer.flush()
    store = TeacherStore(os.path.join(root, 'step_store'), fingerprint, {'kind': 'hard'}, 0, steps, device)
    optimizer = create_optimizer_v2(objective.trainable_module, opt=cfg.opt, lr=cfg.lr or 5e-4,
                                    weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=cfg.epochs,
                                       warmup_epochs=cfg.warmup_epochs, step_on_epochs=False, updates_per_epoch=1000)
    ema = ModelEmaV3(objective.student, decay=cfg.model_ema_decay) if cfg.model_ema else None
    updates = [0]

    def step(stored_step: Optional[int]) -> float:  # the step stdistill train takes (engine.train_step)
        sync(device)
        start = time.perf_counter()
        outputs = store(0, stored_step, indices) if stored_step is not None else None
        _, updates[0] = train_step(objective, images, targets, optimizer, scheduler, updates[0], outputs,
                                   amp_dtype=None if dtype == torch.float32 else dtype, clip_grad=cfg.clip_grad,
                                   clip_mode=cfg.clip_mode, ema=ema)
        sync(device)
        return time.perf_counter() - start

    online, stored, ratios = [], [], []
    for i in range(steps):
        if i % 2 == 0:
            a, b = step(None), step(i)
        else:
            b, a = step(i), step(None)
        if i >= warmup:
            online.append(a)
            stored.append(b)
            ratios.append(a / b)
    print(f'step, two teachers online: {statistics.median(online) * 1e3:.0f} ms (median of {rounds})')
    print(f'step, teachers from the store: {statistics.median(stored) * 1e3:.0f} ms (median of {rounds})')
    return ratios


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', default=None, choices=tuple(DTYPES), help='default: fp32 on CPU, bf16 on GPU')
    parser.add_argument('--batch-size', type=int, default=None, help='default: 16 on CPU, 128 on GPU')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=7, help='paired rounds (the median ratio is reported)')
    parser.add_argument('--per-class', type=int, default=None, help='pass images a class (default: 6 CPU, 64 GPU)')
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ('fp32' if device.type == 'cpu' else 'bf16')]
    batch_size = args.batch_size or (16 if device.type == 'cpu' else 128)
    per_class = args.per_class or (6 if device.type == 'cpu' else 64)
    print(f'# {datetime.date.today()}  {device_name(device)}  torch {torch.__version__}  dtype {str(dtype)[6:]}  '
          f'batch {batch_size}  224x224  Mixer-S16 + STD, teachers ResNet-50-D + ResNet-101-D', flush=True)
    with tempfile.TemporaryDirectory() as root:
        ratios = step_figures(device, dtype, batch_size, args.warmup, args.rounds, root)
        speedup = statistics.median(ratios)
        print(f'paired online / store ratios: {" ".join(f"{r:.2f}" for r in ratios)}; median {speedup:.3f}',
              flush=True)
        count = make_folder(os.path.join(root, 'images'), per_class)
        figures = {}
        for kind in ('hard', 'soft'):
            figures[kind] = pass_figures(os.path.join(root, 'images'), os.path.join(root, f'store_{kind}'), kind,
                                         args.device, min(batch_size, count), dtype != torch.float32)
            s = figures[kind]
            label = 'hard' if kind == 'hard' else 'top-10 soft'
            print(f'pass ({label}): {s["images"]} images in {s["seconds"]:.1f} s, {s["img_per_s"]:.2f} img/s; '
                  f'store {s["bytes_per_image_epoch"]:.1f} bytes per image and epoch in its tensors '
                  f'({s["file_bytes_per_image_epoch"]:.1f} with this small store\'s file headers and store.json)',
                  flush=True)
    print(f'store_speedup={speedup:.3f} bytes_per_image_epoch={figures["hard"]["bytes_per_image_epoch"]:.1f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
