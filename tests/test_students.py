import pytest
import timm
import torch

from stdistill import STDStudent, create_student
from stdistill.models.backbones import token_dims
from stdistill.models.students import STDOutput, STUDENT_BASES, combine_heads

from conftest import FAMILIES, TINY_BACKBONES, tiny_backbone, tiny_input, tiny_student


@pytest.mark.parametrize('name', sorted(STUDENT_BASES))
def test_registered_students_build_and_run_at_full_size(name):
    """All seven names come from timm.create_model with num_teachers and token_positions
    (built on the meta device: shapes only, no memory, no compute)."""
    assert timm.is_model(name)
    with torch.device('meta'):
        model = timm.create_model(name, num_teachers=2, token_positions=[4, -1]).train()
        out = model(torch.empty(2, 3, 224, 224))
    assert isinstance(model, STDStudent) and len(model.token_pairs) == 2
    assert out.logits.shape == (2, 1000) and [d.shape for d in out.dist_logits] == [(2, 1000)] * 2
    assert model.default_cfg['input_size'] == (3, 224, 224)


@pytest.mark.parametrize('family', FAMILIES)
def test_train_output_and_backward(family):
    model = tiny_student(family, num_teachers=2, token_positions=[1, -1]).train()
    out = model(tiny_input(family))
    assert isinstance(out, STDOutput)
    assert out.logits.shape == (4, 5) and len(out.dist_logits) == 2
    for pair, s, c in zip(model.token_pairs, out.spatial_tokens, out.channel_tokens):
        assert s.shape == (4, pair.dims.num_channels) and c.shape == (4, pair.dims.num_positions)
    (out.logits.sum() + sum(d.sum() for d in out.dist_logits)).backward()
    assert all(p.grad is not None for p in model.token_pairs.parameters())


@pytest.mark.parametrize('family', FAMILIES)
def test_no_write_back(family):
    """Z(l) and the class logits are exactly those of the plain backbone with the same weights."""
    student = tiny_student(family, num_teachers=2, token_positions=[0, 1]).eval()
    plain = tiny_backbone(family).eval()
    plain.load_state_dict(student.backbone.state_dict())
    x = tiny_input(family)
    feats = student.forward_features(x)
    _, plain_z = plain.forward_intermediates(x, indices=[0, 1], output_fmt='NLC')
    for z, ref in zip(feats.token_inputs, plain_z):
        assert torch.equal(z, ref)
    student.train()
    plain.train()
    assert torch.equal(student(x).logits, plain(x))


def _blocks(model):
    backbone = model.backbone
    return list(backbone.blocks) if hasattr(backbone, 'blocks') else [b for s in backbone.stages for b in s.blocks]


def _grad_norm(module):
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize('family', FAMILIES)
def test_distillation_gradient_stops_at_attachment_block(family):
    model = tiny_student(family, num_teachers=1, token_positions=[1]).train()
    out = model(tiny_input(family))
    torch.nn.functional.cross_entropy(out.dist_logits[0], torch.tensor([0, 1, 2, 3])).backward()
    blocks = _blocks(model)
    assert _grad_norm(blocks[0]) > 0 and _grad_norm(blocks[1]) > 0
    assert len(blocks) > 2
    for later in blocks[2:]:
        assert _grad_norm(later) == 0
    assert _grad_norm(model.backbone.get_classifier()) == 0
    assert _grad_norm(model.backbone.norm) == 0


def test_token_layer_sizes_follow_method():
    """Mixer-S16: MLP_S (P+1)->256->1, MLP_C (N+1)->2048->1; ResMLP: MLP_S is one linear map."""
    with torch.device('meta'):
        mixer = timm.create_model('std_mixer_s16_224')
        resmlp = timm.create_model('std_resmlp_s24_224')
    pair = mixer.token_pairs[0]
    assert pair.spatial_layers[0].mlp.fc1.weight.shape == (256, 197)
    assert pair.spatial_layers[0].mlp.fc2.weight.shape == (1, 256)
    assert pair.channel_layers[0].mlp.fc1.weight.shape == (2048, 513)
    assert pair.channel_layers[0].mlp.fc2.weight.shape == (1, 2048)
    assert pair.channel_layers[0].norm.normalized_shape == (513,)
    assert pair.spatial_layers[0].norm.normalized_shape == (512,)
    assert pair.head.weight.shape == (1000, 512 + 196)
    assert resmlp.token_pairs[0].spatial_layers[0].mlp.weight.shape == (1, 197)
    assert token_dims(resmlp.backbone, 23).channel_hidden == 1536


