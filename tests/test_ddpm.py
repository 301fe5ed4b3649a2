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


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", None, 0.0), ("ddim", 1000, 0.0)])
def test_full_length_samplers_reproduce_gaussian_data(sampler, steps, eta):
    """DDPM (Algorithm 2) and 1000-step DDIM recover x0 ~ N(MU, S^2)."""
    d = Diffusion(beta_schedule("linear", 1000))
    x = d.sample(exact_eps_model(d), (4000, 1, 4, 4), steps=steps, eta=eta, sampler=sampler,
                 generator=torch.Generator().manual_seed(1))
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
    """A toy model whose output shows which conditions a row kept: eps = sum of the kept conditions'
    values (label -> 1, pos -> 10, anything else -> 100), so every condition set gives its own number.
    Counts calls and rows."""

    VALUES = {"label": 1.0, "pos": 10.0}

    def __init__(self):
        self.calls = self.rows = 0
        self.kept = []  # per call: name -> number of rows that kept it

    def __call__(self, x, t, cond=None, drop=None):
        self.calls += 1
        self.rows += len(x)
        out = torch.zeros(len(x))
        kept = {}
        for name in cond or {}:
            dropped = drop.get(name) if isinstance(drop, dict) else drop
            keep = torch.ones(len(x), dtype=torch.bool) if dropped is None else ~dropped
            kept[name] = int(keep.sum())
            out = out + keep.float() * self.VALUES.get(name, 100.0)
        self.kept.append(kept)
        return out.view(-1, 1, 1, 1).expand_as(x).clone()


def label_cond(b):
    return {"label": torch.zeros(b, dtype=torch.long)}


def label_pos_cond(b):
    return {"label": torch.zeros(b, dtype=torch.long), "pos": torch.zeros(b, 3)}


def test_guidance_one_costs_one_forward_per_step():
    d = Diffusion(beta_schedule("linear", 100))
    m = CountingModel()
    d.sample(m, (2, 1, 2, 2), cond=label_cond(2), steps=7, guidance=1.0)
    assert (m.calls, m.rows) == (7, 14) and all(k == {"label": 2} for k in m.kept)
    m = CountingModel()
    d.sample(m, (2, 1, 2, 2), cond=label_cond(2), sampler="ddpm", guidance=1.0)
    assert (m.calls, m.rows) == (100, 200)


def test_guidance_is_one_batched_call_per_step():
    d = Diffusion(beta_schedule("linear", 100))
    m = CountingModel()
    d.sample(m, (2, 1, 2, 2), cond=label_cond(2), steps=7, guidance=3.0)
    assert (m.calls, m.rows) == (7, 28) and all(k == {"label": 2} for k in m.kept)  # 2 of the 4 rows keep it


@pytest.mark.parametrize("w", [0.0, 2.5, -1.0])
def test_guidance_formula(w):
    d = Diffusion(beta_schedule("linear", 100))
    m = CountingModel()
    x = torch.randn(3, 1, 2, 2)
    eps = d.guided_output(m, x, torch.tensor([5, 6, 7]), label_cond(3), w)
    # eps_uncond + w (eps_cond - eps_uncond) = 0 + w (1 - 0)
    assert torch.allclose(eps, torch.full_like(x, w))
    assert (m.calls, m.rows) == (1, 6)  # one call on 2B rows


