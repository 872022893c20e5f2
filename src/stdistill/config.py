"""Training configuration: one flat dataclass, read from YAML, overridden with key=value.

    cfg = load_config('recipes/fashion_mnist/std.yaml', ['epochs=3', 'teachers.0.token_position=-2'])

Defaults are DeiT's ImageNet recipe (the paper trains with it). Every key, its default and
what it does are listed by `stdistill train --help` (from the field metadata below). Values
given on the command line are parsed as YAML (`lr=1e-3`, `scale=[0.5,1]`, `mine=false`), and
a dotted key reaches inside a list or mapping (`teachers.1.checkpoint=r101.safetensors`).
An unknown or mistyped key is a UserError naming the nearest known key.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from .utils.disk import write_atomic
from .utils.errors import UserError
from .utils.hints import command
from .methods import METHOD_NAMES, method_of

__all__ = ['TrainConfig', 'TeacherSpec', 'load_config', 'apply_overrides', 'check_holdout', 'save_config', 'config_help', 'read_yaml', 'resume_changes',
           'config_changes', 'first_difference', 'METHODS', 'SCHEDULE_KEYS', 'RUNTIME_KEYS', 'with_absolute_paths']

METHODS = METHOD_NAMES  # the table of what each needs: methods.py
# Bounds of an input contract (teacher_input.py checks contracts with the same ones)
MIN_STD = 1e-6  # a smaller normalisation std turns image noise into values fp32 and bf16 overflow on
MAX_IMG_SIZE = 8192  # pixels a side: beyond it a size is damaged, not a model's input size
# soft distillation scales its loss by tau**2: below MIN_TAU that underflows to a loss of 0 (no
# signal), above MAX_TAU it overflows fp32; the field uses 1 to 10
MIN_TAU, MAX_TAU = 0.01, 100.0
LABELS_TEACHER = 'labels'  # the `model` of a teacher entry that gives the ground truth (losses.LabelsTeacher)
RESIZE_INTERPOLATIONS = ('bilinear', 'bicubic', 'nearest')  # what a batch is resized with on the device


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 does: YAML 1.1 (PyYAML) takes a float
    only with a dot and a signed exponent, so 5e-4, 1E-6 and 5.0e4 would be strings."""


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$'), list('-+0123456789.'))


def read_yaml(text: Any) -> Any:
    """A YAML document (a string or an open file) with every numeric form read as its number:
    5e-4, 1E-6, .5 and 1_000 as well as 0.0005. Raises UserError for bytes that are not UTF-8
    and for nesting too deep to be a config (yaml.YAMLError for what is not YAML)."""
    where = getattr(text, 'name', 'the text given')
    try:
        return yaml.load(text, Loader=_Loader)
    except UnicodeDecodeError as e:
        raise UserError(f'{where} is not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r}): save it '
                        f'as UTF-8') from None
    except RecursionError:
        raise UserError(f'{where} nests too deeply to be a config') from None


def _f(default: Any, help: str, choices: Optional[Sequence] = None) -> Any:
    meta = {'help': help, 'choices': tuple(choices) if choices else None}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TeacherSpec:
    """One entry of `teachers`."""
    model: str
    checkpoint: Optional[str] = None     # local weights (safetensors, or torch loaded weights-only)
    pretrained: Optional[bool] = None    # timm's weights; default: True unless a checkpoint is given
    token_position: int = -1             # block after which this teacher's token pair reads (std)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # more arguments of timm.create_model
    use_ema: bool = False                # a checkpoint with both: its EMA weights, not the raw model's
    # The teacher's input contract; null: recorded in its stdistill checkpoint, else its timm cfg.
    mean: Optional[List[float]] = None   # normalisation the teacher was trained with
    std: Optional[List[float]] = None
    img_size: Optional[int] = None       # resize the student's batch to this size for the teacher
    interpolation: Optional[str] = None  # bilinear | bicubic | nearest


