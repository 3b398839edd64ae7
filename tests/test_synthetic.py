"""The synthetic layered-video generator: exact compositing, determinism, palette, mattes, held-out split, writer."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from layert2v_core.composite import consistency_error
from layert2v_core.evaluation.layer_metrics import centroids
from train.synthetic import (BACKGROUNDS, MOTIONS, PALETTE, SHAPES, caption_vocabulary, colour_fraction,
                             generate_sample, is_held_out, main, rewrite_captions, sample_seed, write_sample)

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(frames=9, height=32, width=32)


def _samples(count, split="train", **overrides):
    return [generate_sample(sample_seed(7, i), split=split, **{**SMALL, **overrides}) for i in range(count)]


@pytest.mark.parametrize("count", [1, 2, 3])
def test_full_is_the_exact_composite_of_its_layers(count):
    sample = generate_sample(11, num_foregrounds=count, **SMALL)
    assert sample.full.shape == (3, 9, 32, 32) and sample.background.shape == (3, 9, 32, 32)
    assert sample.foregrounds.shape == (count, 3, 9, 32, 32) and sample.alphas.shape == (count, 1, 9, 32, 32)
    # the over operator written out here, foreground 1 at the bottom
    expected = sample.background
    for colour, alpha in zip(sample.foregrounds, sample.alphas):
        expected = colour * alpha + expected * (1 - alpha)
    assert torch.allclose(sample.full, expected, atol=1e-6)
    error = consistency_error(sample.full, sample.background, list(sample.foregrounds_premultiplied()),
                              list(sample.alphas))
    assert error.item() < 1e-7
    for video in (sample.full, sample.background, sample.foregrounds, sample.alphas):
        assert video.dtype == torch.float32 and video.min() >= 0 and video.max() <= 1


def test_same_seed_same_sample_and_other_seeds_differ():
    first, again, other = generate_sample(5, **SMALL), generate_sample(5, **SMALL), generate_sample(6, **SMALL)
    assert torch.equal(first.full, again.full) and torch.equal(first.alphas, again.alphas)
    assert first.captions == again.captions
    assert not torch.equal(first.background, other.background)


def test_foregrounds_have_distinct_colours_and_stay_apart():
    for sample in _samples(8, num_foregrounds=3):
        colours = [layer.colour for layer in sample.layers]
        assert len(set(colours)) == 3
        alphas = sample.alphas[:, 0]
        for i in range(3):
            for j in range(i):
                overlap = torch.minimum(alphas[i], alphas[j])
                assert overlap.max() < 0.05, f"foregrounds {i} and {j} overlap in seed {sample.seed}"


def test_alpha_is_soft_only_at_the_edges_and_foregrounds_move():
    for sample in _samples(6):
        for alpha in sample.alphas:
            between = (alpha > 0.02) & (alpha < 0.98)
            assert between.any(), "edges should be anti-aliased"
            assert between.float().mean() < 0.08
            assert alpha.max() > 0.98, "the matte should be solid inside"
            # every partial pixel touches a solid or an empty one: the soft band is about one pixel wide
            near = lambda mask: torch.nn.functional.max_pool2d(mask[0].float(), 3, stride=1, padding=1) > 0
            assert not (between[0] & ~(near(alpha > 0.98) | near(alpha < 0.02))).any()
            assert not torch.equal(alpha[0, 0], alpha[0, -1]), "foregrounds move over the clip"
        assert not torch.equal(sample.background[:, 0], sample.background[:, -1]), "backgrounds drift"



@pytest.mark.parametrize("travel", [(0.2, 0.4), (0.4, 0.55)])
def test_foregrounds_travel_the_prompted_way_by_the_asked_distance(travel):
    size = 64
    for sample in _samples(8, num_foregrounds=1, frames=17, height=size, width=size, travel=travel):
        (x0, y0), (x1, y1) = (centroids(sample.alphas[0])[i] for i in (0, -1))
        dx, dy = MOTIONS[sample.layers[0].motion]
        along, across = (x1 - x0) * dx + (y1 - y0) * dy, (x1 - x0) * dy - (y1 - y0) * dx
        # the centroid of a slightly turning shape is within half a pixel of its centre
        assert travel[0] * size - 0.5 <= along <= travel[1] * size + 0.5, (sample.seed, along)
        assert abs(across) < 0.5
        # the whole shape stays in frame, so a long travel starts near the edge it leaves from
        alpha = sample.alphas[0, 0]
        assert max(float(edge.max()) for edge in (alpha[:, 0], alpha[:, -1], alpha[:, :, 0], alpha[:, :, -1])) < 0.05
        if travel[0] >= 0.4:
            position = x0 if dx else y0
            from_edge = position if dx + dy > 0 else size - position  # from the edge it leaves
            assert from_edge < size / 2, (sample.seed, from_edge)


def test_captions_name_the_layers_in_the_vocabulary():
    vocabulary = set(caption_vocabulary())
    assert set(PALETTE) | set(SHAPES) | set(MOTIONS) <= vocabulary
    for sample in _samples(10) + _samples(4, split="eval"):
        captions = sample.captions
        words = captions["full"].split() + captions["background"].split()
        words += [w for caption in captions["foregrounds"] for w in caption.split()]
        assert set(words) <= vocabulary
        assert captions["background"].endswith(f"{sample.background_name} background")
        assert captions["full"].endswith(f"over {captions['background']}")
        for layer, caption in zip(sample.layers, captions["foregrounds"]):
            assert caption.endswith(f"{layer.colour} {layer.shape}")
            assert f"{caption} moves {layer.motion}" in captions["full"]


def test_rewritten_captions_follow_the_recorded_spec(tmp_path):
    sample = generate_sample(5, 5, 32, 32, num_foregrounds=2)
    folder = write_sample(sample, tmp_path / "data" / "sample_00000", lossless=True)
    assert rewrite_captions(tmp_path / "data", foreground_motion=True) == 1
    captions = json.loads((folder / "metadata.json").read_text())["captions"]
    moving = [f"{layer.caption} moves {layer.motion}" for layer in sample.layers]
    assert captions["foregrounds"] == moving and captions["foreground"] == moving[0]
    assert captions["full"] == sample.captions["full"]
    rewrite_captions(tmp_path / "data")
    again = json.loads((folder / "metadata.json").read_text())["captions"]
    assert again["foregrounds"] == sample.captions["foregrounds"] == [layer.caption for layer in sample.layers]


def test_backgrounds_never_look_like_a_palette_colour_and_foregrounds_do():
    for sample in _samples(12):
        for colour in PALETTE:
            assert colour_fraction(sample.background, colour) == 0.0, (sample.background_name, colour)
        for layer, alpha in zip(sample.layers, sample.alphas):
            solid = (alpha > 0.99).float()
            assert colour_fraction(sample.full, layer.colour, weight=solid) > 0.95
            others = [c for c in PALETTE if c != layer.colour]
            assert all(colour_fraction(sample.full, c, weight=solid) < 0.05 for c in others)


def test_held_out_split_is_a_fixed_fifth_and_disjoint_from_training():
    for colour in PALETTE:
        for background in BACKGROUNDS:
            assert sum(is_held_out(colour, shape, background) for shape in SHAPES) == 1
    train, evaluation = _samples(30), _samples(12, split="eval")
    for sample in train:
        assert not any(is_held_out(l.colour, l.shape, sample.background_name) for l in sample.layers)
    for sample in evaluation:
        assert all(is_held_out(l.colour, l.shape, sample.background_name) for l in sample.layers)
    assert {s.captions["full"] for s in train}.isdisjoint({s.captions["full"] for s in evaluation})


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="split"):
        generate_sample(0, split="test", **SMALL)
    with pytest.raises(ValueError, match="num_foregrounds"):
        generate_sample(0, num_foregrounds=4, **SMALL)


def test_writer_keeps_the_official_single_foreground_keys(tmp_path):
    sample = generate_sample(3, num_foregrounds=2, **SMALL)
    folder = write_sample(sample, tmp_path / "clip")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["background.mp4", "full_video.mp4", "mask.mp4", "mask_2.mp4", "metadata.json"]
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["captions"]["foreground"] == sample.captions["foregrounds"][0]
    assert metadata["captions"]["foregrounds"] == sample.captions["foregrounds"]
    assert metadata["captions"]["full"] == sample.captions["full"]
    assert metadata["paths"]["mask_video"] == "mask.mp4"
    assert metadata["paths"]["mask_videos"] == ["mask.mp4", "mask_2.mp4"]
    # writing again replaces the sample folder whole
    lossless = write_sample(sample, tmp_path / "clip", lossless=True)
    assert sorted(p.name for p in lossless.iterdir()) == ["background", "full_video", "mask", "mask_2",
                                                          "metadata.json"]
    assert len(list((lossless / "mask_2").glob("*.png"))) == 9
    assert [p.name for p in tmp_path.iterdir()] == ["clip"], "no temporary folders left behind"


def test_writer_refuses_a_folder_that_is_not_a_sample(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a sample folder"):
        write_sample(generate_sample(0, **SMALL), tmp_path / "notes")


def test_command_line_writes_a_dataset(tmp_path):
    assert main(["--out", str(tmp_path / "a"), "--samples", "2", "--seed", "4", "--frames", "5", "--height", "16",
                 "--width", "16", "--max-foregrounds", "2", "--lossless", "--jsonl", "--split", "eval"]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["sample_00000", "sample_00001", "samples.jsonl"]
    metadata = json.loads((tmp_path / "a" / "sample_00001" / "metadata.json").read_text())
    assert metadata["synthetic"]["split"] == "eval" and metadata["num_foregrounds"] <= 2
    # and as a script, from the repository root
    result = subprocess.run([sys.executable, "train/synthetic.py", "--out", str(tmp_path / "b"), "--samples", "1",
                             "--frames", "5", "--height", "16", "--width", "16", "--lossless"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b" / "sample_00000" / "metadata.json").is_file()
