"""The conditional U-Net: eps_theta(x_t, t, cond), or v_theta (train.py's default).

The network predicts the noise in x_t, or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
(ddpm.py converts either). Besides the timestep t it takes the
conditions of the method (docs/METHOD.md, step 3) as one dict `cond`:

- cond["label"]: the class, an integer tensor (B,) in [0, num_classes), or
                 a soft label, float (B, num_classes) class probabilities
                 whose embedding is the same mix of the class embeddings
                 (the report's "soft label" alternative, for comparison);
- cond["pos"]:   the image's position in feature space (the report's
                 `umap_loc`): its d-dim UMAP vector, standardised, float (B, d),
                 d = train.py's --pos-dim (the report: 20).

Every condition becomes a vector of size emb_dim (`condition_encoder`
builds the module that does it) and they are summed with the timestep's
embedding into one vector, in `UNet.condition_embedding`, that enters every
residual block through a scale and shift of its GroupNorm ("adaptive group
norm", Dhariwal & Nichol 2021).

Classifier-free guidance (Ho & Salimans 2022) needs the same network to be
the model without some or all of its conditions too. As in the well-known
implementations, conditions are dropped inside the one forward call: `drop`
is a dict name -> (B,) bool marking, per condition, the rows where that
condition is replaced by its learned "null" embedding (a single (B,) bool
tensor drops every condition of those rows). Training drops random rows per
condition; guided sampling stacks the condition sets it needs into one batch.

To add a condition (a fork's experiment), give `condition_encoder` a
branch for its name. Nothing else in the network changes.

Layout (improved-diffusion style), e.g. for 28x28 MNIST with train.py's default (--size compact: base 16,
mults (1, 2, 4), so widths 16, 32, 64):
    28x28 -> [res blocks] -> 14x14 -> [res blocks] -> 7x7 -> [res blocks]
    -> middle (res, attention, res) -> back up, concatenating the skips.
train.py's sizes (--size compact, small, paper: widths, blocks, attention) are plumbing/train_command.py's
`unet_kwargs`, which builds this class's arguments. A level's convolutions cost its pixels times its width
squared: small's 28x28 and 14x14 levels (32 and 64 wide) cost 4x its 7x7 one each; compact's three levels cost
the same, together a third of small's.
Odd sizes (7 -> 4) are fine: upsampling goes to the skip's exact size.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017), (B,) -> (B, dim).

    emb[i] = cos(t w_i) and emb[dim/2 + i] = sin(t w_i) for i < dim/2, w_i = max_period^(-i / (dim/2)); an odd
    dim gets a last column of zeros (as improved-diffusion's timestep_embedding).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, 2 half)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1) if dim % 2 else emb  # (B, dim)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or fewer when the channel count is small."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so that the branch it ends starts as the identity / no-op."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """out = skip(x) + conv2(dropout(SiLU(GN(h) * (1 + scale) + shift))), h = conv1(SiLU(GN(x))),
    (scale, shift) = Linear(SiLU(emb)); skip is the identity, or a 1x1 convolution when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_in, H, W) -> (B, C_out, H, W)
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # 2 x (B, C_out, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual."""

    def __init__(self, channels: int, head_channels: int = 32):
        super().__init__()
        # about channels / head_channels heads, as many as divide the channels evenly (any --base-channels works)
        self.heads = max(h for h in range(1, max(1, channels // head_channels) + 1) if channels % h == 0)
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)  # (B, 3, heads, d, HW)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # 3 x (B, heads, HW, d)
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v, (B, heads, HW, d)
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """(B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)) with a stride-2 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """(B, C, h, w) -> (B, C, H, W) of the matching skip (nearest neighbour, then a convolution)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class LabelEmbedding(nn.Embedding):
    """A learned vector per class: (B,) class index -> (B, dim); a soft label (B, K) of class
    probabilities p -> sum_k p_k E_k (the same mix of the class vectors)."""

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        if label.is_floating_point():
            return label.to(self.weight.dtype) @ self.weight  # (B, K) @ (K, dim) -> (B, dim)
        return super().forward(label)


class Level(nn.Module):
    """The residual blocks (each optionally followed by attention) at one resolution."""

    def __init__(self, channels: list[int], emb_dim: int, dropout: float, attention: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c_in, c_out, emb_dim, dropout) for c_in, c_out in channels)
        self.attns = nn.ModuleList(Attention(c_out) if attention else nn.Identity() for _, c_out in channels)


def condition_encoder(name: str, size: int, emb_dim: int) -> nn.Module:
    """The module that embeds one condition: its value -> (B, emb_dim). A new condition is a new branch.

    size: the number of categories of an integer condition (B,), or the width
    d of a float condition (B, d).
    """
    if name == "label":  # (B,) class index (or (B, K) soft label) -> a learned vector per class
        return LabelEmbedding(size, emb_dim)
    if name == "pos":  # (B, d) standardised UMAP position -> MLP
        # Zero-initialised last layer: at step 0 the position changes nothing,
        # so training starts from the model without it.
        return nn.Sequential(nn.Linear(size, emb_dim), nn.SiLU(), zero_module(nn.Linear(emb_dim, emb_dim)))
    raise ValueError(f"unknown condition {name!r}: the U-Net can embed 'label' and 'pos' "
                     "(a new condition needs a branch in unet.condition_encoder)")


def rename_old_keys(state_dict, prefix, *args) -> None:
    """Checkpoints of the previous release named the encoders cond_embedding and the null vectors cond_null."""
    for key in [k for k in state_dict if k.startswith(prefix + "cond_")]:
        new = key.replace(prefix + "cond_embedding.", prefix + "encoders.").replace(prefix + "cond_null.", prefix + "null_embeddings.")
        state_dict[new] = state_dict.pop(key)


class UNet(nn.Module):
    def __init__(self, image_channels: int = 1, image_size: int = 28, base_channels: int = 32,
                 channel_mults: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 1,
                 attention_resolutions: tuple[int, ...] = (), dropout: float = 0.0,
                 conditions: dict[str, int] | None = None):
        """conditions: name -> size of every condition the network takes (see condition_encoder),
        e.g. {"label": 10, "pos": 20}; None or {} is an unconditional model. The defaults are train.py's
        --size small U-Net for 28x28 MNIST (attention_resolutions (): attention only in the middle block);
        train.py's default, --size compact, is base_channels 16, channel_mults (1, 2, 4)."""
        super().__init__()
        self.image_channels, self.image_size = image_channels, image_size
        self.conditions = dict(conditions or {})
        self.time_dim = base_channels  # width of the sinusoidal timestep embedding, the input of time_mlp
        emb_dim = 4 * base_channels

        # --- Conditions: each maps to a (B, emb_dim) vector; see condition_embedding ---
        self.time_mlp = nn.Sequential(nn.Linear(self.time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.encoders = nn.ModuleDict(
            {name: condition_encoder(name, size, emb_dim) for name, size in self.conditions.items()})
        # The learned "null" embedding of each condition: what a dropped row sees.
        self.null_embeddings = nn.ParameterDict({name: nn.Parameter(torch.zeros(emb_dim)) for name in self.conditions})
        self._register_load_state_dict_pre_hook(rename_old_keys)

        # --- The U: down path, middle, up path ---
        self.input_conv = nn.Conv2d(image_channels, base_channels, 3, padding=1)
        widths = [base_channels * m for m in channel_mults]
        sizes = [image_size]
        for _ in channel_mults[1:]:
            sizes.append((sizes[-1] + 1) // 2)  # a stride-2 conv gives ceil(H/2)

        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skip_channels, ch = [base_channels], base_channels
        for i, (width, size) in enumerate(zip(widths, sizes)):
            pairs = []
            for _ in range(num_res_blocks):
                pairs.append((ch, width))
                ch = width
                skip_channels.append(ch)
            self.down.append(Level(pairs, emb_dim, dropout, size in attention_resolutions))
            if i < len(widths) - 1:
                self.downsample.append(Downsample(ch))
                skip_channels.append(ch)

        self.mid1 = ResBlock(ch, ch, emb_dim, dropout)
        self.mid_attn = Attention(ch)
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout)

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, (width, size) in reversed(list(enumerate(zip(widths, sizes)))):
            pairs = []
            for _ in range(num_res_blocks + 1):
                pairs.append((ch + skip_channels.pop(), width))
                ch = width
            self.up.append(Level(pairs, emb_dim, dropout, size in attention_resolutions))
            if i > 0:
                self.upsample.append(Upsample(ch))

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, image_channels, 3, padding=1)))

    # ------------------------------------------------------------------
    # The one place where conditions enter the network.
    # ------------------------------------------------------------------
    def condition_embedding(self, t: torch.Tensor, cond: dict, drop: dict | torch.Tensor | None) -> torch.Tensor:
        """emb = MLP(sinusoid(t)) + sum over conditions c of (E_c(cond[c]), or null_c where drop[c]), (B,) -> (B, emb_dim)."""
        emb = self.time_mlp(timestep_embedding(t, self.time_dim))  # (B,) -> (B, time_dim) -> (B, emb_dim)
        for name, embed in self.encoders.items():
            null = self.null_embeddings[name].to(emb.dtype).expand_as(emb)  # (emb_dim,) -> (B, emb_dim)
            if name not in cond:  # the unconditional model: every row null
                emb = emb + null
                continue
            e = embed(cond[name])  # (B, ...) -> (B, emb_dim)
            dropped = drop.get(name) if isinstance(drop, dict) else drop  # (B,) bool or None
            emb = emb + (e if dropped is None else torch.where(dropped[:, None], null, e.to(null.dtype)))
        return emb

    def check_inputs(self, x: torch.Tensor, t, cond: dict, drop) -> torch.Tensor:
        """Validate shapes (not values: reading them would stall a GPU every call); return t as (B,)."""
        expected = (self.image_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"UNet expects images of shape (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                             f"got {tuple(x.shape)}")
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(b) if t.dim() == 0 else t
        if tuple(t.shape) != (b,):
            raise ValueError(f"t must be a scalar or have shape ({b},), got {tuple(t.shape)}")
        unknown = set(cond) - set(self.conditions)
        if unknown:
            raise ValueError(f"this UNet takes the conditions {sorted(self.conditions)}, not {sorted(unknown)}")
        for name, value in cond.items():
            if len(value) != b:
                raise ValueError(f"condition {name!r} has {len(value)} rows for a batch of {b}")
        for name, dropped in (drop.items() if isinstance(drop, dict) else [("", drop)]):
            if dropped is not None and (tuple(dropped.shape) != (b,) or dropped.dtype != torch.bool):
                raise ValueError(f"drop{f'[{name!r}]' if name else ''} must be a bool tensor of shape ({b},), "
                                 f"got {dropped.dtype} {tuple(dropped.shape)}")
        return t

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict | None = None,
                drop: dict[str, torch.Tensor] | torch.Tensor | None = None) -> torch.Tensor:
        """eps_theta(x_t, t, cond) (or v): (B, C, H, W) -> (B, C, H, W); rows where drop[c] is True ignore cond[c]."""
        cond = cond or {}
        t = self.check_inputs(x, t, cond, drop)
        emb = self.condition_embedding(t, cond, drop)  # (B, emb_dim)

        h = self.input_conv(x)  # (B, C_img, H, W) -> (B, base, H, W)
        skips = [h]
        for i, level in enumerate(self.down):
            for block, attn in zip(level.blocks, level.attns):
                h = attn(block(h, emb))
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))
                skips.append(h)

        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)

        for i, level in enumerate(self.up):
            for block, attn in zip(level.blocks, level.attns):
                h = torch.cat([h, skips.pop()], dim=1)  # (B, C, H, W) -> (B, C + C_skip, H, W)
                h = attn(block(h, emb))
            if i < len(self.upsample):
                h = self.upsample[i](h, skips[-1].shape[-2:])  # (B, C, h, w) -> (B, C, 2h or 2h-1, ...)
        return self.out(h)  # (B, base, H, W) -> (B, C_img, H, W)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