@dataclass
class TrainConfig:
    # run
    output: str = _f('runs/std', 'run folder: config, logs, checkpoints, plots')
    seed: int = _f(0, 'random seed (each process adds its rank)')
    data_seed: Optional[int] = _f(None, 'seed of the data schedule (training and evaluation subsets, sample order, '
                                        'augmentation, mixup); null: seed. '
                                        'Runs with one data_seed see the same batches')
    # data
    dataset: str = _f('', "'' or 'folder' (ImageFolder under data_dir), 'fashion-mnist', or any "
                          "timm.data.create_dataset name ('hfds/...', 'torch/cifar10', ...)")
    data_dir: Optional[str] = _f(None, 'dataset root (fashion-mnist: optional, Debian\'s files by default)')
    train_split: str = _f('train', 'split (sub-folder) used for training')
    val_split: str = _f('validation', 'split used for evaluation (fashion-mnist: validation = test)')
    download: bool = _f(False, 'let torchvision / Hugging Face download the dataset')
    train_samples: int = _f(0, 'train on a fixed random subset of this many images (0: all)')
    val_samples: int = _f(0, 'evaluate on a fixed random subset of this many images (0: all)')
    holdout: int = _f(0, 'training images held out of training, on which inference_head auto chooses the head '
                         '(taken from the images train_samples leaves unused when there are enough); 0: none')
    num_classes: Optional[int] = _f(None, 'class count; null: read from the dataset')
    class_map: Optional[str] = _f(None, "image folders: a text file naming the classes in index order, one a line "
                                        "(timm's class_map); null: the training split's folders in natural order "
                                        "(1, 2, 10; torchvision's ImageFolder sorts as text: 1, 10, 2)")
    img_size: int = _f(224, 'input resolution the model is built for')
    in_chans: int = _f(3, 'input channels (1 for grayscale data)')
    mean: Optional[List[float]] = _f(None, "normalisation mean; null: the model's pretrained cfg")
    std: Optional[List[float]] = _f(None, "normalisation std; null: the model's pretrained cfg")
    batch_size: int = _f(128, 'images per process and step')
    min_updates_per_epoch: int = _f(0, 'on a training set too small for batch_size, lower batch_size until an epoch '
                                       'makes this many updates (said at setup; the run\'s config keeps batch_size); '
                                       '0: never')
    workers: int = _f(4, 'data loader processes per training process')
    bad_images: str = _f('skip', 'an unreadable image: skip it (warned and counted in the log) or stop the run',
                         ('skip', 'stop'))
    # augmentation (timm)
    aa: Optional[str] = _f('rand-m9-mstd0.5-inc1', 'timm auto-augment spec (RandAugment); null: none')
    scale: List[float] = _f([0.08, 1.0], 'random-resized-crop area range')
    ratio: List[float] = _f([0.75, 4 / 3], 'random-resized-crop aspect range')
    hflip: float = _f(0.5, 'horizontal flip probability')
    color_jitter: float = _f(0.3, 'colour jitter strength (unused while aa is set)')
    reprob: float = _f(0.25, 'random erasing probability')
    remode: str = _f('pixel', 'random erasing mode', ('const', 'rand', 'pixel'))
    recount: int = _f(1, 'random erasing count')
    crop_pct: float = _f(0.875, 'evaluation centre-crop fraction')
    interpolation: str = _f('bicubic', 'resize interpolation', ('bilinear', 'bicubic', 'nearest', 'lanczos', 'box',
                                                                 'hamming'))
    mixup: float = _f(0.8, 'mixup alpha (0: off)')
    cutmix: float = _f(1.0, 'cutmix alpha (0: off)')
    mixup_prob: float = _f(1.0, 'probability of applying mixup or cutmix to a batch')
    mixup_switch_prob: float = _f(0.5, 'probability of cutmix rather than mixup when both are on')
    mixup_mode: str = _f('batch', 'mixup granularity', ('batch', 'pair', 'elem'))
    smoothing: float = _f(0.1, 'label smoothing')
    repeated_aug: bool = _f(True, "DeiT's repeated augmentation sampler (3 repeats)")
    # model
    model: str = _f('mixer_s16_224', 'student backbone: a timm name (mixer_*, resmlp_*, gmlp_*, cyclemlp_b1/b2, ...)')
    pretrained: bool = _f(False, "start the backbone from timm's weights")
    model_kwargs: Dict[str, Any] = _f({}, 'more arguments of timm.create_model for the student')
    drop_path: float = _f(0.1, 'stochastic depth rate of the student')
    # method
    method: str = _f('std', 'none, kd (soft KD on the class head), deit (DeiT token), std', METHODS)
    teachers: List[Dict[str, Any]] = _f([], 'teachers: list of {model, checkpoint, pretrained, token_position, kwargs, '
                                            'use_ema, mean, std, img_size, interpolation} (use_ema: a checkpoint\'s '
                                            'EMA weights, default false; the last four: its input, when neither '
                                            'its checkpoint nor its timm cfg gives it; {model: labels}: the '
                                            'ground truth as a teacher, the read-out control)')
    alpha: float = _f(0.5, 'weight of the distillation loss (1 - alpha on the labels)')
    tau: float = _f(1.0, f'temperature of soft distillation, from {MIN_TAU} to {MAX_TAU}')
    distill: Optional[str] = _f(None, 'distillation target: teacher argmax or softened distribution; null: soft for '
                                      'method kd (Hinton\'s KD), hard for deit and std', ('hard', 'soft'))
    teacher_weighting: str = _f('entropy', 'per-sample teacher weights (several teachers)', ('entropy', 'uniform'))
    tokens: str = _f('both', 'STD tokens per pair', ('both', 'spatial', 'channel'))
    token_depth: int = _f(1, 'token layers per pair (K)')
    inference_head: str = _f('avg', 'prediction at evaluation: class head, distillation heads, their mean, or '
                                    'auto: the best of the three on the holdout images, chosen at each evaluation',
                             ('avg', 'cls', 'dist', 'auto'))
    cls_distill: bool = _f(False, 'std, deit: the class head also learns from the teachers (soft KD at tau, weight '
                                  'alpha, as method kd) beside the distillation heads: a better class head alone')
    teacher_outputs: Optional[str] = _f(None, 'a teacher-output store (stdistill teacher-pass) to read the teachers\' '
                                              'outputs from, instead of running them')
    store_topk: int = _f(10, 'teacher-pass for soft distillation: logits stored per image and teacher (the rest '
                             'as one bucket); the class count stores them all')
    mine: bool = _f(True, 'mutual-information regulariser between the two tokens of a pair (std, tokens=both)')
    mine_weight: float = _f(0.1, 'lambda of the MI penalty')
    mine_hidden: int = _f(512, 'hidden width of the MINE statistics network')
    mine_warmup_epochs: float = _f(0.0, 'epochs (fractions too) in which MINE\'s statistics network learns the bound '
                                        'before the penalty reaches the tokens; 0: from the first step')
    # optimisation (timm factories)
    epochs: int = _f(300, 'training epochs')
    opt: str = _f('adamw', 'timm optimizer name')
    lr: Optional[float] = _f(None, "learning rate; null: DeiT's 5e-4 x global batch / 512")
    weight_decay: float = _f(0.05, 'weight decay (not on biases, norms or learned tokens)')
    momentum: float = _f(0.9, 'momentum (SGD-like optimizers)')
    sched: str = _f('cosine', 'timm scheduler name')
    warmup_epochs: int = _f(5, 'linear warm-up epochs')
    warmup_lr: float = _f(1e-6, 'learning rate at the start of warm-up')
    min_lr: float = _f(1e-5, 'final learning rate')
    clip_grad: Optional[float] = _f(None, 'gradient clipping threshold; null: none')
    clip_mode: str = _f('norm', 'gradient clipping mode', ('norm', 'value', 'agc'))
    skip_nonfinite: bool = _f(False, 'skip (and count) steps whose loss is NaN or inf instead of stopping the run')
    # engine
    device: str = _f('auto', "'auto' (CUDA when present), 'cpu', 'cuda' (GPU LOCAL_RANK under torchrun), 'cuda:N'")
    amp: bool = _f(True, 'bf16 autocast on any device (the same code on CPU and GPU); false: fp32 everywhere')
    channels_last: bool = _f(True, 'channels-last memory format for the student (teachers always use it)')
    dist_timeout: float = _f(30.0, 'minutes a process waits for the others in a collective (torchrun) before failing')
    compile: bool = _f(False, 'torch.compile the student')
    model_ema: bool = _f(False, 'keep an EMA of the student and evaluate it too')
    model_ema_decay: float = _f(0.99996, 'EMA decay per step')
    log_interval: int = _f(50, 'steps between TensorBoard points')
    progress: bool = _f(True, 'tqdm progress bar')

    def __post_init__(self) -> None:
        if self.distill is None:  # the method's own target: KD is soft (Hinton et al.), DeiT and STD hard
            self.distill = method_of(self.method).distill if self.method in METHOD_NAMES else 'hard'


