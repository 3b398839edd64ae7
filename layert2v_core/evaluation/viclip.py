"""ViCLIP (InternVid's video CLIP), the model behind VBench's overall_consistency, for text alignment.

The checkpoint is ViClip-InternVid-10M-FLT.pth: a dict whose "model" entry is the state dict read here by its own
key names (a bare state dict, or the same keys in a .safetensors file, also load).
- vision_encoder: CLIP ViT-L/14 over 8 frames. Each frame is patchified (Conv3d with temporal kernel 1), patch
  tokens get the spatial and a learned per-frame temporal embedding, and one transformer attends jointly over all
  8 x 256 patch tokens and one class token; the class token after ln_post, times proj, is the video feature.
- text_encoder: CLIP's causal text transformer with a 32-token context; the end-of-text token, after ln_final,
  times text_projection, is the text feature.
VBench's protocol: the 8 'middle' frames, shorter side to 224 (bicubic, 8-bit result), centre crop 224, CLIP
normalisation; the prompt cleaned as CLIP's tokenizer does (ftfy, HTML unescape), CLIP BPE, 32 tokens at most;
the score is the cosine of the two normalised features. The BPE is transformers' CLIPTokenizer over CLIP's
vocabulary (vocab.json + merges.txt, e.g. the openai/clip-vit-large-patch14 folder).
"""
from __future__ import annotations

import html
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .feature_models import CLIP_ID, ModelUnavailable, _from_pretrained, clip_pixels
from .vbench import middle_frames

VICLIP_FILE = "ViClip-InternVid-10M-FLT.pth"
HEAD_DIM = 64  # ViT-L/14: 1024 wide, 16 heads; CLIP text: 768 wide, 12 heads


@dataclass(frozen=True)
class ViClipConfig:
    vision_width: int = 1024
    vision_layers: int = 24
    patch_size: int = 14
    image_size: int = 224
    num_frames: int = 8
    text_width: int = 768
    text_layers: int = 12
    context_length: int = 32
    vocab_size: int = 49408
    embed_dim: int = 768
    head_dim: int = HEAD_DIM

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], head_dim: int = HEAD_DIM) -> "ViClipConfig":
        """The sizes a checkpoint was trained with, read from its tensor shapes (heads from `head_dim`)."""
        def layers(prefix: str) -> int:
            return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

        patch = state["vision_encoder.conv1.weight"]
        grid = round((state["vision_encoder.positional_embedding"].shape[0] - 1) ** 0.5)
        return cls(vision_width=patch.shape[0], vision_layers=layers("vision_encoder.transformer.resblocks."),
                   patch_size=patch.shape[-1], image_size=grid * patch.shape[-1],
                   num_frames=state["vision_encoder.temporal_positional_embedding"].shape[1],
                   text_width=state["text_encoder.token_embedding.weight"].shape[1],
                   text_layers=layers("text_encoder.transformer.resblocks."),
                   context_length=state["text_encoder.positional_embedding"].shape[0],
                   vocab_size=state["text_encoder.token_embedding.weight"].shape[0],
                   embed_dim=state["vision_encoder.proj"].shape[1], head_dim=head_dim)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """nn.MultiheadAttention's parameters (packed in_proj, out_proj) computed batch-first through SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(x.transpose(1, 2).reshape(b, n, c))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(),
                                             c_proj=nn.Linear(4 * width, width)))

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, causal)
        return x


class VisionEncoder(nn.Module):
    """[B, 3, T, H, W] CLIP-normalised frames -> [B, embed_dim] video features."""

    def __init__(self, config: ViClipConfig):
        super().__init__()
        width, patch, grid = config.vision_width, config.patch_size, config.image_size // config.patch_size
        self.conv1 = nn.Conv3d(3, width, (1, patch, patch), (1, patch, patch), bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, config.num_frames, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, config.vision_layers, width // config.head_dim)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, config.embed_dim))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        x = self.conv1(video).flatten(3).permute(0, 3, 2, 1)  # [B, patches, T, width]: patch-major token order
        b, n, t, _ = x.shape
        x = x + self.positional_embedding[1:, None] + self.temporal_positional_embedding[0]
        cls = (self.class_embedding + self.positional_embedding[0]).expand(b, 1, -1)
        x = self.transformer(self.ln_pre(torch.cat([cls, x.reshape(b, n * t, -1)], dim=1)))
        return self.ln_post(x[:, 0]) @ self.proj


class TextEncoder(nn.Module):
    """[B, L] token ids, each row ending in its end-of-text token at `ends` -> [B, embed_dim] text features."""

    def __init__(self, config: ViClipConfig):
        super().__init__()
        width = config.text_width
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(config.context_length, width))
        self.transformer = Transformer(width, config.text_layers, width // config.head_dim)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, config.embed_dim))

    def forward(self, tokens: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding[:tokens.shape[1]]
        x = self.ln_final(self.transformer(x, causal=True))  # causal: padding after the end never reaches it
        return x[torch.arange(len(x), device=x.device), ends] @ self.text_projection


class ViClip(nn.Module):
    def __init__(self, config: ViClipConfig = ViClipConfig()):
        super().__init__()
        self.config = config
        self.vision_encoder = VisionEncoder(config)
        self.text_encoder = TextEncoder(config)


UNUSED_KEYS = {"temp"}  # the contrastive temperature of training


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict: safetensors, or torch.load(weights_only=True), which refuses pickled code."""
    path = Path(path)
    if not path.is_file():
        raise ModelUnavailable(f"ViCLIP checkpoint {path} not found; get {VICLIP_FILE} (OpenGVLab/VBench_Used_Models "
                               f"on the Hugging Face hub) and pass --viclip FILE")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle that is more than tensors is refused, never executed
        lines = str(error).splitlines()
        reason = next((line.split("error: ")[-1].split(" was not")[0] for line in lines if "Unsupported global" in line),
                      lines[0] if lines else type(error).__name__)
        raise ModelUnavailable(f"ViCLIP checkpoint {path} is not a plain tensor checkpoint and was not loaded "
                               f"({reason}); save its 'model' state dict as .safetensors on a machine you trust and "
                               f"pass that file") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelUnavailable(f"ViCLIP checkpoint {path} holds no state dict of tensors (expected {VICLIP_FILE})")
    return state


