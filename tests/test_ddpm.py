"""ddpm.py: schedules in closed form, and the samplers checked against an exact model."""
import math

import pytest
import torch

from ddpm import Diffusion, beta_schedule


# ---------------------------------------------------------------- schedules
def test_linear_schedule_endpoints_and_rescaling():
    b = beta_schedule("linear", 1000)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    b250 = beta_schedule("linear", 250)  # both ends scale by 1000 / T
    assert b250[0].item() == pytest.approx(4e-4) and b250[-1].item() == pytest.approx(0.08)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_alphas_cumprod_monotone_from_one_to_zero(name):
    d = Diffusion(beta_schedule(name, 1000))
    abar = d.alphas_cumprod.double()
    assert (abar[1:] < abar[:-1]).all()
    assert abar[0] > 0.999 - 1e-6 and abar[-1] < 1e-3
    assert d.alphas_cumprod_prev[0] == 1.0 and torch.equal(d.alphas_cumprod_prev[1:], d.alphas_cumprod[:-1])


def test_cosine_schedule_matches_formula():
    T, s = 1000, 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    abar = torch.cumprod(1 - beta_schedule("cosine", T), 0)
    for t in [0, 100, 500, 900]:  # abar after step t (0-based) is f(t + 1) / f(0)
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert beta_schedule("cosine", T).max().item() <= 0.999


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="linear, cosine"):
        beta_schedule("quadratic", 10)


def test_posterior_mean_recovers_x0_and_q_sample_moments():
    d = Diffusion(beta_schedule("linear", 1000))
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1, 1, 1), 0.5)
    t = torch.full((20000,), 300)
    noise = torch.randn(x0.shape, generator=g)
    xt = d.q_sample(x0, t, noise)
    abar = d.alphas_cumprod[300].item()
    assert xt.mean().item() == pytest.approx(math.sqrt(abar) * 0.5, abs=0.02)
    assert xt.std().item() == pytest.approx(math.sqrt(1 - abar), rel=0.02)
    assert torch.allclose(d.predict_x0_from_eps(xt, t, noise), x0, atol=1e-4)
    assert torch.allclose(d.predict_eps_from_x0(xt, t, x0), noise, atol=1e-3)


# ---------------------------------------------------------------- samplers
MU, S = 0.3, 0.2  # data distribution x0 ~ N(MU, S^2 I)


def exact_eps_model(d: Diffusion):
    """The optimal noise predictor for Gaussian data: E[eps | x_t].

    x_t ~ N(sqrt(abar) mu, abar s^2 + 1 - abar), so
    E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar).
    """
    def model(x, t, cond=None, drop=None):
        abar = d.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (1 - abar).sqrt() * (x - abar.sqrt() * MU) / (abar * S ** 2 + 1 - abar)
    return model


def ddim_chain_moments(d: Diffusion, steps: int, eta: float) -> tuple[float, float]:
    """Mean and std of DDIM's output for Gaussian data, propagated exactly through the chain.

    With the exact model every DDIM step is affine, x_prev = A x + B + sigma z,
    so the moments follow m' = A m + B, v' = A^2 v + sigma^2 from x_T ~ N(0, 1).
    A few-step sampler does not reproduce the data exactly (it ignores the
    spread of x_0 given x_t); this is what it should give instead.
    """
    abar = d.alphas_cumprod.double().tolist() + [1.0]  # abar[-1] = 1 for the last step
    ts = d.ddim_timesteps(steps)
    m, v = 0.0, 1.0
    for t, tp in zip(ts, ts[1:] + [-1]):
        a, ap = abar[t], abar[tp]
        c = math.sqrt(1 - a) / (a * S ** 2 + 1 - a)  # eps = c (x - sqrt(a) mu)
        sigma = eta * math.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
        k = math.sqrt(1 - ap - sigma ** 2)
        # x0 = (x - sqrt(1-a) eps) / sqrt(a);  x_prev = sqrt(ap) x0 + k eps + sigma z
        A = math.sqrt(ap) * (1 - math.sqrt(1 - a) * c) / math.sqrt(a) + k * c
        B = (math.sqrt(ap) * math.sqrt(1 - a) - k * math.sqrt(a)) * c * MU
        m, v = A * m + B, A * A * v + sigma ** 2
    return m, math.sqrt(v)


