import pytest
import timm
import torch

from stdistill.models.deit import DEIT_BASES, DeiTTokenStudent
from stdistill.models.students import STDOutput

from conftest import tiny_backbone, tiny_input


@pytest.mark.parametrize('family', ['mixer', 'resmlp', 'gmlp'])
def test_token_mixing_grows_and_token_propagates(family):
    backbone = tiny_backbone(family)
    reference = tiny_backbone(family)
    model = DeiTTokenStudent(backbone).train()
    block = model.backbone.blocks[0]
    P = 16
    if family == 'mixer':
        assert block.mlp_tokens.fc1.in_features == P + 1 and block.mlp_tokens.fc2.out_features == P + 1
        assert torch.equal(block.mlp_tokens.fc1.weight[:, :P], reference.blocks[0].mlp_tokens.fc1.weight)
    elif family == 'resmlp':
        assert block.linear_tokens.weight.shape == (P + 1, P + 1)
    else:
        assert block.mlp_channels.gate.proj.weight.shape == (P + 1, P + 1)
    x = tiny_input(family)
    out = model(x)
    assert isinstance(out, STDOutput) and out.logits.shape == (4, 5) and out.dist_logits[0].shape == (4, 5)
    out.dist_logits[0].sum().backward()
    # the token writes into the patches: the distillation head trains every block
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.blocks[0].parameters())
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), (out.logits + out.dist_logits[0]) / 2, atol=1e-5)


def test_registered_deit_students():
    for name in DEIT_BASES:
        with torch.device('meta'):
            model = timm.create_model(name)
        assert isinstance(model, DeiTTokenStudent)


def test_deit_needs_an_isotropic_mlp():
    with pytest.raises(ValueError, match='MlpMixer'):
        DeiTTokenStudent(tiny_backbone('cyclemlp'))
