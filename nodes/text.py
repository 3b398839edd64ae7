"""Layer Text Encode: full, background and foreground prompts (+ negative) -> routing-ready layered context.

Two encoders are accepted: our umt5 loader, or ComfyUI's own CLIP loaded by Load CLIP with type `wan` (the same
umt5 file), so a graph that already loads umt5 for Wan does not load it twice.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Sequence

import torch

from layert2v_core.layers import MAX_FOREGROUNDS, LayerSpec
from layert2v_core.text import (encode_layer_prompts, layer_prompts, negative_prompt, pack_layer_contexts)

from . import host
from .common import CATEGORY, CONDITIONING, TEXT_ENCODER, LayeredConditioning, LayerT2VInputError, readable_errors
from .native import native_conditioning

NODE = "Layer Text Encode"
UMT5_KEY = "umt5xxl"  # ComfyUI's token dict key for the umt5 tokenizer (CLIP type wan)
PAD_TOKEN = 0


def _prompt(tooltip: str, default: str = "") -> tuple:
    return ("STRING", {"multiline": True, "default": default, "tooltip": tooltip})


class LayerT2VTextEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "num_foregrounds": ("INT", {
                    "default": 1, "min": 1, "max": MAX_FOREGROUNDS,
                    "tooltip": "How many foreground layers; must match the Empty Layered Latent. Foreground prompts "
                               "past this number are ignored."}),
                "full_prompt": _prompt("The whole video: scene and subjects together.",
                                       "a red fox trotting across a snowy meadow at sunrise"),
                "background_prompt": _prompt("The clean background without any foreground subject. Empty: "
                                             "'background scene'.", "a snowy meadow at sunrise"),
                "foreground_1": _prompt("Foreground layer 1 (bottom-most). Empty: 'foreground object'.",
                                        "a red fox trotting"),
                "foreground_2": _prompt("Foreground layer 2 (drawn over layer 1), used when num_foregrounds >= 2."),
                "foreground_3": _prompt("Foreground layer 3 (top-most), used when num_foregrounds = 3."),
                "negative_prompt": _prompt("What to avoid, repeated for every layer. Empty: Wan's default "
                                           "negative prompt."),
            },
            "optional": {
                "text_encoder": (TEXT_ENCODER, {"tooltip": "umt5 from Load LayerT2V Text Encoder. Connect this or "
                                                           "'clip', not both."}),
                "clip": ("CLIP", {"tooltip": "ComfyUI's CLIP from Load CLIP with type 'wan' (umt5_xxl), as in Wan "
                                             "workflows. Connect this or 'text_encoder', not both."}),
            },
        }

    RETURN_TYPES = (CONDITIONING, "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("conditioning", "positive", "negative")
    OUTPUT_TOOLTIPS = ("Per-layer prompts and the negative, for the Layered Sampler.",
                       "The layer prompts as a ComfyUI CONDITIONING, for KSampler & co. on an Apply LayerT2V model.",
                       "The negative prompt, once per layer slot, for KSampler & co. on an Apply LayerT2V model.")
    SEARCH_ALIASES = ["layers", "prompt", "clip text encode", "wan"]
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = "Encodes each layer's prompt on its own, packed in the order the layered cross-attention routes."

    def encode(self, num_foregrounds: int, full_prompt: str, background_prompt: str, foreground_1: str,
               foreground_2: str, foreground_3: str, negative_prompt: str, text_encoder=None, clip=None):
        with readable_errors(NODE), torch.no_grad():
            if (text_encoder is None) == (clip is None):
                raise LayerT2VInputError(
                    f"{NODE}: connect exactly one encoder: 'text_encoder' (Load LayerT2V Text Encoder) or 'clip' "
                    f"(Load CLIP, type wan); {'none' if text_encoder is None else 'both'} connected")
            spec = LayerSpec(num_foregrounds)
            foregrounds = [foreground_1, foreground_2, foreground_3][:num_foregrounds]
            if text_encoder is not None:
                with _on_compute_device(text_encoder):
                    text = encode_layer_prompts(text_encoder, spec, full_prompt, background_prompt, foregrounds,
                                                negative_prompt)
                text = _on_cpu(text)
            else:
                text = encode_with_comfy_clip(clip, spec, full_prompt, background_prompt, foregrounds,
                                              negative_prompt)
        return (LayeredConditioning(num_foregrounds, text), *_native_pair(text))


def _native_pair(text) -> tuple[list, list]:
    """Positive and negative CONDITIONING, both cut to the same real rows so ComfyUI can batch them together."""
    rows = int(max(text.prompt_lens.sum(-1).max(), text.negative_prompt_lens.sum(-1).max()))
    return (native_conditioning(text.context[:, :rows], text.prompt_lens),
            native_conditioning(text.negative_context[:, :rows], text.negative_prompt_lens))


@contextlib.contextmanager
def _on_compute_device(encoder):
    """umt5 on the compute device while it encodes, back on the offload device afterwards."""
    device = host.compute_device()
    host.make_room(device, encoder.model)
    encoder.to(device)
    try:
        yield
    finally:
        encoder.to(host.offload_device())
        host.release_cache()


def _on_cpu(text):
    """The context off the GPU until the sampler needs it, so conditioning outputs hold no VRAM."""
    return dataclasses.replace(text, context=text.context.cpu(), prompt_lens=text.prompt_lens.cpu(),
                               negative_context=text.negative_context.cpu(),
                               negative_prompt_lens=text.negative_prompt_lens.cpu())


def encode_with_comfy_clip(clip, spec: LayerSpec, full: str, bg: str, foregrounds: Sequence[str], negative: str):
    """Each prompt through ComfyUI's CLIP (umt5), cut to its real tokens, packed as encode_layer_prompts packs."""
    prompts = layer_prompts(spec, full, bg, foregrounds)
    negative = negative_prompt(negative)
    unique = list(dict.fromkeys([*prompts, negative]))
    embedded = dict(zip(unique, (_real_tokens(clip, text) for text in unique)))
    return _on_cpu(pack_layer_contexts(spec, prompts, [embedded[p] for p in prompts], negative, embedded[negative]))


def _real_tokens(clip, text: str) -> torch.Tensor:
    """[tokens, dim] for the prompt's real tokens (EOS included): ComfyUI pads Wan prompts to 512 with zeros."""
    if not (hasattr(clip, "tokenize") and hasattr(clip, "encode_from_tokens")):
        raise LayerT2VInputError(f"{NODE}: 'clip' is not a ComfyUI CLIP object")
    tokens = clip.tokenize(text)
    if not isinstance(tokens, dict) or UMT5_KEY not in tokens:
        found = sorted(tokens) if isinstance(tokens, dict) else type(tokens).__name__
        raise LayerT2VInputError(f"{NODE}: this CLIP is not umt5-xxl (its tokenizer gives {found}); load "
                                 f"umt5_xxl with Load CLIP and type 'wan'")
    ids = [token[0] for chunk in tokens[UMT5_KEY] for token in chunk]
    length = max((i + 1 for i, t in enumerate(ids) if not (isinstance(t, int) and t == PAD_TOKEN)), default=0)
    cond = clip.encode_from_tokens(tokens)
    if isinstance(cond, (tuple, list)):
        cond = cond[0]
    if length < 1 or cond.dim() != 3 or cond.shape[1] < length:
        raise LayerT2VInputError(f"{NODE}: unexpected CLIP output {tuple(cond.shape)} for {length} tokens")
    return cond[0, :length]


NODE_CLASS_MAPPINGS = {"LayerT2VTextEncode": LayerT2VTextEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"LayerT2VTextEncode": "Layer Text Encode (LayerT2V)"}
