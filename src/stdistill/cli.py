"""Command line: `stdistill profile ...` (more subcommands come with the training pipeline).

Bad input ends with one line on stderr naming what to fix and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .profiling import GMACS_TOLERANCE, PARAMS_TOLERANCE, paper_comparison, profile_model


def _profile(args: argparse.Namespace) -> int:
    if args.paper:
        return _paper_table()
    if not args.model:
        raise ValueError('give a model name, or --paper for the paper table')
    extra = {'num_classes': args.num_classes}
    if args.token_positions:
        extra['token_positions'] = args.token_positions
    p = profile_model(args.model, img_size=args.img_size, in_chans=args.in_chans,
                      num_teachers=args.num_teachers, **extra)
    print(f'{p.name}: params {p.params_m:.2f}M ({p.params:,}), {p.gmacs:.3f} GMACs '
          f'at {args.in_chans}x{args.img_size}x{args.img_size}, {args.num_classes} classes')
    return 0


def _paper_table() -> int:
    rows = paper_comparison()
    header = f'{"model":<22} {"stdistill name":<30} {"params M":>9} {"paper":>7} {"diff":>7}   ' \
             f'{"GMACs":>7} {"paper":>6} {"diff":>7}'
    print(header)
    print('-' * len(header))
    for c in rows:
        flag = '' if c.within_tolerance else '  <-- outside tolerance'
        print(f'{c.row.label:<22} {c.row.model:<30} {c.ours.params_m:>9.2f} {c.row.params_m:>7.2f} '
              f'{c.params_diff:>+7.2%}   {c.ours.gmacs:>7.3f} {c.row.gmacs:>6.2f} {c.gmacs_diff:>+7.2%}{flag}')
    bad = [c for c in rows if not c.within_tolerance]
    print(f'\nImageNet 224x224, 1000 classes; "+ STD" rows with two teachers (two token pairs, K=1). '
          f'MACs from torch.utils.flop_counter.\nTolerance: params {PARAMS_TOLERANCE:.0%}, '
          f'GMACs {GMACS_TOLERANCE:.0%}. {len(rows) - len(bad)}/{len(rows)} rows within it.')
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='stdistill', description='Spatial-channel Token Distillation for vision MLPs')
    sub = parser.add_subparsers(dest='command', required=True)
    prof = sub.add_parser('profile', help='params and GMACs of a registered model, or the paper table')
    prof.add_argument('model', nargs='?', help='a timm-registered name, e.g. std_mixer_s16_224 or resnet50')
    prof.add_argument('--paper', action='store_true', help="print the paper's Params/FLOPs rows beside ours")
    prof.add_argument('--img-size', type=int, default=224)
    prof.add_argument('--in-chans', type=int, default=3)
    prof.add_argument('--num-classes', type=int, default=1000)
    prof.add_argument('--num-teachers', type=int, default=None, help='token pairs of an STD student (default 1)')
    prof.add_argument('--token-positions', type=int, nargs='+', default=None,
                      help='block index of each teacher\'s pair (default: last block)')
    prof.set_defaults(func=_profile)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for name in ('img_size', 'in_chans', 'num_classes'):
            if getattr(args, name, 1) is not None and getattr(args, name, 1) < 1:
                raise ValueError(f'--{name.replace("_", "-")} must be a positive integer')
        return args.func(args)
    except ValueError as e:
        print(f'stdistill: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
