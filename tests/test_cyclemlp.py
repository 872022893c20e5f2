import timm
import torch
from torchvision.ops import deform_conv2d

from stdistill.models.cyclemlp import CycleFC, checkpoint_filter_fn, cycle_offsets


def deform_cycle_fc(x_nchw: torch.Tensor, fc: CycleFC) -> torch.Tensor:
    """The reference's formulation: deform_conv2d with a 1x1 kernel and one (dy, dx) offset per
    input channel, kernel (1, 3) for a cycle along W and (3, 1) along H."""
    B, C, H, W = x_nchw.shape
    k = fc.kernel_size
    offset = torch.zeros(1, 2 * C, 1, 1)
    start = k // 2
    for i in range(C):
        shift = (i + start) % k - k // 2
        offset[0, 2 * i + (0 if fc.axis == 'h' else 1)] = shift
    weight = fc.weight[:, :, None, None]
    return deform_conv2d(x_nchw, offset.expand(B, -1, H, W), weight, fc.bias)


def test_cycle_offsets_staircase():
    assert cycle_offsets(7).tolist() == [0, 1, -1, 0, 1, -1, 0]


def test_cycle_fc_equals_deform_conv2d_formulation():
    torch.manual_seed(0)
    x = torch.randn(2, 11, 7, 9)  # odd sizes and a channel count not divisible by 3
    for axis in ('h', 'w'):
        fc = CycleFC(11, 13, axis=axis)
        torch.nn.init.normal_(fc.bias)
        ours = fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        ref = deform_cycle_fc(x, fc)
        assert torch.allclose(ours, ref, atol=1e-5), (axis, (ours - ref).abs().max())


def test_cycle_fc_shifts_along_its_axis():
    fc = CycleFC(3, 3, axis='h', bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.eye(3))
    x = torch.arange(4.).view(1, 4, 1, 1).expand(1, 4, 1, 3).contiguous()  # value = row index
    out = fc(x)[0, :, 0]  # (H, C)
    assert out[:, 0].tolist() == [0, 1, 2, 3]   # offset 0
    assert out[:, 1].tolist() == [1, 2, 3, 0]   # offset +1, zero past the edge
    assert out[:, 2].tolist() == [0, 0, 1, 2]   # offset -1


def test_param_counts_match_reference():
    with torch.device('meta'):
        b1, b2 = timm.create_model('cyclemlp_b1'), timm.create_model('cyclemlp_b2')
    assert round(sum(p.numel() for p in b1.parameters()) / 1e6, 1) == 15.2
    assert round(sum(p.numel() for p in b2.parameters()) / 1e6, 1) == 26.8


def _to_reference_layout(state: dict) -> dict:
    """Our keys back to the reference's `network.{i}` list with 1x1-conv cycle weights."""
    out = {}
    for k, v in state.items():
        if k.startswith('stages.'):
            _, s, part, rest = k.split('.', 3)
            s = int(s)
            idx = 2 * s - 1 if part == 'downsample' else 2 * s
            k = f'network.{idx}.{rest}'
        if ('.sfc_h.' in k or '.sfc_w.' in k) and k.endswith('.weight'):
            v = v[:, :, None, None]
        out[k] = v
    return {'model': out}


def test_reference_checkpoint_layout_loads():
    kw = dict(img_size=64, layers=(1, 2, 1, 1), embed_dims=(8, 16, 24, 32), num_classes=4)
    src = timm.create_model('cyclemlp_b1', **kw).eval()
    dst = timm.create_model('cyclemlp_b1', **kw).eval()
    dst.load_state_dict(checkpoint_filter_fn(_to_reference_layout(src.state_dict()), dst))
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(src(x), dst(x))


def test_forward_intermediates_per_block():
    m = timm.create_model('cyclemlp_b1', img_size=64, layers=(1, 1, 2, 1), embed_dims=(8, 16, 24, 32)).eval()
    x = torch.randn(2, 3, 64, 64)
    final, inter = m.forward_intermediates(x, indices=[0, 3, -1], output_fmt='NLC')
    assert [t.shape for t in inter] == [(2, 16 * 16, 8), (2, 4 * 4, 24), (2, 2 * 2, 32)]
    assert torch.allclose(m.forward_head(final), m(x), atol=1e-6)
