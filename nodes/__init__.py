"""LayerT2V ComfyUI nodes: thin wrappers over `layert2v_core`. The only package that imports `comfy`."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
