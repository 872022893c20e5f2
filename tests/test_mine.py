import math

import pytest
import torch

from stdistill.method.mine import MINE, MIRegularizer, random_derangement

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


def _grads(mine, x, y):
    x.grad = y.grad = None
    mine.zero_grad()
    out = mine(x, y, generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    return out, x.grad, [p.grad.clone() for p in mine.statistics.parameters()]


def test_one_backward_trains_psi_up_and_tokens_down():
    """psi's gradient ascends the estimate whatever lambda is; the tokens' gradient is lambda
    times the gradient of the bound through a frozen psi (descending I), never reaching psi."""
    torch.manual_seed(0)
    x = torch.randn(64, 3, requires_grad=True)
    y = (x.detach() + 0.1 * torch.randn(64, 3)).requires_grad_(True)
    mine = MINE(3, 3, hidden=32, weight=0.0)
    optimizer = torch.optim.Adam(mine.parameters(), lr=1e-2)
    for _ in range(30):  # a psi that has learned something: the estimate of correlated tokens is > 0
        optimizer.zero_grad()
        mine(x, y).loss.backward()
        optimizer.step()
    mine.weight = 0.5
    mine.eval()  # the moving average stays put between the calls below
    out, token_grad, psi_grad = _grads(mine, x, y)
    assert out.estimate > 0 and out.estimate.requires_grad is False
    mine.weight = 0.0
    _, no_token_grad, psi_grad_alone = _grads(mine, x, y)
    assert no_token_grad is None  # psi's part never reaches the tokens
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(psi_grad, psi_grad_alone))
    # the tokens' part by hand: lambda * d(joint - log mean exp marginal)/dx with psi fixed
    perm = random_derangement(64, torch.Generator().manual_seed(1))
    joint = mine.statistics(x, y).mean()
    marginal = mine.statistics(x, y[perm])
    bound = joint - (torch.logsumexp(marginal, 0) - torch.log(torch.tensor(64.0)))
    (expected,) = torch.autograd.grad(0.5 * bound, x)
    assert torch.allclose(token_grad, expected, atol=1e-6)


def test_student_is_not_rewarded_for_a_negative_estimate():
    """A psi that reads only the channel token scores every pairing alike, so by Jensen its
    estimate is strictly negative: the tokens must then get no gradient at all."""
    torch.manual_seed(0)
    x = torch.randn(64, 3, requires_grad=True)
    y = torch.randn(64, 3, requires_grad=True)
    mine = MINE(3, 3, hidden=32, weight=0.5)
    with torch.no_grad():
        mine.statistics.net[0].weight[:, :3] = 0.0  # psi(x, y) = g(y)
    out = mine(x, y, generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    assert out.estimate < 0
    assert x.grad is None and y.grad is None
    assert all(p.grad is not None for p in mine.statistics.parameters())  # psi still learns
    # the same psi with a positive estimate would move the tokens: the gate is what stops them
    mine.zero_grad()
    joint, log_mean_exp = mine._bound_terms(x, y, random_derangement(64, torch.Generator().manual_seed(1)))
    (grad_y,) = torch.autograd.grad(joint - log_mean_exp, y)
    assert grad_y.abs().sum() > 0


def test_regularizer_on_student_tokens():
    student = tiny_student('mixer', num_teachers=1).train()
    reg = MIRegularizer(student, weight=0.1)
    out = student(tiny_input('mixer'))
    mi = reg(out.spatial_tokens, out.channel_tokens)
    mi.loss.backward()
    assert torch.isfinite(mi.estimate)
    # the tokens get a gradient exactly when the estimate is positive; psi always does
    assert (student.token_pairs[0].spatial_token.grad is not None) == bool(mi.estimate > 0)
    assert all(p.grad is not None for p in reg.parameters())
    with pytest.raises(ValueError, match='both a spatial and a channel token'):
        MIRegularizer(tiny_student('mixer', tokens='spatial'))


def test_penalty_off_during_warmup_leaves_the_tokens_alone():
    """With the penalty off (MINE's warm-up), psi still learns and the tokens get no gradient,
    even where the estimate is positive and the penalty would move them."""
    torch.manual_seed(0)
    x = torch.randn(64, 3, requires_grad=True)
    y = (x.detach() + 0.1 * torch.randn(64, 3)).requires_grad_(True)
    mine = MINE(3, 3, hidden=32, weight=0.0)
    optimizer = torch.optim.Adam(mine.parameters(), lr=1e-2)
    for _ in range(30):
        optimizer.zero_grad()
        mine(x, y).loss.backward()
        optimizer.step()
    mine.weight, mine.penalty = 0.5, False
    mine.zero_grad()
    out = mine(x, y, generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    assert out.estimate > 0 and x.grad is None and y.grad is None
    assert all(p.grad is not None for p in mine.statistics.parameters())
    mine.penalty = True
    mine(x, y, generator=torch.Generator().manual_seed(1)).loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
