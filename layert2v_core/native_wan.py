"""LayerT2V on a host's own Wan2.1 implementation (ComfyUI's): the adapter as host patches, and one layered forward.

A host that already runs Wan2.1 T2V (its loaders, fp8 / GGUF weights, LoRA stacks, attention backends) becomes a
LayerT2V model with three additions, all of which reuse this package's LayerSpec:
- the adapter's LoRA as the host's weight patches: `lora_state_dict` writes it as a generic LoRA under the host's
  module names;
- LayerAdaLN as per-segment modulation: `LayeredCall.modulation` gives e0 one row per serialized segment, which a
  Wan block spreads over that segment's run of tokens;
- layered cross-attention: `LayeredCall.cross_attention` replaces the host's cross-attention with the routed one.
Nothing here imports the host; the node glue hands tensors in and takes them out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checkpoints import LAYER_ADALN_KEY, Adapter
from .layers import LayerSpec

# Name of the per-prompt lengths [batch, prompts] that travel with a conditioning into the model's forward.
PROMPT_LENS_KEY = "layert2v_prompt_lens"
HOST_PREFIX = "diffusion_model."


def patch_grid(latent_shape, patch_size) -> tuple[int, int]:
    """(latent frames, tokens) of a latent [T, H, W] cut into Wan patches, a partial patch counting whole."""
    grid = [-(-size // step) for size, step in zip(latent_shape, patch_size)]
    return grid[0], grid[0] * grid[1] * grid[2]


def lora_state_dict(adapter: Adapter, prefix: str = HOST_PREFIX) -> dict[str, torch.Tensor]:
    """The adapter as a generic LoRA file: `<prefix><module>.lora_A/lora_B.weight` with `.alpha` = scale * rank, and
    every replaced tensor but the LayerAdaLN table as `<prefix><name>.set_weight`."""
    out: dict[str, torch.Tensor] = {}
    for module, (down, up, scale) in adapter.lora.items():
        out[f"{prefix}{module}.lora_A.weight"] = down
        out[f"{prefix}{module}.lora_B.weight"] = up
        out[f"{prefix}{module}.alpha"] = torch.tensor(float(scale * down.shape[0]))
    for key, tensor in adapter.tensors.items():
        if key != LAYER_ADALN_KEY:
            out[f"{prefix}{key.removesuffix('.weight')}.set_weight"] = tensor
    return out


def layer_modulation(adapter: Adapter, dim: int) -> torch.Tensor:
    """The adapter's LayerAdaLN table [categories, 6, dim] in float32; a clear error when it does not fit the model."""
    table = adapter.tensors.get(LAYER_ADALN_KEY)
    if table is None:
        raise ValueError(f"{adapter.source} has no LayerAdaLN table ({LAYER_ADALN_KEY}); it is not a LayerT2V "
                         f"adapter")
    if table.dim() != 3 or table.shape[1] != 6 or table.shape[2] != dim:
        raise ValueError(f"{adapter.source} was trained for a {table.shape[-1]}-wide Wan model (LayerAdaLN "
                         f"{tuple(table.shape)}), but this model is {dim} wide; pick the adapter made for this model")
    return table.float()


@dataclass
class LayeredWan:
    """What a patched host model keeps: the LayerAdaLN table and the routing policy."""

    table: torch.Tensor  # [categories, 6, dim]
    policy: str

    def spec(self, num_foregrounds: int) -> LayerSpec:
        spec = LayerSpec(num_foregrounds, self.policy)
        if spec.num_categories > self.table.shape[0]:
            raise ValueError(f"this adapter's LayerAdaLN has {self.table.shape[0]} rows, enough for "
                             f"{max((self.table.shape[0] - 2) // 2, 0)} foreground(s), but the conditioning has "
                             f"{num_foregrounds}; use an adapter trained for more foregrounds or fewer foregrounds")
        return spec

    def prepare(self, prompt_lens: torch.Tensor, context: torch.Tensor, frames: int,
                tokens: int) -> tuple["LayeredCall", torch.Tensor]:
        """The state of one forward, and the context to run it with.

        frames: latent frames after patching (all segments); tokens: visual tokens per sample. Self- and
        cross-attention are told apart by their key length, so a context exactly `tokens` rows long gets one more
        (padding) row, which the routing hides.
        """
        lens = prompt_lens.round().long() if prompt_lens.is_floating_point() else prompt_lens.long()
        if lens.dim() != 2:
            raise ValueError(f"prompt lengths must be [batch, prompts], got shape {tuple(lens.shape)}")
        spec = self.spec(lens.shape[1] - 2)
        spec.frames_per_segment(frames)
        if context.shape[1] == tokens:
            context = F.pad(context, (0, 0, 0, 1))
        bias = spec.attention_bias(lens.cpu(), context.shape[1], device=context.device)
        if bias.shape[0] != context.shape[0]:
            bias = bias.expand(context.shape[0], -1, -1)
        rows = self.table[list(spec.categories)].to(context.device)
        return LayeredCall(spec, bias, rows, tokens, context.shape[1]), context


class LayeredCall:
    """One layered forward: per-segment modulation and routed cross-attention for a [B, tokens] visual sequence."""

    def __init__(self, spec: LayerSpec, bias: torch.Tensor, rows: torch.Tensor, tokens: int, context_rows: int):
        self.spec, self.bias, self.rows = spec, bias, rows
        self.tokens, self.context_rows = tokens, context_rows
        self._e0, self._modulation = None, None

    def modulation(self, e0: torch.Tensor) -> torch.Tensor:
        """e0 [B, 6, dim] or [B, 1, 6, dim] -> [B, segments, 6, dim]: each segment's LayerAdaLN row added.

        Every block of a forward gets the same e0, so the sum is made once per forward."""
        if e0 is not self._e0:
            base = e0.reshape(e0.shape[0], 1, 6, -1)
            self._e0, self._modulation = e0, base + self.rows.to(base.dtype).unsqueeze(0)
        return self._modulation

    def is_cross_attention(self, q: torch.Tensor, k: torch.Tensor) -> bool:
        return q.shape[1] == self.tokens and k.shape[1] == self.context_rows

    def cross_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        """Routed attention on the host's flat layout: q [B, tokens, heads*d], k/v [B, rows, heads*d].

        Segments are contiguous runs of tokens, so they fold into the batch and share one key mask per segment."""
        b, tokens, width = q.shape
        segments, rows, head_dim = self.spec.num_segments, k.shape[1], width // heads
        q = q.reshape(b * segments, tokens // segments, heads, head_dim).transpose(1, 2)

        def per_segment(t: torch.Tensor) -> torch.Tensor:
            t = t.reshape(b, 1, rows, heads, head_dim).expand(-1, segments, -1, -1, -1)
            return t.reshape(b * segments, rows, heads, head_dim).transpose(1, 2)

        mask = self.bias.to(q.dtype).reshape(b * segments, 1, 1, rows)
        out = F.scaled_dot_product_attention(q, per_segment(k), per_segment(v), attn_mask=mask)
        return out.transpose(1, 2).reshape(b, tokens, width)
