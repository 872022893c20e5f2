"""STD students: a vision-MLP backbone plus one token pair per teacher.

    model = timm.create_model('std_mixer_s16_224', num_teachers=2, token_positions=[8, -1])

In train mode the student returns an `STDOutput` (class logits, one distillation logit
vector per teacher, and the tokens for the MI regulariser). In eval mode it returns one
prediction, chosen by `inference_head`: 'avg' (class head averaged with the mean of the
distillation heads, the paper's default), 'cls' or 'dist'. With 'cls' the tokens are not
computed at all, so inference costs exactly the plain backbone.

The backbone is the plain timm model, held as `model.backbone`: its weights (a timm
checkpoint, `pretrained=True`) load unchanged.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Union

import timm
import torch
import torch.nn as nn
from timm.models import register_model

from .backbones import num_blocks, token_dims
from ..utils.errors import UserError
from .tokens import TokenPair

__all__ = ['STDStudent', 'STDOutput', 'STDFeatures', 'INFERENCE_HEADS', 'create_student', 'check_input_size',
           'resolve_positions', 'combine_heads', 'choose_head', 'HEAD_PREFERENCE', 'STD_MODELS', 'STUDENT_BASES',
           'std_model_name', 'create_token_student', 'token_student_cfg', 'token_model_cfg', 'register_wrapper',
           'STD_ARGS', 'BACKBONE_FAMILIES', 'TOKEN_STUDENTS', 'token_student_base']

INFERENCE_HEADS = ('avg', 'cls', 'dist')


class STDOutput(NamedTuple):
    """What a student returns in train mode; the losses and the MI regulariser read it."""
    logits: torch.Tensor
    dist_logits: List[torch.Tensor]
    spatial_tokens: List[Optional[torch.Tensor]]
    channel_tokens: List[Optional[torch.Tensor]]


class STDFeatures(NamedTuple):
    features: torch.Tensor          # the backbone's final (normed) features, (B, L, C)
    token_inputs: List[torch.Tensor]  # Z(l) at each pair's attachment block, (B, P, N)


def combine_heads(out: STDOutput, head: str = 'avg') -> torch.Tensor:
    """One prediction from a train-mode output: 'avg' (class head averaged with the mean of the
    distillation heads), 'cls' or 'dist' (mean of the distillation heads)."""
    if head not in INFERENCE_HEADS:
        raise UserError(f'inference head must be one of {INFERENCE_HEADS}, got {head!r}')
    if head == 'cls':
        return out.logits
    dist = torch.stack(out.dist_logits).mean(0)
    return dist if head == 'dist' else (out.logits + dist) / 2


# ties go to the cheaper head: the class head alone costs only the plain backbone
HEAD_PREFERENCE = ('cls', 'avg', 'dist')


def choose_head(top1: Dict[str, float]) -> str:
    """inference_head auto: the head of highest top-1 (percent, by head name: cls, avg, dist) on
    the holdout images; on a tie the cheaper (HEAD_PREFERENCE). Never given the split it reports."""
    missing = [h for h in INFERENCE_HEADS if h not in top1]
    if missing:
        raise ValueError(f'choose_head needs the top-1 of every head, missing {missing}')
    return max(HEAD_PREFERENCE, key=lambda h: (top1[h], -HEAD_PREFERENCE.index(h)))


def resolve_positions(positions: Sequence[int], depth: int) -> List[int]:
    """Block indices (negative allowed) -> 0..depth-1, with a UserError for any out of range."""
    out = []
    for p in positions:
        if not isinstance(p, int) or not -depth <= p < depth:
            raise UserError(f'token position {p!r} is outside the backbone: it has {depth} blocks, '
                            f'so positions must be integers in [{-depth}, {depth - 1}]')
        out.append(p % depth)
    return out


def check_input_size(x: torch.Tensor, in_chans: int, img_size: Sequence[int], model_name: str) -> None:
    """The token layers are sized for one input resolution: refuse any other with a clear message."""
    if x.ndim != 4 or x.shape[1] != in_chans or tuple(x.shape[-2:]) != tuple(img_size):
        got = 'x'.join(str(s) for s in x.shape)
        want = f'Bx{in_chans}x{img_size[0]}x{img_size[1]}'
        raise UserError(f'{model_name} expects input {want}, got {got}; create the model with '
                        f'img_size={tuple(x.shape[-2:])} (and in_chans) to train at that size')


def _input_size(backbone: nn.Module) -> tuple:
    if hasattr(backbone, 'stem'):
        return tuple(backbone.stem.img_size)
    return tuple(backbone.img_size)


class STDStudent(nn.Module):
    """Backbone + token pairs. See the module docstring for what forward returns."""

    def __init__(
            self,
            backbone: nn.Module,
            num_teachers: int = 1,
            token_positions: Optional[Sequence[int]] = None,
            tokens: str = 'both',
            token_depth: int = 1,
            inference_head: str = 'avg',
    ) -> None:
        super().__init__()
        if not isinstance(num_teachers, int) or num_teachers < 1:
            raise UserError(f'num_teachers must be an integer >= 1, got {num_teachers!r}')
        if inference_head not in INFERENCE_HEADS:
            raise UserError(f'inference_head must be one of {INFERENCE_HEADS}, got {inference_head!r}')
        depth = num_blocks(backbone)
        if token_positions is None:
            token_positions = [-1] * num_teachers
        token_positions = list(token_positions)
        if len(token_positions) != num_teachers:
            raise UserError(f'token_positions has {len(token_positions)} entries but num_teachers is '
                            f'{num_teachers}: give one block index per teacher')
        self.backbone = backbone
        self.num_classes = backbone.num_classes
        self.num_teachers = num_teachers
        self.token_positions = resolve_positions(token_positions, depth)
        self.inference_head = inference_head
        self.img_size = _input_size(backbone)
        self.in_chans = backbone.in_chans
        self.num_features = self.head_hidden_size = backbone.num_features
        self.pretrained_cfg = token_model_cfg(backbone, std_model_name)
        self.token_pairs = nn.ModuleList(
            TokenPair(token_dims(backbone, pos), self.num_classes, depth=token_depth, tokens=tokens)
            for pos in self.token_positions)

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    def get_classifier(self) -> nn.Module:
        return self.backbone.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New class head and new distillation heads, e.g. to fine-tune on another label set."""
        self.backbone.reset_classifier(num_classes, global_pool)
        self.num_classes = num_classes
        for pair in self.token_pairs:
            pair.reset_head(num_classes)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """The learned initial tokens, like DeiT's distillation token, take no weight decay."""
        names = {n for n, _ in self.named_parameters() if n.endswith(('.spatial_token', '.channel_token'))}
        inner = getattr(self.backbone, 'no_weight_decay', None)
        return names | {f'backbone.{n}' for n in (inner() if inner else ())}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def forward_features(self, x: torch.Tensor, with_tokens: bool = True) -> STDFeatures:
        check_input_size(x, self.in_chans, self.img_size, type(self).__name__)
        if not with_tokens:
            return STDFeatures(self.backbone.forward_features(x), [])
        indices = sorted(set(self.token_positions))
        features, intermediates = self.backbone.forward_intermediates(x, indices=indices, output_fmt='NLC')
        by_block = dict(zip(indices, intermediates))
        return STDFeatures(features, [by_block[p] for p in self.token_positions])

    def forward_head(self, feats: STDFeatures, pre_logits: bool = False) -> Union[STDOutput, torch.Tensor]:
        logits = self.backbone.forward_head(feats.features, pre_logits=pre_logits)
        if pre_logits:
            return logits
        pairs = [pair(z) for pair, z in zip(self.token_pairs, feats.token_inputs)]
        return STDOutput(logits, [p.logits for p in pairs], [p.spatial for p in pairs], [p.channel for p in pairs])

    def forward(self, x: torch.Tensor) -> Union[STDOutput, torch.Tensor]:
        if self.training:
            return self.forward_head(self.forward_features(x))
        if self.inference_head == 'cls':
            return self.backbone.forward_head(self.forward_features(x, with_tokens=False).features)
        return combine_heads(self.forward_head(self.forward_features(x)), self.inference_head)


