"""LayerT2V ComfyUI nodes: thin wrappers over `layert2v_core`. The only package that imports `comfy`."""
from layert2v_core.model_folder import DEMO_DIT, demo_model_folder

from . import composite, host, latent, layers, loaders, native, sampler, save, text

_demo = demo_model_folder()
host.register_model_folder(None if _demo is None else (_demo / DEMO_DIT).parent)

_MODULES = (loaders, native, text, latent, sampler, layers, composite, save)
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in _MODULES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
