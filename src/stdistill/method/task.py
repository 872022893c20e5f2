"""STD as a timm training task: `STDTask`, a `timm.task.TrainingTask` for methods none, kd, deit, std.

timm 1.0.31 trains through tasks: `result = task(input, target)` returns a dict with `loss`,
`output` (the logits metrics are computed on) and the logged terms, and the loop calls
`result['loss'].backward()`. `STDTask` is that task for every stdistill method:

    task = STDTask(student, 'std', nn.CrossEntropyLoss(), teachers, DistillationLoss(alpha=0.5), mi)
    task.prepare_distributed(device_ids=[local_rank])     # under torchrun: DDP around student + MINE
    result = task(images, targets)                        # {'loss', 'output', 'loss_cls', 'loss_dist', ...}
    result['loss'].backward()

What DDP wraps (`trainable_module`, an `STDTrainable`) is the student and MINE's statistics
networks, so one backward pass reaches both; the frozen teachers are held outside the module
tree, so DDP has nothing to synchronise for them and no state dict or optimizer sees them. A
teacher is a stdistill `FrozenTeacher` (it adapts the student's batch to its own input), the
`LabelsTeacher`, a `timm.task.DistillationTeacher`, or any module mapping the student's batch
to logits (`adapt_teacher`). The teachers' outputs may also be given to the call (read from a
teacher-output store).

Precision: under the caller's autocast (bf16) the student and teachers run in low precision;
teacher logits, every loss and MINE are computed in fp32.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn as nn
from timm.task import DistillationTeacher, TrainingTask
from timm.utils import ModelEmaV3, unwrap_model

from ..utils.errors import UserError
from .losses import DistillationLoss, LabelsTeacher, TeacherTargets
from ..methods import METHODS, method_of
from .mine import MIRegularizer
from ..models.students import STDOutput, combine_heads
from .teacher_input import to_float  # also stdistill.method.task.to_float, as before it moved there
from .teachers import FrozenTeacher

__all__ = ['STDTask', 'STDTrainable', 'adapt_teacher', 'run_teachers', 'to_float', 'METHODS_WITH_TEACHERS']

METHODS_WITH_TEACHERS = tuple(name for name, m in METHODS.items() if m.needs_teachers)


def run_teachers(teachers: List[nn.Module], images: torch.Tensor, targets: Optional[torch.Tensor] = None
                 ) -> List[Union[torch.Tensor, TeacherTargets]]:
    """What the teachers say of a batch, as a training step sees it: each network teacher's logits
    for `images` (B, C, H, W, the student's input; the teacher adapts it to its own) and a labels
    teacher's TeacherTargets from `targets`. Without gradients, under the caller's autocast. The
    one place teachers run: STDTask's step and `stdistill teacher-pass`, whose store replays it."""
    with torch.no_grad():
        return [t(targets) if isinstance(t, LabelsTeacher) else t(images) for t in teachers]


class _TimmTeacher(nn.Module):
    """A timm `DistillationTeacher` as a stdistill teacher: the student's batch renormalised to the
    teacher's mean/std (timm's own normalize_input), its logits returned."""

    def __init__(self, teacher: DistillationTeacher, student_mean: torch.Tensor, student_std: torch.Tensor) -> None:
        super().__init__()
        self.teacher = teacher.eval()
        self.name = type(unwrap_model(teacher.model)).__name__
        self.register_buffer('student_mean', student_mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer('student_std', student_std.view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> '_TimmTeacher':
        return super().train(False)  # frozen: BatchNorm statistics and dropout stay in eval mode

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.teacher.normalize_input(images, self.student_mean.to(images), self.student_std.to(images))
        return self.teacher(x)


def adapt_teacher(teacher: Union[FrozenTeacher, LabelsTeacher, DistillationTeacher, nn.Module],
                  student_mean: Optional[torch.Tensor] = None,
                  student_std: Optional[torch.Tensor] = None) -> Union[FrozenTeacher, LabelsTeacher, nn.Module]:
    """A teacher as STDTask runs it. stdistill's own teachers pass as they are (they carry their
    input contract). A timm `DistillationTeacher` is given the student's normalisation (C,)
    (student_mean/std, required) and renormalises the batch itself. Any other module must take
    the student's batch as it is (B, C, H, W) and return logits (B, classes); it is frozen
    (eval mode, no gradient)."""
    if isinstance(teacher, (FrozenTeacher, LabelsTeacher)):
        return teacher
    if isinstance(teacher, DistillationTeacher):
        if student_mean is None or student_std is None:
            raise UserError('a timm DistillationTeacher needs the student\'s mean and std (student_mean, '
                            'student_std) to renormalise the batch for it')
        return _TimmTeacher(teacher, torch.as_tensor(student_mean, dtype=torch.float32),
                            torch.as_tensor(student_std, dtype=torch.float32))
    if isinstance(teacher, nn.Module):
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher
    raise TypeError(f'a teacher is a module, got {type(teacher).__name__}')


class STDTrainable(nn.Module):
    """The trainable part of the task, what DDP wraps: the student and MINE, and the losses.

    forward(images, targets, teacher_outputs) -> (loss, detached terms, student output): the
    teacher outputs are given (the task computes them outside DDP, or reads them from a store)."""

    def __init__(self, student: nn.Module, method: str, base_criterion: nn.Module,
                 distill_loss: Optional[DistillationLoss] = None, mi: Optional[MIRegularizer] = None) -> None:
        super().__init__()
        self.student, self.method, self.base_criterion = student, method, base_criterion
        self.distill_loss, self.mi = distill_loss, mi

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        inner = getattr(self.student, 'no_weight_decay', None)
        return {f'student.{n}' for n in (inner() if inner else ())}

    def forward(self, images: torch.Tensor, targets: torch.Tensor,
                teacher_outputs: Optional[List[Union[torch.Tensor, TeacherTargets]]] = None):
        out = self.student(images)
        if isinstance(out, tuple) and not isinstance(out, STDOutput):  # a timm-style distilled (main, dist) pair
            out = STDOutput(out[0], [out[1]], [None], [None])
        with torch.autocast(images.device.type, enabled=False):  # losses and MINE in fp32
            out = to_float(out)
            if not method_of(self.method).needs_teachers:
                loss = self.base_criterion(out, targets)
                return loss, {'loss_cls': loss.detach()}, out
            teacher_outputs = to_float(teacher_outputs)
            if method_of(self.method).distils_class_head:  # Hinton's KD: every teacher supervises the class head itself
                count = len(teacher_outputs)
                out = STDOutput(out, [out] * count, [None] * count, [None] * count)
            loss, terms = self.distill_loss(out, targets, teacher_outputs)
            if self.mi is not None:
                mi = self.mi(out.spatial_tokens, out.channel_tokens)
                loss = loss + mi.loss
                # the MINE objective (its statistics networks' bound, and lambda * I for the tokens)
                terms['loss_mine'], terms['mi_estimate'] = mi.loss.detach(), mi.estimate
        return loss, terms, out


def _check_student(student: nn.Module, method: str) -> None:
    """Each method trains its own kind of student: std an STDStudent (token pairs), deit a
    DeiTTokenStudent (a distillation head), none and kd a plain classifier."""
    tokens, head = hasattr(student, 'token_pairs'), hasattr(student, 'head_dist')
    kind = 'an STDStudent (stdistill.models.students)' if tokens else 'a DeiTTokenStudent (stdistill.models.deit)' if head \
        else 'a plain classifier'
    kind_needed = method_of(method).student
    if not {'std': tokens, 'deit': head, 'none': not (tokens or head)}[kind_needed]:
        want = {'std': 'an STDStudent (token pairs)', 'deit': 'a DeiTTokenStudent (a distillation head)',
                'none': 'a plain classifier (its class head is what kd and none train)'}[kind_needed]
        raise UserError(f'method {method} trains {want}; the student given is {kind}')


class STDTask(TrainingTask):
    """loss = base or distillation loss (+ lambda * MINE), for methods none | kd | deit | std, as a
    timm `TrainingTask` (Li et al., ICML 2022, "Spatial-Channel Token Distillation for Vision MLPs").

    task(images (B, C, H, W), targets (B,) or mixed (B, classes)[, teacher_outputs]) returns
    {'loss': scalar, 'output': (B, classes) logits of the student's inference head, 'loss_cls',
    'loss_dist', 'loss_dist_<j>', 'teacher_weight_<j>', 'loss_mine', 'mi_estimate' (as the method
    has them); output is detached. loss = (1 - alpha) * loss_cls + alpha * loss_dist + loss_mine.
    student_mean/std (C,): the student's normalisation, which a timm DistillationTeacher
    renormalises from (default: the student's pretrained_cfg, as timm's tasks read it).
    teacher_outputs: each teacher's logits (B, classes) or TeacherTargets (from a store); None
    runs the teachers. Raises UserError for a method with teachers but no distillation loss.
    """

    def __init__(self, student: nn.Module, method: str, base_criterion: nn.Module,
                 teachers: Optional[List[Union[FrozenTeacher, LabelsTeacher, DistillationTeacher, nn.Module]]] = None,
                 distill_loss: Optional[DistillationLoss] = None, mi: Optional[MIRegularizer] = None,
                 student_mean: Optional[torch.Tensor] = None, student_std: Optional[torch.Tensor] = None,
                 device: Optional[torch.device] = None, verbose: bool = False) -> None:
        super().__init__(device=device, verbose=verbose)
        if method not in METHODS:
            raise UserError(f'method must be one of {", ".join(METHODS)}, got {method!r}')
        if method_of(method).needs_teachers and distill_loss is None:
            raise UserError(f'method {method} needs a distill_loss (stdistill.method.losses.DistillationLoss)')
        _check_student(student, method)
        if student_mean is None or student_std is None:  # as timm's tasks: the student's own cfg
            cfg = getattr(student, 'pretrained_cfg', None) or {}
            student_mean, student_std = cfg.get('mean'), cfg.get('std')
        self.method = method
        self.trainable_module = STDTrainable(student, method, base_criterion, distill_loss, mi)
        # a plain list: not submodules (see the module's docstring)
        self.teachers = [adapt_teacher(t, student_mean, student_std) for t in teachers or []]

    # the parts, through any DDP wrapper
    @property
    def core(self) -> STDTrainable:
        return unwrap_model(self.trainable_module)

    @property
    def student(self) -> nn.Module:
        return self.core.student

    @property
    def mi(self) -> Optional[MIRegularizer]:
        return self.core.mi

    @property
    def distill_loss(self) -> Optional[DistillationLoss]:
        return self.core.distill_loss

    @property
    def base_criterion(self) -> nn.Module:
        return self.core.base_criterion

    def teacher_logits(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None
                       ) -> List[Union[torch.Tensor, TeacherTargets]]:
        """Each teacher's output for the student's batch `images`: fp32 logits (B, num_classes),
        each teacher adapting the batch to its own input under the caller's autocast; a labels
        teacher's TeacherTargets from `targets` (the batch's, after mixup). Raises UserError when
        the task has no teachers (a run that reads their outputs from a store)."""
        if not self.teachers:
            raise UserError('this task has no teachers (a run from a teacher-output store): give their outputs '
                            'for the batch')
        return run_teachers(self.teachers, images, targets)

    def forward(self, input: torch.Tensor, target: torch.Tensor,
                teacher_outputs: Optional[List[Union[torch.Tensor, TeacherTargets]]] = None
                ) -> Dict[str, torch.Tensor]:
        if method_of(self.method).needs_teachers and teacher_outputs is None:
            teacher_outputs = self.teacher_logits(input, target)
        loss, terms, out = self.trainable_module(input, target, teacher_outputs)
        head = getattr(self.student, 'inference_head', 'cls')
        output = combine_heads(out, head) if isinstance(out, STDOutput) and not method_of(self.method).distils_class_head else \
            (out.logits if isinstance(out, STDOutput) else out)
        return {'loss': loss, 'output': output.detach(), **terms}

    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs) -> 'STDTask':
        """DDP around the student and MINE (trainable_module); the teachers stay outside."""
        from torch.nn.parallel import DistributedDataParallel
        self.trainable_module = DistributedDataParallel(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs) -> nn.Module:
        """torch.compile the student (in place); it is also the eval model."""
        self.student.compile(backend=backend, mode=mode, **compile_kwargs)
        return self.student

    def get_eval_model(self, module: Optional[nn.Module] = None, ema: bool = False) -> Optional[nn.Module]:
        """The student (or its EMA, after setup_ema): what validation and checkpoints take."""
        if module is not None:
            return module
        if ema:
            return self.trainable_module_ema.module if self.has_ema() else None
        return self.student

    def setup_ema(self, decay: float = 0.9999, use_warmup: bool = False, device: Optional[torch.device] = None,
                  **kwargs) -> ModelEmaV3:
        """timm's ModelEmaV3 of the student's weights (not MINE's: they are not the model)."""
        self.trainable_module_ema = ModelEmaV3(self.student, decay=decay, use_warmup=use_warmup, device=device,
                                               **kwargs)
        return self.trainable_module_ema

    def update_ema(self, step: Optional[int] = None) -> None:
        if self.has_ema():
            self.trainable_module_ema.update(self.student, step=step)

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, Any]:
        """What a resume needs beside the student's weights: MINE's statistics networks and moving
        average (an EMA checkpoint has none of its own)."""
        return {'mi': self.mi.state_dict()} if self.mi is not None and not ema else {}

    def load_task_state(self, state: Optional[Dict[str, Any]], strict: bool = True,
                        module: Optional[nn.Module] = None, ema: bool = False) -> None:
        if state and self.mi is not None and not ema:
            self.mi.load_state_dict(state['mi'], strict=strict)
