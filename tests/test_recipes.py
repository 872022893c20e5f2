"""Every recipe parses, builds its student and teachers with random weights, and trains one step."""
import glob
import os

import pytest
import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2

from stdistill.config import config_from_dict, load_config
from stdistill.apps.quickstart import RECIPES
from stdistill.training.builders import build_objective

IMAGENET = sorted(glob.glob('recipes/imagenet/*.yaml'))


def test_one_recipe_per_paper_row():
    names = {os.path.basename(p)[:-5] for p in IMAGENET}
    for family in ('mixer_s16', 'mixer_b16', 'resmlp_s24', 'resmlp_b24', 'cyclemlp_b1', 'cyclemlp_b2'):
        assert {f'{family}_baseline', f'{family}_std'} <= names
    assert {'mixer_s16_deit', 'cyclemlp_b2_std_r50', 'cyclemlp_b2_std_swinb', 'cyclemlp_b2_std_r50_r101'} <= names
    for path in IMAGENET:  # the paper's figure is in a comment
        with open(path) as f:
            assert '# Paper (ImageNet-1k top-1):' in f.read(), path


@pytest.mark.parametrize('path', IMAGENET, ids=lambda p: os.path.basename(p)[:-5])
def test_imagenet_recipe_builds_and_trains_one_step(path):
    cfg = load_config(path)
    assert cfg.num_classes == 1000 and cfg.img_size == 224
    objective = build_objective(cfg, cfg.num_classes, torch.device('cpu'), mixup_active=True, pretrained=False)
    assert len(objective.teachers) == len(cfg.teachers)
    optimizer = create_optimizer_v2(objective, opt=cfg.opt, lr=1e-3, weight_decay=cfg.weight_decay)
    mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing, num_classes=1000)
    g = torch.Generator().manual_seed(0)
    images, targets = mixup(torch.randn(2, 3, 224, 224, generator=g), torch.tensor([3, 7]))
    before = [p.detach().clone() for p in objective.student.parameters()]
    objective.train()
    result = objective(images, targets)
    loss, terms = result['loss'], result
    assert torch.isfinite(loss)
    if cfg.method != 'none':
        assert 'loss_dist' in terms
    if cfg.method == 'std' and cfg.mine:
        assert 'mi_estimate' in terms
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    moved = {n for (n, p), b in zip(objective.student.named_parameters(), before) if not torch.equal(b, p)}
    assert moved  # (timm zero-initialises Mixer heads, so a baseline's first step moves the head alone)
    if cfg.method == 'std':  # every token layer and distillation head learned from the teachers
        assert {n for n, _ in objective.student.token_pairs.named_parameters(prefix='token_pairs')} <= moved


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_fashion_mnist_recipes_are_the_quickstarts(name):
    assert load_config(f'recipes/fashion_mnist/{name}.yaml') == config_from_dict(RECIPES[name])
