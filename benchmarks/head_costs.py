"""What each head of a token student costs at inference, against the plain backbone (issue 37).

    python benchmarks/head_costs.py                 # the students below, CPU, fp32
    python benchmarks/head_costs.py --quick         # the small students only (the tests')

For each student (one teacher's token pair at the last block, random weights: costs do not
depend on them): params and MACs of the model each head's export holds, and the CPU time of a
batch through it as a multiple of the plain backbone's, all timed in the same rounds
(stdistill.apps.heads.latency_ratios: the fastest pass of each, every other round in reverse order).
The class head of an STD student is its plain backbone: its ratio is 1 by construction. Ratios
are measured in this run, on this machine; run it on an idle one.
"""
from __future__ import annotations

import argparse
import os
import platform

import timm
import torch

import stdistill  # noqa: F401  (registers std_*)
from stdistill.apps.heads import HeadView, latency_ratios
from stdistill.apps.profiling import count_macs

# name, img_size, in_chans
STUDENTS = [('mixer_t4_28', 28, 1), ('mixer_t4_32', 32, 3), ('mixer_s16_224', 224, 3), ('resmlp_24_224', 224, 3),
            ('cyclemlp_b1', 224, 3)]
QUICK = STUDENTS[:2]


def measure(name: str, img_size: int, in_chans: int, budget_s: float) -> list:
    plain = timm.create_model(name, img_size=img_size, in_chans=in_chans, num_classes=10).eval()
    student = timm.create_model(f'std_{name}', img_size=img_size, in_chans=in_chans, num_classes=10,
                                num_teachers=1).eval()
    student.backbone.load_state_dict(plain.state_dict())  # the same backbone: only the tokens differ
    heads = {'dist': HeadView(student, 'dist'), 'avg': HeadView(student, 'avg')}
    size = (in_chans, img_size, img_size)
    ratios = latency_ratios([plain, *heads.values()], size, budget_s=budget_s)
    rows = [(name, 'cls (plain backbone)', sum(p.numel() for p in plain.parameters()), count_macs(plain, size), 1.0)]
    params = sum(p.numel() for p in student.parameters())
    for (head, model), ratio in zip(heads.items(), ratios[1:]):
        rows.append((name, head, params, count_macs(model, size), ratio))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='the small students only')
    parser.add_argument('--budget', type=float, default=3.0, help='seconds of timing per student')
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f'CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} '
          f'threads, torch {torch.__version__}, timm {timm.__version__}')
    print(f'{"student":<16}{"head":<22}{"params":>10}{"MACs":>12}{"params x":>10}{"MACs x":>8}{"latency x":>11}')
    for name, size, chans in (QUICK if args.quick else STUDENTS):
        rows = measure(name, size, chans, args.budget)
        base_params, base_macs = rows[0][2], rows[0][3]
        for student, head, params, macs, ratio in rows:
            print(f'{student:<16}{head:<22}{params / 1e6:>9.2f}M{macs / 1e9:>11.3f}G{params / base_params:>10.3f}'
                  f'{macs / base_macs:>8.3f}{ratio:>11.2f}')


if __name__ == '__main__':
    main()
