import math

import pytest
import torch

from stdistill.mine import MINE, MIRegularizer, random_derangement, reverse_gradient

from conftest import tiny_input, tiny_student


def _correlated(n, rho, dim, gen):
    x = torch.randn(n, dim, generator=gen)
    noise = torch.randn(n, dim, generator=gen)
    return x, rho * x + math.sqrt(1 - rho ** 2) * noise


@pytest.mark.parametrize('rho', [0.0, 0.5, 0.8])
def test_mine_estimate_near_closed_form(rho):
    """Correlated Gaussians, 2 dimensions: I = -dim/2 * log(1 - rho^2)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    dim = 2
    mine = MINE(dim, dim, hidden=64, weight=0.0)
    opt = torch.optim.Adam(mine.parameters(), lr=2e-3)
    for _ in range(600):
        x, y = _correlated(256, rho, dim, gen)
        out = mine(x, y, generator=gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    mine.eval()
    with torch.no_grad():
        x, y = _correlated(20000, rho, dim, gen)
        estimate = mine(x, y, generator=gen).estimate.item()
    true = -dim / 2 * math.log(1 - rho ** 2)
    assert abs(estimate - true) < 0.12, (estimate, true)


def test_statistics_network_shape():
    mine = MINE(5, 7)
    layers = [m for m in mine.statistics.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in layers] == [(12, 512), (512, 512), (512, 1)]


def test_derangement_has_no_fixed_point():
    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 17):
        for _ in range(20):
            p = random_derangement(n, gen)
            assert sorted(p.tolist()) == list(range(n)) and not (p == torch.arange(n)).any()
    with pytest.raises(ValueError, match='at least 2'):
        random_derangement(1)


def test_gradient_reversal_scales_and_flips():
    x = torch.ones(3, requires_grad=True)
    reverse_gradient(x, 0.5).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))


def test_one_backward_trains_psi_up_and_tokens_down():
    """psi's gradient ascends the estimate; the tokens' gradient is lambda times the gradient
    that descends it."""
    torch.manual_seed(0)
    x = torch.randn(64, 3, requires_grad=True)
    y = (x.detach() + 0.1 * torch.randn(64, 3)).requires_grad_(True)
    mine = MINE(3, 3, hidden=32, weight=0.5)
    out = mine(x, y, generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    token_grad = x.grad.clone()
    psi_grad = [p.grad.clone() for p in mine.statistics.parameters()]
    # the same step without reversal: gradient of -(joint - surrogate) w.r.t. the tokens
    x.grad = None
    mine.zero_grad()
    mine.weight = -1.0  # reverse_gradient(-1) is the identity on the way back
    mine(x, y, generator=torch.Generator().manual_seed(1)).loss.backward()
    assert torch.allclose(token_grad, -0.5 * x.grad, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(psi_grad, [p.grad for p in mine.statistics.parameters()]))
    assert out.estimate.requires_grad is False


def test_regularizer_on_student_tokens():
    student = tiny_student('mixer', num_teachers=2).train()
    reg = MIRegularizer(student, weight=0.1)
    out = student(tiny_input('mixer'))
    mi = reg(out.spatial_tokens, out.channel_tokens)
    mi.loss.backward()
    assert torch.isfinite(mi.estimate)
    assert student.token_pairs[0].spatial_token.grad is not None
    with pytest.raises(ValueError, match='both a spatial and a channel token'):
        MIRegularizer(tiny_student('mixer', tokens='spatial'))
