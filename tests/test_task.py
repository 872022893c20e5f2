"""STDTask is a timm TrainingTask, and its kd and deit methods compute timm's own distillation losses.

timm 1.0.31's `LogitDistillationTask` (Hinton's KD) and `TokenDistillationTask` (DeiT's token)
are what a timm user would pick instead of stdistill: on the same student, teacher and batch,
`method: kd` (soft) and `method: deit` (hard and soft) give their loss. The weights map as
task_loss_weight = 1 - alpha, distill_loss_weight = alpha (timm's complementary mode); with one
teacher the per-sample entropy weights are 1, so nothing else differs. (With several teachers
stdistill re-weights them per sample, which timm's single-teacher tasks have no counterpart for.)
"""
import pytest
import timm
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.task import DistillationTeacher, LogitDistillationTask, TokenDistillationTask, TrainingTask

from conftest import tiny_backbone, tiny_input, tiny_student
from stdistill.models.deit import DeiTTokenStudent
from stdistill.method.losses import DistillationLoss
from stdistill.method.mine import MIRegularizer
from stdistill.method.task import STDTask


def mixer():
    """A tiny Mixer with timm's ImageNet cfg (the teacher's too: timm's tasks then pass the batch as it is)."""
    model = tiny_backbone('mixer')
    model.pretrained_cfg = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    return model


def teacher():
    torch.manual_seed(3)
    return timm.create_model('resnet10t', num_classes=5).eval()


def batch():
    return tiny_input('mixer', batch=6), torch.tensor([0, 1, 2, 3, 4, 0])


def test_std_task_is_a_timm_training_task_for_every_method():
    for method, student in (('none', tiny_backbone('mixer')), ('kd', tiny_backbone('mixer')),
                            ('deit', DeiTTokenStudent(tiny_backbone('mixer'))), ('std', tiny_student('mixer'))):
        loss = DistillationLoss(nn.CrossEntropyLoss()) if method != 'none' else None
        task = STDTask(student, method, nn.CrossEntropyLoss(), [teacher()] if loss else [], loss)
        assert isinstance(task, TrainingTask)
        images, targets = batch()
        result = task.train()(images, targets)
        assert result['loss'].requires_grad and result['output'].shape == (6, 5), method
        assert 'loss_cls' in result and ('loss_dist' in result) == (method != 'none'), method


@pytest.mark.parametrize('alpha, tau', [(0.5, 1.0), (0.3, 4.0)])
def test_kd_gives_the_loss_of_timm_logit_distillation_task(alpha, tau):
    student, images_targets = mixer(), batch()
    ours = STDTask(student, 'kd', nn.CrossEntropyLoss(), [teacher()],
                   DistillationLoss(nn.CrossEntropyLoss(), alpha=alpha, tau=tau, distill='soft')).train()
    theirs = LogitDistillationTask(student, teacher(), criterion=nn.CrossEntropyLoss(), task_loss_weight=1 - alpha,
                                   temperature=tau, verbose=False).train()
    a, b = ours(*images_targets), theirs(*images_targets)
    assert torch.allclose(a['loss'], b['loss'], atol=1e-6), (a['loss'], b['loss'])
    assert torch.allclose(a['loss_cls'], b['task_loss'], atol=1e-6)
    assert torch.allclose(a['loss_dist'], b['kd_loss'], atol=1e-6)
    assert torch.equal(a['output'], b['output'].detach())


@pytest.mark.parametrize('distill, tau', [('hard', 1.0), ('soft', 1.0), ('soft', 3.0)])
def test_deit_gives_the_loss_of_timm_token_distillation_task(distill, tau):
    """The same DeiT-token student: timm's task switches it to (main, dist) pairs, which STDTask takes too."""
    student, images_targets = DeiTTokenStudent(mixer()), batch()
    ours = STDTask(student, 'deit', nn.CrossEntropyLoss(), [teacher()],
                   DistillationLoss(nn.CrossEntropyLoss(), alpha=0.5, tau=tau, distill=distill)).train()
    theirs = TokenDistillationTask(student, teacher(), criterion=nn.CrossEntropyLoss(),
                                   distill_type=distill, task_loss_weight=0.5, temperature=tau, verbose=False).train()
    a, b = ours(*images_targets), theirs(*images_targets)
    assert torch.allclose(a['loss'], b['loss'], atol=1e-6), (a['loss'], b['loss'])
    assert torch.allclose(a['loss_cls'], b['task_loss'], atol=1e-6)
    assert torch.allclose(a['loss_dist'], b['distill_loss'], atol=1e-6)