@pytest.mark.parametrize("steps,eta", [(None, 0.0), (1000, 0.0)])
def test_full_length_samplers_reproduce_gaussian_data(steps, eta):
    """DDPM (Algorithm 2) and 1000-step DDIM recover x0 ~ N(MU, S^2)."""
    d = Diffusion(beta_schedule("linear", 1000))
    x = d.sample(exact_eps_model(d), (4000, 1, 4, 4), steps=steps, eta=eta, generator=torch.Generator().manual_seed(1))
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(S, rel=0.03)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps,eta", [(50, 0.0), (50, 1.0), (10, 0.5)])
def test_ddim_matches_its_exact_chain_moments(schedule, steps, eta):
    d = Diffusion(beta_schedule(schedule, 1000))
    x = d.sample(exact_eps_model(d), (4000, 1, 4, 4), steps=steps, eta=eta, generator=torch.Generator().manual_seed(2))
    m, s = ddim_chain_moments(d, steps, eta)
    assert 0.3 * S < s <= S * 1.001  # few steps shrink the spread, never grow it
    assert x.mean().item() == pytest.approx(m, abs=0.01)
    assert x.std().item() == pytest.approx(s, rel=0.03)


def test_sampling_is_reproducible_with_a_generator():
    d = Diffusion(beta_schedule("cosine", 100))
    model = exact_eps_model(d)
    a = d.sample(model, (8, 1, 4, 4), steps=10, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = d.sample(model, (8, 1, 4, 4), steps=10, eta=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_ddim_steps_out_of_range():
    d = Diffusion(beta_schedule("linear", 100))
    with pytest.raises(ValueError, match="between 1 and 100"):
        d.sample(exact_eps_model(d), (1, 1, 2, 2), steps=101)


# ---------------------------------------------------------------- guidance
class CountingModel:
    """eps = 1 for a row that keeps its condition, eps = 0 for a dropped one; counts calls and rows."""

    def __init__(self):
        self.calls = self.cond_rows = self.dropped_rows = 0

    def __call__(self, x, t, cond=None, drop=None):
        self.calls += 1
        if not cond:
            self.dropped_rows += len(x)
            return torch.zeros_like(x)
        dropped = torch.zeros(len(x), dtype=torch.bool) if drop is None else drop
        self.dropped_rows += int(dropped.sum())
        self.cond_rows += int((~dropped).sum())
        return (~dropped).float().view(-1, 1, 1, 1).expand_as(x).clone()


def test_guidance_one_costs_one_forward_per_step():
    d = Diffusion(beta_schedule("linear", 100))
    m = CountingModel()
    d.sample(m, (2, 1, 2, 2), cond={"label": torch.zeros(2, dtype=torch.long)}, steps=7, guidance=1.0)
    assert (m.calls, m.cond_rows, m.dropped_rows) == (7, 14, 0)
    m = CountingModel()
    d.sample(m, (2, 1, 2, 2), cond={"label": torch.zeros(2, dtype=torch.long)}, guidance=1.0)
    assert (m.calls, m.cond_rows, m.dropped_rows) == (100, 200, 0)


def test_guidance_is_one_batched_call_per_step():
    d = Diffusion(beta_schedule("linear", 100))
    m = CountingModel()
    d.sample(m, (2, 1, 2, 2), cond={"label": torch.zeros(2, dtype=torch.long)}, steps=7, guidance=3.0)
    assert (m.calls, m.cond_rows, m.dropped_rows) == (7, 14, 14)


@pytest.mark.parametrize("w", [0.0, 2.5, -1.0])
def test_guidance_formula(w):
    d = Diffusion(beta_schedule("linear", 100))
    m = CountingModel()
    x = torch.randn(3, 1, 2, 2)
    eps = d.guided_eps(m, x, torch.tensor([5, 6, 7]), {"label": torch.zeros(3, dtype=torch.long)}, w)
    # eps_uncond + w (eps_cond - eps_uncond) = 0 + w (1 - 0)
    assert torch.allclose(eps, torch.full_like(x, w))
    assert (m.calls, m.cond_rows, m.dropped_rows) == (1, 3, 3)  # one call on 2B rows


# ---------------------------------------------------------------- loss
def test_loss_of_exact_model_is_below_a_null_model_and_drops_conditions():
    d = Diffusion(beta_schedule("linear", 1000))
    g = torch.Generator().manual_seed(0)
    x0 = MU + S * torch.randn(512, 1, 4, 4, generator=g)
    exact = d.loss(exact_eps_model(d), x0, generator=torch.Generator().manual_seed(1)).item()
    null = d.loss(lambda x, t, cond, drop: torch.zeros_like(x), x0, generator=torch.Generator().manual_seed(1)).item()
    assert exact < 0.5 * null and null == pytest.approx(1.0, rel=0.05)

    m = CountingModel()
    d.loss(m, x0, {"label": torch.zeros(512, dtype=torch.long)}, p_uncond=0.5)
    assert m.calls == 1  # one network call per step, the dropped rows marked
    assert m.cond_rows + m.dropped_rows == 512 and 200 < m.dropped_rows < 312