@pytest.mark.parametrize("guidance,expected,rows", [
    # out(none) = 0, out(label) = 1, out(label, pos) = 11, out(pos) = 10
    (3.0, 0 + 3 * (11 - 0), 2),                                   # a bare number: Ho & Salimans
    ({"label": 1.0, "pos": 3.0}, 1 + 3 * (11 - 1), 2),            # label kept, position guided: no uncond rows
    ({"label": 2.0, "pos": 3.0}, 0 + 2 * (1 - 0) + 3 * (11 - 1), 3),
    ({"pos": 2.0, "label": 4.0}, 0 + 2 * (10 - 0) + 4 * (11 - 10), 3),  # order as written
    ({"pos": 3.0}, 1 + 3 * (11 - 1), 2),                          # unnamed conditions first, weight 1
    ({"label": 1.0, "pos": 1.0}, 11, 1),                          # no guidance at all: one set, B rows
])
def test_per_condition_guidance_against_its_closed_form(guidance, expected, rows):
    """out = out(S_0) + sum_k w_k (out(S_k) - out(S_{k-1})) (Brooks et al. 2023, eq. 3), in one call."""
    d = Diffusion(beta_schedule("linear", 100))
    m = CountingModel()
    out = d.guided_output(m, torch.zeros(2, 1, 2, 2), torch.tensor([5, 6]), label_pos_cond(2), guidance)
    assert torch.allclose(out, torch.full_like(out, float(expected)))
    assert (m.calls, m.rows) == (1, 2 * rows)


def test_a_weight_for_a_condition_the_request_lacks_is_ignored():
    """A request without its label (the position alone) keeps the position's weight; label's has no term."""
    d = Diffusion(beta_schedule("linear", 100))
    m = CountingModel()
    out = d.guided_output(m, torch.zeros(2, 1, 2, 2), torch.tensor([5, 6]), {"pos": torch.zeros(2, 3)},
                          {"label": 2.0, "pos": 3.0})
    assert torch.allclose(out, torch.full_like(out, 0 + 3 * (10 - 0)))


def old_guided_eps(model, x_t, t, cond, guidance):
    """The guidance of the previous release (one weight for all conditions), kept as the reference."""
    b = x_t.shape[0]
    if guidance == 1.0 or not cond:
        return model(x_t, t, cond, None).float()
    keep_drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)])
    doubled = {name: torch.cat([value, value]) for name, value in cond.items()}
    eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), doubled, keep_drop).float()
    eps_cond, eps_uncond = eps.chunk(2)
    return eps_uncond + guidance * (eps_cond - eps_uncond)


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_a_bare_guidance_number_gives_the_previous_outputs_bit_for_bit(w):
    from unet import UNet
    torch.manual_seed(0)
    net = UNet(image_size=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(),
               conditions={"label": 3, "pos": 2}).eval()
    for p in net.parameters():  # zero-initialised layers would make every output 0
        torch.nn.init.normal_(p, std=0.2)
    d = Diffusion(beta_schedule("linear", 100))
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([3, 50, 70, 99])
    cond = {"label": torch.tensor([0, 1, 2, 0]), "pos": torch.randn(4, 2)}
    with torch.no_grad():
        assert torch.equal(d.guided_output(net, x, t, cond, w), old_guided_eps(net, x, t, cond, w))


# ---------------------------------------------------------------- DPM-Solver++(2M) and shared noise
def moments_error(x: torch.Tensor) -> float:
    return abs(x.mean().item() - MU) + abs(x.std().item() - S)


def test_dpm_solver_is_closer_to_the_data_than_ddim_at_few_steps():
    """With the exact model the probability-flow ODE maps N(0, I) to the data; a second-order solver
    follows it better than first-order DDIM (eta 0) at the same few steps."""
    d = Diffusion(beta_schedule("linear", 1000))
    model = exact_eps_model(d)
    ddim = d.sample(model, (4000, 1, 4, 4), steps=8, eta=0.0, generator=torch.Generator().manual_seed(4))
    dpm = d.sample(model, (4000, 1, 4, 4), steps=8, eta=0.0, sampler="dpm++2m", generator=torch.Generator().manual_seed(4))
    assert moments_error(dpm) < 0.5 * moments_error(ddim)
    assert moments_error(dpm) < 0.01  # measured 0.002 (std 0.198 for 0.2)


def test_dpm_solver_sde_reaches_the_data_and_first_step_is_ddim_eta_one():
    d = Diffusion(beta_schedule("linear", 1000))
    model = exact_eps_model(d)
    x = d.sample(model, (4000, 1, 4, 4), steps=25, eta=1.0, sampler="dpm++2m", generator=torch.Generator().manual_seed(5))
    assert moments_error(x) < 0.015  # measured 0.007
    # one step: no history, so SDE-DPM-Solver++ is first order = DDIM with eta 1, same noise
    a = d.sample(model, (64, 1, 4, 4), steps=1, eta=1.0, sampler="dpm++2m", generator=torch.Generator().manual_seed(6))
    b = d.sample(model, (64, 1, 4, 4), steps=1, eta=1.0, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="eta 0"):
        d.sample(model, (1, 1, 2, 2), steps=5, eta=0.5, sampler="dpm++2m")