# --- construction: the token students as timm models ----------------------------------------

# The paper's students by the paper's names; every supported backbone also has std_<its name>.
STUDENT_BASES = {
    'std_mixer_s16_224': 'mixer_s16_224',
    'std_mixer_b16_224': 'mixer_b16_224',
    'std_resmlp_s24_224': 'resmlp_24_224',
    'std_resmlp_b24_224': 'resmlp_b24_224',
    'std_cyclemlp_b1': 'cyclemlp_b1',
    'std_cyclemlp_b2': 'cyclemlp_b2',
    'std_gmlp_s16_224': 'gmlp_s16_224',
}
# the backbones a token pair can read (backbones.py): timm's vision MLPs, CycleMLP and the small ones
BACKBONE_FAMILIES = ('mixer_*', 'resmlp_*', 'gmlp_*', 'cyclemlp_*')
STD_ARGS = ('num_teachers', 'token_positions', 'tokens', 'token_depth', 'inference_head')
_WEIGHT_SOURCES = ('file', 'url', 'hf_hub_id', 'state_dict')


def token_student_cfg(name: str, base: str) -> dict:
    """The pretrained cfg of the token student `name` on `base`: the base's preprocessing (input
    size, mean/std, crop, interpolation), its layer names under `backbone.`, and no weights of its
    own (a file, an export folder or a hub id is given when the model is created)."""
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(base).to_dict()
    cfg.update({key: None for key in _WEIGHT_SOURCES}, architecture=name, tag=None, custom_load=False,
               first_conv=f'backbone.{cfg["first_conv"]}' if cfg.get('first_conv') else None,
               classifier=f'backbone.{cfg["classifier"]}' if cfg.get('classifier') else None)
    return cfg


