import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The suite's models are tiny: one thread is fastest for them and keeps a 2-core CI machine from oversubscribing.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def comfy_folders(tmp_path_factory):
    """(models, output) folders for the node pack outside ComfyUI, with tiny models under the workflows' names."""
    from comfy_models import populate_models
    from nodes import host

    models = populate_models(tmp_path_factory.mktemp("comfy_models"))
    output = tmp_path_factory.mktemp("comfy_output")
    host.use_folders(models, output)
    return models, output
