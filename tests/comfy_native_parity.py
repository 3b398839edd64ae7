"""Native path vs our own, in a running ComfyUI server: velocity and a sampled result on the same weights.

    python tests/comfy_native_parity.py --comfy path/to/ComfyUI --server http://127.0.0.1:8188 [--demo] [--vae]

Writes tiny models into the server's models folder (tests/comfy_models.populate_native_models), then runs one
graph holding both paths on the same prompts, noise and sigmas:
- native: Load Diffusion Model -> Apply LayerT2V -> CFGGuider -> SamplerCustomAdvanced (euler);
- ours:   Load LayerT2V Model (same file + adapter) -> Layered Sampler (euler, the same SIGMAS).
Velocity is compared through a one-step run (v = (x - out) / sigma), the sampled result through a full run; --demo
repeats both with the built-in demo model (its DiT through Load Diffusion Model). A kept background (Encode Layers'
noise mask) is held by SamplerCustomAdvanced and KSampler and sampled as the Layered Sampler does. With
--vae, a random Wan2.1-size VAE (which ComfyUI's Load VAE reads) decodes a sampled latent twice: through ComfyUI's
Load VAE + LayerT2V Alpha VAE and through Load LayerT2V VAE on the same file; the saved frames must be identical. Both
paths run fp32 on the CPU; ComfyUI's sinusoid is float32 where ours is float64 and its CPU attention is another
kernel, so agreement is to float32 rounding: the check fails above TOLERANCE (relative to the largest value).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from layert2v_core.model_folder import DEMO_DIT, DEMO_MODEL_LABEL as BUILTIN  # noqa: E402
from tests.comfy_models import (NATIVE_ADAPTER, NATIVE_ALPHA_VAE, NATIVE_DIT, NATIVE_TEXT_ENCODER, NATIVE_VAE,  # noqa
                                populate_native_models)

TOLERANCE = 1e-4
SEED, CFG, SHIFT = 7, 3.0, 3.0
PROMPTS = dict(num_foregrounds=2, full_prompt="a red circle moves right and a white star moves up over a green "
               "field", background_prompt="a green field", foreground_1="a red circle", foreground_2="a white star",
               foreground_3="", negative_prompt="")


# The built-in demo on both paths: Load Diffusion Model lists its DiT, Apply LayerT2V takes its LayerAdaLN.
DEMO = dict(unet=DEMO_DIT.name, apply=BUILTIN, ours=(BUILTIN, "none"), text_encoder=BUILTIN, size=(64, 17),
            prompts={**PROMPTS, "full_prompt": "a red star moves right and a white circle moves up over a blue striped "
                     "background", "background_prompt": "a blue striped background", "foreground_1": "a red star",
                     "foreground_2": "a white circle"})
TINY = dict(unet=NATIVE_DIT, apply=NATIVE_ADAPTER, ours=(NATIVE_DIT, NATIVE_ADAPTER), text_encoder=NATIVE_TEXT_ENCODER,
            size=(32, 5), prompts=PROMPTS)


def parity_graph(steps: int, prefix: str, model: dict = TINY) -> dict:
    side, frames = model["size"]
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": model["unet"], "weight_dtype": "default"}},
        "2": {"class_type": "LayerT2VApply", "inputs": {"model": ["1", 0], "adapter_name": model["apply"],
                                                        "strength": 1.0, "routing": "checkpoint"}},
        "3": {"class_type": "LayerT2VTextEncoderLoader", "inputs": {"text_encoder_name": model["text_encoder"],
                                                                    "dtype": "default"}},
        "4": {"class_type": "LayerT2VTextEncode", "inputs": {**model["prompts"], "text_encoder": ["3", 0]}},
        "5": {"class_type": "LayerT2VEmptyLatent", "inputs": {"width": side, "height": side, "frames": frames,
                                                              "num_foregrounds": 2}},
        "6": {"class_type": "LayerT2VScheduler", "inputs": {"scheduler": "wan", "steps": steps, "shift": SHIFT,
                                                            "denoise": 1.0}},
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "8": {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}},
        "9": {"class_type": "CFGGuider", "inputs": {"model": ["2", 0], "positive": ["4", 1],
                                                    "negative": ["4", 2], "cfg": CFG}},
        "10": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["8", 0], "guider": ["9", 0],
                                                                 "sampler": ["7", 0], "sigmas": ["6", 0],
                                                                 "latent_image": ["5", 0]}},
        "11": {"class_type": "SaveLatent", "inputs": {"samples": ["10", 0], "filename_prefix": f"{prefix}/native"}},
        "21": {"class_type": "LayerT2VModelLoader", "inputs": {"model_name": model["ours"][0],
                                                               "adapter_name": model["ours"][1],
                                                               "weight_dtype": "default",
                                                               "offload": "offload between runs"}},
        "22": {"class_type": "LayerT2VSampler", "inputs": {"model": ["21", 0], "conditioning": ["4", 0],
                                                           "latent": ["5", 0], "seed": SEED, "steps": steps,
                                                           "cfg": CFG, "shift": SHIFT, "solver": "euler",
                                                           "routing": "checkpoint", "denoise": 1.0,
                                                           "sigmas": ["6", 0]}},
        "23": {"class_type": "SaveLatent", "inputs": {"samples": ["22", 0], "filename_prefix": f"{prefix}/ours"}},
    }


def kept_layer_graph(steps: int, prefix: str) -> dict:
    """A background kept through Encode Layers' noise mask: the native samplers against the Layered Sampler."""
    graph = parity_graph(steps, prefix)
    graph.update({
        "40": {"class_type": "LayerT2VVAELoader", "inputs": {"vae_name": NATIVE_VAE, "alpha_vae_name": NATIVE_ALPHA_VAE,
                                                             "tiling": "off", "tile_size": 256, "tile_overlap": 64}},
        "41": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 5, "color": 0x3366CC}},
        "42": {"class_type": "LayerT2VEncodeLayers", "inputs": {"vae": ["40", 0], "latent": ["5", 0], "strength": 0.0,
                                                                "background": ["41", 0]}},
        "43": {"class_type": "SaveLatent", "inputs": {"samples": ["42", 0], "filename_prefix": f"{prefix}/kept"}},
        "44": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": SEED, "steps": steps, "cfg": CFG,
                                                    "sampler_name": "euler", "scheduler": "simple",
                                                    "positive": ["4", 1], "negative": ["4", 2],
                                                    "latent_image": ["42", 0], "denoise": 1.0}},
        "45": {"class_type": "SaveLatent", "inputs": {"samples": ["44", 0], "filename_prefix": f"{prefix}/ksampler"}},
    })
    graph["10"]["inputs"]["latent_image"] = ["42", 0]
    graph["22"]["inputs"]["latent"] = ["42", 0]
    return graph