def token_model_cfg(backbone: nn.Module, name_of: Callable[[str], str]) -> dict:
    """A token student's pretrained cfg from its backbone's: the preprocessing and weights source
    as they are, the architecture its registered name (name_of(base)), layer names under `backbone.`."""
    cfg = dict(getattr(backbone, 'pretrained_cfg', {}) or {})
    cfg.pop('tag', None)  # the base model's weights tag names none of the student's
    # the size the token layers are built for (a Mixer-S/16 at 64 px is not the cfg's 224)
    cfg['input_size'] = (backbone.in_chans, *_input_size(backbone))
    base = cfg.get('architecture')
    if base:
        cfg['architecture'] = name_of(base)
    for key in ('first_conv', 'classifier'):
        if isinstance(cfg.get(key), str):
            cfg[key] = f'backbone.{cfg[key]}'
    return cfg


def _given_weights(pretrained_cfg: Any, overlay: Optional[dict]) -> bool:
    """Whether create_model was given weights of the whole student: a local-dir or hub export's
    cfg, or an overlay naming a file, url or hub id."""
    cfg = pretrained_cfg.to_dict() if hasattr(pretrained_cfg, 'to_dict') else pretrained_cfg
    return any(isinstance(c, dict) and any(c.get(k) for k in _WEIGHT_SOURCES) for c in (cfg, overlay))


def _student_weights(state: dict, model: nn.Module) -> dict:
    """timm's pretrained filter for a token student: a whole student's state dict as it is; a
    backbone's (timm's release of the base model, say) under `backbone.`, the token layers keeping
    their initialisation."""
    if any(k.startswith('backbone.') for k in state):
        return state
    state = {f'backbone.{k}': v for k, v in state.items()}
    state.update({k: v for k, v in model.state_dict().items() if not k.startswith('backbone.')})
    return state


