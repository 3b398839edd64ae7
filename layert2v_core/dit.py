"""Wan2.1 text-to-video DiT with LayerAdaLN and layered cross-attention (LayerT2V).

Without a LayerSpec the forward is exactly Wan2.1 T2V. With one, the latent's time axis holds the serialized
segments [full, bg, fg_1, mask_1, ...]: every token of a segment adds its category row of the shared LayerAdaLN
table to the timestep modulation, and its cross-attention sees only the prompts the routing policy allows.
Segments are contiguous runs of tokens, so both additions work on a [B, segments, tokens, dim] view: no per-token
modulation tensor and no per-token attention mask is ever built.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import SINGLE_FOREGROUND_CATEGORIES, LayerSpec

# Self-attention kernel (q, k, v [B, heads, L, head_dim] -> out): exact SDPA unless an opt-in one is swapped in
# (see attention_kernels.py).
self_attention_kernel = F.scaled_dot_product_attention


@dataclass
class DiTConfig:
    """Defaults are Wan2.1-T2V-1.3B."""

    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    num_heads: int = 12
    num_layers: int = 30
    patch_size: tuple[int, int, int] = (1, 2, 2)
    in_dim: int = 16
    out_dim: int = 16
    text_len: int = 512
    text_dim: int = 4096
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    num_layer_categories: int = SINGLE_FOREGROUND_CATEGORIES
    routing_policy: str = "paper"
    rope: str = "3d"  # "4d" adds a layer axis (the official code's use_4d_rope), used by layered forwards
    rope_dims: tuple[int, int, int, int] | None = None  # 4D head split (layer, t, h, w); None: 8:42:40:38

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal_embedding(freq_dim: int, t: torch.Tensor) -> torch.Tensor:
    """[cos | sin] timestep embedding computed in float64, as Wan does, returned in float32."""
    half = freq_dim // 2
    t = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


def rope_tables(head_dim: int, max_positions: int = 1024, theta: float = 10000.0) -> tuple[torch.Tensor, ...]:
    """cos/sin tables [positions, pairs] for the t, h and w parts of a head (44:42:42 for head_dim 128)."""
    hw = 2 * (head_dim // 6)
    tables = []
    for width in (head_dim - 2 * hw, hw, hw):
        # Explicit CPU device: the model may be built under torch.device("meta"), and these are not weights.
        inv = 1.0 / torch.pow(theta, torch.arange(0, width, 2, dtype=torch.float64, device="cpu") / width)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float64, device="cpu"), inv)
        tables.append(angles)
    return tuple(tables)


def rope_for_grid(tables, frames: int, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [frames*height*width, 1, head_dim/2] for tokens ordered (frame, row, column)."""
    t, h, w = tables
    angles = torch.cat([
        t[:frames, None, None, :].expand(frames, height, width, -1),
        h[None, :height, None, :].expand(frames, height, width, -1),
        w[None, None, :width, :].expand(frames, height, width, -1),
    ], dim=-1).reshape(frames * height * width, 1, -1)
    return torch.cos(angles).float().to(device), torch.sin(angles).float().to(device)


ROPE_MODES = ("3d", "4d")
# The official 4D split of a 128-wide head: layer, time, height, width channels.
OFFICIAL_ROPE_4D_DIMS = (8, 42, 40, 38)


def rope_dims_4d(head_dim: int, dims=None) -> tuple[int, int, int, int]:
    """The (layer, t, h, w) channel split of a head for 4D RoPE: `dims` checked, or the official 8:42:40:38."""
    if dims is None:
        if head_dim != 128:
            raise ValueError(f"4D RoPE has a default head split (8, 42, 40, 38) only for head_dim 128, this model's "
                             f"is {head_dim}; give rope_dims (layer, t, h, w) that sum to {head_dim}")
        return OFFICIAL_ROPE_4D_DIMS
    dims = tuple(int(d) for d in dims)
    if len(dims) != 4 or sum(dims) != head_dim or any(d <= 0 or d % 2 for d in dims):
        raise ValueError(f"rope_dims must be four positive even widths (layer, t, h, w) summing to head_dim "
                         f"{head_dim}, got {dims}")
    return dims


def rope_tables_4d(head_dim: int, dims=None, max_positions: int = 1024,
                   theta: float = 10000.0) -> tuple[torch.Tensor, ...]:
    """Angle tables [positions, pairs] for the layer, t, h and w parts of a head (the official 4D RoPE)."""
    tables = []
    for width in rope_dims_4d(head_dim, dims):
        inv = 1.0 / torch.pow(theta, torch.arange(0, width, 2, dtype=torch.float64, device="cpu") / width)
        tables.append(torch.outer(torch.arange(max_positions, dtype=torch.float64, device="cpu"), inv))
    return tuple(tables)