_TEACHER_KEYS = tuple(f.name for f in dataclasses.fields(TeacherSpec))
# Numeric keys with an inclusive lower bound, > 0, or in [0, 1]; checked when a config is built.
_AT_LEAST = {'store_topk': 1, 'batch_size': 1, 'min_updates_per_epoch': 0, 'img_size': 1, 'epochs': 1, 'token_depth': 1, 'mine_hidden': 1,
             'recount': 1, 'log_interval': 1, 'workers': 0, 'train_samples': 0, 'val_samples': 0, 'holdout': 0,
             'warmup_epochs': 0,
             'weight_decay': 0, 'mine_weight': 0, 'mine_warmup_epochs': 0, 'mixup': 0, 'cutmix': 0, 'warmup_lr': 0,
             'min_lr': 0, 'num_classes': 1}
# sizes far past any use that would allocate without bound (token_depth 100000 hangs the build)
_AT_MOST = {'token_depth': 64, 'mine_hidden': 1 << 16}
FP32_MAX = 3.4028234663852886e38
_POSITIVE = ('lr', 'tau', 'clip_grad', 'crop_pct', 'model_ema_decay', 'dist_timeout')
_PROBABILITIES = ('hflip', 'reprob', 'mixup_prob', 'mixup_switch_prob', 'alpha', 'drop_path', 'smoothing', 'crop_pct',
                  'model_ema_decay')


