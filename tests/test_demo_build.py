"""The demo-model build, end to end at smoke size: every part made by the project's own code, evaluated, carded."""
import json

from layert2v_core.cli import main as cli_main
from train.build_demo import QUICK, build


def test_quick_build_makes_a_usable_model_folder(tmp_path):
    out, work = tmp_path / "model", tmp_path / "work"
    record = build(out, work, QUICK)
    for name in ("dit.safetensors", "vae.safetensors", "mask_vae.safetensors", "text_encoder.safetensors",
                 "generation.json", "build.json", "evaluation.json", "README.md", "samples.webp"):
        assert (out / name).exists(), name
    assert json.loads((out / "generation.json").read_text())["frames"] == QUICK["frames"]
    from PIL import Image
    with Image.open(out / "samples.webp") as previews:  # 2 + 1 samples stacked, every frame
        assert previews.n_frames == QUICK["frames"] and previews.size[1] == 3 * 3 * QUICK["size"]
    assert set(record["seconds"]) == {"synthetic data", "text encoder and initial DiT", "vae", "stage 1", "cache",
                                      "stage 2", "stage 3"}
    report = json.loads((out / "evaluation.json").read_text())
    for row in ("trained", "ground_truth", "untrained"):
        assert "consistency" in report[row]["1_foreground"]
    assert report["ground_truth"]["1_foreground"]["colour_match"] == 1.0  # the metric recognises the truth
    assert report["ground_truth"]["2_foreground"]["separated"] == 1.0
    card = (out / "README.md").read_text()
    assert "layer consistency error" in card and "![held-out samples](samples.webp)" in card
    # The folder is a model the CLI runs, with three foregrounds (stage 3 grew the LayerAdaLN table).
    code = cli_main(["generate", "--model", str(out), "--prompt", "a red star over a blue striped background",
                     "--foreground", "a red star", "--foreground", "a cyan circle", "--foreground", "a white square",
                     "--frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--rgba", "png",
                     "--out", str(tmp_path / "gen"), "--quiet"])
    assert code == 0
    manifest = json.loads(next((tmp_path / "gen").glob("*/manifest.json")).read_text())
    assert manifest["num_foregrounds"] == 3