def test_a_timm_distillation_teacher_is_renormalised_as_timm_does():
    """A DistillationTeacher whose model expects another mean/std gets the student's batch
    renormalised by timm's own normalize_input; STD's tokens then distil its logits."""
    model = teacher()
    model.pretrained_cfg = dict(model.pretrained_cfg, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    student_mean, student_std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    task = STDTask(tiny_student('mixer'), 'std', nn.CrossEntropyLoss(), [DistillationTeacher(model)],
                   DistillationLoss(nn.CrossEntropyLoss()), student_mean=student_mean, student_std=student_std)
    images, _ = batch()
    (logits,) = task.teacher_logits(images)
    raw = images * student_std.view(1, -1, 1, 1) + student_mean.view(1, -1, 1, 1)
    with torch.no_grad():
        assert torch.allclose(logits, model((raw - 0.5) / 0.25), atol=1e-5)
    with pytest.raises(ValueError, match='student\'s mean and std'):
        STDTask(tiny_student('mixer'), 'std', nn.CrossEntropyLoss(), [DistillationTeacher(model)],
                DistillationLoss(nn.CrossEntropyLoss()))


def test_mine_is_task_state_and_the_ema_follows_the_student():
    student = tiny_student('mixer')
    task = STDTask(student, 'std', nn.CrossEntropyLoss(), [teacher()], DistillationLoss(nn.CrossEntropyLoss()),
                   MIRegularizer(student, hidden=8))
    state = task.get_task_state()
    assert set(state) == {'mi'} and state['mi'].keys() == task.mi.state_dict().keys()
    ema = task.setup_ema(decay=0.5)
    assert task.get_eval_model(ema=True) is ema.module and task.get_eval_model() is student
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    task.update_ema()
    name, value = next(iter(student.state_dict().items()))
    assert not torch.equal(ema.module.state_dict()[name], value)
    other = STDTask(tiny_student('mixer'), 'std', nn.CrossEntropyLoss(), [teacher()],
                    DistillationLoss(nn.CrossEntropyLoss()), MIRegularizer(tiny_student('mixer'), hidden=8))
    other.load_task_state(state)
    for a, b in zip(other.mi.state_dict().values(), task.mi.state_dict().values()):  # log_ma starts as nan
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_a_student_of_another_method_or_a_missing_loss_is_refused():
    loss = DistillationLoss(nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match='method kd trains a plain classifier .* the student given is an STDStudent'):
        STDTask(tiny_student('mixer'), 'kd', nn.CrossEntropyLoss(), [teacher()], loss)
    with pytest.raises(ValueError, match='method std trains an STDStudent .* the student given is a plain classifier'):
        STDTask(mixer(), 'std', nn.CrossEntropyLoss(), [teacher()], loss)
    with pytest.raises(ValueError, match='method deit trains a DeiTTokenStudent'):
        STDTask(mixer(), 'deit', nn.CrossEntropyLoss(), [teacher()], loss)
    with pytest.raises(ValueError, match='method kd needs a distill_loss'):
        STDTask(mixer(), 'kd', nn.CrossEntropyLoss(), [teacher()])


def test_the_loss_is_its_terms():
    student = tiny_student('mixer')
    task = STDTask(student, 'std', nn.CrossEntropyLoss(), [teacher()], DistillationLoss(nn.CrossEntropyLoss()),
                   MIRegularizer(student, hidden=8))
    result = task.train()(*batch())
    assert torch.allclose(result['loss'], 0.5 * result['loss_cls'] + 0.5 * result['loss_dist'] + result['loss_mine'])
