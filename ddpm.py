"""Denoising diffusion: noise schedules, the training loss, guidance and three samplers.

A DDPM (Ho et al. 2020) corrupts an image x_0 with Gaussian noise over T steps,

    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)      (Ho et al., eq. 2),

which has the closed form q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (eq. 4)
with alpha_t = 1 - beta_t and abar_t = prod_{s<=t} alpha_s. A network
eps_theta(x_t, t, cond) learns to predict the noise (or v, below); running the chain
backwards with it turns pure noise into an image.

This file knows nothing about the network except the call
`model(x_t, t, cond, drop) -> output`: `cond` is a dict of condition tensors
(for us `label` and/or `pos`, one row per image) and `drop` a dict of the
same names, each (B,) bool, marking the rows where the network must ignore
that condition (classifier-free guidance). Conditions pass through
untouched, whatever their names. The output is the noise eps (Ho et al.) or,
with prediction="v", the velocity v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
(Salimans & Ho 2022); `model_output_to_x0_eps` turns either into both.

The network may run in bf16 (autocast); everything here, the schedule
coefficients and the x_t updates, stays in float32: the network's output (eps or v) is cast back first.

Indices: t runs over 0 .. T-1 (t = 0 is the first noising step), as in
improved-diffusion.
"""
import math

import numpy as np
import torch
from tqdm.auto import tqdm

SCHEDULES = ("linear", "cosine")
# Condition dropout in training (Diffusion.losses), train.py's defaults: all conditions of an image together with
# DEFAULT_P_UNCOND (Ho & Salimans 2022), and each on its own with DEFAULT_P_DROP where a model has two or more
# (`default_p_drop`), which per-condition guidance needs: with both defaults a row of a label+pos model loses
# its pos with probability 0.1 + 0.9 * 0.1 = 0.19, and so its label. Chosen by measurement on the small U-Net
# at 600 steps (the default before 2026-12-07): docs/EXPERIMENT.md, "Why v-prediction and 600 steps".
DEFAULT_P_UNCOND, DEFAULT_P_DROP = 0.1, 0.1


def default_p_drop(names: list[str]) -> dict[str, float]:
    """train.py's --p-drop without a value: DEFAULT_P_DROP for each condition of a model with two or more, else none."""
    return {name: DEFAULT_P_DROP for name in names} if len(names) > 1 else {}


