"""Command line: `stdistill train | teacher-pass | eval | export | predict | models | quickstart | profile`.

    stdistill train --config recipes/fashion_mnist/std.yaml epochs=5 output=runs/std
    torchrun --nproc_per_node 8 -m stdistill train --config recipes/imagenet/cyclemlp_b2_std.yaml data_dir=/data/imagenet
    stdistill train --resume runs/std                # continue exactly where it stopped
    stdistill eval runs/std                          # top-1/top-5 of runs/std/best
    stdistill teacher-pass --config recipes/fashion_mnist/std.yaml --output stores/fm   # teachers once
    stdistill train --config recipes/fashion_mnist/std.yaml teacher_outputs=stores/fm   # ... replayed

Bad input ends with one line on stderr naming what to fix and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from ..utils.accuracy import INTERVAL_BELOW, chance_note, format_top1, is_at_chance, wilson_interval
from ..config import config_help, load_config
from ..utils.errors import UserError
from ..utils.hints import code, command, option, positionals, train_longer
from ..utils.log import setup_logging
from .profiling import GMACS_TOLERANCE, PARAMS_TOLERANCE, paper_comparison, profile_model

_logger = logging.getLogger(__name__)


def _profile(args: argparse.Namespace) -> int:
    if args.paper:
        return _paper_table()
    if not args.model:
        raise UserError('give a model name, or --paper for the paper table')
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


def _train(args: argparse.Namespace) -> int:
    from ..training.train import train
    if args.resume:
        saved = os.path.join(args.resume, 'config.yaml')
        if args.config is None and not os.path.isfile(saved):
            raise UserError(f'nothing to resume in {args.resume}: it holds no config.yaml')
        cfg = load_config(args.config or saved, [*args.overrides, f'output={args.resume}'])
    else:
        cfg = load_config(args.config, args.overrides)
    if args.stop_after is not None and args.stop_after < 1:
        raise UserError('--stop-after must be a positive number of epochs')
    args.run_folder = cfg.output  # for the resume command an interrupt prints
    summary = train(cfg, resume=bool(args.resume), stop_after=args.stop_after)
    if summary['final'] is not None and int(os.environ.get('RANK', 0)) == 0:  # once, not once a process
        best = summary['best']
        weights = ', EMA weights' if best.get('weights') == 'ema' else ''
        # a run resumed from a checkpoint older than the chance level keeps a best without images
        top1 = format_top1(best['top1'], best['images']) if 'images' in best else f'{best["top1"]:.2f}'
        _logger.info(f'done: {summary["epochs_done"]}/{summary["epochs"]} epochs, best top-1 {top1} (epoch '
                     f'{best["epoch"] + 1}{weights}), run folder {cfg.output}')
        chance = chance_note({'val_top1': best['top1'], 'val_images': best.get('images'),
                              'val_chance_top1': best.get('chance_top1')})
        if chance:
            again = f' {train_longer(cfg.output, summary)}' if is_at_chance(chance) else ''
            _logger.warning(f'{chance}.{again}')
        if os.path.isdir(os.path.join(cfg.output, 'best')):  # what each head of the run's best/ scores and costs
            _logger.info(_heads_text(cfg.output, 'best', False, summary.get('head', 'cls'),
                                     f'{cfg.output.rstrip("/")}_export'))
    return 0


def _fold(args: argparse.Namespace) -> int:
    from .fold import fold
    summary = fold(args.run, args.overrides, args.which)
    if summary['final'] is not None and int(os.environ.get('RANK', 0)) == 0:
        best, output = summary['best'], summary['output']
        _logger.info(f'done: the plain student folded from {args.run}, best top-1 '
                     f'{format_top1(best["top1"], best["images"])} (epoch {best["epoch"] + 1}), run folder {output}; '
                     f'export it with {command("stdistill", "export", *positionals(output, output + "_export"))}')
        _logger.info(_heads_text(output, 'best', False, 'cls', f'{output}_export'))
    return 0


def _teacher_pass(args: argparse.Namespace) -> int:
    from .teacher_pass import teacher_pass
    summary = teacher_pass(load_config(args.config, args.overrides), args.output, shard_steps=args.shard_steps)
    if int(os.environ.get('RANK', 0)) == 0 and summary['images']:
        _logger.info(f'done: {summary["images"]} images through the teachers in {summary["seconds"]:.1f} s '
                     f'({summary["img_per_s"]:.1f} img/s on this process), store {args.output}; train from it with '
                     f'{command("stdistill", "train", *(option("--config", args.config) if args.config else []), *positionals(*args.overrides, f"teacher_outputs={args.output}"))}')
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_checkpoint
    target = args.target
    checkpoint = os.path.join(target, args.which) if os.path.isfile(os.path.join(target, 'config.yaml')) else target
    config = args.config
    if config is None:
        # the run folder: the target, or above a checkpoint folder, or above RUN/best/model.safetensors
        here = os.path.abspath(target.rstrip('/'))
        runs = [target] if checkpoint != target else [os.path.dirname(here), os.path.dirname(os.path.dirname(here))]
        config = next((os.path.join(r, 'config.yaml') for r in runs if os.path.isfile(os.path.join(r, 'config.yaml'))),
                      None)
        if config is None:
            raise UserError(f'no config.yaml beside {target}: give the run folder, or --config')
    cfg = load_config(config, args.overrides)
    m = evaluate_checkpoint(cfg, checkpoint, ema=args.ema)
    ci = '' if m['images'] >= INTERVAL_BELOW else ' ({:.1f}-{:.1f})'  # each head's interval on a small split
    heads = ''.join(f', {k[5:]} head {m[k]:.2f}{ci.format(*wilson_interval(m[k], m["images"]))}'
                    for k in ('top1_cls', 'top1_dist', 'top1_avg') if k in m)
    also_ema = not args.ema and os.path.isfile(os.path.join(checkpoint, 'model_ema.safetensors'))
    again = ['stdistill', 'eval', '--which', args.which, *(option('--config', args.config) if args.config else []),
             '--ema', *positionals(args.target, *args.overrides)]
    ema_hint = f'; it also holds EMA weights: {command(*again)} scores them'
    _logger.info(f'{checkpoint}{" (EMA weights)" if args.ema else ""}: top-1 {format_top1(m["top1"], m["images"])}, '
                 f'top-5 {m["top5"]:.2f} on {m["images"]} images ({cfg.dataset or cfg.data_dir} {cfg.val_split}){heads}'
                 f'{ema_hint if also_ema else ""}')
    chance = chance_note({f'val_{k}': v for k, v in m.items()})
    if chance:
        _logger.warning(f'{chance}')
    return 0


def _export(args: argparse.Namespace) -> int:
    import signal

    from .export import ema_hint, export_run, timm_needs_stdistill

    def stop(signum, frame):  # `kill` and `timeout` send SIGTERM: unwind, so the partial export is removed
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        done = export_run(args.run, args.output, which=args.which, ema=args.ema, onnx=args.onnx, head=args.head)
    finally:
        signal.signal(signal.SIGTERM, previous)  # main() may be called in a longer-lived process
    folder = done['folder']
    imports = 'import stdistill, timm' if timm_needs_stdistill(done['architecture']) else 'import timm'
    how = code(f"{imports}; model = timm.create_model({'local-dir:' + folder!r}, pretrained=True).eval()")
    onnx = f"; ONNX matches PyTorch within {done['onnx_max_diff']:.1e}" if done['onnx_max_diff'] is not None else ''
    _logger.info(f"exported {args.run}/{args.which}{' (EMA weights)' if args.ema else ''} to {folder}: "
                 f"{', '.join(done['files'])}; load it with {how}{onnx}")
    for line in _shipped_lines(args, done['top1']):
        if line.startswith('stdistill: warning: '):
            _logger.warning(line[len('stdistill: warning: '):])
        else:
            _logger.info(line)
    _logger.info(_heads_text(args.run, args.which, args.ema, done['head'], folder, args.onnx))
    hint = ema_hint(args.run, args.which, args.ema)
    if hint:
        print(hint, file=sys.stderr)
    return 0


def _heads_text(run: str, which: str, ema: bool, chosen: str, output: str, onnx: bool = False) -> str:
    """The head table of a run's checkpoint (heads.py), with what it means and, for a token student,
    the export of its best other head (into `output`_HEAD) and the fold, as commands to run."""
    from .heads import busy_note, format_head_table, head_table
    rows = head_table(run, which, ema)
    busy = busy_note()
    if len(rows) == 1:
        return (f'{run}/{which} has one head (a model without tokens){busy}:\n' + format_head_table(rows, chosen))
    others = [r for r in rows if r.head != chosen and r.top1 is not None]
    best = max(others, key=lambda r: r.top1, default=None)
    export = ''
    if best is not None:
        again = command('stdistill', 'export', '--which', which, *(['--ema'] if ema else []), *(['--onnx'] if onnx else []),
                        '--head', best.head, *positionals(run, f'{output.rstrip("/")}_{best.head}'))
        export = f'export the {best.head} head with {again}; '
    fold = command('stdistill', 'fold', *(['--which', which] if which != 'best' else []), *positionals(run))
    return (f'what each head of {run}/{which} scores and costs (validation top-1 of these weights'
            f'{"; the EMA is scored with the run head alone" if ema else ""}; CPU latency on this machine, against '
            f'the plain backbone{busy}): {export}a tokenless student taught by this one: {fold}\n'
            + format_head_table(rows, chosen))


# points: an exported head this far below the run's reported top-1 (beyond the split's noise) is flagged
FAR_BELOW = 2.0


def _shipped_lines(args: argparse.Namespace, shipped) -> List[str]:
    """What the export ships, in numbers: its head's validation top-1 beside the run's headline,
    a warning when it is far below, and a warning when it is at chance."""
    if shipped is None:
        return [f'note: {args.run}/{args.which} records no validation top-1: score it with '
                f'{command("stdistill", "eval", "--which", args.which, *positionals(args.run))}']
    what = f'{"EMA weights, " if args.ema else ""}{shipped.head} head'
    if shipped.top1 is None:
        return [f'note: the top-1 of the {what} is not recorded (each head is scored for the student\'s weights): '
                f'score it with {command("stdistill", "eval", "--which", args.which, "--ema", *positionals(args.run, f"inference_head={shipped.head}"))}']
    lines = [f'it predicts with the {what}: validation top-1 {format_top1(shipped.top1, shipped.images)}'
             + ('' if shipped.head == shipped.headline_head else
                f'; the run reported {shipped.headline_top1:.2f}, from its {shipped.headline_head} head')]
    low, _ = wilson_interval(shipped.headline_top1, shipped.images)
    gap = shipped.headline_top1 - shipped.top1
    if gap > max(FAR_BELOW, shipped.headline_top1 - low):
        fix = command('stdistill', 'export', '--which', args.which, *(['--ema'] if args.ema else []), '--head',
                      shipped.headline_head,
                      *positionals(args.run, f'{args.output.rstrip("/")}_{shipped.headline_head}'))
        fold = (f', or, for a model without tokens, fold the run into its plain backbone, '
                f'{command("stdistill", "fold", *positionals(args.run))}' if shipped.headline_head != 'cls' else '')
        lines.append(f'stdistill: warning: the exported {shipped.head} head scores {gap:.2f} points below the run\'s '
                     f'{shipped.headline_top1:.2f}: export the {shipped.headline_head} head, {fix}{fold} (the table '
                     f'below says what each head costs)')
    chance = chance_note({'val_top1': shipped.top1, 'val_images': shipped.images,
                          'val_chance_top1': shipped.chance_top1})
    if chance:
        lines.append(f'stdistill: warning: {chance}')
    return lines


def _predict(args: argparse.Namespace) -> int:
    import json

    from .export import ema_hint
    from .predict import predict
    results = predict(args.target, args.images, top_k=args.top_k, ema=args.ema)
    hint = ema_hint(args.target, 'best', args.ema) if os.path.isfile(os.path.join(args.target, 'config.yaml')) else None
    if hint:
        print(hint, file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=1))
    for r in results if not args.json else ():
        print(f"{r['image']}: " + ', '.join(f"{t['class']} {t['probability']:.3f}" for t in r['top']))
    return 0


def _models(args: argparse.Namespace) -> int:
    from ..models.catalog import catalog, format_catalog
    print(format_catalog(catalog()))
    print('\nmean/std: each model\'s own cfg, used when a recipe sets none (recipes/folder sets 0.5). A student is '
          '"model: NAME" (method: std adds the token pairs); a teacher, "teachers: [{model: NAME}]". Any other timm '
          'name works too; model_kwargs / kwargs change a model\'s size.')
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart
    run_quickstart(args.output, long=args.long, data_dir=args.data_dir, workers=args.workers, small=args.small,
                   restart=args.restart)
    return 0


def _usage_error(message: str, command: str = '') -> str:
    return f'stdistill: error: {message} (see {" ".join(filter(None, ("stdistill", command)))} --help)'


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors in the one-line form of every other error."""

    def error(self, message: str):
        self.exit(2, _usage_error(message, self.prog.partition(' ')[2]) + '\n')


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog='stdistill', description='Spatial-channel Token Distillation for vision MLPs')
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

    tr = sub.add_parser('train', help='train a student (with torchrun: on several processes)',
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description='Train from a YAML recipe; any key can be overridden as key=value '
                                    '(values are YAML; teachers.0.checkpoint=... reaches into lists).',
                        epilog='config keys (default, meaning):\n' + config_help())
    tr.add_argument('--config', help='YAML recipe, e.g. recipes/fashion_mnist/std.yaml')
    tr.add_argument('--resume', metavar='RUN', help='continue the run in this folder from its last checkpoint')
    tr.add_argument('--stop-after', type=int, metavar='N', help='stop after N epochs of this process (resume later)')
    tr.add_argument('overrides', nargs='*', metavar='key=value')
    tr.set_defaults(func=_train)

    tp = sub.add_parser('teacher-pass', help='run a recipe\'s teachers once over its data schedule, into a store '
                                              'that train reads (teacher_outputs=STORE)',
                        description='Walk every epoch of the recipe\'s data schedule through its teachers and store '
                                    'what the loss needs (hard labels and entropies; with distill=soft the top '
                                    'store_topk logits). Run again after an interruption: it continues.')
    tp.add_argument('--config', help='YAML recipe (the one you will train with)')
    tp.add_argument('--output', required=True, metavar='STORE', help='folder for the store')
    tp.add_argument('--shard-steps', type=int, default=None, metavar='N',
                    help='steps a shard (what an interruption can lose; default 256); a store keeps the value it '
                         'was made with')
    tp.add_argument('overrides', nargs='*', metavar='key=value')
    tp.set_defaults(func=_teacher_pass)

    fo = sub.add_parser('fold', help='train the plain backbone of a token run from that run\'s student (its chosen '
                                     'head): a student without tokens, at the plain backbone\'s cost',
                        description='A second stage: the run\'s backbone without tokens (method kd) learns from the '
                                    'run\'s student, through a teacher-output store in the new run folder '
                                    '(default RUN_fold). key=value overrides the run\'s config.')
    fo.add_argument('run', help='a run folder of method std (or deit)')
    fo.add_argument('--which', choices=('best', 'last'), default='best', help='checkpoint of the run to fold')
    fo.add_argument('overrides', nargs='*', metavar='key=value', help='e.g. epochs=10 output=runs/folded')
    fo.set_defaults(func=_fold)

    ev = sub.add_parser('eval', help='top-1/top-5 of a trained student on its validation split')
    ev.add_argument('target', help='a run folder (evaluates its best/ checkpoint) or a checkpoint folder')
    ev.add_argument('--which', choices=('best', 'last'), default='best', help='checkpoint of a run folder')
    ev.add_argument('--ema', action='store_true', help='score the EMA weights (runs with model_ema) instead')
    ev.add_argument('--config', help='config to use instead of the run\'s config.yaml')
    ev.add_argument('overrides', nargs='*', metavar='key=value', help='e.g. inference_head=cls data_dir=...')
    ev.set_defaults(func=_eval)

    ex = sub.add_parser('export', help='a trained student as a folder timm loads (config.json + weights), or ONNX')
    ex.add_argument('run', help='a run folder')
    ex.add_argument('output', help='a new folder for the export')
    ex.add_argument('--which', choices=('best', 'last'), default='best', help='checkpoint of the run')
    ex.add_argument('--ema', action='store_true', help='the EMA weights (runs with model_ema)')
    ex.add_argument('--onnx', action='store_true', help='also model.onnx, checked against PyTorch with onnxruntime')
    ex.add_argument('--head', choices=('cls', 'dist', 'avg', 'auto'), default=None,
                    help='inference head of a token student (default: the run\'s; auto: the head its holdout chose); cls of an STD student gives the plain backbone')
    ex.set_defaults(func=_export)

    pr = sub.add_parser('predict', help='top-k classes of images, with the model\'s own preprocessing')
    pr.add_argument('target', help='a run folder (its best student) or an exported folder')
    pr.add_argument('images', nargs='+', help='image files')
    pr.add_argument('--top-k', type=int, default=5, help='classes per image')
    pr.add_argument('--ema', action='store_true', help='a run\'s EMA weights')
    pr.add_argument('--json', action='store_true', help='JSON for scripts')
    pr.set_defaults(func=_predict)

    mo = sub.add_parser('models', help='students and teachers this package knows, and the input each expects')
    mo.set_defaults(func=_models)

    qs = sub.add_parser('quickstart', help='teacher, plain student and STD student on Fashion-MNIST, compared')
    qs.add_argument('--output', default='runs/quickstart', help='folder for the three runs, table, plot and results.json')
    qs.add_argument('--long', action='store_true', help='more data and epochs: slower, better figures')
    qs.add_argument('--small', action='store_true', help='fewer images and epochs, scored on 2,000 test images: about 3 minutes on 2 idle cores '
                                                           '(benchmarks/quickstart_time.py --small)')
    qs.add_argument('--restart', action='store_true', help='start every stage again (default: keep finished ones, '
                                                           'resume an interrupted one)')
    qs.add_argument('--data-dir', default=None, help='folder with the Fashion-MNIST IDX files (default: Debian\'s)')
    qs.add_argument('--workers', type=int, default=2, help='data loader processes')
    qs.set_defaults(func=_quickstart)
    return parser


