"""What an artist sees: the labelled, scaled-up preview Save Layers shows (files keep their size), search aliases."""
import json

import numpy as np
import torch
from PIL import Image

from layert2v_core.export import DISPLAY_HEIGHT, display_preview, preview, preview_labels, save_layers
from layert2v_core.layers import LayerSpec
from layert2v_core.pipeline import LayeredVideo
from layert2v_core.video_io import read_video
from nodes import NODE_CLASS_MAPPINGS


def small_layers(foregrounds: int = 2, size: int = 48, frames: int = 5) -> LayeredVideo:
    generator = torch.Generator().manual_seed(0)
    rgb = lambda: torch.rand(3, frames, size, size, generator=generator)  # noqa: E731
    alphas = [(torch.rand(1, frames, size, size, generator=generator) > 0.5).float() for _ in range(foregrounds)]
    return LayeredVideo(rgb(), rgb(), [rgb() for _ in range(foregrounds)], alphas, torch.zeros(16, 8, 6, 6),
                        LayerSpec(foregrounds))


def test_display_preview_is_the_preview_scaled_by_a_whole_factor_under_a_label_band():
    layers = small_layers()
    shown, strip = display_preview(layers), preview(layers)
    factor = 6  # 48 px -> 288 px, the first whole factor reaching 256
    band = shown.shape[-2] - strip.shape[-2] * factor
    assert shown.shape[-2] - band >= DISPLAY_HEIGHT and 0 < band <= 32
    torch.testing.assert_close(shown[:, :, band::factor, ::factor], strip, rtol=0, atol=0)  # nearest neighbour
    labels = shown[:, 0, :band]
    assert preview_labels(layers) == ["full", "background", "foreground 1", "foreground 2", "alpha 1", "alpha 2"]
    tile = 48 * factor
    for i in range(6):  # every tile's label band holds light text on the dark band
        assert labels[:, :, i * tile:(i + 1) * tile].amax() > 0.8 and labels[:, :, i * tile:(i + 1) * tile].amin() < 0.2


def test_saved_files_keep_their_size_and_the_manifest_lists_the_webp(tmp_path):
    layers = small_layers(foregrounds=1)
    files = save_layers(layers, tmp_path, fps=8.0, rgba_formats=("png",), webp_preview=True)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["files"]["preview_webp"] == files["preview_webp"] == "preview.webp"
    with Image.open(tmp_path / "preview.webp") as webp:
        assert webp.height >= DISPLAY_HEIGHT and webp.n_frames == 5
    assert np.asarray(read_video(tmp_path / "full.mp4")[0]).shape[-3:-1] == (48, 48)
    with Image.open(next((tmp_path / "fg1_rgba_png").iterdir())) as png:
        assert png.size == (48, 48) and png.mode == "RGBA"


def test_layer_nodes_are_found_by_what_artists_search_for():
    for name in ("LayerT2VDecodeLayers", "LayerT2VEncodeLayers", "LayerT2VSaveLayers", "LayerT2VComposite"):
        aliases = {a.lower() for a in NODE_CLASS_MAPPINGS[name].SEARCH_ALIASES}
        assert {"alpha", "matte", "rgba", "layers"} <= aliases, name
