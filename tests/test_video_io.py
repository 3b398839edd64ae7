"""Video files: alpha survives webm (VP9) / mov (ProRes 4444) / PNG folders, mp4 colour, atomic writes, bad input."""
import os

import numpy as np
import pytest
import torch

from layert2v_core import video_io
from layert2v_core.video_io import (ffmpeg_codecs, frames_to_video, probe_video, read_video, video_to_frames,
                                    write_video)


def _rgba_clip(frames=7, size=32):
    """Smooth colour gradients and a moving soft-edged disc of alpha (fully clear corners, opaque centre)."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1.0)
    clip = np.zeros((frames, size, size, 4), np.float32)
    for t in range(frames):
        clip[t, ..., 0], clip[t, ..., 1] = xx, yy
        clip[t, ..., 2] = 0.5 + 0.4 * np.sin(6 * xx + t)
        clip[t, ..., 3] = np.clip(1.5 - 3 * np.hypot(xx - 0.45 - 0.02 * t, yy - 0.5), 0, 1)
    return clip


def _alpha_errors(written, read):
    diff = np.abs(read[..., 3] - written[..., 3])
    return diff.max(), diff.mean()


def test_bundled_ffmpeg_has_the_codecs_we_use():
    encoders, decoders = ffmpeg_codecs("encoders"), ffmpeg_codecs("decoders")
    assert {"libx264", "libvpx-vp9", "prores_ks", "png"} <= encoders
    assert {"h264", "libvpx-vp9", "prores", "png"} <= decoders


def test_webm_vp9_keeps_alpha(tmp_path):
    clip = _rgba_clip()
    path = write_video(tmp_path / "layer.webm", clip, 16)
    info = probe_video(path)
    # Stored as VP9 with a side alpha plane: the stream reads yuv420p to the native decoder, alpha_mode=1.
    assert (info.codec, info.has_alpha, info.width, info.height, info.fps) == ("vp9", True, 32, 32, 16.0)
    frames, fps = read_video(path)
    assert frames.shape == clip.shape and frames.dtype == np.float32 and fps == 16.0
    worst, mean = _alpha_errors(clip, frames)
    # Lossy 8-bit VP9 at crf 20: measured alpha error max 0.020, mean 0.0022.
    assert worst < 0.05 and mean < 0.01, (worst, mean)
    assert frames[:, 0, 0, 3].max() < 0.02 and frames[:, 16, 14, 3].min() > 0.98  # clear corner, opaque centre
    opaque = clip[..., 3] > 0.5
    assert np.abs(frames[..., :3] - clip[..., :3])[opaque].mean() < 0.02


def test_mov_prores_4444_keeps_alpha(tmp_path):
    clip = _rgba_clip()
    path = write_video(tmp_path / "layer.mov", clip, 16)
    info = probe_video(path)
    assert info.codec == "prores" and info.has_alpha and info.pix_fmt.startswith("yuva444p")
    frames, fps = read_video(path)
    assert frames.shape == clip.shape and fps == 16.0
    worst, mean = _alpha_errors(clip, frames)
    # ProRes 4444 codes alpha near-losslessly (written 10-bit here); measured max 0.0012, i.e. about 1 code of 1023.
    assert worst < 3 / 1023 and mean < 1e-3, (worst, mean)
    opaque = clip[..., 3] > 0.5
    # measured 0.002: 10-bit 4:4:4 colour
    assert np.abs(frames[..., :3] - clip[..., :3])[opaque].max() < 0.01


def test_png_folder_is_exact_8_bit_rgba(tmp_path):
    clip = (_rgba_clip(frames=5, size=16) * 255).round().astype(np.uint8)
    folder = write_video(tmp_path / "layer_png", clip, 16)
    names = sorted(os.listdir(folder))
    assert names == [f"frame_{i:05d}.png" for i in range(5)]
    frames, fps = read_video(folder, default_fps=24.0)
    assert fps == 24.0
    np.testing.assert_array_equal((frames * 255).round().astype(np.uint8), clip)


def test_mp4_h264_round_trips_colour_and_refuses_alpha(tmp_path):
    colours = np.array([[0.8, 0.3, 0.1], [0.1, 0.9, 0.2], [0.2, 0.2, 0.9], [1, 1, 1], [0, 0, 0]], np.float32)
    clip = np.broadcast_to(colours[:, None, None, :], (5, 16, 16, 3)).copy()
    frames, fps = read_video(write_video(tmp_path / "full.mp4", torch.from_numpy(clip), 16))
    assert frames.shape == clip.shape and fps == 16.0
    # 8-bit limited-range BT.709 both ways: measured max 0.014 (about 3 codes); a wrong matrix would show ~0.05.
    assert np.abs(frames - clip).max() < 0.03
    with pytest.raises(ValueError, match="H.264 .* cannot store alpha"):
        write_video(tmp_path / "layer.mp4", _rgba_clip(), 16)
    assert not (tmp_path / "layer.mp4").exists()


def test_odd_sizes_are_padded_for_h264_and_kept_for_vp9(tmp_path):
    clip = np.full((3, 15, 17, 3), 0.5, np.float32)
    with pytest.warns(UserWarning, match="padding 17x15 to 18x16"):
        path = write_video(tmp_path / "odd.mp4", clip, 16)
    assert read_video(path)[0].shape == (3, 16, 18, 3)
    assert read_video(write_video(tmp_path / "odd.webm", clip, 16))[0].shape == (3, 15, 17, 3)


def test_grey_uint8_torch_inputs_and_layout_helpers(tmp_path):
    grey = torch.linspace(0, 1, 16 * 16).reshape(1, 16, 16).repeat(3, 1, 1)  # [T, H, W] matte
    frames, _ = read_video(write_video(tmp_path / "mask.mov", grey, 16))
    assert frames.shape == (3, 16, 16, 3)
    assert np.abs(frames - grey.numpy()[..., None]).max() < 0.01
    video = torch.rand(3, 2, 4, 5)
    assert torch.equal(frames_to_video(video_to_frames(video)), video)
    assert video_to_frames(video).shape == (2, 4, 5, 3)


def test_ntsc_frame_rate_is_written_as_a_fraction(tmp_path):
    clip = np.zeros((4, 16, 16, 3), np.float32)
    _, fps = read_video(write_video(tmp_path / "ntsc.webm", clip, 30000 / 1001))
    assert fps == pytest.approx(29.97, abs=0.01)


def test_failed_write_leaves_the_old_file_and_no_temporaries(tmp_path, monkeypatch):
    target = tmp_path / "out.webm"
    target.write_bytes(b"previous render")

    def half_written(frames, fps, codec, crf, destination, container):
        destination.write_bytes(b"partial")
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(video_io, "_encode", half_written)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_video(target, _rgba_clip(frames=2, size=8), 16)
    assert target.read_bytes() == b"previous render"
    assert os.listdir(tmp_path) == ["out.webm"]


def test_png_folder_is_replaced_whole(tmp_path):
    folder = tmp_path / "seq"
    write_video(folder, np.zeros((6, 8, 8, 4), np.float32), 16)
    write_video(folder, np.ones((2, 8, 8, 4), np.float32), 16)
    assert sorted(os.listdir(folder)) == ["frame_00000.png", "frame_00001.png"]
    assert sorted(os.listdir(tmp_path)) == ["seq"]


@pytest.mark.parametrize("name, frames, kwargs, message", [
    ("clip.avi", np.zeros((2, 8, 8, 3)), {}, r"use \.mp4 .*\.webm .*\.mov"),
    ("clip.webm", np.zeros((2, 8, 8, 3)), {"fps": 0}, r"fps must be a positive number"),
    ("clip.webm", np.zeros((3, 2, 8, 8)), {}, r"\[T, H, W, C\] .*permute"),
    ("clip.webm", np.zeros((2, 8, 8, 3), np.int32), {}, r"float in \[0, 1\], uint8 or uint16"),
    ("clip.webm", np.full((2, 8, 8, 3), np.nan), {}, r"NaN"),
    ("clip.webm", np.zeros((2, 8, 8, 3)), {"codec": "h264"}, r"codec 'h264' does not go in a \.webm"),
    ("clip.mp4", np.zeros((2, 8, 8, 3)), {"crf": 99}, r"crf must be an integer"),
])
def test_bad_writes_fail_before_encoding(tmp_path, monkeypatch, name, frames, kwargs, message):
    monkeypatch.setattr(video_io, "_encode", lambda *a: pytest.fail("encoder started on invalid input"))
    args = {"fps": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        write_video(tmp_path / name, frames, **args)
    assert os.listdir(tmp_path) == []


def test_png_targets_that_are_not_frame_folders_are_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("keep me")
    with pytest.raises(ValueError, match="files other than PNG frames"):
        write_video(tmp_path / "notes", np.zeros((1, 4, 4, 3)), 16)
    assert (tmp_path / "notes" / "readme.txt").exists()


def test_bad_reads_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no video file or PNG folder"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .png frames"):
        read_video(tmp_path / "empty")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="no video stream"):
        read_video(tmp_path / "junk.mp4")
