"""A compact conditional U-Net: eps_theta(x_t, t, label, pos).

The network predicts the noise in x_t. Besides the timestep t it takes two
conditions (PAPER.md, Method step 3):

- `label`: the class, an integer in [0, num_classes);
- `pos`:   the image's position in feature space, the 20-d UMAP vector of
           its SwinV2 features (standardised), shape (B, pos_dim).

Every condition becomes a vector of size emb_dim and they are summed into
one embedding, `UNet.condition_embedding`, that enters every residual block
through a scale and shift of its GroupNorm ("adaptive group norm", Dhariwal &
Nichol 2021). A missing condition (None) uses a learned "null" embedding, so
one network is also the unconditional model that classifier-free guidance
needs.

To add a new condition (a fork's experiment): give __init__ an embedding
module for it beside `label_embedding` / `pos_projection`, give forward() and
condition_embedding() a keyword argument for it, and add its vector to the
sum in condition_embedding(). Nothing else in the network changes, and
ddpm.py passes any keyword condition through untouched.

Layout (improved-diffusion style), e.g. for 28x28 MNIST with mults (1, 2, 2):
    28x28 -> [res blocks] -> 14x14 -> [res blocks] -> 7x7 -> [res blocks]
    -> middle (res, attention, res) -> back up, concatenating the skips.
Odd sizes (7 -> 4) are fine: upsampling goes to the skip's exact size.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017), (B,) -> (B, dim).

    emb[i] = cos(t w_i) for i < dim/2 and sin(t w_i) after, w_i = max_period^(-i / (dim/2)).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or fewer when the channel count is small."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so that the branch it ends starts as the identity / no-op."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """h = x + conv(SiLU(GN(conv(SiLU(GN(x)))) * (1 + scale) + shift)), (scale, shift) = Linear(emb)."""

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
        self.heads = max(1, channels // head_channels)
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


class Level(nn.Module):
    """The residual blocks (each optionally followed by attention) at one resolution."""

    def __init__(self, channels: list[int], emb_dim: int, dropout: float, attention: bool):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c_in, c_out, emb_dim, dropout) for c_in, c_out in channels)
        self.attns = nn.ModuleList(Attention(c_out) if attention else nn.Identity() for _, c_out in channels)


class UNet(nn.Module):
    def __init__(self, image_channels: int = 1, image_size: int = 28, base_channels: int = 32,
                 channel_mults: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 1,
                 attention_resolutions: tuple[int, ...] = (7,), dropout: float = 0.0,
                 num_classes: int | None = None, pos_dim: int | None = None):
        super().__init__()
        self.image_channels, self.image_size = image_channels, image_size
        self.num_classes, self.pos_dim = num_classes, pos_dim
        emb_dim = 4 * base_channels

        # --- Conditions: each maps to a (B, emb_dim) vector; see condition_embedding ---
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            # num_classes + 1 entries: the last one is the learned "null" label.
            self.label_embedding = nn.Embedding(num_classes + 1, emb_dim)
        if pos_dim is not None:
            # Zero-initialised last layer: at step 0 pos changes nothing, so
            # training starts from the label-only model.
            self.pos_projection = nn.Sequential(nn.Linear(pos_dim, emb_dim), nn.SiLU(),
                                                zero_module(nn.Linear(emb_dim, emb_dim)))
            self.pos_null = nn.Parameter(torch.zeros(emb_dim))  # used when pos is None

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
    def condition_embedding(self, t: torch.Tensor, label: torch.Tensor | None, pos: torch.Tensor | None) -> torch.Tensor:
        """emb = MLP(sinusoid(t)) + E_label[label or null] + P(pos) (or null), (B,) -> (B, emb_dim)."""
        b = t.shape[0]
        emb = self.time_mlp(timestep_embedding(t, self.input_conv.out_channels))
        if self.num_classes is not None:
            if label is None:
                label = torch.full((b,), self.num_classes, device=t.device, dtype=torch.long)  # the null label
            emb = emb + self.label_embedding(label)
        if self.pos_dim is not None:
            emb = emb + (self.pos_null.expand(b, -1) if pos is None else self.pos_projection(pos))
        return emb

    def check_inputs(self, x, t, label, pos) -> torch.Tensor:
        """Validate shapes and ranges; return t as a (B,) tensor."""
        expected = (self.image_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"UNet expects images of shape (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                             f"got {tuple(x.shape)}")
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(b) if t.dim() == 0 else t
        if tuple(t.shape) != (b,):
            raise ValueError(f"t must be a scalar or have shape ({b},), got {tuple(t.shape)}")
        if label is not None:
            if self.num_classes is None:
                raise ValueError("this UNet was built without num_classes; pass label=None or rebuild it with num_classes")
            if label.shape != (b,) or label.dtype.is_floating_point:
                raise ValueError(f"label must be an integer tensor of shape ({b},), got {label.dtype} {tuple(label.shape)}")
            if b and (int(label.min()) < 0 or int(label.max()) >= self.num_classes):
                raise ValueError(f"label values must lie in [0, {self.num_classes - 1}], "
                                 f"got {int(label.min())}..{int(label.max())}")
        if pos is not None:
            if self.pos_dim is None:
                raise ValueError("this UNet was built without pos_dim; pass pos=None or rebuild it with pos_dim")
            if tuple(pos.shape) != (b, self.pos_dim):
                raise ValueError(f"pos must have shape ({b}, {self.pos_dim}) (pos_dim={self.pos_dim}), got {tuple(pos.shape)}")
        return t

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor | None = None,
                pos: torch.Tensor | None = None) -> torch.Tensor:
        """eps_theta(x_t, t, label, pos): (B, C, H, W) -> (B, C, H, W)."""
        t = self.check_inputs(x, t, label, pos)
        emb = self.condition_embedding(t, label, pos)  # (B, emb_dim)

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
