"""Encode Layers (layers to keep -> layered latent) and Decode Layers (layered latent -> IMAGE / MASK layers).

MASK polarity follows ComfyUI's LoadImage / JoinImageWithAlpha: MASK = 1 - alpha (1 = transparent). Alpha inputs
take a MASK the same way, so LoadImage's MASK of an RGBA file plugs straight in.
"""
from __future__ import annotations

import torch

from layert2v_core.conditioning import keep_mask, known_latent
from layert2v_core.layered_latent import check_keep, decode_videos, encode_videos
from layert2v_core.layers import MAX_FOREGROUNDS
from layert2v_core.pipeline import SPATIAL_STRIDE, LayeredVideo

from . import host
from .common import (CATEGORY, LAYERS, VAE, LayerInfo, LayerT2VInputError, alpha_to_mask, image_to_video,
                     make_latent, mask_to_alpha, read_latent, readable_errors, video_to_image)

MASK_POLARITY = "MASK = 1 - alpha (white = transparent), as LoadImage gives and Join Image with Alpha expects"


class LayerT2VEncodeLayers:
    @classmethod
    def INPUT_TYPES(cls):
        optional = {
            "full": ("IMAGE", {"tooltip": "Full video to keep (frames as a batch; one image is held for every "
                                          "frame)."}),
            "background": ("IMAGE", {"tooltip": "Background to keep; the foregrounds are generated over it."}),
        }
        for i in range(1, MAX_FOREGROUNDS + 1):
            optional[f"foreground_{i}"] = ("IMAGE", {
                "tooltip": f"Foreground {i} to keep (straight colour); needs alpha_{i} too."})
            optional[f"alpha_{i}"] = ("MASK", {"tooltip": f"Alpha of foreground {i}; {MASK_POLARITY}."})
        return {
            "required": {
                "vae": (VAE, {"tooltip": "From Load LayerT2V VAE."}),
                "latent": ("LATENT", {"tooltip": "Empty Layered Latent giving the layout, size and frame count."}),
                "strength": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                       "tooltip": "0 holds the kept layers exactly; higher lets the Layered "
                                                  "Sampler refine them over the last part of sampling (1 "
                                                  "regenerates them). ComfyUI's own samplers hold them exactly."}),
            },
            "optional": optional,
        }

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The layered latent with the given layers in place, for the Layered Sampler or, through its "
                       "noise mask, ComfyUI's KSampler / SamplerCustomAdvanced on an Apply LayerT2V model.",)
    SEARCH_ALIASES = ["alpha", "matte", "RGBA", "layers", "keep layer", "encode video"]
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Layer-conditioned generation: the connected layers are encoded and kept while the sampler "
                   "generates the others (new background behind a foreground, foreground on a background ...).")

    def encode(self, vae, latent, strength: float, **layers):
        node = "Encode Layers"
        with readable_errors(node), torch.no_grad():
            samples, info = read_latent(latent, node)
            spec = info.spec()
            height, width = samples.shape[-2] * SPATIAL_STRIDE, samples.shape[-1] * SPATIAL_STRIDE
            keep = _layers_to_keep(spec, layers, info.frames, height, width)
            if not keep:
                raise LayerT2VInputError(f"{node}: connect at least one layer to keep (full, background, "
                                         f"foreground_i with alpha_i)")
            check_keep(spec, keep, info.frames, height, width)
            device = host.compute_device()
            with _VAEOnDevice(device, vae):
                segments = encode_videos(vae.vae, vae.mask_vae, spec, keep, device, vae.tile)
            segments = {name: z.cpu().expand(samples.shape[0], -1, -1, -1, -1) for name, z in segments.items()}
            known, _ = known_latent(spec, segments, samples.shape)
        kept = LayerInfo(info.num_foregrounds, info.frames, tuple(n for n in spec.segments if n in keep),
                         float(strength))
        out = make_latent(known, kept)
        # ComfyUI's inpainting mask (1 = generate, 0 = keep), so its own samplers hold the kept segments too.
        out["noise_mask"] = (~keep_mask(spec, kept.kept, (known.shape[0], 1, *known.shape[2:]))).float()
        return (out,)


def _layers_to_keep(spec, layers: dict, frames: int, height: int, width: int) -> dict[str, torch.Tensor]:
    """IMAGE/MASK inputs -> {segment name: [C, T, H, W] video}, each checked against the latent's size."""
    keep = {}
    for key, value in layers.items():
        if value is None:
            continue
        if key in ("full", "background"):
            name = "full" if key == "full" else "bg"
        else:
            kind, number = key.rsplit("_", 1)
            name = f"{'fg' if kind == 'foreground' else 'mask'}{number}"
        if name not in spec.segments:
            raise LayerT2VInputError(f"Encode Layers: '{key}' is connected but the latent has only "
                                     f"{spec.num_foregrounds} foreground(s); raise num_foregrounds or disconnect it")
        video = mask_to_alpha(value) if name.startswith("mask") else image_to_video(value[..., :3])
        if video.shape[1] == 1 and frames > 1:  # a still image is held for every frame
            video = video.expand(-1, frames, -1, -1).contiguous()
        if video.shape[1:] != (frames, height, width):
            raise LayerT2VInputError(
                f"Encode Layers: '{key}' is {video.shape[1]} frame(s) of {video.shape[3]}x{video.shape[2]}, but the "
                f"latent is {frames} frame(s) of {width}x{height}; resize/trim it or change the Empty Layered Latent")
        keep[name] = video
    return keep