CHECK_VAE, CHECK_ALPHA_VAE = "layert2v_check_wan_vae.safetensors", "layert2v_check_alpha_vae.safetensors"


def write_wan_size_vae(models: Path) -> None:
    """A random VAE of Wan2.1's size (ComfyUI builds its Wan VAE at dim 96) and an alpha VAE made for it."""
    from layert2v_core.mask_vae import MaskVAE, MaskVAEConfig, save_mask_vae
    from layert2v_core.vae import VAEConfig, WanVAE, save_vae
    torch.manual_seed(0)
    vae = WanVAE(VAEConfig())
    save_vae(vae, models / "vae" / CHECK_VAE, dtype=torch.float16)
    save_mask_vae(MaskVAE(vae, MaskVAEConfig(lora_rank=4, lora_alpha=4, proj_hidden=16, proj_res_blocks=1,
                                             proj_use_attention=False)), models / "layert2v" / CHECK_ALPHA_VAE)


def vae_graph(prefix: str) -> dict:
    graph = {k: v for k, v in parity_graph(2, prefix).items() if int(k) <= 10}
    graph.update({
        "30": {"class_type": "VAELoader", "inputs": {"vae_name": CHECK_VAE}},
        "31": {"class_type": "LayerT2VAlphaVAE", "inputs": {"vae": ["30", 0], "alpha_vae_name": CHECK_ALPHA_VAE}},
        "32": {"class_type": "LayerT2VVAELoader", "inputs": {"vae_name": CHECK_VAE, "alpha_vae_name": CHECK_ALPHA_VAE,
                                                             "tiling": "off", "tile_size": 256, "tile_overlap": 64}},
    })
    for decode, vae, name in (("33", "31", "comfy_vae"), ("35", "32", "own_vae")):
        graph[decode] = {"class_type": "LayerT2VDecodeLayers", "inputs": {"vae": [vae, 0], "latent": ["10", 0],
                                                                          "foreground_index": 1}}
        graph[str(int(decode) + 1)] = {"class_type": "SaveImage", "inputs": {
            "images": [decode, 4], "filename_prefix": f"{prefix}/{name}"}}  # the RGBA output: colour and alpha
    return graph