def _one_line(e: BaseException) -> str:
    """The message of an error; for one re-raised from a data-loader worker, the original's."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    if len(lines) > 1 and 'Original Traceback' in str(e):  # torch's worker wrapper: "Caught X in ..."
        last = lines[-1]
        return last.split(': ', 1)[1] if ': ' in last else last
    return lines[0] if lines else type(e).__name__


def main(argv: Optional[List[str]] = None) -> int:
    setup_logging(force=True)  # the command line's own output, whatever the environment configured
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after an option (train ... --stop-after 1 epochs=5)
    if extra and hasattr(args, 'overrides') and all('=' in a and not a.startswith('-') for a in extra):
        args.overrides += extra
    elif extra:
        print(_usage_error(f'unrecognized arguments: {" ".join(extra)}', args.command), file=sys.stderr)
        return 2
    try:
        for name in ('img_size', 'in_chans', 'num_classes'):
            if getattr(args, name, 1) is not None and getattr(args, name, 1) < 1:
                raise UserError(f'--{name.replace("_", "-")} must be a positive integer')
        return args.func(args)
    except UserError as e:  # bad input; any other error is a bug and keeps its traceback
        print(f'stdistill: error: {_one_line(e)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = ''
        if args.command == 'teacher-pass':
            again = '; whole shards are kept: run the same command again to continue'
        run = getattr(args, 'run_folder', None)
        if args.command == 'train' and run and any(os.path.isdir(os.path.join(run, d)) for d in ('last', 'previous')):
            again = f'; continue from its last finished epoch with {command("stdistill", "train", *option("--resume", run))}'
        print(f'stdistill: interrupted{again}', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
