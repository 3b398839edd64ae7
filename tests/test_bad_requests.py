"""Careless or hostile input to the CLI, the export and the nodes: one clear message before any weight loads,
nothing lost, nothing half-written. Request checks run with model loading forbidden."""
import json
import os
import re
import time

import pytest
import torch

import layert2v_core.model_folder as model_folder
from layert2v_core import atomic, export
from layert2v_core.cli import build_parser, main as cli_main
from layert2v_core.layers import LayerSpec
from layert2v_core.pipeline import LayeredVideo
from layert2v_core.video_io import write_video
from nodes import NODE_CLASS_MAPPINGS, host
from nodes.common import LayerT2VInputError

DEMO = model_folder.demo_model_folder()
SMALL = ["--frames", "5", "--height", "16", "--width", "16", "--steps", "1"]


def fake_result(frames=5, size=16, value=0.5, num_foregrounds=1) -> LayeredVideo:
    video = torch.full((3, frames, size, size), value)
    return LayeredVideo(full=video, background=video.clone(), foregrounds=[video.clone()] * num_foregrounds,
                        alphas=[torch.ones(1, frames, size, size)] * num_foregrounds,
                        latent=torch.zeros(16, 4, 1, 1), spec=LayerSpec(num_foregrounds),
                        settings={"value": value})


