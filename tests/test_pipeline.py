"""The generation pipeline, layer-conditioned generation and the CLI, on a tiny random model folder."""
import json

import pytest
import torch

from layert2v_core.cli import main as cli_main
from layert2v_core.model_folder import find_components, load_pipeline
from layert2v_core.video_io import read_video
from train.tiny_models import write_model_folder

SMALL = dict(frames=5, height=32, width=32, steps=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("tiny_model"), seed=0, num_foregrounds=2)


@pytest.fixture(scope="module")
def pipe(folder):
    return load_pipeline(find_components(folder))


def test_generates_every_layer(pipe):
    out = pipe("a red circle over a field", "a green field", ["a red circle"], seed=3, **SMALL)
    assert out.full.shape == out.background.shape == (3, 5, 32, 32)
    assert len(out.foregrounds) == len(out.alphas) == 1
    assert out.foregrounds[0].shape == (3, 5, 32, 32) and out.alphas[0].shape == (1, 5, 32, 32)
    for video in (out.full, out.background, out.foregrounds[0], out.alphas[0]):
        assert torch.isfinite(video).all() and video.min() >= 0 and video.max() <= 1
    assert out.latent.shape == (16, 4 * 2, 4, 4)  # 4 segments x 2 latent frames, 32 px / 8
    assert out.rgba(1).shape == (4, 5, 32, 32)
    # fg over bg, premultiplied by hand, against the full video.
    alpha = out.alphas[0]
    by_hand = (out.foregrounds[0] * alpha + out.background * (1 - alpha) - out.full).abs().mean().item()
    assert out.consistency_error() == pytest.approx(by_hand, rel=1e-6) and by_hand > 0
    assert out.settings["prompts"]["fg1"] == "a red circle" and out.settings["policy"] == "paper"


def test_seed_reproducible_and_distinct(pipe):
    a = pipe("a scene", "", [""], seed=11, **SMALL)
    b = pipe("a scene", "", [""], seed=11, **SMALL)
    c = pipe("a scene", "", [""], seed=12, **SMALL)
    assert torch.equal(a.latent, b.latent)
    assert not torch.equal(a.latent, c.latent)


def test_two_foregrounds(pipe):
    out = pipe("two shapes", "sky", ["a star", "a square"], seed=1, **SMALL)
    assert len(out.foregrounds) == 2 and out.latent.shape[1] == 6 * 2
    assert out.spec.segments == ("full", "bg", "fg1", "mask1", "fg2", "mask2")


def _segment(out, name):
    """Segment `name` cut by index from the documented order [full, bg, fg1, mask1], 2 latent frames each."""
    k = ("full", "bg", "fg1", "mask1").index(name)
    return out.latent[:, 2 * k:2 * k + 2]


def _encoded(pipe, name, keep):
    """The VAEs' latent of one kept layer, formed by hand: RGB in [-1, 1], the foreground premultiplied."""
    with torch.no_grad():
        if name.startswith("mask"):
            return pipe.mask_vae.encode(keep[name][None])[0]
        video = keep[name] * keep[f"mask{name[2:]}"] if name.startswith("fg") else keep[name]
        return pipe.vae.encode(video[None] * 2 - 1)[0]


@pytest.mark.parametrize("case", ["new_foreground_on_given_background", "new_background_behind_given_foreground",
                                  "decompose_given_video"])
def test_kept_layers_end_exactly_at_their_latent(pipe, case):
    g = torch.Generator().manual_seed(0)
    video = torch.rand(3, 5, 32, 32, generator=g)
    alpha = (torch.rand(1, 5, 32, 32, generator=g) > 0.5).float()
    keep = {"new_foreground_on_given_background": {"bg": video},
            "new_background_behind_given_foreground": {"fg1": video, "mask1": alpha},
            "decompose_given_video": {"full": video}}[case]
    out = pipe("p", "b", ["f"], seed=5, keep=keep, **SMALL)
    for name in keep:
        assert torch.equal(_segment(out, name), _encoded(pipe, name, keep)), name
    free = [n for n in out.spec.segments if n not in keep]
    reference = pipe("p", "b", ["f"], seed=5, **SMALL)
    assert any(not torch.equal(_segment(out, n), _segment(reference, n)) for n in free)
    assert out.settings["kept"] == sorted(keep)