def create_token_student(name: str, base: str, wrap: Callable[..., nn.Module], pretrained: bool,
                         pretrained_cfg: Any = None, pretrained_cfg_overlay: Optional[dict] = None,
                         cache_dir: Any = None, token_args: Optional[dict] = None, **kwargs: Any) -> nn.Module:
    """A registered token student: wrap(backbone, **token_args) around timm's `base` model.

    pretrained=True with a cfg that names weights (an export through `local-dir:` or `hf-hub:`,
    or `pretrained_cfg_overlay=dict(file=...)`) loads the whole student from them, through timm's
    load_pretrained (a backbone-only file loads into the backbone). Without one, the backbone
    takes timm's released weights for `base`, and the tokens start from their initialisation.
    """
    from timm.models import load_pretrained, load_state_dict, resolve_pretrained_cfg
    whole = pretrained and _given_weights(pretrained_cfg, pretrained_cfg_overlay)
    cfg = resolve_pretrained_cfg(name, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay)
    cfg = cfg.to_dict()
    overlay = pretrained_cfg_overlay if isinstance(pretrained_cfg_overlay, dict) else {}
    if whole and overlay.get('file') and 'num_classes' not in overlay:
        # a file alone: its class count from its classifier (an export's, or a backbone's), else timm
        # would take the cfg's count and start the heads again from random
        state = load_state_dict(overlay['file'])
        head = state.get(f'{cfg["classifier"]}.weight', state.get(f'{cfg["classifier"].split(".", 1)[-1]}.weight'))
        if head is not None:
            cfg['num_classes'] = int(head.shape[0])
    if whole:  # the export's class count and channels, unless the call says otherwise
        kwargs.setdefault('num_classes', cfg.get('num_classes', 1000))
        kwargs.setdefault('in_chans', (cfg.get('input_size') or (3,))[0])
    backbone = timm.create_model(base, pretrained=pretrained and not whole, cache_dir=cache_dir, **kwargs)
    model = wrap(backbone, **(token_args or {}))
    if not whole and pretrained:  # the backbone's own cfg: where its weights came from
        cfg.update({k: backbone.pretrained_cfg.get(k) for k in _WEIGHT_SOURCES})
    cfg['input_size'] = (model.in_chans, *model.img_size)  # the size built for, not the base cfg's
    model.pretrained_cfg = cfg
    if whole:  # every head is a classifier: another class count starts them all again (fine-tuning)
        heads = [n[:-len('.weight')] for n, _ in model.named_parameters()
                 if n.startswith('token_pairs.') and n.endswith('.head.weight') or n == 'head_dist.weight']
        load_pretrained(model, pretrained_cfg=dict(cfg, classifier=(cfg['classifier'], *heads)),
                        num_classes=model.num_classes, in_chans=model.in_chans, filter_fn=_student_weights,
                        cache_dir=cache_dir)
    return model


def _create_std(name: str, pretrained: bool, **kwargs: Any) -> STDStudent:
    token_args = {k: kwargs.pop(k) for k in STD_ARGS if k in kwargs}
    return create_token_student(name, STD_MODELS[name], STDStudent, pretrained, token_args=token_args, **kwargs)


def register_wrapper(name: str, create: Callable[..., nn.Module], doc: str, module: str,
                     cfg: Optional[dict] = None) -> Callable:
    """Register `name` with timm as a model function calling create(name, pretrained, **kwargs),
    with `cfg` as its default pretrained cfg (timm reads it from the module's default_cfgs)."""
    import sys

    def fn(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create(name, pretrained, **kwargs)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__, fn.__module__ = doc, module
    if cfg is not None:
        mod = sys.modules[module]
        if not hasattr(mod, 'default_cfgs'):
            mod.default_cfgs = {}
        mod.default_cfgs[name] = cfg
    return register_model(fn)


def std_model_name(base: str) -> str:
    """The registered name of the STD student on timm's `base` model: std_<base>."""
    return f'std_{base}'


# every token student this package registers (std_*, and deit_* from deit.py), by name: its base model
TOKEN_STUDENTS: Dict[str, str] = {}


def token_student_base(name: str) -> Optional[str]:
    """The base model of a registered token student name (std_*, deit_*; a tag after '.' ignored),
    None for any other model."""
    return TOKEN_STUDENTS.get(name.split('.')[0])


STD_MODELS = {**{std_model_name(b): b for b in timm.list_models(list(BACKBONE_FAMILIES))}, **STUDENT_BASES}
TOKEN_STUDENTS.update(STD_MODELS)
default_cfgs: dict = {}
for _name, _base in STD_MODELS.items():
    globals()[_name] = register_wrapper(
        _name, _create_std, f'STD student on timm `{_base}`: takes num_teachers, token_positions, tokens, '
        f'token_depth, inference_head (avg, cls, dist), and any argument of the backbone.', __name__,
        token_student_cfg(_name, _base))


def check_model_name(name: str) -> None:
    """UserError naming the closest registered models when `name` is not one."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        raise UserError(f'unknown model {name!r}{hint}')


def create_student(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """`timm.create_model` with a UserError, not a RuntimeError, for an unknown name."""
    check_model_name(name)
    return timm.create_model(name, pretrained=pretrained, **kwargs)