def test_stacked_token_layers_and_ablation_variants():
    deep = tiny_student('mixer', token_depth=3)
    assert len(deep.token_pairs[0].spatial_layers) == 3 and len(deep.token_pairs[0].channel_layers) == 3
    spatial = tiny_student('mixer', tokens='spatial').train()
    channel = tiny_student('mixer', tokens='channel').train()
    out_s, out_c = spatial(tiny_input('mixer')), channel(tiny_input('mixer'))
    # tiny mixer: N = 16 channels, P = (32 / 8)^2 = 16 positions
    assert spatial.token_pairs[0].head.in_features == 16 and out_s.channel_tokens == [None]
    assert channel.token_pairs[0].head.in_features == 16 and out_c.spatial_tokens == [None]
    assert not hasattr(spatial.token_pairs[0], 'channel_layers')
    assert not hasattr(channel.token_pairs[0], 'spatial_layers')


def test_eval_heads_give_what_they_say():
    model = tiny_student('mixer', num_teachers=2)
    x = tiny_input('mixer')
    with torch.no_grad():
        out = model.train()(x)  # no dropout in these models: train and eval compute the same
        model.eval()
        results = {}
        for head in ('avg', 'cls', 'dist'):
            model.inference_head = head
            results[head] = model(x)
    dist = (out.dist_logits[0] + out.dist_logits[1]) / 2
    assert torch.allclose(results['cls'], out.logits, atol=1e-6)
    assert torch.allclose(results['dist'], dist, atol=1e-6)
    assert torch.allclose(results['avg'], (out.logits + dist) / 2, atol=1e-6)
    assert not torch.allclose(results['cls'], results['dist'])
    assert torch.allclose(combine_heads(out, 'avg'), results['avg'], atol=1e-6)


@pytest.mark.parametrize('family', FAMILIES)
def test_plain_timm_state_dict_loads_into_student(family):
    plain = tiny_backbone(family)
    torch.manual_seed(123)
    student = STDStudent(TINY_BACKBONES[family](), num_teachers=2)  # other random weights
    before = student.backbone.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in plain.state_dict().items())
    student.backbone.load_state_dict(plain.state_dict())  # strict: same keys, same shapes
    for k, v in plain.state_dict().items():
        assert torch.equal(student.backbone.state_dict()[k], v)


def test_pretrained_cfg_overlay_file_loads_backbone(tmp_path):
    """timm's own mechanism for local weights reaches a registered student's backbone."""
    from safetensors.torch import save_file
    torch.manual_seed(5)
    plain = timm.create_model('mixer_s16_224', img_size=64, num_classes=3)
    path = tmp_path / 'mixer.safetensors'
    save_file(plain.state_dict(), str(path))
    student = timm.create_model('std_mixer_s16_224', pretrained=True, img_size=64, num_classes=3,
                                pretrained_cfg_overlay=dict(file=str(path)))
    for k, v in plain.state_dict().items():
        assert torch.equal(student.backbone.state_dict()[k], v)


def test_positions_resolve_negative_indices():
    model = tiny_student('mixer', num_teachers=3, token_positions=[-1, 0, -2])
    assert model.token_positions == [2, 0, 1]


@pytest.mark.parametrize('kwargs, message', [
    (dict(token_positions=[3]), 'outside the backbone'),
    (dict(token_positions=[-4]), 'outside the backbone'),
    (dict(num_teachers=0), 'num_teachers'),
    (dict(num_teachers=2, token_positions=[1]), 'one block index per teacher'),
    (dict(tokens='both-ish'), 'tokens must be one of'),
    (dict(inference_head='max'), 'inference_head'),
    (dict(token_depth=0), 'token depth'),
])
def test_bad_construction_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_student('mixer', **kwargs)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'std_mixer_s61_224'.*std_mixer_s16_224"):
        create_student('std_mixer_s61_224')


@pytest.mark.parametrize('shape', [(2, 3, 48, 48), (2, 1, 32, 32), (3, 32, 32)])
def test_wrong_input_size(shape):
    model = tiny_student('mixer')
    with pytest.raises(ValueError, match='expects input Bx3x32x32'):
        model(torch.randn(*shape))


def test_unsupported_backbone():
    with pytest.raises(ValueError, match='not a supported STD backbone'):
        STDStudent(timm.create_model('resnet18', num_classes=5))


def test_timm_conventions_reset_classifier_and_no_weight_decay():
    model = tiny_student('mixer', num_teachers=2)
    assert model.no_weight_decay() == {f'token_pairs.{i}.{t}' for i in (0, 1) for t in ('spatial_token', 'channel_token')}
    model.reset_classifier(3)
    out = model.train()(tiny_input('mixer'))
    assert out.logits.shape == (4, 3) and all(d.shape == (4, 3) for d in out.dist_logits)
    from timm.optim import create_optimizer_v2
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05)
    no_decay = [g for g in opt.param_groups if g['weight_decay'] == 0.0]
    assert any(p is model.token_pairs[0].spatial_token for g in no_decay for p in g['params'])
