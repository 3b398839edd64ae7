"""Choosing a backend per stage from the command line. Model backends import their libraries only when chosen.

    stage             backends
    annotate          captions (the list's captions, no model) | openai (any OpenAI-compatible server)
                      | transformers (a Qwen-VL model folder run in this process)
    first-frame mask  motion (moving region, colour words)     | sam3 (SAM3 text to mask)
    matting           motion (propagation + soft alpha)        | sam2 (SAM2 video tracking) | command
    removal           median (temporal clean plate)            | vace (Wan2.1 VACE inpainting) | command
    quality           measured (no model) | openai | transformers | none

Qwen3-VL and any other VLM run behind an OpenAI-compatible server (vLLM and SGLang serve Qwen3-VL), or in this
process through transformers (`--vlm-folder`), one model shared by both stages.
"""
from __future__ import annotations

import argparse
import os

from .pipeline import Engine, Rules


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backends")
    group.add_argument("--annotator", choices=("captions", "openai", "transformers"), default="captions")
    group.add_argument("--masker", choices=("motion", "sam3"), default="motion")
    group.add_argument("--matter", choices=("motion", "sam2", "command"), default="motion")
    group.add_argument("--remover", choices=("median", "vace", "command"), default="median")
    group.add_argument("--checker", choices=("measured", "openai", "transformers", "none"), default="measured")
    group.add_argument("--motion-threshold", type=float, default=0.1,
                       help="colour difference from the clean plate that counts as foreground (motion backends)")
    group.add_argument("--vlm-url", help="OpenAI-compatible server, e.g. http://localhost:8000/v1 (vLLM, SGLang)")
    group.add_argument("--vlm-model", help="model name the server serves, e.g. Qwen/Qwen3-VL-30B-A3B-Instruct")
    group.add_argument("--vlm-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    group.add_argument("--vlm-frames", type=int, default=8, help="frames of the video shown to the annotator")
    group.add_argument("--vlm-folder", help="transformers backend: a Qwen-VL model folder, e.g. "
                                            "Qwen/Qwen3-VL-8B-Instruct downloaded")
    group.add_argument("--vlm-max-tokens", type=int, default=1024, help="longest answer of a VLM, in tokens")
    group.add_argument("--sam3", help="SAM3 model folder (transformers layout, with its tokenizer)")
    group.add_argument("--sam2", help="SAM2 video model folder (transformers layout)")
    group.add_argument("--vace", help="Wan2.1 VACE diffusers folder, e.g. Wan-AI/Wan2.1-VACE-1.3B-diffusers")
    group.add_argument("--matte-command", help="matting command with {video} {mask} {out}; writes {out}/alpha")
    group.add_argument("--remove-command", help="removal command with {video} {alpha} {out}; writes "
                                                "{out}/background")
    group.add_argument("--command-timeout", type=float, help="seconds a command may run per video")
    group.add_argument("--device", default="cuda", help="device of the model backends")


def _need(value, flag: str, backend: str) -> None:
    if not value:
        raise ValueError(f"the {backend} backend needs {flag}")


def _vlm_client(args: argparse.Namespace):
    """The chat model the VLM stages share: one server client, or one model loaded once."""
    from .vlm import OpenAIVLM, TransformersVLM

    if "transformers" in (args.annotator, args.checker):
        _need(args.vlm_folder, "--vlm-folder", "transformers")
        return TransformersVLM.from_pretrained(args.vlm_folder, device=args.device, max_tokens=args.vlm_max_tokens)
    _need(args.vlm_url, "--vlm-url", "openai")
    _need(args.vlm_model, "--vlm-model", "openai")
    return OpenAIVLM(args.vlm_url, args.vlm_model, api_key=os.environ.get(args.vlm_key_env) or "EMPTY",
                     max_tokens=args.vlm_max_tokens)


def _model(name: str, path: str | None, flag: str, device: str):
    from . import hf_backends

    _need(path, flag, name)
    return getattr(hf_backends, name).from_pretrained(path, device=device)


def _command(name: str, template: str | None, flag: str, timeout: float | None):
    from . import command

    _need(template, flag, name)
    return getattr(command, name)(template, timeout)


def build_engine(args: argparse.Namespace, rules: Rules) -> Engine:
    """The Engine the arguments ask for; a missing setting stops with the flag to give."""
    from . import classical

    threshold = args.motion_threshold
    uses_vlm = {args.annotator, args.checker} & {"openai", "transformers"}
    if {args.annotator, args.checker} >= {"openai", "transformers"}:
        raise ValueError("--annotator and --checker must use the same VLM backend (openai or transformers)")
    vlm = _vlm_client(args) if uses_vlm else None

    if args.annotator == "captions":
        annotator = classical.CaptionAnnotator(threshold)
    else:
        from .vlm import VLMAnnotator
        annotator = VLMAnnotator(vlm, frames=args.vlm_frames)
    if args.masker == "motion":
        masker = classical.MotionMasker(threshold)
    else:
        masker = _model("Sam3Masker", args.sam3, "--sam3", args.device)

    if args.matter == "motion":
        matter = classical.MotionMatter(threshold)
    elif args.matter == "sam2":
        matter = _model("Sam2VideoMatter", args.sam2, "--sam2", args.device)
    else:
        matter = _command("CommandMatter", args.matte_command, "--matte-command", args.command_timeout)

    if args.remover == "median":
        remover = classical.MedianRemover()
    elif args.remover == "vace":
        remover = _model("VaceRemover", args.vace, "--vace", args.device)
    else:
        remover = _command("CommandRemover", args.remove_command, "--remove-command", args.command_timeout)

    if args.checker == "measured":
        checker = classical.MeasuredQualityChecker(threshold)
    elif args.checker == "none":
        checker = None
    else:
        from .vlm import VLMQualityChecker
        checker = VLMQualityChecker(vlm)
    return Engine(annotator, masker, matter, remover, checker, rules)
