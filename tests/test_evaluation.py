"""Evaluation: VBench's dimensions with known answers, layer metrics that see vanishing and jumping foregrounds, the
model-backed scorers through real transformers classes (tiny random configs, no downloads), the evaluate command."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from layert2v_core.evaluation import feature_models, layer_metrics, vbench
from layert2v_core.evaluation.evaluate import aggregate, evaluate_clip, load_scorers
from layert2v_core.evaluation.interpolation import get_interpolator, linear, opencv_farneback
from layert2v_core.evaluation.samples import LayeredClip


def moving_square(frames=9, size=32, start=4, speed=2.0, side=8, jumps=None, background=0.2):
    """uint8 frames [T, H, W, 3] of a white square moving right over grey (or jumping to `jumps[t]`)."""
    video = np.full((frames, size, size, 3), int(background * 255), np.uint8)
    for t in range(frames):
        x = int(round(jumps[t] if jumps else start + speed * t))
        video[t, 12:12 + side, x:x + side] = 255
    return video


def disc_alpha(frames=9, size=32, centres=None, radius=5.0):
    """Alpha [1, T, H, W] of a disc at centres[t] = (x, y), or empty where the centre is None."""
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    alpha = torch.zeros(1, frames, size, size)
    for t, centre in enumerate(centres):
        if centre is not None:
            alpha[0, t] = (((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2).sqrt() <= radius).float()
    return alpha


# ---------------------------------------------------------------- VBench dimensions, known answers

def test_flickering_static_is_one_and_black_white_flashes_are_vbench_minimum():
    static = np.full((9, 16, 16, 3), 77, np.uint8)
    assert vbench.temporal_flickering(static) == 1.0
    flashes = np.stack([np.full((16, 16, 3), 255 * (t % 2), np.uint8) for t in range(9)])
    assert vbench.temporal_flickering(flashes) == 0.0
    half = np.stack([np.full((16, 16, 3), 51 * (t % 2), np.uint8) for t in range(5)])
    assert vbench.temporal_flickering(half) == pytest.approx(1 - 51 / 255, abs=1e-7)  # (255 - 51) / 255


def test_subject_consistency_follows_vbench_rule():
    same = torch.randn(1, 12).expand(6, 12)
    assert vbench.subject_consistency(same) == pytest.approx(1.0, abs=1e-6)
    # frames 0, 1, 2 = e0, e1, -e0: frame 1 scores (0 + 0) / 2, frame 2 scores (max(0, 0) + max(0, -1)) / 2 = 0
    e = torch.eye(3)
    assert vbench.subject_consistency(torch.stack([e[0], e[1], -e[0]])) == 0.0
    # frame 1 = e0 (1 to previous, 1 to first), frame 2 = e1 (0 and 0): mean of 1 and 0
    assert vbench.subject_consistency(torch.stack([e[0], e[0], e[1]])) == pytest.approx(0.5)


def test_motion_smoothness_static_one_flow_beats_linear_on_motion_teleport_scores_lower():
    static = np.full((9, 32, 32, 3), 128, np.uint8)
    assert vbench.motion_smoothness(static, linear) == 1.0
    smooth = moving_square()
    flow, blend = vbench.motion_smoothness(smooth, opencv_farneback), vbench.motion_smoothness(smooth, linear)
    assert flow > blend + 0.01  # measured 0.9998 vs 0.9750: the flow interpolator follows the motion, a blend ghosts
    teleport = moving_square(jumps=[4, 20, 6, 18, 4, 22, 8, 16, 4])
    assert vbench.motion_smoothness(teleport, opencv_farneback) < flow - 0.05  # measured 0.900


def test_middle_frames_and_text_alignment():
    # VBench: segment edges int(linspace(0, n, 9)), the middle (start + end - 1) // 2 of each
    assert vbench.middle_frames(16) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert vbench.middle_frames(9) == [0, 1, 2, 3, 4, 5, 6, 7]
    text = torch.tensor([1.0, 0.0])
    assert vbench.text_alignment(torch.tensor([[2.0, 0.0], [0.0, 3.0]]), text) == pytest.approx(2 ** -0.5)


def test_interpolator_plugin_and_errors():
    assert get_interpolator("linear") is linear
    assert get_interpolator("numpy:maximum") is np.maximum
    with pytest.raises(ValueError, match="unknown interpolator"):
        get_interpolator("amt")
    with pytest.raises(ValueError, match="could not be imported"):
        get_interpolator("no_such_module_xyz:f")


# ---------------------------------------------------------------- layer metrics

def test_presence_counts_frames_a_vanishing_foreground_is_there():
    centres = [(10, 16)] + [None] * 4 + [(10 + 2 * t, 16) for t in range(5, 9)]
    fraction, present = layer_metrics.presence(disc_alpha(centres=centres))
    assert fraction == pytest.approx(5 / 9) and present == [True, False, False, False, False, True, True, True, True]
    ghost = disc_alpha(centres=[(16, 16)] * 9)
    ghost[:, 3:6] *= 0.07  # alpha max 18/255: a ghost a viewer does not see
    assert layer_metrics.presence(ghost)[0] == pytest.approx(6 / 9)
    assert layer_metrics.presence(disc_alpha(centres=[(16, 16)] * 9))[0] == 1.0


def test_trajectory_ratio_sees_a_foreground_that_stands_still_and_jumps():
    smooth = layer_metrics.centroids(disc_alpha(centres=[(6 + 2.5 * t, 16) for t in range(9)]))
    stepped = layer_metrics.centroids(disc_alpha(centres=[(6 + 10 * (t // 4), 16) for t in range(9)]))
    smooth_ratio, stepped_ratio = layer_metrics.trajectory_ratio(smooth), layer_metrics.trajectory_ratio(stepped)
    assert smooth_ratio < 1.5 and stepped_ratio > 10  # measured 1.0 and 20.0
    assert layer_metrics.direction_agrees(smooth, "right", 32)
    assert not layer_metrics.direction_agrees(smooth, "left", 32)
    barely = layer_metrics.centroids(disc_alpha(centres=[(16 + 0.1 * t, 16) for t in range(9)]))
    assert not layer_metrics.direction_agrees(barely, "right", 32)  # 1 px of 32: not "moves right"


def test_shape_classifier_knows_the_synthetic_shapes_and_reads_a_blob_as_a_circle():
    from layert2v_core.evaluation import synthetic_world
    from train.synthetic import generate_sample

    for seed in range(6):  # every shape of several ground-truth samples, at the demo's size
        sample = generate_sample(300 + seed, frames=5, height=64, width=64, num_foregrounds=2)
        for alpha, layer in zip(sample.alphas, sample.layers):
            assert synthetic_world.classify_shape(alpha) == layer.shape
    star = generate_sample(4, frames=3, height=64, width=64, num_foregrounds=1)
    while star.layers[0].shape != "star":
        star = generate_sample(star.seed + 1, frames=3, height=64, width=64, num_foregrounds=1)
    blurred = torch.nn.functional.avg_pool2d(star.alphas[0][0], 7, stride=1, padding=3)[None]  # a soft round blob
    assert synthetic_world.classify_shape(blurred) == "circle"
    assert synthetic_world.classify_shape(torch.zeros(1, 3, 64, 64)) is None


def test_texture_classifier_knows_the_backgrounds_and_not_their_flattened_copies():
    from layert2v_core.evaluation import synthetic_world
    from train.synthetic import generate_sample

    hits = flattened_stripes = 0
    for seed in range(12):
        sample = generate_sample(500 + seed, frames=3, height=64, width=64, num_foregrounds=1)
        hits += synthetic_world.classify_texture(sample.background) == sample.background_name
        if sample.background_name == "blue striped":  # smeared flat, the stripes are gone: no longer "striped"
            flat = sample.background.mean(dim=(2, 3), keepdim=True).expand_as(sample.background)
            noisy = (flat + 0.03 * torch.randn(flat.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)
            flattened_stripes += synthetic_world.classify_texture(noisy) != "blue striped"
            assert synthetic_world.background_colour(noisy) == "blue striped"  # its colours alone still fit
    assert hits == 12 and flattened_stripes >= 1
    assert synthetic_world.parse_background("a red star moves up over a blue striped background") == "blue striped"
    assert synthetic_world.background_world_metrics(torch.rand(3, 2, 64, 64), "a sunny beach") is None


def test_prompted_direction_per_foreground():
    full = "a red circle moves left and a cyan star moves up over a blue striped background"
    assert layer_metrics.prompted_direction(full, "a red circle") == "left"
    assert layer_metrics.prompted_direction(full, "a cyan star") == "up"
    assert layer_metrics.prompted_direction(full, "a cyan star moves up") == "up"  # a caption naming its motion
    assert layer_metrics.prompted_direction(full, "a red circle moves left") == "left"
    assert layer_metrics.prompted_direction("a fox runs across a field", "a fox") is None
    assert layer_metrics.prompted_direction("a bird rises over a lake") == "up"


def _clip(alpha, fg_colour=(0.9, 0.1, 0.1), bg_value=0.3, full=None, captions=("a red circle",),
          prompt="a red circle moves right over a grey noise background"):
    frames, size = alpha.shape[1], alpha.shape[-1]
    background = torch.full((3, frames, size, size), bg_value)
    foreground = torch.tensor(fg_colour).view(3, 1, 1, 1).expand(3, frames, size, size).clone()
    if full is None:
        full = foreground * alpha + background * (1 - alpha)
    return LayeredClip("s", full, background, [foreground], [alpha], source="generated",
                       prompts={"full": prompt, "background": "a grey noise background",
                                "foregrounds": list(captions)})


def test_region_consistency_sees_a_foreground_missing_from_the_full_video():
    alpha = disc_alpha(centres=[(8 + 2 * t, 16) for t in range(9)])
    good = layer_metrics.clip_layer_metrics(_clip(alpha))
    assert good["consistency"] == pytest.approx(0, abs=1e-6)
    missing = _clip(alpha, full=torch.full((3, 9, 32, 32), 0.3))  # the full video shows only the background
    metrics = layer_metrics.clip_layer_metrics(missing)
    assert metrics["consistency_in_alpha"] > 5 * metrics["consistency"]  # the global mean hides it
    assert metrics["foregrounds"][0]["presence_in_full"] == 0.0
    assert good["foregrounds"][0]["presence_in_full"] == 1.0


def test_background_leak_and_sharpness_and_separation():
    alpha = disc_alpha(centres=[(16, 16)] * 9)
    clip = _clip(alpha)
    assert layer_metrics.background_leak(clip.background, clip.foregrounds[0], alpha) == 0.0
    leaky = clip.background.clone()
    leaky[:, :, :, :16] = clip.foregrounds[0][:, :, :, :16]  # the left half of the shape stays in the background
    assert layer_metrics.background_leak(leaky, clip.foregrounds[0], alpha) == pytest.approx(0.5, abs=0.1)
    assert layer_metrics.alpha_sharpness(alpha) == 1.0
    assert layer_metrics.alpha_sharpness(alpha * 0.5) == 0.0
    other = disc_alpha(centres=[(16, 16)] * 9)
    assert layer_metrics.separation([alpha, other]) == 1.0
    assert layer_metrics.separation([alpha, disc_alpha(centres=[(4, 4)] * 9, radius=2)]) == 0.0


def test_aggregate_reports_presence_and_steadiness_of_each_run():
    moving = _clip(disc_alpha(centres=[(6 + 2.5 * t, 16) for t in range(9)]))
    vanishing = _clip(disc_alpha(centres=[(10, 16)] + [None] * 4 + [(10 + 2 * t, 16) for t in range(5, 9)]))
    scorers = load_scorers(dino=None, clip=None, interpolator="linear")
    rows = [evaluate_clip(moving, scorers), evaluate_clip(vanishing, scorers), {"error": "ValueError: broken"}]
    table = aggregate(rows)
    assert table["samples"] == 3 and table["failed"] == 1
    assert table["layers"]["fg_presence"] == pytest.approx((1 + 5 / 9) / 2, abs=1e-4)
    assert table["layers"]["fg_present_95"] == 0.5
    assert table["layers"]["direction_agreement"] == 1.0
    assert table["layers"]["world_colour_match"] == 1.0  # "a red circle" is a synthetic-world caption
    assert set(table["vbench"]) == {"temporal_flickering", "motion_smoothness"}  # no model: not computed, noted
    assert rows[0]["vbench"]["temporal_flickering"]["FG"] < 1.0


# ---------------------------------------------------------------- model-backed scorers, tiny random models

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, ViTConfig, ViTModel

    root = tmp_path_factory.mktemp("eval_models")
    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                       image_size=32, patch_size=16), add_pooling_layer=False).save_pretrained(root / "dino")
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in letters:
        vocab[ch], vocab[ch + "</w>"] = len(vocab), len(vocab) + 1
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16), projection_dim=16)
    CLIPModel(config).save_pretrained(root / "clip")
    tokenizer.save_pretrained(root / "clip")
    torch.save({"weight": torch.randn(1, 16), "bias": torch.zeros(1)}, root / "aesthetic.pth")
    save_file({"weight": torch.randn(1, 16), "bias": torch.zeros(1)}, str(root / "aesthetic.safetensors"))
    return root


def test_dino_features_through_transformers(tiny_models):
    dino = feature_models.DinoFeatures(str(tiny_models / "dino"), size=32)
    frames = moving_square(frames=4, size=40)  # not square after resizing: position embeddings interpolate
    features = dino(frames)
    assert features.shape == (4, 32) and torch.isfinite(features).all()
    assert torch.equal(features, dino(frames))  # same input, same score
    score = vbench.subject_consistency(features)
    assert 0.0 <= score <= 1.0 and score < 1.0
    assert vbench.subject_consistency(dino(np.repeat(frames[:1], 4, 0))) == pytest.approx(1.0, abs=1e-6)


def test_clip_aesthetic_and_text_alignment_through_transformers(tiny_models):
    clip = feature_models.ClipFeatures(str(tiny_models / "clip"))
    frames = moving_square(frames=9, size=48)
    images = clip.images(frames)
    assert images.shape == (9, 16)
    for name in ("aesthetic.pth", "aesthetic.safetensors"):
        head = feature_models.load_aesthetic_head(tiny_models / name, dim=16)
        score = vbench.aesthetic_quality(images, head)
        assert math.isfinite(score) and score == vbench.aesthetic_quality(clip.images(frames), head)
    alignment = vbench.text_alignment(clip.video(frames), clip.text("a white square moves right"))
    assert -1.0 <= alignment <= 1.0
    assert alignment == vbench.text_alignment(clip.video(frames), clip.text("a white square moves right"))


def test_a_requested_model_never_falls_back(tiny_models, tmp_path):
    with pytest.raises(feature_models.ModelUnavailable, match="--dino"):
        load_scorers(dino=str(tmp_path / "missing"), clip=None)
    with pytest.raises(feature_models.ModelUnavailable, match="--clip"):
        load_scorers(dino=None, clip=str(tmp_path / "missing"))
    scorers = load_scorers(dino=str(tiny_models / "dino"), clip=str(tiny_models / "clip"),
                           aesthetic=str(tiny_models / "aesthetic.pth"), interpolator="linear")
    assert scorers.unavailable == {}
    assert scorers.used["subject_consistency"] == str(tiny_models / "dino")
    assert scorers.used["text_alignment"].startswith("clip-frame-average")
    clip = _clip(disc_alpha(size=32, centres=[(8 + 2 * t, 16) for t in range(9)]))
    table = evaluate_clip(clip, scorers)["vbench"]
    assert set(table) == {"temporal_flickering", "motion_smoothness", "subject_consistency", "aesthetic_quality",
                          "text_alignment"}
    assert all(set(cells) == {"FG", "BG", "BL"} for cells in table.values())


def test_aesthetic_head_refuses_pickled_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))
    torch.save({"weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(feature_models.ModelUnavailable, match="not a plain state dict"):
        feature_models.load_aesthetic_head(tmp_path / "evil.pth")


# ---------------------------------------------------------------- the evaluate command


def _generated_folder(folder, sample):
    """A sample folder exactly as generate writes it, from synthetic layers (no model needed)."""
    from layert2v_core.export import save_layers
    from layert2v_core.layers import LayerSpec
    from layert2v_core.pipeline import LayeredVideo

    count = sample.num_foregrounds
    spec = LayerSpec(count)
    caps = sample.captions
    prompts = {"full": caps["full"], "bg": caps["background"],
               **{f"fg{i}": c for i, c in enumerate(caps["foregrounds"], 1)}}
    result = LayeredVideo(full=sample.full, background=sample.background, foregrounds=list(sample.foregrounds),
                          alphas=list(sample.alphas), latent=torch.zeros(1), spec=spec,
                          settings={"prompts": prompts, "seed": sample.seed})
    save_layers(result, folder, fps=8.0, rgba_formats=())


def test_evaluate_command_scores_generated_and_vidlayer_runs(tmp_path):
    from PIL import Image

    from layert2v_core.cli import main
    from train.synthetic import generate_sample, write_sample

    samples = [generate_sample(7 + i, frames=9, height=32, width=32, split="eval", num_foregrounds=1 + i % 2)
               for i in range(2)]
    for i, sample in enumerate(samples):
        _generated_folder(tmp_path / "model_run" / f"s{i}", sample)
        write_sample(sample, tmp_path / "truth" / f"s{i}", lossless=True)
    (tmp_path / "model_run" / "broken").mkdir()
    (tmp_path / "model_run" / "broken" / "manifest.json").write_text("{not json")
    out = tmp_path / "report"
    assert main(["evaluate", str(tmp_path / "model_run"), str(tmp_path / "truth"), "--out", str(out),
                 "--no-models", "--quiet"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    model, truth = report["runs"]["model_run"], report["runs"]["truth"]
    assert model["aggregate"]["samples"] == 3 and model["aggregate"]["failed"] == 1
    assert "not a generate manifest" in model["samples"]["broken"]["error"]
    assert truth["aggregate"]["layers"]["fg_present_95"] == 1.0
    assert truth["aggregate"]["layers"]["direction_agreement"] == 1.0
    assert truth["aggregate"]["layers"]["consistency_in_alpha"] < 0.05  # PNG truth; fg = full under the matte
    # the same layers through both layouts score the same flicker (mp4 vs PNG: within codec error)
    for layer in ("BG", "BL"):
        a = model["aggregate"]["vbench"]["temporal_flickering"][layer]
        b = truth["aggregate"]["vbench"]["temporal_flickering"][layer]
        assert abs(a - b) < 0.01
    text = (out / "report.md").read_text()
    assert "| model_run | 3 |" in text and "Temporal Flickering FG" in text and "failed: ValueError" in text
    with Image.open(out / truth["samples"]["s1"]["sheet"]) as sheet:  # 2 foregrounds: 2 + 2 + 2 rows of 96 px
        assert sheet.size[1] == 16 + 6 * (96 + 2) and sheet.size[0] == 84 + 9 * (96 + 2)


def test_evaluate_generates_a_prompt_file_with_the_demo_model(tmp_path):
    from layert2v_core.cli import main
    from layert2v_core.model_folder import demo_model_folder, generation_settings

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "a red star moves right over a blue striped background",
                                   "background": "a blue striped background", "foregrounds": ["a red star"],
                                   "seed": 3, "name": "red-star"}) + "\n")
    out = tmp_path / "report"
    assert main(["evaluate", "--prompts", str(prompts), "--steps", "2", "--out", str(out), "--no-models",
                 "--no-sheets", "--quiet"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    row = report["runs"]["layert2v-tiny"]["samples"]["red-star"]
    demo = generation_settings(demo_model_folder())  # the size the demo model was made for
    assert row["prompts"]["foregrounds"] == ["a red star"] and row["frames"] == demo["frames"]
    assert (out / "samples" / "layert2v-tiny" / "red-star" / "manifest.json").is_file()
