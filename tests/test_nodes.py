"""The node classes without ComfyUI: declarations, the CLIP and SAMPLER bridges, layers, saving, readable errors."""
import inspect
import json
import shutil

import pytest
import torch

from layert2v_core.checkpoints import load_dit
from layert2v_core.composite import over_background
from layert2v_core.layers import LayerSpec
from layert2v_core.model_folder import find_components
from layert2v_core.pipeline import LayeredVideo
from layert2v_core.sampling import partial_flow_sigmas
from nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, host
from nodes.common import LayerT2VInputError
from workflows.build import ADAPTER, ALPHA_VAE, DIT, TEXT_ENCODER, VAE

WIDGETS = ("INT", "FLOAT", "STRING", "BOOLEAN")


def node(name):
    cls = NODE_CLASS_MAPPINGS[name]
    return getattr(cls(), cls.FUNCTION)


@pytest.mark.parametrize("name", sorted(NODE_CLASS_MAPPINGS))
def test_node_declarations_are_consistent(name, comfy_folders):
    cls = NODE_CLASS_MAPPINGS[name]
    assert name.startswith("LayerT2V") and cls.CATEGORY == "LayerT2V" and name in NODE_DISPLAY_NAME_MAPPINGS
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional"}
    inputs = {**spec.get("required", {}), **spec.get("optional", {})}
    for input_name, entry in inputs.items():
        kind, options = entry[0], entry[1]
        assert options.get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert isinstance(kind, list) or isinstance(kind, str) and kind.isupper(), f"{name}.{input_name}: {kind!r}"
        if isinstance(kind, list):
            assert kind and ("default" not in options or options["default"] in kind)
        elif kind in ("INT", "FLOAT"):
            assert options["min"] <= options["default"] <= options["max"]
    function = getattr(cls, cls.FUNCTION)
    parameters = inspect.signature(function).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    for input_name in spec.get("required", {}):
        assert input_name in parameters or takes_any, f"{name}.{cls.FUNCTION} does not take {input_name}"
    for input_name in spec.get("optional", {}):
        assert takes_any or parameters[input_name].default is None, f"optional {input_name} needs a default"
    assert isinstance(cls.RETURN_TYPES, tuple)
    if cls.RETURN_TYPES:
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    else:
        assert getattr(cls, "OUTPUT_NODE", False), f"{name} returns nothing, so it must be an output node"


def test_every_custom_type_consumed_is_produced(comfy_folders):
    produced = {t for cls in NODE_CLASS_MAPPINGS.values() for t in cls.RETURN_TYPES}
    for cls in NODE_CLASS_MAPPINGS.values():
        spec = cls.INPUT_TYPES()
        for entry in {**spec.get("required", {}), **spec.get("optional", {})}.values():
            if isinstance(entry[0], str) and entry[0].startswith("LAYERT2V_"):
                assert entry[0] in produced


# ---- a small generation shared by the tests below ----

@pytest.fixture(scope="module")
def parts(comfy_folders):
    model = node("LayerT2VModelLoader")(DIT, ADAPTER, "default", "offload between runs")[0]
    vae = node("LayerT2VVAELoader")(VAE, ALPHA_VAE, "off", 256, 64)[0]
    encoder = node("LayerT2VTextEncoderLoader")(TEXT_ENCODER, "default")[0]
    return model, vae, encoder


def encode(encoder=None, clip=None, n=1):
    return node("LayerT2VTextEncode")(n, "a red circle over a field", "a green field", "a red circle",
                                      "a blue square", "", "", text_encoder=encoder, clip=clip)[0]


def empty(n=1, frames=5):
    return node("LayerT2VEmptyLatent")(16, 16, frames, n)[0]


def run_sampler(model, conditioning, latent, **overrides):
    args = dict(seed=3, steps=2, cfg=5.0, shift=5.0, solver="unipc", routing="checkpoint", denoise=1.0)
    args.update(overrides)
    return node("LayerT2VSampler")(model, conditioning, latent, **args)[0]


# ---- bad inputs stop with one readable message ----

def _readable(error: pytest.ExceptionInfo, node_title: str) -> str:
    assert str(error.value).startswith(node_title + ": ")
    # The core's own stack is not chained under it: no cause, and any context suppressed.
    assert error.value.__cause__ is None
    assert error.value.__context__ is None or error.value.__suppress_context__
    return str(error.value)


