"""Midpoint frame interpolators for VBench's motion smoothness (VBench uses AMT, which is not packaged).

Each interpolator maps two uint8 RGB frames [H, W, 3] to the frame halfway between them. The default is optical
flow from a maintained library, OpenCV's Farneback flow (`opencv-python-headless`): each neighbour is warped half
way along its flow to the other and the two warps are averaged. `linear` (the plain average) is the reference a
flow interpolator must beat on moving content. Any other interpolator plugs in as `module:function`.
"""
from __future__ import annotations

import importlib

import numpy as np

from .vbench import Interpolator

DEFAULT_INTERPOLATOR = "opencv-farneback"


def linear(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a.astype(np.uint16) + b.astype(np.uint16) + 1) // 2).astype(np.uint8)


def _cv2():
    try:
        import cv2
    except ImportError:
        raise RuntimeError("the opencv-farneback interpolator needs OpenCV: pip install opencv-python-headless "
                           "(or choose --interpolator linear / module:function)") from None
    return cv2


def _half_warp(cv2, source: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """`source` moved half way along its forward flow (backward sampling with the flow taken at the target)."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(source, gx - 0.5 * flow[..., 0], gy - 0.5 * flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def opencv_farneback(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    grey_a, grey_b = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    levels = max(1, min(3, int(np.log2(max(8, min(a.shape[:2])) / 8))))  # small frames have few pyramid levels
    options = dict(pyr_scale=0.5, levels=levels, winsize=9, iterations=3, poly_n=5, poly_sigma=1.1, flags=0)
    forward = cv2.calcOpticalFlowFarneback(grey_a, grey_b, None, **options)
    backward = cv2.calcOpticalFlowFarneback(grey_b, grey_a, None, **options)
    mid = 0.5 * (_half_warp(cv2, a, forward).astype(np.float32) + _half_warp(cv2, b, backward).astype(np.float32))
    return np.clip(np.rint(mid), 0, 255).astype(np.uint8)


INTERPOLATORS: dict[str, Interpolator] = {"opencv-farneback": opencv_farneback, "linear": linear}


def get_interpolator(name: str) -> Interpolator:
    """An interpolator by name, or `package.module:function` for one of your own (e.g. a wrapper around AMT)."""
    if name in INTERPOLATORS:
        if name == "opencv-farneback":
            _cv2()  # fail before any sample is read
        return INTERPOLATORS[name]
    if ":" in name:
        module, _, attribute = name.partition(":")
        try:
            function = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"interpolator {name!r} could not be imported ({error})") from None
        if not callable(function):
            raise ValueError(f"interpolator {name!r} is not callable")
        return function
    raise ValueError(f"unknown interpolator {name!r}; choose {', '.join(INTERPOLATORS)} or module:function")