def rope_for_layered_grid(tables, segments: int, frames: int, height: int, width: int,
                          device) -> tuple[torch.Tensor, torch.Tensor]:
    """4D cos, sin [segments*frames*height*width, 1, head_dim/2]: a token's layer position is its segment index
    and its time position counts from its segment's first frame."""
    lay, t, h, w = tables
    size = (segments, frames, height, width)
    angles = torch.cat([
        lay[:segments, None, None, None, :].expand(*size, -1),
        t[None, :frames, None, None, :].expand(*size, -1),
        h[None, None, :height, None, :].expand(*size, -1),
        w[None, None, None, :width, :].expand(*size, -1),
    ], dim=-1).reshape(segments * frames * height * width, 1, -1)
    return torch.cos(angles).float().to(device), torch.sin(angles).float().to(device)


def apply_rope(x: torch.Tensor, rotation: torch.Tensor, sin: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate adjacent channel pairs of x [B, L, heads, head_dim] by complex `rotation` [L, 1, head_dim/2] (or by
    cos = `rotation` and `sin`), Wan's complex-pair convention: one complex multiply, not four real ones and a stack."""
    if sin is not None:
        rotation = torch.complex(rotation, sin)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation).flatten(-2).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Fused kernel, normalised in float32 and rounded before the weight, as Wan does.
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the weight dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


class Attention(nn.Module):
    """Multi-head attention with q/k RMS-normalised over the whole width (across heads), as Wan2.1."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1))  # [B, L, heads, head_dim]

    def self_attention(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        q = apply_rope(self._heads(self.norm_q(self.q(x))), rope)
        k = apply_rope(self._heads(self.norm_k(self.k(x))), rope)
        v = self._heads(self.v(x))
        out = self_attention_kernel(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.o(out.transpose(1, 2).flatten(2))

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, heads, rows, head_dim] of an embedded context: fixed for a whole generation."""
        k = self._heads(self.norm_k(self.k(context))).transpose(1, 2)
        v = self._heads(self.v(context)).transpose(1, 2)
        return k, v

    def cross_attention(self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None,
                        kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x [B, L, dim]; bias None (every token sees every row) or [B, segments, rows] additive routing bias;
        kv: `context_kv(context)` computed earlier, or None to project `context` here."""
        q = self._heads(self.norm_q(self.q(x)))
        k, v = kv if kv is not None else self.context_kv(context)
        if bias is None:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v)
            return self.o(out.transpose(1, 2).flatten(2))
        b, segments = bias.shape[:2]
        # Fold segments into the batch: each segment's queries share one key-row mask, broadcast over queries.
        q = q.unflatten(1, (segments, -1)).permute(0, 1, 3, 2, 4).flatten(0, 1)
        k = k.unsqueeze(1).expand(-1, segments, -1, -1, -1).flatten(0, 1)
        v = v.unsqueeze(1).expand(-1, segments, -1, -1, -1).flatten(0, 1)
        mask = bias.to(q.dtype).flatten(0, 1)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.unflatten(0, (b, segments)).permute(0, 1, 3, 2, 4).flatten(1, 2)
        return self.o(out.flatten(2))


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = Attention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = LayerNorm(dim, cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = Attention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, context: torch.Tensor, rope: torch.Tensor,
                bias: torch.Tensor | None, cache: dict | None = None) -> torch.Tensor:
        """x [B, L, dim] float32 residual stream; e [B, segments, 6, dim] float32 per-segment modulation;
        cache: this block's store for the context keys/values, kept across the forwards of one generation."""
        dtype = self.ffn[0].bias.dtype  # the compute dtype, also when weights are stored in fp8
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float().unsqueeze(1) + e).unbind(2)
        segments = e.shape[1]

        def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            h = h.unflatten(1, (segments, -1))
            return torch.addcmul(shift[:, :, None], h, 1 + scale[:, :, None]).flatten(1, 2).to(dtype)

        def add_gated(x: torch.Tensor, h: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
            # x + h * gate in one pass, in float32 (the residual stream's dtype).
            return torch.addcmul(x.unflatten(1, (segments, -1)), h.unflatten(1, (segments, -1)),
                                 gate[:, :, None]).flatten(1, 2)

        kv = None if cache is None else cache.get("kv")
        if kv is None:
            kv = self.cross_attn.context_kv(context)
            if cache is not None:
                cache["kv"] = kv
        x = add_gated(x, self.self_attn.self_attention(modulate(self.norm1(x), shift1, scale1), rope), gate1)
        x = x + self.cross_attn.cross_attention(self.norm3(x).to(dtype), context, bias, kv).float()
        x = add_gated(x, self.ffn(modulate(self.norm2(x), shift2, scale2)), gate2)
        return x


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float() + e.unsqueeze(1)).unbind(1)
        h = torch.addcmul(shift[:, None], self.norm(x), 1 + scale[:, None])
        return self.head(h.to(self.head.weight.dtype))