def _check_ranges(cfg: 'TrainConfig') -> None:
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise UserError(f'config key {f.name} must be finite, got {value}')
    if cfg.dist_timeout > 7 * 24 * 60:
        raise UserError(f'config key dist_timeout must be at most a week (10080 minutes), got {cfg.dist_timeout}')
    if cfg.std is not None and any(s < MIN_STD for s in cfg.std):
        raise UserError(f'config key std must be at least {MIN_STD} (a normalisation divides by it), got {cfg.std}')
    for name, low in _AT_LEAST.items():
        value = getattr(cfg, name)
        if value is not None and value < low:
            raise UserError(f'config key {name} must be >= {low}, got {value}')
    for name in _POSITIVE:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise UserError(f'config key {name} must be > 0, got {value}')
    for name in _PROBABILITIES:
        if not 0 <= getattr(cfg, name) <= 1:
            raise UserError(f'config key {name} must be between 0 and 1, got {getattr(cfg, name)}')
    if cfg.smoothing >= 1:  # every target uniform: nothing to learn (and timm's loss asserts)
        raise UserError(f'config key smoothing must be below 1 (label smoothing 1 makes every target uniform), '
                        f'got {cfg.smoothing}')
    problem = schedule_problem(cfg, cfg.lr) if cfg.lr is not None else None
    if problem:
        raise UserError(problem)
    if cfg.in_chans not in (1, 3):
        raise UserError(f'config key in_chans must be 1 (grayscale images, mode L) or 3 (RGB), got {cfg.in_chans}')
    for name in ('seed', 'data_seed'):  # numpy and torch take seeds from 0 to 2**32 - 1
        value = getattr(cfg, name)
        if value is not None and not 0 <= value < 2 ** 32:
            raise UserError(f'config key {name} must be from 0 to {2 ** 32 - 1}, got {value}')
    for f in dataclasses.fields(cfg):  # torch keeps learning rates and the like in fp32
        value = getattr(cfg, f.name)
        if isinstance(value, float) and abs(value) > FP32_MAX:
            raise UserError(f'config key {f.name} is {value}, beyond what fp32 holds ({FP32_MAX:.3g})')
        if isinstance(value, str) and not _utf8(value):  # a path of undecodable bytes, from the command line
            raise UserError(f'config key {f.name} is not UTF-8 text ({value.encode("utf-8", "backslashreplace")!r}): '
                            f'rename it')
    for name, high in _AT_MOST.items():
        if getattr(cfg, name) > high:
            raise UserError(f'config key {name} must be at most {high}, got {getattr(cfg, name)}')
    # random-resized-crop ranges: (min, max), as timm's transform reads them
    for name, what, top in (('scale', 'area fractions', 1.0), ('ratio', 'aspect ratios', None)):
        low_high = getattr(cfg, name)
        if (len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]
                or (top is not None and low_high[1] > top)):
            bound = f'0 < min <= max <= {top:g}' if top is not None else '0 < min <= max'
            raise UserError(f'config key {name} must be two {what} [min, max] with {bound}, got {low_high}')


