"""The method table (methods.py) is the one place the methods' rules live: the config, the
builders and the task read it, and what they build follows it."""
import pytest
import torch

from stdistill.training.builders import build_objective
from stdistill.config import METHODS as CONFIG_METHODS, load_config
from stdistill.utils.errors import UserError
from stdistill.data.loaders import check_batch_size
from stdistill.utils.distributed import DistInfo
from stdistill.methods import METHODS, min_batch_size, uses_mine
from test_train import TINY

TEACHER = ['teachers=[{model: resnet10t, pretrained: false}]']


def test_config_knows_the_table():
    assert CONFIG_METHODS == tuple(METHODS)
    for name, method in METHODS.items():
        assert load_config(None, [*TINY, f'method={name}', *([] if method.needs_teachers else ['teachers=[]'])]
                           ).distill == method.distill


@pytest.mark.parametrize('name', sorted(METHODS))
def test_what_is_built_follows_the_table(name):
    method = METHODS[name]
    cfg = load_config(None, [*TINY, f'method={name}', *(TEACHER if method.needs_teachers else ['teachers=[]']),
                             'mine_warmup_epochs=0'])
    task = build_objective(cfg, 10, torch.device('cpu'), mixup_active=True)
    student = task.student
    assert hasattr(student, 'token_pairs') == (method.student == 'std')
    assert hasattr(student, 'head_dist') == (method.student == 'deit')
    assert (task.trainable_module.mi is not None) == uses_mine(name, cfg.mine, cfg.tokens)
    assert len(task.teachers) == (1 if method.needs_teachers else 0)


def test_teacher_counts_refused_by_the_table():
    with pytest.raises(UserError, match='method none takes no teachers'):
        build_objective(load_config(None, [*TINY, 'method=none', *TEACHER]), 10, torch.device('cpu'), True)
    with pytest.raises(UserError, match='method kd needs teachers'):
        build_objective(load_config(None, [*TINY, 'method=kd', 'teachers=[]']), 10, torch.device('cpu'), True)
    two = ['teachers=[{model: resnet10t, pretrained: false}, {model: resnet10t, pretrained: false}]']
    with pytest.raises(UserError, match='method deit takes exactly one teacher, got 2'):
        build_objective(load_config(None, [*TINY, 'method=deit', *two]), 10, torch.device('cpu'), True)


def test_mine_needs_two_images_a_batch():
    assert min_batch_size('std', True, 'both') == 2
    assert min_batch_size('std', True, 'spatial') == min_batch_size('kd', True, 'both') == 1
    cfg = load_config(None, [*TINY, 'batch_size=1', 'mixup=0', 'cutmix=0'])
    with pytest.raises(UserError, match='MINE pairs'):
        check_batch_size(cfg, DistInfo(), mixup_active=False, batch_norm=False)
    check_batch_size(load_config(None, [*TINY, 'batch_size=1', 'mixup=0', 'cutmix=0', 'mine=false']), DistInfo(),
                     mixup_active=False, batch_norm=False)