def test_bad_requests_fail_before_any_model_runs(pipe, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model ran before the request was validated")
    for part in (pipe.dit, pipe.vae, pipe.text_encoder.model):
        monkeypatch.setattr(part, "forward", refuse)
    with pytest.raises(ValueError, match="frames must be 4k\\+1.*nearest valid: 5 or 9"):
        pipe("p", frames=6, height=32, width=32, steps=2)
    with pytest.raises(ValueError, match="width must be a multiple of 16.*nearest valid: 32 or 48"):
        pipe("p", frames=5, height=32, width=40, steps=2)
    with pytest.raises(ValueError, match="enough for 2 foreground"):
        pipe("p", "", ["a", "b", "c"], **SMALL)
    with pytest.raises(ValueError, match="unknown solver"):
        pipe("p", solver="heun", **SMALL)
    with pytest.raises(ValueError, match="needs its alpha too"):
        pipe("p", keep={"fg1": torch.rand(3, 5, 32, 32)}, **SMALL)
    with pytest.raises(ValueError, match="unknown layer"):
        pipe("p", keep={"fg2": torch.rand(3, 5, 32, 32)}, **SMALL)
    with pytest.raises(ValueError, match=r"shape \(3, 5, 32, 32\)"):
        pipe("p", keep={"bg": torch.rand(3, 9, 32, 32)}, **SMALL)


def test_missing_parts_are_named(tmp_path, folder):
    (tmp_path / "dit.safetensors").write_bytes((folder / "dit.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"missing model part\(s\) \['vae', 'text_encoder'\]"):
        find_components(tmp_path)


def test_cli_writes_layer_files_and_manifest(folder, tmp_path):
    code = cli_main(["generate", "--model", str(folder), "--prompt", "a red star over a blue sky",
                     "--background", "a blue sky", "--foreground", "a red star", "--frames", "5", "--height", "32",
                     "--width", "32", "--steps", "2", "--seed", "7", "--out", str(tmp_path), "--rgba", "webm,png",
                     "--quiet"])
    assert code == 0
    (sample,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    manifest = json.loads((sample / "manifest.json").read_text())
    for name in ("full.mp4", "background.mp4", "fg1.mp4", "alpha1.mp4", "fg1_rgba.webm", "fg1_rgba_png",
                 "preview.mp4"):
        assert (sample / name).exists(), name
    assert manifest["settings"]["seed"] == 7 and manifest["settings"]["prompts"]["fg1"] == "a red star"
    assert set(manifest["model_hashes"]) == {"dit", "vae", "mask_vae", "text_encoder"}
    assert 0 <= manifest["consistency_error"] < 1
    rgba, _ = read_video(sample / "fg1_rgba_png")
    assert rgba.shape == (5, 32, 32, 4)


def test_cli_keeps_a_background_clip(folder, tmp_path):
    """--keep bg=clip.mp4 style conditioning: the given background comes back (through the VAE) in the output."""
    from layert2v_core.video_io import write_video
    clip = torch.linspace(0, 1, 32)[None, None, :, None].expand(5, 32, 32, 3).contiguous()
    write_video(tmp_path / "bg.mp4", clip.numpy(), 16)
    code = cli_main(["generate", "--model", str(folder), "--prompt", "p", "--keep", f"bg={tmp_path / 'bg.mp4'}",
                     "--frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--out",
                     str(tmp_path / "out"), "--rgba", "png", "--quiet"])
    assert code == 0
    manifest = json.loads(next((tmp_path / "out").glob("*/manifest.json")).read_text())
    assert manifest["settings"]["kept"] == ["bg"]


def test_cli_rejects_bad_arguments(folder, tmp_path):
    with pytest.raises(SystemExit, match="frames must be 4k\\+1"):
        cli_main(["generate", "--model", str(folder), "--prompt", "p", "--frames", "8", "--height", "32", "--width",
                  "32", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="LAYER=VIDEO"):
        cli_main(["generate", "--model", str(folder), "--prompt", "p", "--keep", "bg", "--out", str(tmp_path)])
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "ok"}\n{not json}\n')
    with pytest.raises(SystemExit, match="prompts.jsonl:2: not valid JSON"):
        cli_main(["generate", "--model", str(folder), "--prompts", str(bad), "--out", str(tmp_path)])


def test_cli_takes_unset_sampling_settings_from_the_model_folder(folder, tmp_path):
    """generation.json fills what the command line leaves unset; flags still win."""
    import shutil
    own = tmp_path / "model"
    shutil.copytree(folder, own)
    (own / "generation.json").write_text(json.dumps({"frames": 5, "height": 16, "width": 32, "steps": 2, "cfg": 3.0,
                                                     "shift": 2.0, "fps": 8}))
    code = cli_main(["generate", "--model", str(own), "--prompt", "p", "--height", "32", "--out", str(tmp_path / "o"),
                     "--rgba", "png", "--quiet"])
    assert code == 0
    manifest = json.loads(next((tmp_path / "o").glob("*/manifest.json")).read_text())
    settings = manifest["settings"]
    assert (settings["frames"], settings["height"], settings["width"], settings["steps"]) == (5, 32, 32, 2)
    assert (settings["guidance"], settings["shift"], manifest["fps"]) == (3.0, 2.0, 8)
    (own / "generation.json").write_text(json.dumps({"frames": "five"}))
    with pytest.raises(SystemExit, match="frames must be an int"):
        cli_main(["generate", "--model", str(own), "--prompt", "p", "--out", str(tmp_path / "o")])


def test_cli_without_a_model_uses_the_embedded_demo(folder, tmp_path, monkeypatch, capsys):
    import layert2v_core.model_folder as model_folder
    (folder / "generation.json").write_text(json.dumps({"frames": 5, "height": 16, "width": 16, "steps": 1}))
    try:
        monkeypatch.setattr(model_folder, "demo_model_folder", lambda: folder)
        assert cli_main(["generate", "--prompt", "p", "--out", str(tmp_path), "--rgba", "png", "--quiet"]) == 0
    finally:
        (folder / "generation.json").unlink()
    manifest = json.loads(next(tmp_path.glob("*/manifest.json")).read_text())
    assert manifest["models"]["dit"] == str(folder / "dit.safetensors")
    assert "the embedded demo model" in capsys.readouterr().err