def test_wrong_frame_count_is_explained():
    with pytest.raises(LayerT2VInputError) as error:
        empty(frames=40)
    assert "frames must be 4k+1" in _readable(error, "Empty Layered Latent") and "37 or 41" in str(error.value)


def test_layer_count_mismatch_is_explained(parts):
    model, _, encoder = parts
    with pytest.raises(LayerT2VInputError) as error:
        run_sampler(model, encode(encoder, n=1), empty(n=2))
    assert "layer count mismatch: the latent has 2 foreground(s) but Layer Text Encode has 1" in \
        _readable(error, "Layered Sampler")


def test_wrong_file_in_the_adapter_slot_is_explained(parts, comfy_folders):
    models, _ = comfy_folders
    with pytest.raises(LayerT2VInputError) as error:
        node("LayerT2VModelLoader")(DIT, ALPHA_VAE, "default", "offload between runs")
    assert "alpha-matte (mask) VAE, not the DiT adapter" in _readable(error, "Load LayerT2V Model")
    (models / "loras").mkdir(exist_ok=True)
    shutil.copyfile(models / "vae" / VAE, models / "loras" / "some_vae.safetensors")
    with pytest.raises(LayerT2VInputError, match="not a LayerT2V adapter"):
        node("LayerT2VModelLoader")(DIT, "some_vae.safetensors", "default", "offload between runs")


def test_loaders_offer_the_built_in_demo_after_the_users_files(comfy_folders, monkeypatch):
    from layert2v_core import model_folder
    from nodes.loaders import BUILTIN
    demo = model_folder.demo_model_folder()
    assert demo is not None, "the embedded demo model (models/layert2v-tiny) is part of the repository"
    choices = {name: NODE_CLASS_MAPPINGS[name].INPUT_TYPES()["required"]
               for name in ("LayerT2VModelLoader", "LayerT2VVAELoader", "LayerT2VTextEncoderLoader")}
    for listed in (choices["LayerT2VModelLoader"]["model_name"][0], choices["LayerT2VVAELoader"]["vae_name"][0],
                   choices["LayerT2VVAELoader"]["alpha_vae_name"][0],
                   choices["LayerT2VTextEncoderLoader"]["text_encoder_name"][0]):
        assert listed[-1] == BUILTIN and len(listed) > 1  # the user's files first
    model = node("LayerT2VModelLoader")(BUILTIN, "none", "default", "offload between runs")[0]
    vae = node("LayerT2VVAELoader")(BUILTIN, BUILTIN, "off", 256, 64)[0]
    encoder = node("LayerT2VTextEncoderLoader")(BUILTIN, "default")[0]
    expected = load_dit(find_components(demo).dit, dtype=torch.float32)
    for name, value in expected.state_dict().items():  # on a CPU 'default' computes in fp32
        assert torch.equal(model.dit.state_dict()[name], value), name
    assert vae.vae.conv1.weight.dtype == torch.float32 and vae.mask_vae is not None
    assert encoder is not None
    # Apply LayerT2V (the native path) lists the demo too: its LayerAdaLN and routing, from the merged DiT.
    from layert2v_core.checkpoints import load_adapter
    from nodes.loaders import _apply_adapter_path
    assert NODE_CLASS_MAPPINGS["LayerT2VApply"].INPUT_TYPES()["required"]["adapter_name"][0][-1] == BUILTIN
    adapter = load_adapter(_apply_adapter_path(BUILTIN))
    assert torch.equal(adapter.tensors["layer_adaln.layer_modulation"], expected.layer_adaln.layer_modulation)
    assert adapter.lora == {} and adapter.routing_policy == expected.config.routing_policy
    monkeypatch.setattr("nodes.loaders.demo_model_folder", lambda: None)
    with pytest.raises(LayerT2VInputError, match="built-in demo model is missing"):
        node("LayerT2VModelLoader")(BUILTIN, "none", "default", "offload between runs")


def test_a_plain_latent_is_refused(parts):
    model, _, encoder = parts
    with pytest.raises(LayerT2VInputError, match="not a LayerT2V layered latent"):
        run_sampler(model, encode(encoder), {"samples": torch.zeros(1, 16, 2, 2, 2)})


def test_text_encode_needs_exactly_one_encoder(parts):
    with pytest.raises(LayerT2VInputError, match="connect exactly one encoder"):
        encode()


# ---- ComfyUI's CLIP and SAMPLER, through stand-ins that follow their interfaces ----