class LayerT2VDecodeLayers:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": (VAE, {"tooltip": "From Load LayerT2V VAE."}),
            "latent": ("LATENT", {"tooltip": "A layered latent from the Layered Sampler."}),
            "foreground_index": ("INT", {"default": 1, "min": 1, "max": MAX_FOREGROUNDS,
                                         "tooltip": "Which foreground the foreground / alpha / rgba outputs show "
                                                    "(1 = bottom-most); 'layers' always holds all of them."}),
        }}

    RETURN_TYPES = ("IMAGE", "IMAGE", "IMAGE", "MASK", "IMAGE", LAYERS)
    RETURN_NAMES = ("full", "background", "foreground", "alpha", "rgba", "layers")
    OUTPUT_TOOLTIPS = (
        "Full video frames.",
        "Clean background frames.",
        "Foreground colour, straight (not premultiplied); black where fully transparent.",
        f"Foreground alpha as MASK: {MASK_POLARITY}.",
        "Foreground as 4-channel RGBA IMAGE (straight colour, alpha 1 = opaque) for Save Image / SaveWEBM / "
        "animated PNG/WEBP.",
        "All decoded layers, for Composite Layers and Save Layers.",
    )
    SEARCH_ALIASES = ["alpha", "matte", "RGBA", "layers", "transparent", "foreground", "decode video"]
    FUNCTION = "decode"
    CATEGORY = CATEGORY
    DESCRIPTION = "Decodes every layer of a layered latent: full, background, foregrounds and their alpha mattes."

    def decode(self, vae, latent, foreground_index: int):
        node = "Decode Layers"
        with readable_errors(node), torch.no_grad():
            samples, info = read_latent(latent, node)
            spec = info.spec()
            if foreground_index > info.num_foregrounds:
                raise LayerT2VInputError(f"{node}: foreground_index is {foreground_index} but the latent has "
                                         f"{info.num_foregrounds} foreground(s)")
            if samples.shape[0] != 1:
                raise LayerT2VInputError(f"{node}: decode one sample at a time (batch is {samples.shape[0]}); "
                                         f"use Latent From Batch first")
            layers = _last_decoded.get(vae, samples)
            if layers is None:
                device = host.compute_device()
                with _VAEOnDevice(device, vae):
                    parts = decode_videos(vae.vae, vae.mask_vae, spec, samples, device, vae.tile)
                layers = LayeredVideo(latent=samples[0], spec=spec, settings={"frames": info.frames}, **parts)
                _last_decoded.put(vae, samples, layers)
        fg, alpha = layers.foregrounds[foreground_index - 1], layers.alphas[foreground_index - 1]
        return (video_to_image(layers.full), video_to_image(layers.background), video_to_image(fg),
                alpha_to_mask(alpha), video_to_image(layers.rgba(foreground_index)), layers)


class _LastDecoded:
    """The last decode, so several Decode Layers nodes on one latent (one per foreground index) decode it once.

    Holds the latent and VAE themselves (not their ids, which Python reuses once an object is freed).
    """

    def __init__(self):
        self.vae, self.samples, self.version, self.layers = None, None, None, None

    @staticmethod
    def _version(samples: torch.Tensor):
        # ComfyUI runs nodes in inference mode, whose tensors have no version counter: compare contents instead.
        if samples.is_inference():
            return samples.double().sum().item(), samples.double().abs().sum().item()
        return samples._version

    def get(self, vae, samples: torch.Tensor):
        if vae is self.vae and samples is self.samples and self._version(samples) == self.version:
            return self.layers
        return None

    def put(self, vae, samples: torch.Tensor, layers) -> None:
        self.vae, self.samples, self.version, self.layers = vae, samples, self._version(samples), layers


_last_decoded = _LastDecoded()


class _VAEOnDevice:
    """The VAE pair on the compute device for one job, then back to the offload device."""

    def __init__(self, device: torch.device, vae):
        self.device, self.vae = device, vae

    def __enter__(self):
        host.make_room(self.device, self.vae.vae)
        self.vae.vae.to(self.device)
        self.vae.mask_vae.to(self.device)

    def __exit__(self, *exc):
        home = host.offload_device()
        self.vae.vae.to(home)
        self.vae.mask_vae.to(home)
        host.release_cache()


NODE_CLASS_MAPPINGS = {"LayerT2VEncodeLayers": LayerT2VEncodeLayers, "LayerT2VDecodeLayers": LayerT2VDecodeLayers}
NODE_DISPLAY_NAME_MAPPINGS = {"LayerT2VEncodeLayers": "Encode Layers (LayerT2V)",
                              "LayerT2VDecodeLayers": "Decode Layers (LayerT2V)"}