@pytest.mark.parametrize("sampler,eta", [("ddim", 1.0), ("dpm++2m", 1.0), ("ddpm", 0.0)])
def test_rows_of_one_noise_index_share_every_noise(sampler, eta):
    """A walk changes only its conditions: rows with one noise_index get the same x_T and step noise."""
    d = Diffusion(beta_schedule("linear", 50))
    model = exact_eps_model(d)
    index = torch.tensor([0, 0, 0, 1, 1])
    x = d.sample(model, (5, 1, 4, 4), steps=10, eta=eta, sampler=sampler, noise_index=index,
                 generator=torch.Generator().manual_seed(7))
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2]) and torch.equal(x[3], x[4])
    assert not torch.allclose(x[0], x[3])


def test_schedule_tensors_move_to_the_device_once():
    d = Diffusion(beta_schedule("linear", 100)).to("meta")
    tensors = [v for v in vars(d).values() if isinstance(v, torch.Tensor)]
    assert len(tensors) > 10 and all(v.device.type == "meta" for v in tensors)


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
    assert 200 < 512 - m.kept[0]["label"] < 312


def test_each_condition_is_dropped_on_its_own_and_all_together():
    """p_uncond drops every condition of a row; p_drop[name] drops that one alone, independently."""
    d = Diffusion(beta_schedule("linear", 100))
    seen = {}

    def model(x, t, cond, drop):
        seen.update(drop)
        return torch.zeros_like(x)

    b = 20000
    d.loss(model, torch.zeros(b, 1, 2, 2), label_pos_cond(b), p_uncond=0.1, p_drop={"label": 0.2, "pos": 0.3},
           generator=torch.Generator().manual_seed(0))
    label, pos = seen["label"].float(), seen["pos"].float()
    both = (seen["label"] & seen["pos"]).float().mean().item()
    assert label.mean().item() == pytest.approx(1 - 0.9 * 0.8, abs=0.01)  # dropped alone or with the rest
    assert pos.mean().item() == pytest.approx(1 - 0.9 * 0.7, abs=0.01)
    assert both == pytest.approx(0.1 + 0.9 * 0.2 * 0.3, abs=0.01)  # independent, plus the rows that drop all


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_the_exact_model_in_either_parameterisation_gives_the_same_x0(prediction):
    """v = sqrt(abar) eps - sqrt(1 - abar) x0 converts back to the same (x0, eps)."""
    d = Diffusion(beta_schedule("linear", 1000), prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 1, 3, 3, generator=g), torch.randn(8, 1, 3, 3, generator=g)
    t = torch.tensor([0, 10, 100, 300, 500, 700, 900, 999])
    x_t = d.q_sample(x0, t, eps)
    out = eps if prediction == "eps" else d.v_from_x0_eps(x0, eps, t)
    x0_back, eps_back = d.model_output_to_x0_eps(x_t, t, out)
    assert torch.allclose(x0_back, x0, atol=1e-3) and torch.allclose(eps_back, eps, atol=1e-3)


def test_min_snr_weights_follow_hang_et_al():
    """min(SNR, gamma) / SNR for eps, min(SNR, gamma) / (SNR + 1) for v: the loss of a model that is off
    by one everywhere is the mean of those weights over the drawn t."""
    for prediction, denominator in (("eps", lambda s: s), ("v", lambda s: s + 1)):
        d = Diffusion(beta_schedule("linear", 1000), prediction=prediction, min_snr_gamma=5.0)
        loss = d.loss(lambda x, t, c, drop: torch.zeros_like(x) + 1e3, torch.zeros(4096, 1, 1, 1),
                      generator=torch.Generator().manual_seed(0))
        t = torch.randint(0, 1000, (4096,), generator=torch.Generator().manual_seed(0))
        snr = d.snr[t]
        # the targets are O(1) next to the output 1e3, so the loss is 1e6 times the mean weight
        weights = snr.clamp(max=5.0) / denominator(snr)
        assert loss.item() / 1e6 == pytest.approx(weights.mean().item(), rel=0.05)


