import os
from functools import partial

import pytest
import timm
import torch
from timm.layers import GatedMlp
from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock, SpatialGatingBlock

import stdistill  # noqa: F401  (registers the models)
from stdistill import STDStudent
from stdistill.utils.log import setup_logging

# tests that call train() in this process read what the command line prints (pytest's own root
# handlers would otherwise take the records: a program's logging configuration is left alone)
setup_logging(force=True)

if os.environ.get('PYTEST_XDIST_WORKER'):  # pytest -n 2: a worker a core, and one thread in the commands it runs
    os.environ['OMP_NUM_THREADS'] = '1'
    torch.set_num_threads(1)

# Tiny backbones of each student family: the same block types as the paper's models, a few
# thousand parameters, so every test runs in well under a second. (timm's registered mixer
# functions fix depth and width, so the tiny ones are built from the classes directly.)
ISOTROPIC = dict(img_size=32, patch_size=8, num_blocks=3, embed_dim=16, num_classes=5)
TINY_BACKBONES = {
    'mixer': lambda: MlpMixer(**ISOTROPIC),
    'resmlp': lambda: MlpMixer(**ISOTROPIC, mlp_ratio=4, block_layer=partial(ResBlock, init_values=1e-1),
                               norm_layer=Affine),
    'gmlp': lambda: MlpMixer(**ISOTROPIC, mlp_ratio=6, block_layer=SpatialGatingBlock, mlp_layer=GatedMlp),
    'cyclemlp': lambda: timm.create_model('cyclemlp_b1', img_size=64, layers=(1, 1, 2, 1),
                                          embed_dims=(8, 16, 24, 32), num_classes=5),
}
FAMILIES = sorted(TINY_BACKBONES)


def tiny_backbone(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return TINY_BACKBONES[family]()


def tiny_student(family: str, **kwargs) -> STDStudent:
    return STDStudent(tiny_backbone(family), **kwargs)


def tiny_input(family: str, batch: int = 4) -> torch.Tensor:
    size = 64 if family == 'cyclemlp' else 32
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """The slow files first, and each file's tests on one worker (pyproject.toml: --dist loadgroup),
    so that the runs a file trains once (module fixtures) are trained once; a file that sets
    XDIST_SPREAD = True (independent tests, cheap fixtures) is shared between the workers. Workers
    take the groups in this order: the minutes-long flows start at once, not last."""
    items.sort(key=lambda item: item.get_closest_marker('slow') is None)
    for item in items:
        if not getattr(item.module, 'XDIST_SPREAD', False):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