def load_viclip(path: str | os.PathLike, head_dim: int = HEAD_DIM) -> ViClip:
    """ViCLIP with the weights of `path` (every key of the model must be there, nothing else but `temp`)."""
    state = read_state_dict(path)
    try:
        model = ViClip(ViClipConfig.from_state_dict(state, head_dim))
    except (KeyError, IndexError, ValueError) as error:
        raise ModelUnavailable(f"ViCLIP checkpoint {path} does not have ViCLIP's layout (missing or odd {error}); "
                               f"expected {VICLIP_FILE}") from None
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys() - UNUSED_KEYS)
    wrong = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ModelUnavailable(f"ViCLIP checkpoint {path} does not match ViCLIP: missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}, wrong shape {wrong[:3]} (expected {VICLIP_FILE})")
    model.load_state_dict({k: state[k].float() for k in expected})
    return model.eval()


def clean_prompt(text: str) -> str:
    """CLIP's text cleaning before BPE (ftfy, HTML entities twice); CLIPTokenizer does whitespace and lower case."""
    import ftfy
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


class ViClipFeatures:
    """Normalised ViCLIP video and text features for text alignment, as VBench's overall_consistency computes them."""

    def __init__(self, checkpoint: str | os.PathLike, tokenizer: str = CLIP_ID, device: str | torch.device = "cpu",
                 head_dim: int = HEAD_DIM):
        try:
            import ftfy  # noqa: F401  (VBench's tokenizer cleans prompts with it)
        except ImportError:
            raise ModelUnavailable("ViCLIP's prompt cleaning needs ftfy: pip install ftfy") from None
        from transformers import CLIPTokenizer

        self.name, self.device = f"ViCLIP {Path(checkpoint).name}", torch.device(device)
        self.tokenizer = _from_pretrained(CLIPTokenizer, tokenizer, "ViCLIP tokenizer (CLIP's BPE vocabulary)",
                                          "--viclip-tokenizer")
        self.model = load_viclip(checkpoint, head_dim).to(self.device)
        if len(self.tokenizer) != self.model.config.vocab_size:
            raise ModelUnavailable(f"tokenizer {tokenizer!r} has {len(self.tokenizer)} tokens, ViCLIP "
                                   f"{checkpoint} {self.model.config.vocab_size}: pass CLIP's tokenizer folder "
                                   f"(vocab.json + merges.txt) as --viclip-tokenizer")

    @torch.no_grad()
    def video(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 frames [T, H, W, 3] -> the normalised feature [D] of VBench's 8 middle frames."""
        config = self.model.config
        pixels = clip_pixels(frames[middle_frames(len(frames), config.num_frames)], config.image_size)
        features = self.model.vision_encoder(pixels.transpose(0, 1)[None].to(self.device))[0]
        return F.normalize(features.float(), dim=-1).cpu()

    @torch.no_grad()
    def text(self, prompt: str) -> torch.Tensor:
        """The normalised feature [D] of a prompt (at most the model's 32 tokens, ending in end-of-text)."""
        ids = self.tokenizer(clean_prompt(prompt), truncation=True, max_length=self.model.config.context_length)
        tokens = torch.tensor([ids["input_ids"]], device=self.device)
        features = self.model.text_encoder(tokens, torch.tensor([tokens.shape[1] - 1], device=self.device))[0]
        return F.normalize(features.float(), dim=-1).cpu()