# ---------------------------------------------------------------- guidance interval (Kynkaanniemi et al. 2024)
class StepCountingModel(CountingModel):
    """CountingModel that also records each call's timestep and rows: a guided step calls with 2B rows."""

    def __init__(self):
        super().__init__()
        self.steps = []  # (t, rows) per call

    def __call__(self, x, t, cond=None, drop=None):
        self.steps.append((int(t[0]), len(x)))
        return super().__call__(x, t, cond, drop)


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m", "ddpm"])
def test_guidance_interval_guides_only_the_steps_whose_sigma_lies_in_it(sampler):
    d = Diffusion(beta_schedule("linear", 50))
    abar = d.alphas_cumprod.double()
    sigma = ((1 - abar) / abar).sqrt()  # sigma_t = sqrt((1 - abar_t) / abar_t), increasing in t
    lo, hi = float(sigma[10]), float(sigma[30])  # (lo, hi]: t = 11 .. 30 are guided
    m = StepCountingModel()
    d.sample(m, (2, 1, 2, 2), cond=label_cond(2), steps=9, guidance=3.0, sampler=sampler, eta=1.0,
             guidance_interval=(lo, hi))
    guided = {t for t, rows in m.steps if rows == 4}
    plain = {t for t, rows in m.steps if rows == 2}
    assert guided == {t for t, _ in m.steps if 10 < t <= 30} and guided  # some steps guided ...
    assert plain == {t for t, _ in m.steps if not 10 < t <= 30} and plain  # ... and some not
    assert len(m.steps) == (50 if sampler == "ddpm" else 9)


def test_guidance_interval_none_or_covering_every_sigma_is_plain_guidance():
    d = Diffusion(beta_schedule("linear", 50))
    g = torch.Generator().manual_seed(0)
    everywhere = d.sample(CountingModel(), (2, 1, 2, 2), cond=label_cond(2), steps=5, guidance=2.0,
                          generator=torch.Generator().manual_seed(0))
    covering = d.sample(CountingModel(), (2, 1, 2, 2), cond=label_cond(2), steps=5, guidance=2.0,
                        generator=g, guidance_interval=(0.0, math.inf))
    assert torch.equal(everywhere, covering)


@pytest.mark.parametrize("interval", [(2.0, 1.0), (-1.0, 1.0), (1.0, 1.0), ("a", 2), (1.0,)])
def test_a_bad_guidance_interval_is_a_one_line_error(interval):
    d = Diffusion(beta_schedule("linear", 50))
    with pytest.raises(ValueError, match="guidance interval"):
        d.sample(CountingModel(), (1, 1, 2, 2), cond=label_cond(1), steps=2, guidance_interval=interval)


class ClassModel(torch.nn.Module):
    """out = pos.sum() + (v . label unless the label is dropped), with v = (2, 5, -3) per class: known outputs."""
    v = torch.tensor([2.0, 5.0, -3.0])

    def __init__(self):
        super().__init__()
        self.calls, self.rows, self.pos_dropped = 0, 0, False

    def forward(self, x, t, cond, drop):
        self.calls, self.rows = self.calls + 1, self.rows + x.shape[0]
        self.pos_dropped |= bool(drop["pos"].any())
        label = cond["label"].float() @ self.v  # (N,): a soft or one-hot label's mix of the class values
        value = cond["pos"].sum(1) + torch.where(drop["label"], torch.zeros_like(label), label)
        return value.view(-1, 1, 1, 1).expand_as(x)


