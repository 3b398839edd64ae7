"""The serialized layer layout: the only place that knows the segment and prompt order.

A LayerT2V sample with N foregrounds is one latent [C, S*T', H', W'] whose time axis holds S = 2 + 2N segments of
T' frames each, in the order [full, bg, fg_1, mask_1, ..., fg_N, mask_N]. Its prompts are encoded one by one and
concatenated as [full | fg_1 ... fg_N | bg]. Every visual token of a segment carries that segment's LayerAdaLN
category and sees a fixed set of prompts in cross-attention (the routing policy).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

MAX_FOREGROUNDS = 3
# paper: full sees every prompt, bg its own, fg_i and mask_i their fg_i prompt.
# official: as paper, and every layer also sees the full prompt (LAYER_PROMPT_VISIBILITY of the released code).
# shared: every layer sees every prompt, i.e. no layered cross-attention (the paper's ablation baseline).
ROUTING_POLICIES = ("paper", "official", "shared")
# Rows of a single-foreground LayerAdaLN table: what the official 4-row checkpoints hold.
SINGLE_FOREGROUND_CATEGORIES = 4


@dataclass(frozen=True)
class LayerSpec:
    """Layout of one serialized sample: N foregrounds and the cross-attention routing policy."""

    num_foregrounds: int = 1
    policy: str = "paper"

    def __post_init__(self) -> None:
        if not isinstance(self.num_foregrounds, int) or not 1 <= self.num_foregrounds <= MAX_FOREGROUNDS:
            raise ValueError(
                f"num_foregrounds must be an integer from 1 to {MAX_FOREGROUNDS}, got {self.num_foregrounds!r}"
            )
        if self.policy not in ROUTING_POLICIES:
            raise ValueError(f"routing policy must be one of {ROUTING_POLICIES}, got {self.policy!r}")

    # ---- segments (time axis of the latent) ----
    @property
    def segments(self) -> tuple[str, ...]:
        names = ["full", "bg"]
        for i in range(1, self.num_foregrounds + 1):
            names += [f"fg{i}", f"mask{i}"]
        return tuple(names)

    @property
    def num_segments(self) -> int:
        return 2 + 2 * self.num_foregrounds

    def segment_index(self, name: str) -> int:
        try:
            return self.segments.index(name)
        except ValueError:
            raise ValueError(f"unknown layer {name!r}; this layout has {list(self.segments)}") from None

    @staticmethod
    def kind(name: str) -> str:
        """'full', 'bg', 'fg' or 'mask' for a segment name such as 'fg2'."""
        return name.rstrip("0123456789")

    @staticmethod
    def foreground_number(name: str) -> int | None:
        digits = name[len(name.rstrip("0123456789")):]
        return int(digits) if digits else None

    # ---- LayerAdaLN categories ----
    @property
    def categories(self) -> tuple[int, ...]:
        """LayerAdaLN row of each segment: its position, so one table serves N = 1..3 (rows 0-3 = full,bg,fg,mask)."""
        return tuple(range(self.num_segments))

    @property
    def num_categories(self) -> int:
        return self.num_segments

    def category_source_rows(self) -> tuple[int, ...]:
        """For each category, the single-foreground row it starts from when a table is extended (stage 3)."""
        return tuple(0 if k == "full" else 1 if k == "bg" else 2 if k == "fg" else 3
                     for k in map(self.kind, self.segments))

    def token_categories(self, frames: int, height: int, width: int, device=None) -> torch.Tensor:
        """Category id of every visual token, tokens ordered (segment, frame, row, column); frames per segment."""
        tokens = frames * height * width
        cats = torch.tensor(self.categories, dtype=torch.long, device=device)
        return cats.repeat_interleave(tokens)

    # ---- latent segments ----
    def frames_per_segment(self, total_frames: int) -> int:
        if total_frames % self.num_segments:
            raise ValueError(
                f"a serialized latent with {self.num_foregrounds} foreground(s) has {self.num_segments} equal "
                f"segments along time, but its {total_frames} frames do not divide by {self.num_segments}"
            )
        return total_frames // self.num_segments

    def split(self, latent: torch.Tensor, dim: int = 2) -> dict[str, torch.Tensor]:
        """Views of each segment of a serialized tensor, by name."""
        frames = self.frames_per_segment(latent.shape[dim])
        return dict(zip(self.segments, latent.split(frames, dim=dim)))

    def join(self, parts: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], dim: int = 2) -> torch.Tensor:
        """Serialize segments (a mapping by name, or a sequence in layout order) along `dim`."""
        if isinstance(parts, Mapping):
            missing = [n for n in self.segments if n not in parts]
            if missing:
                raise ValueError(f"missing layers {missing}; a {self.num_foregrounds}-foreground sample needs "
                                 f"{list(self.segments)}")
            parts = [parts[n] for n in self.segments]
        if len(parts) != self.num_segments:
            raise ValueError(f"expected {self.num_segments} segments {list(self.segments)}, got {len(parts)}")
        shapes = {tuple(p.shape) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"all layers must have the same shape, got {sorted(shapes)}")
        return torch.cat(list(parts), dim=dim)

    # ---- prompts and routing ----
    @property
    def prompts(self) -> tuple[str, ...]:
        """Prompt slots in context order: [full, fg_1 .. fg_N, bg]."""
        return ("full",) + tuple(f"fg{i}" for i in range(1, self.num_foregrounds + 1)) + ("bg",)

    @property
    def num_prompts(self) -> int:
        return self.num_foregrounds + 2

    def visibility(self) -> torch.Tensor:
        """Bool [segments, prompts]: which prompt slots each segment's tokens may attend to."""
        vis = torch.zeros(self.num_segments, self.num_prompts, dtype=torch.bool)
        for s, name in enumerate(self.segments):
            kind, number = self.kind(name), self.foreground_number(name)
            if kind == "full" or self.policy == "shared":
                vis[s, :] = True
            elif kind == "bg":
                vis[s, self.prompts.index("bg")] = True
            else:
                vis[s, self.prompts.index(f"fg{number}")] = True
            if self.policy == "official":
                vis[s, 0] = True
        return vis

    def check_prompt_lens(self, prompt_lens, context_len: int) -> torch.Tensor:
        """Validate per-sample prompt lengths [B, prompts] against a context of `context_len` rows."""
        lens = torch.as_tensor(prompt_lens, dtype=torch.long)
        if lens.dim() == 1:
            lens = lens.unsqueeze(0)
        if lens.dim() != 2 or lens.shape[1] != self.num_prompts:
            raise ValueError(f"prompt_lens must be [batch, {self.num_prompts}] for prompts {list(self.prompts)}, "
                             f"got shape {tuple(lens.shape)}")
        if (lens < 1).any():
            raise ValueError(f"every prompt needs at least one token (its EOS), got lengths {lens.tolist()}")
        if (lens.sum(1) > context_len).any():
            raise ValueError(f"prompt lengths {lens.tolist()} exceed the context's {context_len} rows")
        return lens

    def routing_mask(self, prompt_lens, context_len: int, device=None) -> torch.Tensor:
        """Bool [B, segments, context_len], True where a segment's tokens see a context row.

        Context rows are the prompts' real tokens back to back in `prompts` order, then padding that no token
        sees. Every segment sees at least one row (each prompt has >= 1 token), so no attention row is all -inf.
        """
        lens = self.check_prompt_lens(prompt_lens, context_len)
        ends = lens.cumsum(1)
        starts = ends - lens
        rows = torch.arange(context_len)
        # in_prompt[b, p, j]: context row j belongs to prompt p of sample b.
        in_prompt = (rows >= starts[..., None]) & (rows < ends[..., None])
        mask = torch.einsum("sp,bpj->bsj", self.visibility().float(), in_prompt.float()) > 0
        return mask.to(device)

    def attention_bias(self, prompt_lens, context_len: int, dtype=torch.float32, device=None) -> torch.Tensor:
        """Additive form of `routing_mask`: 0 where visible, -inf elsewhere; [B, segments, context_len]."""
        mask = self.routing_mask(prompt_lens, context_len, device)
        bias = torch.zeros(mask.shape, dtype=dtype, device=device)
        return bias.masked_fill_(~mask, float("-inf"))

    def token_routing_mask(self, prompt_lens, context_len: int, tokens_per_segment: int) -> torch.Tensor:
        """Dense bool [B, tokens, context_len] mask, one row per visual token (for inspection and tests)."""
        return self.routing_mask(prompt_lens, context_len).repeat_interleave(tokens_per_segment, dim=1)
