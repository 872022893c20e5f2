"""One precision policy on every device: `amp: true` is bf16 autocast (here on the CPU, the GPU's
code path), `amp: false` is fp32 everywhere; teacher logits, losses, MINE and evaluated heads
are fp32 either way, and every top-1 comes from one ranking."""
import json
import os

import numpy as np
import pytest
import torch

from stdistill.config import load_config
from stdistill.data.fashion_mnist import FashionMNIST
from stdistill.method.losses import DistillationLoss
from stdistill.method.mine import MINE
from stdistill.method.teachers import FrozenTeacher, create_teacher
from stdistill.training.builders import student_contract
from stdistill.training.train import train
from test_train import TINY

TWO_TEACHERS = 'teachers=[{model: resnet10t, pretrained: false, token_position: 0}, {model: resnet18, pretrained: false}]'
METHODS = {
    'none': ['method=none', 'teachers=[]'],
    'kd': ['method=kd', 'teachers=[{model: resnet10t, pretrained: false}]'],
    'deit': ['method=deit', 'teachers=[{model: resnet10t, pretrained: false}]'],
    'std': ['method=std', 'mine=true', TWO_TEACHERS],
}


@pytest.fixture
def dtypes(monkeypatch):
    """Record the dtypes that reach the losses, MINE and the teachers during a run."""
    seen = {'teacher_logits': set(), 'loss_inputs': set(), 'mine_inputs': set(), 'mine_autocast': set(),
            'teacher_weights': set(), 'student_head': set()}
    loss_forward, mine_forward, teacher_forward = DistillationLoss.forward, MINE.forward, FrozenTeacher.forward

    def loss(self, outputs, targets, teacher_logits):
        seen['teacher_logits'] |= {t.dtype for t in teacher_logits}
        seen['loss_inputs'] |= {outputs.logits.dtype, *(d.dtype for d in outputs.dist_logits)}
        return loss_forward(self, outputs, targets, teacher_logits)

    def mine(self, x, y, generator=None):
        out = mine_forward(self, x, y, generator)
        seen['mine_inputs'].add(self.statistics(x.float(), y.float()).dtype)
        return out

    def teacher(self, x):
        seen['teacher_weights'] |= {t.dtype for t in self.model.state_dict().values() if t.is_floating_point()}
        out = teacher_forward(self, x)
        seen['teacher_logits'].add(out.dtype)
        return out

    def statistics_hook(module, inputs, output):
        seen['mine_autocast'].add((torch.is_autocast_enabled('cpu'), output.dtype))

    monkeypatch.setattr(DistillationLoss, 'forward', loss)
    monkeypatch.setattr(MINE, 'forward', mine)
    monkeypatch.setattr(FrozenTeacher, 'forward', teacher)
    from stdistill.method.mine import StatisticsNetwork
    original_init = StatisticsNetwork.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.register_forward_hook(statistics_hook)

    monkeypatch.setattr(StatisticsNetwork, '__init__', init)
    return seen


def _student_head_dtype(seen):
    """A forward hook on the student's class head: bf16 output under autocast, fp32 without."""
    import stdistill.training.train as train_module
    build = train_module.build_student

    def wrapped(*args, **kwargs):
        student = build(*args, **kwargs)
        head = student.get_classifier() if hasattr(student, 'get_classifier') else student.backbone.head
        head.register_forward_hook(lambda m, i, o: seen['student_head'].add((torch.is_grad_enabled(), o.dtype)))
        return student
    return wrapped


@pytest.mark.parametrize('method', sorted(METHODS))
def test_amp_on_the_cpu_trains_every_method_with_fp32_losses(tmp_path, method, dtypes, monkeypatch):
    import stdistill.training.builders as builders  # where build_objective finds build_student
    monkeypatch.setattr(builders, 'build_student', _student_head_dtype(dtypes))
    out = tmp_path / method
    train(load_config(None, [*TINY, *METHODS[method], 'amp=true', f'output={out}']))
    with open(out / 'log.jsonl') as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 2 and all(np.isfinite(r['loss']) for r in rows)
    # training ran under bf16 autocast: the student's class head gave bf16 while gradients were on;
    # evaluation's heads run in fp32 (no gradients)
    assert (True, torch.bfloat16) in dtypes['student_head']
    assert {o for g, o in dtypes['student_head'] if not g} == {torch.float32}
    if method != 'none':
        assert dtypes['teacher_logits'] == {torch.float32} and dtypes['loss_inputs'] == {torch.float32}
        assert dtypes['teacher_weights'] == {torch.float32}  # weights and BatchNorm statistics stay fp32
    if method in ('deit', 'std'):  # one ranking: the logged top-1 is exactly the inference head's
        assert all(r['val_top1'] == r['val_top1_avg'] for r in rows)
    if method == 'std':
        assert len([k for k in rows[0] if k.startswith('loss_dist_')]) == 2 and 'mi_estimate' in rows[0]
        assert dtypes['mine_inputs'] == {torch.float32}
        assert dtypes['mine_autocast'] == {(False, torch.float32)}  # psi runs outside autocast


def test_amp_false_is_fp32_everywhere(tmp_path, dtypes, monkeypatch):
    import stdistill.training.builders as builders  # where build_objective finds build_student
    monkeypatch.setattr(builders, 'build_student', _student_head_dtype(dtypes))
    train(load_config(None, [*TINY, *METHODS['std'], 'amp=false', 'epochs=1', f'output={tmp_path / "run"}']))
    assert {o for _, o in dtypes['student_head']} == {torch.float32}
    assert dtypes['teacher_logits'] == {torch.float32} and dtypes['teacher_weights'] == {torch.float32}
    assert dtypes['mine_autocast'] == {(False, torch.float32)}


@pytest.fixture(scope='module')
def trained_teacher():
    """The study's teacher, committed with its record: the quickstart's teacher recipe (resnet18,
    one channel, 28x28) trained 20 epochs on Fashion-MNIST, 93.06 top-1 on the test split
    (benchmarks/results/fashion_mnist/teachers/cnn.json)."""
    cfg = load_config('recipes/fashion_mnist/teacher.yaml', ['workers=0', 'progress=false'])
    return cfg, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks', 'results',
                             'fashion_mnist', 'teachers', 'cnn.safetensors')


def test_teacher_argmax_under_bf16_agrees_with_fp32(trained_teacher):
    cfg, path = trained_teacher
    teacher = create_teacher('resnet18', 10, checkpoint=path).adapt_to(student_contract(cfg))
    data = FashionMNIST(split='test')
    mean, std = student_contract(cfg).mean[0], student_contract(cfg).std[0]
    x = (torch.from_numpy(data.images[:1000].astype(np.float32) / 255)[:, None] - mean) / std
    fp32 = teacher(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        bf16 = teacher(x)
    assert fp32.dtype == bf16.dtype == torch.float32
    agreement = (fp32.argmax(1) == bf16.argmax(1)).float().mean().item()
    print(f'argmax agreement bf16 autocast vs fp32: {agreement:.3f} of 1000 test images')
    assert agreement >= 0.995
    assert (fp32.argmax(1) == torch.from_numpy(data.targets[:1000])).float().mean() > 0.7  # a trained teacher