def beta_schedule(name: str, timesteps: int) -> torch.Tensor:
    """The variances beta_t, float64 of shape (T,), at index t = 0..T-1 (Ho et al.'s t = 1..T, less one)."""
    if name == "linear":
        # Ho et al. 2020: beta from 1e-4 to 0.02 for T = 1000; for other T both
        # ends scale by 1000/T so that abar_T stays near zero (improved-diffusion).
        scale = 1000 / timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    if name == "cosine":
        # Nichol & Dhariwal 2021, eq. 17: abar(t) = f(t) / f(0),
        # f(t) = cos^2( (t/T + s) / (1 + s) * pi/2 ),  s = 0.008,
        # beta_t = 1 - abar(t) / abar(t-1), clipped at 0.999.
        s = 0.008
        f = torch.cos((torch.arange(timesteps + 1, dtype=torch.float64) / timesteps + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def extract(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gather a[t] per batch element and shape it to broadcast over x.

    (T,) indexed by (B,) -> (B, 1, 1, 1) on x's device and dtype.
    """
    out = a.to(device=x.device, dtype=x.dtype)[t.to(x.device)]
    return out.view(-1, *([1] * (x.dim() - 1)))


class RowNoise:
    """Noise drawn per row from the row's own seed: each row's noise sequence is the same whatever rows it is
    batched with (boundary.boundary_samples: one walk's noise at every s, over search calls of any make-up).
    Rows with one seed share every draw. Pass it as `generator` to Diffusion.sample (noise_index None)."""

    def __init__(self, seeds):
        unique, self.row = np.unique(np.asarray(seeds, np.int64), return_inverse=True)  # row (B,): index into unique
        self.generators = [torch.Generator().manual_seed(int(s)) for s in unique]  # on the CPU: same on every device

    def draw(self, shape, device) -> torch.Tensor:
        """(B, ...) standard normal: each seed's next draw of shape[1:], for every row of that seed."""
        one = torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in self.generators])  # (seeds, ...)
        return one[torch.as_tensor(self.row)].to(device)


def randn(shape, generator: torch.Generator | RowNoise | None, device) -> torch.Tensor:
    """Standard normal noise; drawn from `generator` (on its device) when one is given."""
    if isinstance(generator, RowNoise):
        return generator.draw(shape, device)
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


# ---------------------------------------------------------------------------
# Names the Diffusion class uses: predictions, samplers, and the order and terms of guidance
# ---------------------------------------------------------------------------
PREDICTIONS = ("eps", "v")
# guidance {COMPOSE: w}: product composition of the classes of a soft label (Diffusion.composed_output)
COMPOSE, LABEL = "compose", "label"
SAMPLERS = ("ddim", "dpm++2m", "ddpm")
# Each sampler's eta when none is given (sample() with eta None, sample.py without --eta): deterministic DDIM,
# DPM-Solver++(2M)'s SDE form (sample.py's default sampler); the ddpm sampler has none (its noise is the
# posterior's, DDIM's eta = 1).
SAMPLER_ETA = {"ddim": 0.0, "dpm++2m": 1.0, "ddpm": None}


def check_guidance_interval(guidance_interval) -> None:
    """None, or (lo, hi) with 0 <= lo < hi (hi may be inf): else a one-line ValueError."""
    if guidance_interval is None:
        return
    try:
        lo, hi = (float(v) for v in guidance_interval)
    except (TypeError, ValueError):
        raise ValueError(f"the guidance interval must be two numbers LO,HI, got {guidance_interval!r}") from None
    if not (0 <= lo < hi) or math.isnan(hi):
        raise ValueError(f"the guidance interval LO,HI needs 0 <= LO < HI (sigma values; HI may be inf), "
                         f"got {lo},{hi}")


def guidance_order(names: list[str], guidance: float | dict) -> list[str]:
    """The chain order of guided_output: the request's conditions not named in a guidance dict first, then the
    named ones as written. A weight for a condition the request lacks (e.g. a dropped label) is ignored."""
    if not isinstance(guidance, dict):
        return list(names)
    return [n for n in names if n not in guidance] + [n for n in guidance if n in names]


def guidance_terms(names: list[str], guidance: float | dict) -> tuple[int, list[tuple[float, int, int]]]:
    """guided_output's sum as (base k, [(w, start k, end k), ...]): out = out(S_base) + sum w (out(S_end) - out(S_start)).

    Consecutive conditions of equal weight form one term; a leading term of weight 1 becomes the base.
    """
    order = guidance_order(names, guidance)
    weights = [float(guidance.get(n, 1.0)) if isinstance(guidance, dict) else float(guidance) for n in order]  # w_1 .. w_n
    terms, k = [], 0
    while k < len(order):
        end = k + 1
        while end < len(order) and weights[end] == weights[k]:
            end += 1
        terms.append((weights[k], k, end))
        k = end
    base = 0
    if terms and terms[0][0] == 1.0:
        base = terms.pop(0)[2]
    return base, terms


def _model_device(model) -> torch.device:
    """The device of a module's first parameter; the CPU for plain callables."""
    params = getattr(model, "parameters", None)
    first = next(params(), None) if params is not None else None
    return first.device if first is not None else torch.device("cpu")


class Diffusion:
    """The schedule tensors of one noise schedule, and everything computed from them.

    prediction: what the network outputs, "eps" (the noise, Ho et al. 2020) or
    "v" (the velocity v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, Salimans &
    Ho 2022). min_snr_gamma: weight the loss per timestep by Hang et al.'s
    min-SNR-gamma (None: the plain unweighted loss of Algorithm 1).

    The tensors are float32 on the CPU until `to(device)` moves them all once;
    `extract` moves a tensor only if it is not on the image's device yet.
    """

    def __init__(self, betas: torch.Tensor, prediction: str = "eps", min_snr_gamma: float | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with every value in (0, 1)")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        if min_snr_gamma is not None and not min_snr_gamma > 0:
            raise ValueError(f"min-SNR gamma must be positive, got {min_snr_gamma}")
        self.prediction, self.min_snr_gamma = prediction, min_snr_gamma
        self.num_timesteps = len(betas)  # T
        alphas = 1.0 - betas  # alpha_t
        alphas_cumprod = torch.cumprod(alphas, 0)  # abar_t
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])  # abar_{t-1}

        self.betas = betas.float()  # beta_t
        self.alphas_cumprod = alphas_cumprod.float()  # abar_t
        self.alphas_cumprod_prev = alphas_cumprod_prev.float()  # abar_{t-1}
        # abar_t for t = 0..T-1, then abar = 1 at index T, which index -1 also reaches: "t = -1" is x_0 itself.
        self.alphas_cumprod_to_x0 = torch.cat([alphas_cumprod, torch.ones(1, dtype=torch.float64)]).float()
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt().float()  # sqrt(abar_t)
        self.sqrt_one_minus_alphas_cumprod = (1 - alphas_cumprod).sqrt().float()  # sqrt(1 - abar_t)
        self.sqrt_recip_alphas_cumprod = (1 / alphas_cumprod).sqrt().float()  # 1 / sqrt(abar_t)
        self.sqrt_recipm1_alphas_cumprod = (1 / alphas_cumprod - 1).sqrt().float()  # sqrt(1/abar_t - 1)
        self.snr = (alphas_cumprod / (1 - alphas_cumprod)).float()  # SNR_t = abar_t / (1 - abar_t)

        # The posterior q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I), eq. 6-7 of Ho et al.
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        self.posterior_variance = posterior_variance.float()  # beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)
        # beta~_0 = 0, so its log is taken from beta~_1 (the value is never used: no noise at t = 0).
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([posterior_variance[1:2], posterior_variance[1:]])).float()  # log beta~_t
        self.posterior_mean_coef1 = (
            betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod)).float()  # beta_t sqrt(abar_{t-1}) / (1 - abar_t)
        self.posterior_mean_coef2 = (
            (1 - alphas_cumprod_prev) * alphas.sqrt() / (1 - alphas_cumprod)).float()  # (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)

    def to(self, device) -> "Diffusion":
        """Move every schedule tensor to `device` once (no host-device copy per step afterwards)."""
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    # ------------------------------------------------------------------
    # Forward process
    # ------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps  (eq. 4 of Ho et al.)."""
        return extract(self.sqrt_alphas_cumprod, t, x0) * x0 + extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_{t-1} | x_t, x_0)  (eq. 7 of Ho et al.)."""
        mean = extract(self.posterior_mean_coef1, t, x_t) * x0 + extract(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, extract(self.posterior_variance, t, x_t), extract(self.posterior_log_variance_clipped, t, x_t)

    # ------------------------------------------------------------------
    # Training: Algorithm 1 of Ho et al. 2020
    # ------------------------------------------------------------------
    def losses(self, model, x0: torch.Tensor, cond: dict | None = None, p_uncond: float = 0.0,
               generator: torch.Generator | None = None, p_drop: dict[str, float] | None = None):
        """Per example, the mean over its C H W values of (target - model(x_t, t, cond))^2 with t ~ U{0..T-1},
        eps ~ N(0, I); target eps or v. Algorithm 1's squared norm || . ||^2 divided by C H W (a constant factor).
        Returns (loss (B,), t (B,)); `loss` is their mean, the quantity training minimises.

        Condition dropout, so that one network is also the model without some
        or all of its conditions (what classifier-free guidance needs):
        - p_uncond: a row drops every condition (Ho & Salimans 2022);
        - p_drop[name]: a row also drops that condition with probability
          p_drop[name], one independent draw per condition, so a label+pos
          model is also a label model and a position model.
          Brooks et al. 2023 (sec. 3.2.1) instead draw exclusive cases, 5 % each:
          only one condition dropped, only the other, or both. Here the draws
          are independent, so a row may also drop both through its two own
          draws: P(both dropped) = p_uncond + (1 - p_uncond) p_drop[label] p_drop[pos],
          and P(pos dropped) = p_uncond + (1 - p_uncond) p_drop[pos] (0.19 with the defaults).
        One network call per step: the dropped rows are marked, not split off.
        With min_snr_gamma, each row's error is weighted by Hang et al. 2023's
        min(SNR_t, gamma) / SNR_t (eps) or min(SNR_t, gamma) / (SNR_t + 1) (v).
        """
        cond = cond or {}
        b = x0.shape[0]
        gen_device = generator.device if generator is not None else x0.device
        t = torch.randint(0, self.num_timesteps, (b,), generator=generator, device=gen_device).to(x0.device)
        noise = randn(x0.shape, generator, x0.device)
        x_t = self.q_sample(x0, t, noise)
        drop_all = (torch.rand(b, generator=generator, device=gen_device) < p_uncond).to(x0.device)  # (B,) bool
        drop = {name: drop_all for name in cond}
        for name in cond:  # in the order of cond, so the draws replay exactly
            if (p_drop or {}).get(name, 0) > 0:
                drop[name] = drop_all | (torch.rand(b, generator=generator, device=gen_device) < p_drop[name]).to(x0.device)
        out = model(x_t, t, cond, drop).float()  # float32 even when the network ran in bf16
        target = noise if self.prediction == "eps" else self.v_from_x0_eps(x0, noise, t)
        per_example = ((out - target) ** 2).mean(dim=tuple(range(1, x0.dim())))  # (B,)
        if self.min_snr_gamma is not None:
            snr = extract(self.snr, t, x0).view(-1)  # (B,)
            per_example = per_example * snr.clamp(max=self.min_snr_gamma) / (snr if self.prediction == "eps" else snr + 1)
        return per_example, t

    def loss(self, model, x0: torch.Tensor, cond: dict | None = None, p_uncond: float = 0.0,
             generator: torch.Generator | None = None, p_drop: dict[str, float] | None = None) -> torch.Tensor:
        """The training loss: the mean of `losses` over the batch (Algorithm 1 of Ho et al. 2020)."""
        return self.losses(model, x0, cond, p_uncond, generator, p_drop)[0].mean()

    # ------------------------------------------------------------------
    # From a network output to x_0 and eps, and back
    # ------------------------------------------------------------------
    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), eq. 4 solved for x_0."""
        return extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t / sqrt(abar_t) - x_0) / sqrt(1/abar_t - 1), eq. 4 solved for eps."""
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / extract(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    def v_from_x0_eps(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, sec. 4)."""
        return extract(self.sqrt_alphas_cumprod, t, x0) * eps - extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def model_output_to_x0_eps(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor):
        """(x_0, eps) from the network's output: eps itself, or v via
        x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v and eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v.

        Why v: near t = T-1, x_0 from eps multiplies eps's error by sqrt(1/abar_t - 1), about 1/sqrt(abar_t):
        up to 157 for the linear schedule with T = 1000 (abar_{T-1} = 4.0e-5), about 20,000 for the cosine one
        (abar_{T-1} = 2.4e-9), so a small eps error there is a large error in the image's mean; from v the
        factor is sqrt(1 - abar_t) <= 1.
        """
        if self.prediction == "eps":
            return self.predict_x0_from_eps(x_t, t, out), out
        a, s = extract(self.sqrt_alphas_cumprod, t, x_t), extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return a * x_t - s * out, s * x_t + a * out

    # ------------------------------------------------------------------
    # Classifier-free guidance, per condition
    # ------------------------------------------------------------------
    def guided_output(self, model, x_t: torch.Tensor, t: torch.Tensor, cond: dict | None,
                      guidance: float | dict[str, float]) -> torch.Tensor:
        """Classifier-free guidance (Ho & Salimans 2022) with one weight per condition.

        With the conditions in an order c_1 .. c_n and S_k = {c_1 .. c_k} (S_0 = none),

            out = out(S_0) + sum_k w_k (out(S_k) - out(S_{k-1}))

        (Brooks et al. 2023, eq. 3, for any number of conditions): w_k pushes the
        sample towards what condition c_k adds to the ones before it. A bare
        number w gives every condition that weight, and the sum telescopes to
        Ho & Salimans' out_uncond + w (out_cond - out_uncond); our w is their
        1 + w: w = 1 is no guidance. A dict {name: w} orders the conditions as
        written, after the unnamed ones (weight 1). Consecutive equal weights
        are one term, a leading weight 1 needs no unconditional output, and
        all sets needed are evaluated in ONE network call (len(sets) * B rows).
        The sum of the coefficients is 1, so guiding v is the same as guiding eps.
        """
        cond = cond or {}
        if isinstance(guidance, dict) and COMPOSE in guidance:
            return self.composed_output(model, x_t, t, cond, float(guidance[COMPOSE]))
        b = x_t.shape[0]
        base, terms = guidance_terms(list(cond), guidance)
        if not terms and base == len(cond):  # no guidance: the plain conditional model, B rows
            return model(x_t, t, cond, None).float()
        sets = sorted({base, *(k for _, start, end in terms for k in (start, end))}, reverse=True)  # most conditions first
        names = list(guidance_order(list(cond), guidance))
        drop = {name: torch.cat([torch.full((b,), name not in names[:k], dtype=torch.bool) for k in sets]).to(x_t.device)
                for name in cond}  # (len(sets) B,) per condition
        rows = len(sets)
        out = model(torch.cat([x_t] * rows), torch.cat([t] * rows), {n: torch.cat([v] * rows) for n, v in cond.items()},
                    drop).float().chunk(rows)  # len(sets) x (B, C, H, W)
        of = dict(zip(sets, out))  # k -> out(S_k)
        guided = of[base]
        for w, start, end in terms:
            guided = guided + w * (of[end] - of[start])
        return guided

    def composed_output(self, model, x_t: torch.Tensor, t: torch.Tensor, cond: dict, w: float) -> torch.Tensor:
        """Product composition of classes (Liu et al. 2022, "Compositional Visual Generation with Composable
        Diffusion Models", eq. 9 with weights w p_k):

            out = out(none) + w sum_k p_k (out(k) - out(none)),

        guidance {"compose": w}; cond["label"] a soft label p (B, K) with at most two classes of weight > 0
        per row (a walk's (1 - s) e_A + s e_B: out(none) + w ((1 - s)(out(A) - out(none)) + s (out(B) - out(none))).
        "none" drops the label alone: every other condition (the position) is shared by all three outputs.
        ONE network call of 3B rows: label dropped, the row's first class, its second (one-hot).
        """
        if LABEL not in cond or not cond[LABEL].is_floating_point() or cond[LABEL].dim() != 2:
            raise ValueError("composition guidance needs cond['label'] as class weights (B, K)")
        p = cond[LABEL].float()  # (B, K)
        if int((p > 0).sum(1).max()) > 2:
            raise ValueError("composition guidance composes at most two classes per row")
        b, k = p.shape
        weight, classes = p.topk(2, dim=1)  # (B, 2): the two classes of each row and their weights p_k
        onehot = torch.eye(k, device=p.device, dtype=p.dtype)
        labels = torch.cat([p, onehot[classes[:, 0]], onehot[classes[:, 1]]])  # (3B, K); the first B are dropped
        drop = {name: torch.zeros(3 * b, dtype=torch.bool, device=x_t.device) for name in cond}
        drop[LABEL][:b] = True
        shared = {name: torch.cat([v] * 3) for name, v in cond.items() if name != LABEL}
        none, first, second = model(torch.cat([x_t] * 3), torch.cat([t] * 3), {**shared, LABEL: labels},
                                    drop).float().chunk(3)  # 3 x (B, C, H, W)
        wa, wb = (w * weight[:, j].view(b, *([1] * (x_t.dim() - 1))).to(none.dtype) for j in (0, 1))  # (B, 1, 1, 1)
        return none + wa * (first - none) + wb * (second - none)

    def p_mean_variance(self, model, x_t: torch.Tensor, t: torch.Tensor, cond: dict | None = None,
                        guidance: float | dict = 1.0, clip_denoised: bool = True):
        """The reverse step p(x_{t-1} | x_t) = N(mu_theta, beta~_t I) ("fixed small" variance).

        mu_theta is the posterior mean with the predicted x_0 in place of the
        true one; the prediction is clipped to the image range [-1, 1] when clip_denoised.
        Returns (mean, variance, log_variance, predicted x_0).
        """
        x0, _ = self.predict_x0(model, x_t, t, cond, guidance, clip_denoised)
        mean, var, log_var = self.q_posterior_mean_variance(x0, x_t, t)
        return mean, var, log_var, x0

    def predict_x0(self, model, x_t, t, cond, guidance, clip_denoised: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, eps) of the guided network; with clip_denoised, x_0 clipped to [-1, 1] and eps made consistent with it."""
        x0, eps = self.model_output_to_x0_eps(x_t, t, self.guided_output(model, x_t, t, cond, guidance))
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
            eps = self.predict_eps_from_x0(x_t, t, x0)
        return x0, eps

    # ------------------------------------------------------------------
    # Sampling
    # ------------------------------------------------------------------
    def p_sample(self, model, x_t, t, cond=None, guidance=1.0, clip_denoised=True, z=None):
        """One ancestral step, x_{t-1} = mu_theta + sqrt(beta~_t) z, no noise at t = 0 (Ho et al. 2020, Algorithm 2's form);
        z (B, C, H, W) standard normal (None: drawn here, torch.randn_like(x_t)).

        Departs from Algorithm 2's mean (1/sqrt(alpha_t)) (x_t - beta_t / sqrt(1 - abar_t) eps): mu_theta is the
        posterior mean mu~_t(x0_hat, x_t) of eq. 7 at the predicted x0_hat, clipped to [-1, 1] when clip_denoised
        (improved-diffusion's form; without clipping the two are equal)."""
        mean, _, log_var, _ = self.p_mean_variance(model, x_t, t, cond, guidance, clip_denoised)
        nonzero = (t != 0).float().view(-1, *([1] * (x_t.dim() - 1)))  # (B, 1, 1, 1)
        z = torch.randn_like(x_t) if z is None else z
        return mean + nonzero * torch.exp(0.5 * log_var) * z

    def ddim_step(self, model, x_t, t, t_prev, cond=None, eta=0.0, guidance=1.0, clip_denoised=True, z=None):
        """One step of DDIM from t to t_prev < t (t_prev = -1 means x_0), Song et al. 2021, eq. 12 (their alpha
        is our abar), with the noise scale of their eq. 16:

            x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - c^2) eps + c z,
            c      = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).

        c is Song et al.'s sigma_t(eta), written c here: in this file sigma_t is the noise level of `sigma`.
        eta = 0 is deterministic; eta = 1 matches the DDPM posterior variance. z (B, C, H, W) standard normal
        (None: drawn here, torch.randn_like(x_t)).
        """
        x0, eps = self.predict_x0(model, x_t, t, cond, guidance, clip_denoised)
        abar = extract(self.alphas_cumprod, t, x_t)
        abar_prev = extract(self.alphas_cumprod_to_x0, t_prev, x_t)  # index -1 -> abar = 1
        c = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()  # (B, 1, 1, 1)
        z = torch.randn_like(x_t) if z is None else z
        return abar_prev.sqrt() * x0 + (1 - abar_prev - c ** 2).clamp(min=0).sqrt() * eps + c * z

    def dpm_solver_step(self, x_t, t, t_prev, x0, history, eta, z):
        """One step of DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2) from t to t_prev.

        With x_t = a_t x_0 + s_t eps, a_t = sqrt(abar_t) and s_t = sqrt(1 - abar_t) (Lu et al.'s alpha_t and
        sigma_t, renamed here: in this file sigma_t is the noise level s_t / a_t of `sigma`),
        lambda = log(a / s) and h = lambda_prev - lambda_t,
        the data prediction D is x_0 (first order) or, with the previous step's x_0' and its h',
        D = (1 + 1/(2r)) x_0 - 1/(2r) x_0', r = h'/h (second order, multistep). Then

            eta = 0 (the ODE):  x_prev = (s_prev / s_t) x_t - a_prev (e^{-h} - 1) D,
            eta = 1 (the SDE):  x_prev = (s_prev / s_t) e^{-h} x_t + a_prev (1 - e^{-2h}) D
                                         + s_prev sqrt(1 - e^{-2h}) z   (Lu et al., SDE-DPM-Solver++(2M)).

        At first order the SDE step is exactly DDIM with eta = 1. The last step (to x_0) is first order
        ("lower order final"). `history` is (x_0', h') of the previous step or None; returns (x_prev, (x_0, h)).
        """
        abar = extract(self.alphas_cumprod, t, x_t)
        abar_prev = extract(self.alphas_cumprod_to_x0, t_prev, x_t)
        a_prev, s_t, s_prev = abar_prev.sqrt(), (1 - abar).sqrt(), (1 - abar_prev).sqrt()
        exp_minus_h = s_prev * abar.sqrt() / (a_prev * s_t)  # e^{-h} = (a_t s_prev) / (a_prev s_t)
        last = bool((t_prev < 0).all())
        h = None if last else torch.log(1 / exp_minus_h)  # (B, 1, 1, 1)
        d = x0
        if history is not None and not last:
            x0_before, h_before = history
            r = h_before / h
            d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_before
        if eta == 0:
            x_prev = s_prev / s_t * x_t - a_prev * (exp_minus_h - 1) * d
        else:
            x_prev = (s_prev / s_t * exp_minus_h * x_t + a_prev * (1 - exp_minus_h ** 2) * d
                      + s_prev * (1 - exp_minus_h ** 2).clamp(min=0).sqrt() * z)
        return x_prev, (x0, h)

    def ddim_timesteps(self, steps: int) -> list[int]:
        """`steps` evenly spaced timesteps from T-1 down to 0."""
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"sampling steps must be between 1 and {self.num_timesteps} (the schedule's T), got {steps}")
        return torch.linspace(self.num_timesteps - 1, 0, steps).round().long().unique_consecutive().tolist()

    def logsnr_timesteps(self, steps: int) -> list[int]:
        """Up to `steps` timesteps from T-1 down to 0, evenly spaced in
        lambda_t = log(sqrt(abar_t) / sqrt(1 - abar_t)) = 0.5 log SNR_t = -log sigma_t
        (Lu et al.'s lambda = log(alpha_t / sigma_t), in their notation; their alpha_t, sigma_t are a_t, s_t of
        dpm_solver_step, not this file's alpha_t = 1 - beta_t nor the sigma_t of `sigma`): each of `steps`
        evenly spaced values of lambda from lambda_{T-1} to lambda_0 is taken to its nearest timestep, and
        repeats are merged, so where the grid is finer than the schedule fewer than `steps` remain (e.g. 9 of 10
        on the cosine schedule with T = 1000).

        DPM-Solver's spacing for low-resolution images (Lu et al. 2022, sec. 5): on the linear schedule
        evenly spaced t would end with one long step in lambda next to a short one (a ratio r near 0.2),
        where the second-order extrapolation overshoots.
        """
        self.ddim_timesteps(steps)  # the same range check
        lam = 0.5 * torch.log(self.snr.double().cpu())  # (T,), decreasing in t
        grid = torch.linspace(lam[-1].item(), lam[0].item(), steps, dtype=torch.float64)  # from t = T-1 to t = 0
        return (lam[None, :] - grid[:, None]).abs().argmin(1).unique_consecutive().tolist()

    def sampler_timesteps(self, sampler: str, steps: int | None) -> list[int]:
        """The timesteps `sample` visits with `sampler`, from the noisiest: ddpm all T (T-1 .. 0), ddim
        `ddim_timesteps`, dpm++2m `logsnr_timesteps`."""
        if sampler == "ddpm":
            return list(range(self.num_timesteps - 1, -1, -1))
        return self.ddim_timesteps(steps) if sampler == "ddim" else self.logsnr_timesteps(steps)

    def sigma(self, t: int) -> float:
        """The noise level of step t in the variance-exploding view x_t / sqrt(abar_t) = x_0 + sigma_t eps:
        sigma_t = sqrt((1 - abar_t) / abar_t) (Karras et al. 2022's sigma; the sigma_t of this file and of
        --guidance-interval, not DDIM's noise scale c nor DPM-Solver's s_t = sqrt(1 - abar_t))."""
        abar = float(self.alphas_cumprod[t])
        return math.sqrt((1 - abar) / abar)

    def step_guidance(self, t: int, guidance: float | dict, guidance_interval: tuple[float, float] | None):
        """The guidance of step t: `guidance` where sigma_t lies in (lo, hi] of guidance_interval (or always,
        None), else weight 1: the plain conditional model (one B-row call), or for composition {"compose": 1}
        (still one 3B-row call). Kynkaanniemi et al. 2024, "Applying
        Guidance in a Limited Interval Improves Sample and Distribution Quality in Diffusion Models", sec. 3:
        guidance at the highest noise levels only narrows the classes' modes, at the lowest it does little."""
        if guidance_interval is None:
            return guidance
        lo, hi = guidance_interval
        if lo < self.sigma(t) <= hi:
            return guidance
        # outside: weight 1, in the composition form too ((1 - s) out(A) + s out(B), not out(soft label))
        return {COMPOSE: 1.0} if isinstance(guidance, dict) and COMPOSE in guidance else 1.0

    @torch.no_grad()
    def sample(self, model, shape, cond: dict | None = None, steps: int | None = None, eta: float | None = None,
               guidance: float | dict = 1.0, generator: torch.Generator | RowNoise | None = None, device=None,
               clip_denoised: bool = True, progress: bool = False, sampler: str = "ddim",
               noise_index: torch.Tensor | None = None,
               guidance_interval: tuple[float, float] | None = None) -> torch.Tensor:
        """Draw images of `shape` (B, C, H, W) in [-1, 1]-ish from pure noise x_T ~ N(0, I).

        This method's own defaults (DDIM over all T steps) are the library's; sample.py's are
        generation.DEFAULT_SAMPLER and DEFAULT_STEPS (DPM-Solver++(2M), 10 steps), which `generation.generate` passes.

        sampler "ddpm": the full ancestral sampler, Algorithm 2 of Ho et al. (T network calls; steps and eta
        ignored); "ddim": DDIM over `steps` evenly spaced timesteps with the given eta in [0, 1]; "dpm++2m":
        DPM-Solver++(2M) over up to `steps` timesteps evenly spaced in log-SNR (logsnr_timesteps), eta 0 (ODE)
        or 1 (SDE). steps None: all T timesteps (for dpm++2m, fewer: logsnr_timesteps merges repeats). eta None:
        the sampler's own, SAMPLER_ETA (ddim 0, dpm++2m 1: what sample.py uses when --eta is not given).
        guidance: see guided_output.
        noise_index (B,) long: rows with the same index share their starting noise and every step's noise
        (a walk that changes only its conditions); None: every row its own noise.
        guidance_interval (lo, hi): guide only at steps whose sigma_t lies in (lo, hi], see step_guidance.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        eta = SAMPLER_ETA[sampler] if eta is None else eta
        steps = self.num_timesteps if steps is None else steps
        if sampler == "dpm++2m" and eta not in (0, 1):
            raise ValueError(f"DPM-Solver++(2M) takes eta 0 (ODE) or 1 (SDE), got {eta}")
        check_guidance_interval(guidance_interval)
        if device is None:
            device = next(iter(cond.values())).device if cond else _model_device(model)
        b = shape[0]
        at = lambda t: self.step_guidance(t, guidance, guidance_interval)  # noqa: E731  the weights of step t

        def draw():  # (B, C, H, W) standard normal noise, shared by rows of one noise_index
            if noise_index is None:
                return randn(shape, generator, device)
            return randn((int(noise_index.max()) + 1, *shape[1:]), generator, device)[noise_index.to(device)]

        x = draw()  # x_T
        if sampler == "ddpm":
            for t in tqdm(self.sampler_timesteps(sampler, steps), desc="DDPM", disable=not progress, leave=False):
                x = self.p_sample(model, x, torch.full((b,), t, device=device, dtype=torch.long),
                                  cond, at(t), clip_denoised, draw())
            return x
        ts = self.sampler_timesteps(sampler, steps)
        history = None
        for t, t_prev in tqdm(list(zip(ts, ts[1:] + [-1])), desc=sampler, disable=not progress, leave=False):
            t_b = torch.full((b,), t, device=device, dtype=torch.long)
            t_prev_b = torch.full((b,), t_prev, device=device, dtype=torch.long)
            if sampler == "ddim":
                x = self.ddim_step(model, x, t_b, t_prev_b, cond, eta, at(t), clip_denoised, draw())
            else:
                x0, _ = self.predict_x0(model, x, t_b, cond, at(t), clip_denoised)
                x, history = self.dpm_solver_step(x, t_b, t_prev_b, x0, history, eta, draw() if eta else None)
        return x