class LayerAdaLN(nn.Module):
    """One [categories, 6, dim] table shared by all blocks; zero at start so the model begins as plain Wan."""

    def __init__(self, num_categories: int, dim: int):
        super().__init__()
        self.layer_modulation = nn.Parameter(torch.zeros(num_categories, 6, dim))


class WanDiT(nn.Module):
    def __init__(self, cfg: DiTConfig | None = None):
        super().__init__()
        cfg = cfg or DiTConfig()
        if cfg.dim % cfg.num_heads or (cfg.dim // cfg.num_heads) % 2:
            raise ValueError(f"dim {cfg.dim} must split into {cfg.num_heads} heads of an even width")
        if cfg.rope not in ROPE_MODES:
            raise ValueError(f"rope must be one of {ROPE_MODES}, got {cfg.rope!r}")
        self.config = cfg
        self.gradient_checkpointing = False
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.layer_adaln = LayerAdaLN(cfg.num_layer_categories, cfg.dim)
        self._rope = rope_tables(cfg.dim // cfg.num_heads)
        self._rope_4d = rope_tables_4d(cfg.dim // cfg.num_heads, cfg.rope_dims) if cfg.rope == "4d" else None
        self.mask_projection = None  # the official 'vae-project' mask mode's projections (mask_modes.py), if any
        self._grid_rope: tuple[tuple, torch.Tensor] | None = None  # (grid, device) -> rotation of its tokens

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    def layer_spec(self, num_foregrounds: int = 1) -> LayerSpec:
        """The layout this checkpoint expects for `num_foregrounds`, with the routing policy it was trained with."""
        spec = LayerSpec(num_foregrounds, self.config.routing_policy)
        self._check_categories(spec)
        return spec

    def _check_categories(self, spec: LayerSpec) -> None:
        have = self.config.num_layer_categories
        if spec.num_categories > have:
            raise ValueError(
                f"this model's LayerAdaLN has {have} layer categories, enough for "
                f"{max((have - 2) // 2, 0)} foreground(s), but {spec.num_foregrounds} were asked for; use a "
                f"checkpoint trained for more foregrounds (stage 3) or fewer foregrounds")

    def extend_layer_categories(self, num_foregrounds: int) -> None:
        """Grow the LayerAdaLN table for more foregrounds, new rows copied from the single-foreground ones."""
        spec = LayerSpec(num_foregrounds, self.config.routing_policy)
        old = self.layer_adaln.layer_modulation.data
        if spec.num_categories <= old.shape[0]:
            return
        if old.shape[0] < SINGLE_FOREGROUND_CATEGORIES:
            raise ValueError(f"cannot extend a {old.shape[0]}-row LayerAdaLN table: it needs the 4 single-"
                             f"foreground rows (full, bg, fg, mask) to start from")
        rows = [old[i] if i < old.shape[0] else old[src] for i, src in enumerate(spec.category_source_rows())]
        self.layer_adaln.layer_modulation = nn.Parameter(torch.stack(rows),
                                                         requires_grad=self.layer_adaln.layer_modulation.requires_grad)
        self.config.num_layer_categories = spec.num_categories

    def rope(self, grid: tuple[int, int, int], layer_spec: LayerSpec | None, device) -> torch.Tensor:
        """Complex rotation [tokens, 1, head_dim/2] of a token grid (`_rope_for`); built once, reused while the
        grid, the RoPE's segments and the device hold."""
        segments = None if self._rope_4d is None or layer_spec is None else layer_spec.num_segments
        key = (grid, segments, torch.device(device))
        if self._grid_rope is None or self._grid_rope[0] != key:
            cos, sin = self._rope_for(grid, layer_spec, device)
            self._grid_rope = (key, torch.complex(cos, sin))
        return self._grid_rope[1]

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                layer_spec: LayerSpec | None = None, prompt_lens: torch.Tensor | None = None,
                cache: dict | None = None) -> torch.Tensor:
        """Velocity for latent x [B, C, T, H, W] at timesteps t [B] (sigma*1000) given context [B, rows, text_dim].

        With `layer_spec`, T holds its serialized segments and `prompt_lens` [B, prompts] gives the real length of
        each prompt packed back to back in `context` (order `layer_spec.prompts`).
        `cache`: an empty dict on the first forward of a generation, then the same dict with the same context,
        layer_spec and prompt_lens objects: what depends on them alone (embedded context, every block's context
        keys and values, routing bias, LayerAdaLN rows) is computed once instead of once per step. Inference only.
        """
        cfg = self.config
        b, _, frames, height, width = x.shape
        pt, ph, pw = cfg.patch_size
        if frames % pt or height % ph or width % pw:
            raise ValueError(f"latent size {frames}x{height}x{width} must be divisible by the patch {cfg.patch_size}")
        grid = (frames // pt, height // ph, width // pw)
        t = t.reshape(-1).expand(b) if t.numel() in (1, b) else t
        if layer_spec is not None:
            self._check_categories(layer_spec)
            layer_spec.frames_per_segment(grid[0])
            if prompt_lens is None:
                raise ValueError("a layered forward needs prompt_lens [batch, prompts] for the routing mask")
        if cache is None:
            conditioning, block_caches = self._conditioning(context, layer_spec, prompt_lens, b), None
        else:
            conditioning = self._cached_conditioning(cache, context, layer_spec, prompt_lens, b)
            block_caches = conditioning["blocks"]

        if layer_spec is not None and self.mask_projection is not None:
            x = self.mask_projection.project_input(x, layer_spec)
        e = self.time_embedding(sinusoidal_embedding(cfg.freq_dim, t).to(self.dtype)).float()
        e0 = self.time_projection(e.to(self.dtype)).float().unflatten(1, (6, cfg.dim))
        rows = conditioning["layer_rows"]
        e_seg = e0.unsqueeze(1) if rows is None else e0.unsqueeze(1) + rows.unsqueeze(0)
        ctx, bias = conditioning["context"], conditioning["bias"]

        # Token-major and contiguous from the start: a transposed residual stream would be copied by every norm.
        # One copy either way: `.to` makes it for a bf16 model, `.contiguous` for a float32 one (`.to` returns as is).
        h = self.patch_embedding(x.to(self.dtype)).flatten(2).transpose(1, 2)
        h = h.to(torch.float32, memory_format=torch.contiguous_format).contiguous()
        rope = self.rope(grid, layer_spec, x.device)
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, e_seg, ctx, rope, bias, use_reentrant=False)
            else:
                h = block(h, e_seg, ctx, rope, bias, None if block_caches is None else block_caches[i])
        out = self.unpatchify(self.head(h, e), grid)
        if layer_spec is not None and self.mask_projection is not None:
            out = self.mask_projection.project_output(out, layer_spec)
        return out

    def _rope_for(self, grid: tuple[int, int, int], layer_spec: LayerSpec | None, device):
        """Wan's 3D RoPE, or with rope "4d" and a layered input the official layer-time-height-width RoPE."""
        if self._rope_4d is None or layer_spec is None:
            return rope_for_grid(self._rope, *grid, device=device)
        segments = layer_spec.num_segments
        return rope_for_layered_grid(self._rope_4d, segments, grid[0] // segments, grid[1], grid[2], device)

    def _conditioning(self, context: torch.Tensor, layer_spec: LayerSpec | None, prompt_lens, batch: int) -> dict:
        """What a forward needs from its conditioning alone: embedded context, routing bias, LayerAdaLN rows."""
        cfg = self.config
        if layer_spec is not None:
            # Routing never lets a token see a padding row, so only the real prompt rows need projecting.
            context = context[:, :int(torch.as_tensor(prompt_lens).sum(-1).max())]
        elif context.shape[1] < cfg.text_len:  # Wan pads every context to text_len rows before text_embedding
            context = F.pad(context, (0, 0, 0, cfg.text_len - context.shape[1]))
        bias = layer_rows = None
        if layer_spec is not None:
            layer_rows = self.layer_adaln.layer_modulation.float()[list(layer_spec.categories)]
            bias = layer_spec.attention_bias(prompt_lens, context.shape[1], device=context.device)
            if bias.shape[0] == 1 and batch > 1:
                bias = bias.expand(batch, -1, -1)
        return {"context": self.text_embedding(context.to(self.dtype)), "bias": bias, "layer_rows": layer_rows}

    def _cached_conditioning(self, cache: dict, context: torch.Tensor, layer_spec: LayerSpec | None, prompt_lens,
                             batch: int) -> dict:
        if torch.is_grad_enabled():
            raise ValueError("a forward cache is for inference: run under torch.no_grad(), or pass cache=None")
        key = (context, layer_spec, prompt_lens, batch)
        if not cache:
            cache.update(self._conditioning(context, layer_spec, prompt_lens, batch), key=key,
                         blocks=[{} for _ in self.blocks])
        elif (cache["key"][0] is not context or cache["key"][2] is not prompt_lens
              or cache["key"][1] != layer_spec or cache["key"][3] != batch):
            raise ValueError("this forward cache was filled for another context, layer_spec, prompt_lens or batch "
                             "size; use one new cache per conditioning and generation")
        return cache

    def unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        pt, ph, pw = self.config.patch_size
        f, h, w = grid
        out = out.float().reshape(out.shape[0], f, h, w, pt, ph, pw, self.config.out_dim)
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(out.shape[0], self.config.out_dim, f * pt, h * ph, w * pw)
