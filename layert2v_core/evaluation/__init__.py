"""Evaluation of layered video: the paper's VBench dimensions on every layer and layer metrics a viewer would see.

`python -m layert2v_core evaluate SAMPLES... --out report/` (see `cli.py`); in Python, `evaluate_runs`.
"""
from .evaluate import Scorers, aggregate, evaluate_clip, evaluate_runs, load_scorers, runs_from_paths
from .layer_metrics import clip_layer_metrics
from .samples import LayeredClip, read_sample

__all__ = ["LayeredClip", "Scorers", "aggregate", "clip_layer_metrics", "evaluate_clip", "evaluate_runs",
           "load_scorers", "read_sample", "runs_from_paths"]
