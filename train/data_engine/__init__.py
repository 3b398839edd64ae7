"""The data engine: captioned videos in, layered training samples (VidLayer layout) out, as the paper built VidLayer.

Stages (stages.py), each an interface with backends: annotate -> first-frame mask -> matting -> removal -> quality
control (quality.py). pipeline.py runs them on one video, run.py over a list, resumably and sharded.
"""
