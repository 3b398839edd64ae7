"""ComfyUI entry point of the LayerT2V node pack.

ComfyUI imports this folder as a package; plain Python can too (no `comfy` needed), which the tests rely on.
"""
import os
import sys

# The core library is a top-level package so that it is usable without ComfyUI; make it importable from here.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
else:  # imported as a bare module, as pytest does when it collects the repository root: no nodes to register
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
