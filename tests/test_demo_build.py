"""The demo-model build, end to end at smoke size: every part made by the project's own code, evaluated, carded."""
import json
import stat

import pytest

from layert2v_core.cli import main as cli_main
from train import build_demo
from train.build_demo import QUICK, build


def test_quick_build_makes_a_usable_model_folder(tmp_path):
    out, work = tmp_path / "model", tmp_path / "work"
    record = build(out, work, QUICK)
    for name in (build_demo.DEMO_DIT, "vae.safetensors", "mask_vae.safetensors", "text_encoder.safetensors",
                 "generation.json", "build.json", "evaluation.json", "README.md", "samples.webp",
                 "heldout_prompts.jsonl"):
        assert (out / name).exists(), name
    assert json.loads((out / "generation.json").read_text())["frames"] == QUICK["frames"]
    from PIL import Image
    with Image.open(out / "samples.webp") as previews:  # 2 + 1 samples stacked, every frame
        assert previews.size[1] == 3 * 3 * QUICK["size"]
        durations = []  # libwebp merges identical frames into one of longer duration: count time, not frames
        for index in range(previews.n_frames):
            previews.seek(index)
            previews.load()  # Pillow fills in a WEBP frame's duration when it decodes it
            durations.append(previews.info["duration"])
        assert abs(sum(durations) - QUICK["frames"] * 1000 / QUICK["fps"]) <= QUICK["frames"]
    assert set(record["seconds"]) == {"synthetic data", "text encoder", "vae frames", "vae clips", "stage 1",
                                      "captions", "cache", "initial DiT", "stage 2", "stage 3"}
    for path in out.rglob("*"):  # a model folder is copied between users: everything readable by all
        assert path.stat().st_mode & stat.S_IROTH, path
    report = json.loads((out / "evaluation.json").read_text())
    model, truth = report["runs"]["model"]["aggregate"], report["runs"]["ground truth"]["aggregate"]
    assert model["samples"] == truth["samples"] == 3 and model["failed"] == 0
    assert truth["layers"]["world_colour_match"] == 1.0  # the metrics recognise the truth
    assert truth["layers"]["world_shape_match"] == 1.0 and truth["layers"]["world_bg_texture_match"] == 1.0
    assert report["runs"]["truth through the VAEs"]["aggregate"]["samples"] == 3
    assert truth["layers"]["fg_present_95"] == 1.0 and truth["layers"]["multi_all_present"] == 1.0
    assert "consistency_in_alpha" in model["layers"] and "temporal_flickering" in model["vbench"]
    assert len(list((out / "evaluation").glob("*.png"))) == 6  # 2 + 1 previewed samples, model and truth
    card = (out / "README.md").read_text()
    assert "consistency error in alpha" in card and "![held-out samples](samples.webp)" in card
    assert "| truth through the VAEs |" in card and "synthetic: shape recognised" in card
    # The folder is a model the CLI runs, with three foregrounds (stage 3 grew the LayerAdaLN table).
    code = cli_main(["generate", "--model", str(out), "--prompt", "a red star over a blue striped background",
                     "--foreground", "a red star", "--foreground", "a cyan circle", "--foreground", "a white square",
                     "--frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--rgba", "png",
                     "--out", str(tmp_path / "gen"), "--quiet"])
    assert code == 0
    manifest = json.loads(next((tmp_path / "gen").glob("*/manifest.json")).read_text())
    assert manifest["num_foregrounds"] == 3


def test_a_build_refuses_to_start_over_an_earlier_one_and_resumes_it(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "vae_frames").mkdir(parents=True)
    with pytest.raises(SystemExit, match="--resume"):
        build(tmp_path / "model", work, QUICK, evaluate=False)
    ran = []
    phases = build_demo.Phases(work, QUICK, resume=True)
    phases.run("synthetic data", lambda: ran.append(1))
    phases.run("synthetic data", lambda: ran.append(2))  # recorded as done: not run again
    assert ran == [1]
    assert build_demo.Phases(work, QUICK, resume=True).done("synthetic data")

    def cut_short():
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        phases.run("stage 2", cut_short)
    resumed = build_demo.Phases(work, QUICK, resume=True)
    assert not resumed.done("stage 2") and "stage 2" in resumed.record["interrupted_seconds"]
    resumed.record["interrupted_seconds"]["stage 2"] = 100.0  # as if the cut-short sitting had run 100 s
    resumed.run("stage 2", lambda: None)
    assert 100.0 <= resumed.record["seconds"]["stage 2"] < 101.0  # both sittings count
    assert "stage 2" not in resumed.record["interrupted_seconds"]
    with pytest.raises(SystemExit, match="another plan"):
        build_demo.Phases(work, {**QUICK, "size": 48}, resume=True)


def test_quick_defaults_never_write_the_shipped_model(monkeypatch):
    seen = {}
    monkeypatch.setattr(build_demo, "build", lambda out, work, plan, **kw: seen.update(out=out, work=work) or
                        {"total_seconds": 0})
    build_demo.main(["--quick"])
    assert "runs" in seen["out"].parts and "runs" in seen["work"].parts


def test_a_changed_plan_reruns_the_phases_it_touches_and_those_after(tmp_path):
    names = [name for name, _, _ in build_demo.PHASES]
    read = {key for _, keys, _ in build_demo.PHASES for key in keys}
    assert read | set(build_demo.UNTRAINED) == set(QUICK) == set(build_demo.FULL)  # every entry belongs somewhere
    work = tmp_path / "work"
    phases = build_demo.Phases(work, QUICK, resume=False)
    for name, _, folders in build_demo.PHASES:
        for folder in folders:
            (work / folder).mkdir(parents=True, exist_ok=True)
        phases.run(name, lambda: None)
    (work / build_demo.PREVIOUS).write_text("{}")
    longer = {**QUICK, "stage2_steps": QUICK["stage2_steps"] + 1}
    resumed = build_demo.Phases(work, longer, resume=True)
    assert [n for n in names if not resumed.done(n)] == ["stage 2", "stage 3"]
    assert not (work / "stage2").exists() and not (work / "stage3").exists()  # no stale checkpoint to resume
    assert (work / "cache_single").exists() and (work / "vae").exists()
    assert not (work / build_demo.PREVIOUS).exists()  # the replaced model is the one the old plan built
    assert resumed.record["replanned"][-1] == {"changed": ["stage2_steps"], "rerun": ["stage 2", "stage 3"]}
    wider = build_demo.Phases(work, {**longer, "dit": {**QUICK["dit"], "num_layers": 3}}, resume=True)
    assert [n for n in names if not wider.done(n)] == ["initial DiT", "stage 2", "stage 3"]  # the cache is kept
    assert (work / "cache_single").exists() and not (work / "parts/dit_init.safetensors").exists()
    for name in names:
        wider.run(name, lambda: None)
    vae = build_demo.Phases(work, {**wider.record["plan"], "vae_steps": 5}, resume=True)
    assert [n for n in names if not vae.done(n)] == names[names.index("vae clips"):]
    for name in names:
        vae.run(name, lambda: None)
    evaluation = build_demo.Phases(work, {**vae.record["plan"], "eval": {}}, resume=True)
    assert all(evaluation.done(n) for n in names)  # a new evaluation trains nothing again