def run(server: str, graph: dict) -> float:
    """POST the graph, wait for it; seconds it took."""
    start = time.perf_counter()
    request = urllib.request.Request(f"{server}/prompt", data=json.dumps({"prompt": graph}).encode(),
                                     headers={"Content-Type": "application/json"})
    prompt_id = json.load(urllib.request.urlopen(request))["prompt_id"]
    while True:
        history = json.load(urllib.request.urlopen(f"{server}/history/{prompt_id}"))
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            status = history[prompt_id]["status"]
            if status["status_str"] != "success":
                raise SystemExit(f"graph failed: {json.dumps(status['messages'])[:2000]}")
            return time.perf_counter() - start
        time.sleep(0.2)


def latest(folder: Path, name: str) -> torch.Tensor:
    return load_file(str(sorted(folder.glob(f"{name}_*.latent"))[-1]))["latent_tensor"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--comfy", type=Path, required=True, help="the ComfyUI folder the server runs from")
    parser.add_argument("--server", default="http://127.0.0.1:8188")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--vae", action="store_true", help="also decode through ComfyUI's own Load VAE")
    parser.add_argument("--demo", action="store_true", help="also the built-in demo model on both paths")
    args = parser.parse_args()
    populate_native_models(args.comfy / "models")
    from layert2v_core.sampling import partial_flow_sigmas, seeded_noise

    failed = False
    cases = [(TINY, steps, what) for steps, what in ((1, "velocity"), (args.steps, f"sampled result, "
                                                                                   f"{args.steps} euler steps"))]
    if args.demo:
        cases += [(DEMO, steps, f"built-in demo, {what}") for _, steps, what in cases]
    for model, steps, what in cases:
        prefix = f"layert2v_parity_{'demo_' if model is DEMO else ''}{steps}"
        seconds = run(args.server, parity_graph(steps, prefix, model))
        folder = args.comfy / "output" / prefix
        native, ours = latest(folder, "native"), latest(folder, "ours")
        if steps == 1:  # out = x - sigma * v with x = sigma * noise (an empty latent)
            sigma = float(partial_flow_sigmas(1, SHIFT)[0])
            x = sigma * seeded_noise(native.shape, SEED)
            native, ours = (x - native) / sigma, (x - ours) / sigma
        error = (native - ours).abs().max().item() / ours.abs().max().item()
        failed |= not error <= TOLERANCE
        print(f"{what}: max |native - ours| / max |ours| = {error:.2e} (tolerance {TOLERANCE:.0e}); "
              f"shape {tuple(ours.shape)}, both paths {seconds:.1f} s")
    prefix = "layert2v_parity_kept"
    seconds = run(args.server, kept_layer_graph(args.steps, prefix))
    folder = args.comfy / "output" / prefix
    from layert2v_core.layers import LayerSpec
    spec = LayerSpec(PROMPTS["num_foregrounds"])
    kept, native, ours, ksampler = (latest(folder, name) for name in ("kept", "native", "ours", "ksampler"))
    error = (native - ours).abs().max().item() / ours.abs().max().item()
    held = max((spec.split(out)["bg"] - spec.split(kept)["bg"]).abs().max().item() for out in (native, ksampler))
    moved = min((spec.split(out)["full"] - spec.split(kept)["full"]).abs().max().item() for out in (native, ksampler))
    failed |= not (error <= TOLERANCE and held <= TOLERANCE and moved > 0.1)
    print(f"kept background (Encode Layers' noise mask), {args.steps} euler steps: native vs ours {error:.2e}; "
          f"background held by SamplerCustomAdvanced and KSampler to {held:.2e}; the full video generated "
          f"(moved {moved:.2f}); {seconds:.1f} s")
    if args.vae:
        import numpy as np
        from PIL import Image
        write_wan_size_vae(args.comfy / "models")
        seconds = run(args.server, vae_graph("layert2v_parity_vae"))
        folder = args.comfy / "output" / "layert2v_parity_vae"
        frames = {name: [np.asarray(Image.open(p)) for p in sorted(folder.glob(f"{name}_*.png"))[-5:]]
                  for name in ("comfy_vae", "own_vae")}
        same = len(frames["comfy_vae"]) == 5 and all(
            (a == b).all() for a, b in zip(frames["comfy_vae"], frames["own_vae"]))
        failed |= not same
        print(f"Decode Layers through ComfyUI's Load VAE + LayerT2V Alpha VAE vs Load LayerT2V VAE: "
              f"{'identical' if same else 'DIFFERENT'} RGBA frames ({frames['comfy_vae'][0].shape}), {seconds:.1f} s")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
