"""Denoising diffusion: noise schedules, the training loss and two samplers.

A DDPM (Ho et al. 2020) corrupts an image x_0 with Gaussian noise over T steps,

    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I),

which has the closed form q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)
with alpha_t = 1 - beta_t and abar_t = prod_{s<=t} alpha_s. A network
eps_theta(x_t, t, cond) learns to predict the noise; running the chain
backwards with it turns pure noise into an image.

This file knows nothing about the network except the call
`model(x_t, t, cond, drop) -> eps`: `cond` is a dict of condition tensors
(for us `label` and/or `pos`, one row per image) and `drop` (B,) bool marks
the rows whose conditions the network must ignore (classifier-free
guidance). Conditions pass through untouched, whatever their names.

The network may run in bf16 (autocast); everything here, the schedule
coefficients and the x_t updates, stays in float32: eps is cast back first.

Indices: t runs over 0 .. T-1 (t = 0 is the first noising step), as in
improved-diffusion.
"""
import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

SCHEDULES = ("linear", "cosine")


def beta_schedule(name: str, timesteps: int) -> torch.Tensor:
    """The variances beta_1..beta_T, float64 of shape (T,)."""
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


def randn(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard normal noise; drawn from `generator` (on its device) when one is given."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


class Diffusion:
    """The schedule tensors of one noise schedule, and everything computed from them.

    The tensors live on the CPU in float32 and are moved to the device of the
    image they are applied to (see `extract`), so a Diffusion follows the model
    wherever it goes.
    """

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D tensor with every value in (0, 1)")
        self.num_timesteps = len(betas)  # T
        alphas = 1.0 - betas  # alpha_t
        alphas_cumprod = torch.cumprod(alphas, 0)  # abar_t
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])  # abar_{t-1}

        self.betas = betas.float()  # beta_t
        self.alphas_cumprod = alphas_cumprod.float()  # abar_t
        self.alphas_cumprod_prev = alphas_cumprod_prev.float()  # abar_{t-1}
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt().float()  # sqrt(abar_t)
        self.sqrt_one_minus_alphas_cumprod = (1 - alphas_cumprod).sqrt().float()  # sqrt(1 - abar_t)
        self.sqrt_recip_alphas_cumprod = (1 / alphas_cumprod).sqrt().float()  # 1 / sqrt(abar_t)
        self.sqrt_recipm1_alphas_cumprod = (1 / alphas_cumprod - 1).sqrt().float()  # sqrt(1/abar_t - 1)

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
    def loss(self, model, x0: torch.Tensor, cond: dict | None = None, p_uncond: float = 0.0,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """|| eps - eps_theta(x_t, t, cond) ||^2 with t ~ U{0..T-1}, eps ~ N(0, I).

        With p_uncond > 0 each example's conditions are dropped with that
        probability, so that one network is both the conditional and the
        unconditional model that classifier-free guidance needs (Ho & Salimans
        2022). One network call per step: the dropped rows are marked, not split off.
        """
        b = x0.shape[0]
        gen_device = generator.device if generator is not None else x0.device
        t = torch.randint(0, self.num_timesteps, (b,), generator=generator, device=gen_device).to(x0.device)
        noise = randn(x0.shape, generator, x0.device)
        x_t = self.q_sample(x0, t, noise)
        drop = (torch.rand(b, generator=generator, device=gen_device) < p_uncond).to(x0.device)  # (B,) bool
        eps = model(x_t, t, cond or {}, drop).float()  # float32 even when the network ran in bf16
        return F.mse_loss(eps, noise)

    # ------------------------------------------------------------------
    # From a noise prediction to x_0 and back
    # ------------------------------------------------------------------
    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), eq. 4 solved for x_0."""
        return extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t / sqrt(abar_t) - x_0) / sqrt(1/abar_t - 1), eq. 4 solved for eps."""
        return (extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / extract(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    def guided_eps(self, model, x_t: torch.Tensor, t: torch.Tensor, cond: dict | None, guidance: float) -> torch.Tensor:
        """Classifier-free guidance (Ho & Salimans 2022):

            eps = eps_uncond + w (eps_cond - eps_uncond).

        Our w is Ho & Salimans' 1 + w: w = 1 is the plain conditional model
        (one network call on B rows), w = 0 the unconditional one. Otherwise
        one call on 2B rows: the batch with its conditions, then without.
        """
        cond = cond or {}
        b = x_t.shape[0]
        if guidance == 1.0 or not cond:
            return model(x_t, t, cond, None).float()
        keep_drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x_t.device)
        doubled = {name: torch.cat([value, value]) for name, value in cond.items()}  # (B, ...) -> (2B, ...)
        eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), doubled, keep_drop).float()  # (2B, C, H, W)
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_uncond + guidance * (eps_cond - eps_uncond)

    def p_mean_variance(self, model, x_t: torch.Tensor, t: torch.Tensor, cond: dict | None = None,
                        guidance: float = 1.0, clip_denoised: bool = True):
        """The reverse step p(x_{t-1} | x_t) = N(mu_theta, beta~_t I) ("fixed small" variance).

        mu_theta is the posterior mean with the predicted x_0 in place of the
        true one; the prediction is clipped to the image range [-1, 1].
        Returns (mean, variance, log_variance, predicted x_0).
        """
        eps = self.guided_eps(model, x_t, t, cond, guidance)
        x0 = self.predict_x0_from_eps(x_t, t, eps)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean, var, log_var = self.q_posterior_mean_variance(x0, x_t, t)
        return mean, var, log_var, x0

    # ------------------------------------------------------------------
    # Sampling
    # ------------------------------------------------------------------
    def p_sample(self, model, x_t, t, cond=None, guidance=1.0, clip_denoised=True, generator=None):
        """One step of Algorithm 2 of Ho et al. 2020: x_{t-1} = mu_theta + sqrt(beta~_t) z, no noise at t = 0."""
        mean, _, log_var, _ = self.p_mean_variance(model, x_t, t, cond, guidance, clip_denoised)
        z = randn(x_t.shape, generator, x_t.device)
        nonzero = (t != 0).float().view(-1, *([1] * (x_t.dim() - 1)))  # (B, 1, 1, 1)
        return mean + nonzero * torch.exp(0.5 * log_var) * z

    def ddim_step(self, model, x_t, t, t_prev, cond=None, eta=0.0, guidance=1.0, clip_denoised=True, generator=None):
        """One step of DDIM (Song et al. 2021, eq. 12) from t to t_prev < t (t_prev = -1 means x_0):

            x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z,
            sigma  = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).

        eta = 0 is deterministic; eta = 1 matches the DDPM posterior variance.
        """
        eps = self.guided_eps(model, x_t, t, cond, guidance)
        x0 = self.predict_x0_from_eps(x_t, t, eps)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
            eps = self.predict_eps_from_x0(x_t, t, x0)  # keep eps consistent with the clipped x_0
        abar = extract(self.alphas_cumprod, t, x_t)
        abar_prev = extract(torch.cat([self.alphas_cumprod, torch.ones(1)]), t_prev, x_t)  # index -1 -> abar = 1
        sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
        z = randn(x_t.shape, generator, x_t.device)
        return abar_prev.sqrt() * x0 + (1 - abar_prev - sigma ** 2).clamp(min=0).sqrt() * eps + sigma * z

    def ddim_timesteps(self, steps: int) -> list[int]:
        """`steps` evenly spaced timesteps from T-1 down to 0."""
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"DDIM steps must be between 1 and {self.num_timesteps} (the schedule's T), got {steps}")
        return torch.linspace(self.num_timesteps - 1, 0, steps).round().long().unique_consecutive().tolist()

    @torch.no_grad()
    def sample(self, model, shape, cond: dict | None = None, steps: int | None = None, eta: float = 0.0,
               guidance: float = 1.0, generator: torch.Generator | None = None, device=None,
               clip_denoised: bool = True, progress: bool = False) -> torch.Tensor:
        """Draw images of `shape` (B, C, H, W) in [-1, 1]-ish from pure noise x_T ~ N(0, I).

        steps=None: the full DDPM ancestral sampler, Algorithm 2 of Ho et al.
        (T network calls). steps=S: DDIM over S evenly spaced timesteps with
        the given eta. guidance=w: classifier-free guidance (see guided_eps).
        """
        if device is None:
            device = next(iter(cond.values())).device if cond else _model_device(model)
        b = shape[0]
        x = randn(shape, generator, device)  # x_T
        if steps is None:
            ts = list(range(self.num_timesteps - 1, -1, -1))
            for t in tqdm(ts, desc="DDPM", disable=not progress, leave=False):
                x = self.p_sample(model, x, torch.full((b,), t, device=device, dtype=torch.long),
                                  cond, guidance, clip_denoised, generator)
            return x
        ts = self.ddim_timesteps(steps)
        for t, t_prev in tqdm(list(zip(ts, ts[1:] + [-1])), desc="DDIM", disable=not progress, leave=False):
            x = self.ddim_step(model, x, torch.full((b,), t, device=device, dtype=torch.long),
                               torch.full((b,), t_prev, device=device, dtype=torch.long),
                               cond, eta, guidance, clip_denoised, generator)
        return x


def _model_device(model) -> torch.device:
    """The device of a module's first parameter; the CPU for plain callables."""
    params = getattr(model, "parameters", None)
    first = next(params(), None) if params is not None else None
    return first.device if first is not None else torch.device("cpu")