def schedule_problem(cfg: 'TrainConfig', lr: float) -> Optional[str]:
    """timm's schedulers run warmup_lr -> lr -> min_lr: what is wrong with a min_lr above the peak
    `lr` (the cosine would climb to it) or a warm-up that starts above it (it would descend); None
    when nothing is. A given lr is refused with it; DeiT's lr from batch_size is warned of."""
    given = 'lr' if cfg.lr is not None else f'lr (null: {lr:.3g}, from batch_size)'
    if cfg.min_lr > lr:
        return f'config key min_lr {cfg.min_lr} is above {given}: the schedule would climb to it; set min_lr below lr'
    if cfg.warmup_epochs and cfg.warmup_lr > lr:
        return (f'config key warmup_lr {cfg.warmup_lr} is above {given}: the warm-up would descend to it; set '
                f'warmup_lr below lr')
    return None


def _check_method_keys(cfg: 'TrainConfig') -> None:
    """Refuse keys the run's method would ignore while config.yaml recorded them as used."""
    method = method_of(cfg.method)
    _check_head_choice(cfg)
    if not method.needs_teachers:
        return  # no distillation: every distillation key is moot, and recipes keep theirs
    if not MIN_TAU <= cfg.tau <= MAX_TAU:
        raise UserError(f'config key tau must be from {MIN_TAU} to {MAX_TAU} (soft distillation scales by tau**2), '
                        f'got {cfg.tau}')
    if cfg.distill == 'hard' and cfg.tau != 1.0 and not cfg.cls_distill:
        raise UserError(f'tau {cfg.tau} applies to soft distillation, and this run distils hard labels '
                        f'(method {cfg.method}, distill hard): set distill=soft, or drop tau')
    if not method.token_positions:
        for i, t in enumerate(cfg.teachers):
            if t['token_position'] != -1:
                raise UserError(f'teachers.{i}.token_position is the block an STD token pair reads (method std); '
                                f'method {cfg.method} distils the final output: drop it, or set method=std')


def _check_head_choice(cfg: 'TrainConfig') -> None:
    """inference_head auto needs heads to choose among, and cls_distill a class head beside
    distillation heads. (That auto trains with holdout images, and they with auto, is a training
    rule, train.check_holdout: eval and export of an auto run may ask for another head.)"""
    heads = method_of(cfg.method).has_distillation_heads
    if cfg.inference_head == 'auto' and not heads:
        raise UserError(f'inference_head auto chooses among a student\'s heads, and method {cfg.method} trains its '
                        f'class head alone: set inference_head=cls (and holdout=0), or method=std')
    if cfg.cls_distill and (not heads or method_of(cfg.method).distils_class_head):
        raise UserError(f'cls_distill adds KD on the class head beside distillation heads (method std or deit); '
                        f'method {cfg.method} has none: drop cls_distill'
                        + (' (kd already distils into the class head)' if cfg.method == 'kd' else ''))


# fewer holdout images than this choose a head on noise: said, not refused (a small dataset may have no more)
FEW_HOLDOUT = 100


def check_holdout(cfg: 'TrainConfig') -> Optional[str]:
    """For a training run: a UserError when inference_head auto has no holdout images to choose on, or
    holdout images would be held out for no choice; a warning (returned) when they are few."""
    if cfg.inference_head == 'auto' and cfg.holdout == 0:
        raise UserError('inference_head auto chooses the head on training images held out of training: set '
                        'holdout to how many (e.g. holdout=2000; a tenth of a small training set)')
    if cfg.holdout and cfg.inference_head != 'auto':
        raise UserError(f'holdout {cfg.holdout}: the holdout images serve inference_head auto, and this run predicts '
                        f'with {cfg.inference_head}: set inference_head=auto, or holdout=0')
    if 0 < cfg.holdout < FEW_HOLDOUT:
        return (f'holdout {cfg.holdout}: inference_head auto chooses among heads whose top-1 on so few images '
                f'differs by chance (ties go to the cheapest, cls); give it {FEW_HOLDOUT} or more if the data allows')
    return None