class WanClipStandIn:
    """Like ComfyUI's CLIP of type wan: umt5 tokens padded with 0 to 512, zeros past the real tokens."""

    def __init__(self, encoder, key="umt5xxl"):
        self.encoder, self.key = encoder, key

    def tokenize(self, text):
        ids = list(self.encoder.tokenizer(text).ids)
        return {self.key: [[(i, 1.0) for i in ids] + [(0, 1.0)] * (512 - len(ids))]}

    def encode_from_tokens(self, tokens):
        ids = [t[0] for t in tokens[self.key][0]]
        real = ids[:max(i + 1 for i, t in enumerate(ids) if t != 0)]
        out = torch.zeros(1, 512, self.encoder.dim)
        out[0, :len(real)] = self.encoder._run([tuple(real)])[0]
        return out


def test_comfy_clip_gives_the_same_context_as_our_encoder(parts):
    _, _, encoder = parts
    ours = encode(encoder, n=2).text
    theirs = encode(clip=WanClipStandIn(encoder), n=2).text
    assert torch.equal(ours.prompt_lens, theirs.prompt_lens)
    assert torch.equal(ours.negative_prompt_lens, theirs.negative_prompt_lens)
    assert torch.allclose(ours.context, theirs.context) and torch.allclose(ours.negative_context,
                                                                           theirs.negative_context)
    with pytest.raises(LayerT2VInputError, match="not umt5-xxl"):
        encode(clip=WanClipStandIn(encoder, key="l"))


class FlowSamplingStandIn:
    """ComfyUI's CONST (flow) noise scaling, as its model sampling object provides it."""

    sigma_max = 1.0

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return sigma * noise + (1.0 - sigma) * latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent / (1.0 - sigma)


class EulerSamplerStandIn:
    """Follows KSAMPLER.sample: scale the noise, call model(x, sigma, **extra), Euler on (x - denoised) / sigma."""

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        ms = model_wrap.inner_model.model_sampling
        x = ms.noise_scaling(sigmas[0], noise, latent_image)
        for i in range(len(sigmas) - 1):
            denoised = model_wrap(x, sigmas[i] * x.new_ones(x.shape[0]), **extra_args)
            callback(i, denoised, x, len(sigmas) - 1)
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        return ms.inverse_noise_scaling(sigmas[-1], x)


def test_comfy_sampler_matches_our_euler_on_the_same_sigmas(parts, monkeypatch):
    model, _, encoder = parts
    monkeypatch.setattr(host, "flow_model_sampling", lambda shift: FlowSamplingStandIn())
    steps = []
    monkeypatch.setattr(host, "progress", lambda total: lambda step, latent=None: steps.append((step, total,
                                                                                                latent.shape)))
    sigmas = node("LayerT2VScheduler")("wan", 3, 5.0, 1.0)[0]
    assert torch.allclose(sigmas.double(), partial_flow_sigmas(3, 5.0, 1.0))
    conditioning, latent = encode(encoder), empty()
    ours = run_sampler(model, conditioning, latent, solver="euler", sigmas=sigmas)
    assert [s[:2] for s in steps] == [(1, 3), (2, 3), (3, 3)]
    assert steps[0][2] == (1, 16, 2, 2, 2)  # previews show the full-video segment
    theirs = run_sampler(model, conditioning, latent, sampler=EulerSamplerStandIn(), sigmas=sigmas)
    # Measured 1.9e-6 on latents of scale ~4 (the two Euler forms round differently in float32).
    assert torch.allclose(ours["samples"], theirs["samples"], atol=4e-6, rtol=0)
    assert theirs["layert2v"] == latent["layert2v"]


# ---- layers: decode, keep, composite, save ----

def test_decode_layers_mask_polarity_and_rgba(parts):
    model, vae, encoder = parts
    latent = run_sampler(model, encode(encoder, n=2), empty(n=2))
    full, background, foreground, mask, rgba, layers = node("LayerT2VDecodeLayers")(vae, latent, 2)
    assert full.shape == background.shape == foreground.shape == (5, 16, 16, 3) and rgba.shape == (5, 16, 16, 4)
    assert torch.allclose(mask, 1 - layers.alphas[1][0])  # MASK = 1 - alpha, as JoinImageWithAlpha reads it
    assert torch.allclose(rgba[..., 3], 1 - mask)  # hand-computed values: test_end_to_end's polarity tests
    with pytest.raises(LayerT2VInputError, match="foreground_index is 3 but the latent has 2"):
        node("LayerT2VDecodeLayers")(vae, latent, 3)


