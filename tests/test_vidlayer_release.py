"""The released VidLayer layout: samples in per-source folders, and the optional foreground clip."""
import json

import torch

from layert2v_core.layered_latent import premultiply
from layert2v_core.video_io import video_to_frames, write_video
from train.data import LayeredVideoDataset, collate_layered, layer_videos
from train.synthetic import generate_sample, write_sample
from train.vidlayer_layout import discover

SMALL = dict(frames=5, height=32, width=32)
EIGHT_BITS = 0.5 / 255 + 1e-6


def _source_tree(root):
    """root/VIDGEN/a, root/MOSEv2/b (lossless), b with its own foreground clip (a dimmed full x alpha)."""
    samples = {}
    for source, name, seed in (("VIDGEN", "a", 1), ("MOSEv2", "b", 2)):
        sample = generate_sample(seed, num_foregrounds=1, **SMALL)
        write_sample(sample, root / source / name, lossless=True)
        samples[f"{source}/{name}"] = sample
    folder = root / "MOSEv2" / "b"
    clip = samples["MOSEv2/b"].full * samples["MOSEv2/b"].alphas[0] * 0.5
    write_video(folder / "foreground", video_to_frames(clip), 16.0)
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["paths"]["foreground_video"] = "foreground"
    (folder / "metadata.json").write_text(json.dumps(metadata))
    (root / "README.md").write_text("per-source folders")
    return samples, clip


def test_samples_are_found_in_per_source_folders(tmp_path):
    samples, clip = _source_tree(tmp_path)
    entries, bad = discover(tmp_path)
    assert [e.id for e in entries] == ["MOSEv2/b", "VIDGEN/a"] and bad == []
    assert entries[0].foregrounds == (tmp_path / "MOSEv2" / "b" / "foreground",) and entries[1].foregrounds == ()
    dataset = LayeredVideoDataset(tmp_path, sampling="uniform", **SMALL)
    items = {dataset[i]["id"]: dataset[i] for i in range(len(dataset))}
    with_clip, without = items["MOSEv2/b"], items["VIDGEN/a"]
    assert (((with_clip["foregrounds"][0] + 1) / 2) - clip).abs().max() <= EIGHT_BITS  # the clip, not full x alpha
    expected = (without["full"] + 1) / 2 * without["alphas"][0]
    assert torch.allclose((without["foregrounds"][0] + 1) / 2, expected, atol=1e-6)


def test_foreground_clips_reach_the_encoder_inputs(tmp_path):
    _source_tree(tmp_path)
    dataset = LayeredVideoDataset(tmp_path, sampling="uniform", **SMALL)
    batch = collate_layered([dataset[0], dataset[1]])  # one sample with a clip, one without
    layers = layer_videos(batch)
    alpha = batch["alphas"][:, 0]
    again = premultiply(layers["fg1"], alpha)  # what encode_layers encodes
    seen = alpha.expand_as(again) > 2 / 255
    assert (again - batch["foregrounds"][:, 0])[seen].abs().max() <= 1e-4
    plain = layer_videos(collate_layered([dataset[1]]))
    assert "fg1" not in plain and set(plain) == {"full", "bg", "mask1"}  # fg = full x alpha inside encode_layers


def test_jsonl_rows_may_name_a_foreground_clip(tmp_path):
    row = {"vid": "a/full.mp4", "entry": {"pha_video_path": "a/mask.mp4", "bg_path": "a/bg.mp4",
                                          "fg_path": "a/fg.mp4"},
           "overall_description": "x", "foreground_prompt": "y", "background_prompt": "z"}
    (tmp_path / "index.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({**row, "entry": {
        **row["entry"], "fg_path": None}}) + "\n")
    entries, bad = discover(tmp_path / "index.jsonl")
    assert entries[0].foregrounds == (tmp_path / "a" / "fg.mp4",) and entries[1].foregrounds == () and not bad