def _utf8(text: str) -> bool:
    try:
        text.encode('utf-8')
        return True
    except UnicodeEncodeError:
        return False


def _closest(key: Any, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)  # (a YAML key may be a number or null)
    return f'; did you mean {close[0]}?' if close else ''


def _check_type(name: str, value: Any, hint: Any) -> Any:
    """Return value (ints widened to float where a float is wanted) or raise a UserError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _check_type(name, value, args[0])
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():  # epochs: 1e3
        return int(value)
    if hint is float and isinstance(value, str):  # a quoted number ('5e-4') from a templated file
        try:
            return float(value)
        except ValueError:
            pass
    base = origin or hint
    if base is float and isinstance(value, float) or base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base in (bool, str, list, dict) and isinstance(value, base):
        if base is list and args and args[0] is float:
            return [_check_type(name, v, float) for v in value]
        return value
    kind = getattr(base, '__name__', str(base))
    raise UserError(f'config key {name} must be {"a list" if base is list else kind}, got {value!r}')


def _check_kwargs(name: str, kwargs: Dict[str, Any]) -> None:
    """`{embed_dim:16}` (no space after the colon) is YAML for the key 'embed_dim:16' with no
    value: refuse it rather than build the model without the argument."""
    for key, value in kwargs.items():
        if value is None and isinstance(key, str) and ':' in key:
            raise UserError(f'{name} key {key!r} has no value: write it as {key.split(":", 1)[0]}: '
                            f'{key.split(":", 1)[1]} (YAML needs a space after the colon)')


def _check_teachers(teachers: Any) -> List[Dict[str, Any]]:
    if not isinstance(teachers, list):
        raise UserError(f'config key teachers must be a list of mappings, got {teachers!r}')
    out = []
    for i, t in enumerate(teachers):
        t = {'model': t} if isinstance(t, str) else t
        for key in t if isinstance(t, dict) else ():
            if key not in _TEACHER_KEYS:
                raise UserError(f'unknown key teachers.{i}.{key}{_closest(key, _TEACHER_KEYS)} '
                                f'(known: {", ".join(_TEACHER_KEYS)})')
        if not isinstance(t, dict) or 'model' not in t:
            raise UserError(f'teachers.{i} must be a mapping with at least a model name, got {t!r}')
        name = t['model']
        if isinstance(name, str) and name != LABELS_TEACHER and difflib.get_close_matches(
                name.strip().lower(), [LABELS_TEACHER], cutoff=0.75):  # no timm model is this close to it
            raise UserError(f'teachers.{i}.model {name!r} is no model; did you mean {LABELS_TEACHER} '
                            f'(the ground truth as a teacher, spelt exactly so)?')
        spec = dataclasses.asdict(TeacherSpec(**t))
        hints = typing.get_type_hints(TeacherSpec)
        out.append({k: _check_type(f'teachers.{i}.{k}', v, hints[k]) for k, v in spec.items()})
        _check_kwargs(f'teachers.{i}.kwargs', out[-1]['kwargs'])
        for key in ('mean', 'std'):
            if out[-1][key] is not None and not all(math.isfinite(v) for v in out[-1][key]):
                raise UserError(f'config key teachers.{i}.{key} must be finite, got {out[-1][key]}')
        if out[-1]['std'] is not None and any(v < MIN_STD for v in out[-1]['std']):
            raise UserError(f'config key teachers.{i}.std must be at least {MIN_STD}, got {out[-1]["std"]}')
        if out[-1]['img_size'] is not None and not 1 <= out[-1]['img_size'] <= MAX_IMG_SIZE:
            raise UserError(f'config key teachers.{i}.img_size must be from 1 to {MAX_IMG_SIZE}, '
                            f'got {out[-1]["img_size"]}')
        if out[-1]['interpolation'] not in (None, *RESIZE_INTERPOLATIONS):
            raise UserError(f'config key teachers.{i}.interpolation must be one of bilinear, bicubic, nearest, '
                            f'got {out[-1]["interpolation"]!r}')
    return out


def config_from_dict(values: Dict[str, Any]) -> TrainConfig:
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    hints = typing.get_type_hints(TrainConfig)
    checked = {}
    for key, value in values.items():
        if key not in known:
            raise UserError(f'unknown config key {key!r}{_closest(key, known)} ({command("stdistill", "train", "--help")} lists them)')
        checked[key] = _check_teachers(value) if key == 'teachers' else _check_type(key, value, hints[key])
        if key == 'model_kwargs':
            _check_kwargs(key, checked[key])
    cfg = TrainConfig(**checked)
    for f in dataclasses.fields(TrainConfig):
        choices = f.metadata.get('choices')
        if choices and getattr(cfg, f.name) not in choices:
            raise UserError(f'config key {f.name} must be one of {", ".join(choices)}, got {getattr(cfg, f.name)!r}')
    _check_method_keys(cfg)  # (a known method)
    _check_ranges(cfg)
    return cfg


def _set_dotted(values: Dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split('.')
    target: Any = values
    for i, part in enumerate(parts[:-1]):
        if isinstance(target, dict):
            if part not in target:
                target[part] = [] if part == 'teachers' else {}
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) <= len(target):
            if int(part) == len(target):  # teachers.N.model=... with N = current count adds one
                target.append({})
            target = target[int(part)]
            if isinstance(target, str):  # a teacher given by name only
                raise UserError(f'{".".join(parts[:i + 1])} is a bare name; write it as a mapping to set {dotted}')
        else:
            raise UserError(f'cannot set {dotted}: {".".join(parts[:i + 1])} does not exist')
    last = parts[-1]
    if isinstance(target, list):
        if not (last.isdigit() and int(last) <= len(target)):
            raise UserError(f'cannot set {dotted}: index {last} is past the end of the list')
        if int(last) == len(target):
            target.append(value)
        else:
            target[int(last)] = value
    elif isinstance(target, dict):
        target[last] = value
    else:
        raise UserError(f'cannot set {dotted}: {".".join(parts[:-1])} is not a list or mapping')


def parse_override(text: str) -> tuple:
    if '=' not in text:
        raise UserError(f'override {text!r} must be key=value')
    key, raw = text.split('=', 1)
    try:
        value = read_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults <- YAML file <- key=value overrides (a list of 'key=value' strings), checked.
    Raises UserError naming the key or file to fix."""
    if isinstance(overrides, str):  # load_config(None, 'epochs=1') would read 'e', 'p', ...
        raise UserError(f'overrides must be a list of key=value strings, e.g. [{overrides!r}], got a string')
    values: Dict[str, Any] = {}
    if path is not None:
        if not os.path.isfile(path):
            raise UserError(f'config file not found: {path}')
        try:
            with open(path) as f:
                loaded = read_yaml(f)
        except yaml.YAMLError as e:
            raise UserError(f'{path} is not valid YAML: {str(e).splitlines()[0]}') from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f'{path} must be a YAML mapping of config keys')
        values = loaded or {}
    return config_from_dict(apply_overrides(values, overrides))