def test_nodes_run_in_inference_mode_as_comfyui_runs_them(parts):
    """Inference tensors have no version counter; decoding the same latent twice reuses the first decode."""
    model, vae, encoder = parts
    with torch.inference_mode():
        latent = run_sampler(model, encode(encoder, n=1), empty(n=1))
        first = node("LayerT2VDecodeLayers")(vae, latent, 1)
        again = node("LayerT2VDecodeLayers")(vae, latent, 1)
    assert again[5] is first[5]


def test_encode_layers_checks_what_is_connected(parts):
    _, vae, _ = parts
    frames = torch.rand(5, 16, 16, 3)
    encode_layers = node("LayerT2VEncodeLayers")
    with pytest.raises(LayerT2VInputError, match="latent is 5 frame\\(s\\) of 16x16"):
        encode_layers(vae, empty(), 0.0, background=torch.rand(3, 16, 16, 3))
    with pytest.raises(LayerT2VInputError, match="needs its alpha too"):
        encode_layers(vae, empty(), 0.0, foreground_1=frames)
    with pytest.raises(LayerT2VInputError, match="'foreground_2' is connected but the latent has only 1"):
        encode_layers(vae, empty(), 0.0, foreground_2=frames)
    kept = encode_layers(vae, empty(), 0.5, background=torch.rand(1, 16, 16, 3))[0]  # a still is held
    assert kept["layert2v"]["kept"] == ["bg"] and kept["layert2v"]["strength"] == 0.5
    assert LayerSpec(1).split(kept["samples"])["bg"].abs().sum() > 0
    assert LayerSpec(1).split(kept["samples"])["full"].abs().sum() == 0
    mask = LayerSpec(1).split(kept["noise_mask"])  # ComfyUI's samplers: 0 holds the background, 1 generates
    assert kept["noise_mask"].shape == (1, 1, *kept["samples"].shape[2:])
    assert (mask["bg"] == 0).all() and all((mask[name] == 1).all() for name in ("full", "fg1", "mask1"))


def fake_layers(frames=5, size=16):
    alpha = torch.zeros(1, frames, size, size)
    alpha[..., :8, :] = 1.0
    spec = LayerSpec(1)
    return LayeredVideo(full=torch.rand(3, frames, size, size), background=torch.rand(3, frames, size, size),
                        foregrounds=[torch.rand(3, frames, size, size)], alphas=[alpha],
                        latent=torch.zeros(16, 8, 2, 2), spec=spec, settings={"frames": frames})


def test_composite_over_a_new_background_and_recomposition():
    layers = fake_layers()
    composite = node("LayerT2VComposite")
    orange = torch.tensor([1.0, 0.5, 0.0]).expand(1, 9, 11, 3)
    out = composite(layers, orange)[0]
    assert out.shape == (5, 16, 16, 3)
    assert torch.allclose(out[:, 8:], torch.tensor([1.0, 0.5, 0.0]).expand(5, 8, 16, 3))  # transparent part
    assert torch.allclose(out[:, :8], layers.foregrounds[0].permute(1, 2, 3, 0)[:, :8])  # opaque part
    again = composite(layers)[0]
    expected = over_background(layers.background, layers.foregrounds, layers.alphas).permute(1, 2, 3, 0)
    assert torch.allclose(again, expected)


def test_save_layers_writes_a_new_folder_each_time(comfy_folders):
    _, output = comfy_folders
    save = node("LayerT2VSaveLayers")
    first = save(fake_layers(), "tests/run", 16.0, "png sequence")["ui"]
    second = save(fake_layers(), "tests/run", 16.0, "webm (VP9 alpha)")["ui"]
    assert first["images"][0]["subfolder"] == "tests/run_00001" and second["images"][0]["subfolder"] == \
        "tests/run_00002"
    folder = output / "tests" / "run_00001"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["num_foregrounds"] == 1 and (folder / "fg1_rgba_png").is_dir()
    assert (folder / "preview.webp").stat().st_size > 0 and (output / "tests/run_00002/fg1_rgba.webm").is_file()
    with pytest.raises(LayerT2VInputError, match="outside the output folder"):
        save(fake_layers(), "../escape", 16.0, "png sequence")