@pytest.mark.parametrize("w", [1.0, 3.0])
def test_composition_guidance_against_its_closed_form(w):
    """out = out(none) + w ((1 - s)(out(A) - out(none)) + s (out(B) - out(none))) (Liu et al. 2022), the position
    shared by all three outputs, in ONE call of 3B rows."""
    d = Diffusion(beta_schedule("linear", 100))
    m = ClassModel()
    s = torch.tensor([0.0, 0.3, 1.0])
    a, b = 0, 2
    label = (1 - s)[:, None] * torch.eye(3)[a] + s[:, None] * torch.eye(3)[b]  # (3, 3) a walk's soft labels
    pos = torch.tensor([[1.0, 0.5], [0.0, -2.0], [3.0, 0.0]])
    out = d.guided_output(m, torch.zeros(3, 1, 2, 2), torch.tensor([5, 6, 7]), {"label": label, "pos": pos},
                          {"compose": w})
    none = pos.sum(1)
    expected = none + w * ((1 - s) * (none + m.v[a] - none) + s * (none + m.v[b] - none))
    assert torch.allclose(out[:, 0, 0, 0], expected)
    assert (m.calls, m.rows) == (1, 9) and not m.pos_dropped
    with pytest.raises(ValueError, match="at most two classes"):
        d.guided_output(m, torch.zeros(1, 1, 2, 2), torch.tensor([5]),
                        {"label": torch.full((1, 3), 1 / 3), "pos": pos[:1]}, {"compose": w})


def test_row_noise_is_the_same_whatever_the_batch():
    from ddpm import RowNoise
    alone = RowNoise([7]).draw((1, 1, 2, 2), "cpu"), RowNoise([7]).draw((1, 1, 2, 2), "cpu")
    mixed = RowNoise([3, 7, 7, 9])
    first = mixed.draw((4, 1, 2, 2), "cpu")
    assert torch.equal(first[1], alone[0][0]) and torch.equal(first[2], first[1]) and not torch.equal(first[0], first[1])


# ---------------------------------------------------------------- defaults that work
def test_sample_without_steps_or_eta_uses_all_timesteps_and_the_samplers_own_eta():
    """steps None: all T timesteps; eta None: ddpm.SAMPLER_ETA (ddim 0, dpm++2m 1, sample.py's defaults)."""
    from ddpm import SAMPLER_ETA
    assert SAMPLER_ETA == {"ddim": 0.0, "dpm++2m": 1.0, "ddpm": None}
    d = Diffusion(beta_schedule("cosine", 20))
    model = exact_eps_model(d)
    for sampler, eta in (("ddim", 0.0), ("dpm++2m", 1.0)):
        plain = d.sample(model, (6, 1, 4, 4), sampler=sampler, generator=torch.Generator().manual_seed(8))
        given = d.sample(model, (6, 1, 4, 4), steps=20, eta=eta, sampler=sampler,
                         generator=torch.Generator().manual_seed(8))
        assert torch.equal(plain, given), sampler
    other = d.sample(model, (6, 1, 4, 4), steps=20, eta=0.0, sampler="dpm++2m", generator=torch.Generator().manual_seed(8))
    assert not torch.equal(other, d.sample(model, (6, 1, 4, 4), sampler="dpm++2m",
                                           generator=torch.Generator().manual_seed(8)))  # the default is the SDE


def test_a_step_without_z_draws_its_own_noise():
    """p_sample and ddim_step with z None: torch.randn_like(x_t), the same as passing that noise."""
    d = Diffusion(beta_schedule("linear", 50))
    model = exact_eps_model(d)
    x, t, t_prev = torch.randn(3, 1, 4, 4), torch.full((3,), 20), torch.full((3,), 10)
    steps = (lambda z: d.p_sample(model, x, t, z=z), lambda z: d.ddim_step(model, x, t, t_prev, eta=1.0, z=z))
    for step in steps:
        torch.manual_seed(9)
        drawn = step(None)
        torch.manual_seed(9)
        assert torch.equal(drawn, step(torch.randn_like(x)))
    assert torch.equal(d.ddim_step(model, x, t, t_prev), d.ddim_step(model, x, t, t_prev, z=torch.zeros_like(x)))  # eta 0