def apply_overrides(values: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """A copy of the config values `values` with 'key=value' overrides applied (values parsed as
    YAML; a dotted key reaches into teachers and model_kwargs). Raises UserError naming the key."""
    if isinstance(overrides, str):
        raise UserError(f'overrides must be a list of key=value strings, e.g. [{overrides!r}], got a string')
    values = copy.deepcopy(values)
    for text in overrides:
        key, value = parse_override(text)
        top = key.split('.')[0]
        if '.' in key and top not in ('teachers', 'model_kwargs'):
            raise UserError(f'unknown config key {key!r}: only teachers and model_kwargs take dotted keys')
        if '.' in key and top not in values:
            values[top] = dataclasses.asdict(TrainConfig())[top]
        _set_dotted(values, key, value)
    return values


# What `train --resume RUN key=value` may change. The schedule is rebuilt for the new values and
# continues at the update the run stands at; the run-time keys take effect as they are. Any
# other key would change the model, the data or the optimizer the run was trained with.
SCHEDULE_KEYS = ('epochs', 'lr', 'min_lr', 'warmup_epochs', 'warmup_lr', 'sched')
# (data_dir and class_map may move: train checks that the data still has the run's classes)
RUNTIME_KEYS = ('workers', 'log_interval', 'progress', 'device', 'dist_timeout', 'bad_images', 'compile',
                'skip_nonfinite', 'amp', 'channels_last', 'clip_grad', 'clip_mode', 'data_dir', 'download', 'class_map',
                'teacher_outputs')


def first_difference(name: str, old: Any, new: Any) -> Tuple[str, Any, Any]:
    """(dotted key, old, new) of the first place two values differ, down through mappings and lists
    of mappings (teachers.0.use_ema); a list of plain values is named whole (scale), and lists of
    mappings of different lengths as 'KEY count' with the two lengths. `name` '' starts at the top
    (model, teachers.0.checkpoint)."""
    def key(k: Any) -> str:
        return f'{name}.{k}' if name else str(k)
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            if old.get(k) != new.get(k):
                return first_difference(key(k), old.get(k), new.get(k))
    if isinstance(old, list) and isinstance(new, list) and any(isinstance(v, dict) for v in old + new):
        if len(old) != len(new):
            return f'{name} count', len(old), len(new)
        for i, (a, b) in enumerate(zip(old, new)):
            if a != b:
                return first_difference(key(i), a, b)
    return name, old, new


def config_changes(saved: TrainConfig, cfg: TrainConfig) -> Dict[str, List[Any]]:
    """The keys `cfg` changes from a run's `saved` config, as {key: [old, new]} (output and a
    num_classes left null, to be read from the data, are not changes)."""
    old, new = dataclasses.asdict(saved), dataclasses.asdict(cfg)
    if new['num_classes'] is None:
        new['num_classes'] = old['num_classes']
    return {k: [old[k], new[k]] for k in new if k != 'output' and old[k] != new[k]}


def resume_changes(saved: TrainConfig, cfg: TrainConfig) -> Dict[str, List[Any]]:
    """config_changes(saved, cfg), or a UserError naming the first key that a resumed run may
    not change (not in SCHEDULE_KEYS or RUNTIME_KEYS)."""
    changed = config_changes(saved, cfg)

    def short(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + '...'
    for key, (before, after) in changed.items():
        if key not in SCHEDULE_KEYS + RUNTIME_KEYS:
            key, before, after = first_difference(key, before, after)
            raise UserError(f'--resume cannot change {key} ({short(before)} -> {short(after)}): the run was trained '
                            f'with {short(before)}; resume without it, or start a new run (output=...). A resumed run may '
                            f'change the schedule ({", ".join(SCHEDULE_KEYS)}) and run-time keys')
    return changed


def save_config(cfg: TrainConfig, path: str) -> None:
    write_atomic(path, lambda f: yaml.safe_dump(dataclasses.asdict(cfg), f, sort_keys=False))


# `stdistill train --help` groups the keys by topic, as timm's train.py groups its arguments: each
# group starts at its first key, in the order TrainConfig declares them
HELP_GROUPS = {'output': 'run', 'dataset': 'data', 'aa': 'augmentation', 'model': 'model',
               'method': 'method and teachers', 'epochs': 'optimisation',
               'device': 'engine: devices, precision, EMA, logging'}


def config_help() -> str:
    """The keys with defaults and help, grouped by topic, for `stdistill train --help`."""
    lines = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in HELP_GROUPS:
            lines.append(f'{"" if not lines else chr(10)}{HELP_GROUPS[f.name]}:')
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = f.metadata.get('choices')
        extra = f' [{"|".join(choices)}]' if choices else ''
        shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()
        lines.append(f'  {f.name:<21} {shown:<22} '
                     f'{f.metadata["help"]}{extra}')
    return '\n'.join(lines)


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """cfg with its data folder, teacher checkpoints, pretrained_cfg_overlay files and store as absolute
    paths: `--resume` from another working directory must read the same files, not others that happen to
    share a relative name."""
    def absolute(path: Optional[str]) -> Optional[str]:
        return os.path.abspath(path) if isinstance(path, str) and path else path

    def overlay(kwargs: Dict[str, Any]) -> Dict[str, Any]:
        given = kwargs.get('pretrained_cfg_overlay')
        if not isinstance(given, dict) or not given.get('file'):
            return kwargs
        return dict(kwargs, pretrained_cfg_overlay=dict(given, file=absolute(given['file'])))
    teachers = [dict(t, checkpoint=absolute(t['checkpoint']), kwargs=overlay(t['kwargs'])) for t in cfg.teachers]
    return dataclasses.replace(cfg, output=absolute(cfg.output), data_dir=absolute(cfg.data_dir),
                               class_map=absolute(cfg.class_map), teachers=teachers,
                               model_kwargs=overlay(cfg.model_kwargs), teacher_outputs=absolute(cfg.teacher_outputs))
