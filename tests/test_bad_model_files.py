"""Damaged, mismatched or hostile model files, and non-finite numbers: one message naming the file (or the layer),
what was expected and what to do; never a raw traceback, never a hint to turn off weights_only."""
import pytest
import torch

from layert2v_core.checkpoints import load_dit, save_dit, save_dit_adapter
from layert2v_core.dit import WanDiT
from layert2v_core.layers import LayerSpec
from layert2v_core.model_folder import find_components, load_pipeline
from layert2v_core.vae import load_vae
from layert2v_core.weights import CheckpointError
from nodes import NODE_CLASS_MAPPINGS
from nodes.common import LayerT2VInputError
from train.tiny_models import tiny_dit_config, write_model_folder

SMALL = dict(frames=5, height=16, width=16, steps=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("tiny"), seed=0, num_foregrounds=1)


@pytest.fixture(scope="module")
def pipe(folder):
    return load_pipeline(find_components(folder))


def truncated(source, target, keep=0.5):
    data = source.read_bytes()
    target.write_bytes(data[:int(len(data) * keep)])
    return target


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.999])
def test_empty_or_truncated_safetensors_are_named(folder, tmp_path, keep):
    for load, name in ((load_dit, "dit.safetensors"), (load_vae, "vae.safetensors")):
        damaged = truncated(folder / name, tmp_path / name, keep)
        with pytest.raises(CheckpointError, match=f"{damaged}.*(empty|truncated).*download it again"):
            load(damaged)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_refused_pickle_is_explained_without_suggesting_weights_only_false(tmp_path, capsys):
    hostile = tmp_path / "Wan2.1_VAE.pth"
    torch.save({"decoder.conv1.weight": torch.zeros(1), "extra": Payload()}, hostile)
    with pytest.raises(CheckpointError) as error:
        load_vae(hostile)
    text = str(error.value)
    assert str(hostile) in text and "safetensors" in text and "weights_only" not in text, text
    assert "this must never run" not in capsys.readouterr().out
    damaged = truncated(hostile, tmp_path / "cut.pth", 0.3)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"broken\n")  # not a zip: the legacy unpickler fails with an IndexError
    for path in (damaged, junk):
        with pytest.raises(CheckpointError, match=f"{path}.*(damaged|truncated)"):
            load_vae(path)


def test_an_adapter_for_another_width_is_named(folder, tmp_path):
    other = WanDiT(tiny_dit_config(dim=32, ffn_dim=64))
    lora = {"blocks.0.self_attn.q": (torch.zeros(2, 32), torch.zeros(32, 2))}
    adapter = tmp_path / "adapter.safetensors"
    save_dit_adapter(other, lora, adapter, lora_alpha=2.0)
    with pytest.raises(CheckpointError, match=f"{adapter}.*another DiT.*width 32.*width 64"):
        load_dit(folder / "dit.safetensors", adapter=adapter)


def test_a_dit_with_another_text_width_or_input_channels_is_named(folder, tmp_path):
    paths = find_components(folder)
    wide = tmp_path / "dit_text48.safetensors"
    save_dit(WanDiT(tiny_dit_config(text_dim=48)), wide)
    paths.dit = wide
    with pytest.raises(CheckpointError, match=f"{wide}.*text width 48.*{paths.text_encoder}.*32"):
        load_pipeline(paths)
    i2v = tmp_path / "dit_in36.safetensors"
    save_dit(WanDiT(tiny_dit_config(in_dim=36)), i2v)
    with pytest.raises(CheckpointError, match=f"{i2v}.*36 input channels.*16"):
        load_dit(i2v)


def test_the_comfyui_loader_shows_the_same_message(comfy_folders):
    models, _ = comfy_folders
    empty = models / "diffusion_models" / "empty_download.safetensors"
    empty.write_bytes(b"")
    try:
        with pytest.raises(LayerT2VInputError) as error:
            NODE_CLASS_MAPPINGS["LayerT2VModelLoader"]().load("empty_download.safetensors", "none", "default",
                                                              "offload between runs")
    finally:
        empty.unlink()
    assert str(error.value).startswith("Load LayerT2V Model: ") and str(empty) in str(error.value)
    assert "download it again" in str(error.value)


# ---- 6: NaN / inf

def test_non_finite_kept_layers_are_refused_with_the_layer_named(pipe, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model ran before the kept layers were checked")
    monkeypatch.setattr(pipe.vae, "forward", refuse)
    video = torch.rand(3, 5, 16, 16)
    for broken, found in ((float("nan"), "NaN"), (float("inf"), "inf"), (255.0, "0..255")):
        bad = video.clone()
        bad[0, 1, 2, 3] = broken
        with pytest.raises(ValueError, match=f"kept layer 'bg'.*{found}"):
            pipe("p", keep={"bg": bad}, **SMALL)


def test_a_diverged_latent_is_refused_before_decoding(pipe, monkeypatch):
    spec = LayerSpec(1)
    latent = torch.zeros(1, 16, spec.num_segments * 2, 2, 2)
    latent[:, :, 4] = float("nan")  # the fg1 segment's first latent frame
    monkeypatch.setattr(pipe.vae, "decode", lambda *a, **k: pytest.fail("decoded a non-finite latent"))
    with pytest.raises(ValueError, match="NaN.*segment.*fg1"):
        pipe.decode(spec, latent)
    import layert2v_core.pipeline as pipeline
    monkeypatch.setattr(pipeline, "sample", lambda velocity, noise, *a, **k: noise * float("nan"))
    with pytest.raises(ValueError, match="sampler.*NaN.*full, bg, fg1, mask1"):
        pipe("p", **SMALL)