class FakePipeline:
    """Stands in for the loaded models: returns flat layers of the requested size, records the requests."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompt, background, foregrounds, negative, *, frames, height, width, seed, keep, **_):
        self.calls.append({"prompt": prompt, "foregrounds": foregrounds, "seed": seed, "keep": keep})
        return fake_result(frames, height, value=(seed % 7) / 7, num_foregrounds=len(foregrounds))


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load or hash a weight file fails the test: requests must be checked before."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the request was validated")
    monkeypatch.setattr(model_folder, "load_pipeline", refuse)
    monkeypatch.setattr("layert2v_core.weights.file_hash", refuse)


@pytest.fixture
def fake_pipeline(monkeypatch):
    pipe = FakePipeline()
    monkeypatch.setattr(model_folder, "load_pipeline", lambda *a, **k: pipe)
    monkeypatch.setattr("layert2v_core.weights.file_hash", lambda path: "0" * 16)
    return pipe


def generate(*args):
    return cli_main(["generate", "--model", str(DEMO), "--rgba", "png", "--quiet", *SMALL, *args])


def refused(*args) -> str:
    started = time.perf_counter()
    with pytest.raises(SystemExit) as error:
        generate(*args)
    assert time.perf_counter() - started < 5
    return str(error.value)


# ---- 5: the whole request is checked before anything loads

@pytest.mark.parametrize("flags, message", [
    (["--rgba", "gif"], "--rgba: unknown RGBA format 'gif'; choose from webm, mov, png"),
    (["--fps", "0"], "--fps must be a number > 0"),
    (["--cfg", "-1"], "--cfg must be >= 0"),
    (["--steps", "0"], "--steps must be an integer >= 1"),
    (["--shift", "0"], "--shift must be > 0"),
    (["--strength", "1.5"], r"--strength must be in \[0, 1\]"),
    (["--height", "40"], "height must be a multiple of 16.*nearest valid: 32 or 48"),
])
def test_bad_settings_fail_before_loading(no_loading, tmp_path, flags, message):
    text = refused("--prompt", "a red star", "--out", str(tmp_path), *flags)
    assert re.search(message, text), text


def test_unwritable_output_folder_fails_before_loading(no_loading, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    text = refused("--prompt", "p", "--out", str(blocker / "sub"))
    assert str(blocker) in text and "cannot write" in text
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "cannot write" in refused("--prompt", "p", "--out", str(locked))


def test_keep_problems_fail_before_loading(no_loading, tmp_path):
    assert "--keep bg=" in refused("--prompt", "p", "--keep", f"bg={tmp_path / 'missing.mp4'}", "--out",
                                   str(tmp_path))
    clip = tmp_path / "bg.mp4"
    write_video(clip, torch.rand(5, 16, 16, 3).numpy(), 8)
    assert "unknown layer" in refused("--prompt", "p", "--keep", f"fg2={clip}", "--out", str(tmp_path))


# ---- 4: every --prompts row is checked before the first sample

@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "name": "../x"}, "name"),
    ({"prompt": "p", "name": "/abs/olute"}, "name"),
    ({"prompt": "p", "foregrounds": "a red star"}, "foregrounds must be a list of strings"),
    ({"prompt": "   "}, "prompt is empty"),
    ({"prompt": ""}, "prompt is empty"),
    ({"prompt": "p", "seed": "seven"}, "seed must be an integer"),
    ({"prompt": "p", "foreground": ["x"]}, "unknown key"),
    ({"prompt": "p", "foregrounds": ["a", "b", "c", "d"]}, "1..3"),
])
def test_a_bad_row_late_in_the_file_stops_the_run_before_any_sample(fake_pipeline, tmp_path, row, message):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps(row) + "\n")
    text = refused("--prompts", str(prompts), "--out", str(tmp_path / "out"))
    assert f"{prompts}:2" in text and message in text, text
    assert fake_pipeline.calls == [] and not (tmp_path / "out").exists()
    assert not (tmp_path / "x").exists()


def test_single_prompt_must_not_be_blank(no_loading, tmp_path):
    assert "prompt is empty" in refused("--prompt", "  ", "--out", str(tmp_path))


# ---- 2: reruns never overwrite unless asked

def test_reruns_take_the_next_free_number(fake_pipeline, tmp_path):
    out = tmp_path / "out"
    for _ in range(2):
        assert generate("--prompt", "a red star", "--out", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000-a-red-star", "0001-a-red-star"]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "p", "name": "shot"}) + "\n")
    for _ in range(2):
        assert generate("--prompts", str(prompts), "--out", str(out)) == 0
    assert {"shot", "shot-2"} <= {p.name for p in out.iterdir()}
    before = (out / "shot" / "manifest.json").read_text()
    assert generate("--prompts", str(prompts), "--out", str(out), "--seed", "3", "--overwrite") == 0
    assert (out / "shot" / "manifest.json").read_text() != before and not (out / "shot-3").exists()


# ---- 1: a sample folder appears complete or not at all

def test_an_interrupted_rewrite_leaves_the_old_sample_whole(tmp_path, monkeypatch):
    folder = tmp_path / "sample"
    export.save_layers(fake_result(value=0.25), folder, fps=8, rgba_formats=("png",))
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    real_write = export.write_video

    def killed_after_full(path, *args, **kwargs):
        real_write(path, *args, **kwargs)
        if os.path.basename(path) == "full.mp4":
            raise KeyboardInterrupt
    monkeypatch.setattr(export, "write_video", killed_after_full)
    with pytest.raises(KeyboardInterrupt):
        export.save_layers(fake_result(value=0.75), folder, fps=8, rgba_formats=("png",))
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample"]  # no temporary left behind


def test_stale_temporaries_are_cleaned(tmp_path):
    dead = tmp_path / atomic.temporary_name(tmp_path / "sample", pid=2 ** 22 + 1).name
    dead.mkdir()
    (dead / "full.mp4").write_bytes(b"half")
    old = tmp_path / ".other.mp4.0123456789abcdef0123456789abcdef.tmp.mp4"  # a writer's orphan from a kill
    old.write_bytes(b"half")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    live = atomic.temporary_name(tmp_path / "busy")  # this process is alive: its temporaries stay
    live.mkdir()
    export.save_layers(fake_result(), tmp_path / "sample", fps=8, rgba_formats=("png",))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["sample", live.name])


# ---- 6: non-finite layers are refused with the layer named

def test_non_finite_layers_are_named(tmp_path):
    result = fake_result()
    result.foregrounds[0][0, 2, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="fg1.*NaN"):
        export.save_layers(result, tmp_path / "s", fps=8, rgba_formats=("png",))
    assert not (tmp_path / "s").exists()


# ---- 3: Save Layers stays strictly inside the output folder

@pytest.mark.parametrize("prefix", [".", "./", "a/..", "x/../.", "", "/", "../escape", "a/../../b"])
def test_save_layers_refuses_prefixes_that_leave_the_output_folder(comfy_folders, prefix):
    _, output = comfy_folders
    before = sorted(os.listdir(output.parent))
    save = NODE_CLASS_MAPPINGS["LayerT2VSaveLayers"]().save
    with pytest.raises(LayerT2VInputError, match="filename_prefix"):
        save(fake_result(), prefix, 8.0, "png sequence")
    assert sorted(os.listdir(output.parent)) == before


def test_save_layers_explains_an_overlong_prefix(comfy_folders):
    save = NODE_CLASS_MAPPINGS["LayerT2VSaveLayers"]().save
    with pytest.raises(LayerT2VInputError, match="filename_prefix.*too long"):
        save(fake_result(), "x" * 300, 8.0, "png sequence")


# ---- 10: loaders outside ComfyUI stay in their model folders

@pytest.mark.parametrize("name", ["../vae/tiny_vae.safetensors", "ABSOLUTE"])
def test_loaders_are_confined_to_their_model_folder(comfy_folders, name):
    models, _ = comfy_folders
    victim = next((models / "vae").iterdir())
    name = str(victim) if name == "ABSOLUTE" else f"../vae/{victim.name}"
    with pytest.raises(FileNotFoundError, match="diffusion_models"):
        host.model_path("diffusion_models", name)


# ---- 11: help texts and small notes

def test_generate_help_describes_every_option_once():
    parser = build_parser()
    generate_parser = parser._subparsers._group_actions[0].choices["generate"]
    text = generate_parser.format_help()
    assert "(default: None)" not in text and "(default: [])" not in text
    seed = next(a for a in generate_parser._actions if "--seed" in a.option_strings)
    assert seed.help and "seed" in seed.help
    assert '"foregrounds"' in text and '"name"' in text and '"keep"' in text  # the jsonl format itself


def test_a_longer_kept_clip_is_cut_with_a_note(fake_pipeline, tmp_path, capsys):
    clip = tmp_path / "bg.mp4"
    write_video(clip, torch.rand(9, 16, 16, 3).numpy(), 8)
    assert generate("--prompt", "p", "--keep", f"bg={clip}", "--out", str(tmp_path / "o")) == 0
    assert "9 frames; the first 5 are used" in capsys.readouterr().err
    assert fake_pipeline.calls[0]["keep"]["bg"].shape == (3, 5, 16, 16)


def test_a_wrong_size_clip_names_width_height_and_frames(no_loading, tmp_path):
    clip = tmp_path / "bg.mp4"
    write_video(clip, torch.rand(5, 32, 48, 3).numpy(), 8)
    text = refused("--prompt", "p", "--keep", f"bg={clip}", "--out", str(tmp_path / "o"))
    assert "48x32" in text and "16x16" in text and str(clip) in text, text
