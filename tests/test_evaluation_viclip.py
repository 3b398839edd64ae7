"""ViCLIP text alignment (VBench's overall_consistency): a tiny random checkpoint written with the official key
names, loaded through the loader; VBench's frame sampling, transform and prompt handling with known answers; an
independent nn.MultiheadAttention reference; refusal of pickled code; no silent fallback to CLIP."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from layert2v_core.evaluation import feature_models, vbench, viclip
from layert2v_core.evaluation.evaluate import load_scorers, vbench_scores
from layert2v_core.evaluation.feature_models import CLIP_MEAN, CLIP_STD, ModelUnavailable
from layert2v_core.evaluation.samples import LayeredClip

WIDTH, LAYERS, PATCH, GRID, FRAMES, EMBED, CONTEXT = 64, 2, 8, 4, 8, 24, 32  # image 32 px


def block_keys(prefix: str, width: int, layers: int) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for i in range(layers):
        p = f"{prefix}.transformer.resblocks.{i}."
        shapes.update({p + "attn.in_proj_weight": (3 * width, width), p + "attn.in_proj_bias": (3 * width,),
                       p + "attn.out_proj.weight": (width, width), p + "attn.out_proj.bias": (width,),
                       p + "ln_1.weight": (width,), p + "ln_1.bias": (width,),
                       p + "mlp.c_fc.weight": (4 * width, width), p + "mlp.c_fc.bias": (4 * width,),
                       p + "mlp.c_proj.weight": (width, 4 * width), p + "mlp.c_proj.bias": (width,),
                       p + "ln_2.weight": (width,), p + "ln_2.bias": (width,)})
    return shapes


def official_state_dict(vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the key names and shapes of ViClip-InternVid-10M-FLT.pth's "model" entry."""
    shapes = {"temp": (),
              "vision_encoder.conv1.weight": (WIDTH, 3, 1, PATCH, PATCH),
              "vision_encoder.class_embedding": (WIDTH,),
              "vision_encoder.positional_embedding": (GRID * GRID + 1, WIDTH),
              "vision_encoder.temporal_positional_embedding": (1, FRAMES, WIDTH),
              "vision_encoder.ln_pre.weight": (WIDTH,), "vision_encoder.ln_pre.bias": (WIDTH,),
              **block_keys("vision_encoder", WIDTH, LAYERS),
              "vision_encoder.ln_post.weight": (WIDTH,), "vision_encoder.ln_post.bias": (WIDTH,),
              "vision_encoder.proj": (WIDTH, EMBED),
              "text_encoder.token_embedding.weight": (vocab_size, WIDTH),
              "text_encoder.positional_embedding": (CONTEXT, WIDTH),
              **block_keys("text_encoder", WIDTH, LAYERS),
              "text_encoder.ln_final.weight": (WIDTH,), "text_encoder.ln_final.bias": (WIDTH,),
              "text_encoder.text_projection": (WIDTH, EMBED)}
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g) * (0.3 if k.endswith("embedding") else 0.1) for k, s in shapes.items()}
    for k in state:
        if ".ln" in k and k.endswith("weight"):
            state[k] += 1.0
    return state


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from transformers import CLIPTokenizer

    root = tmp_path_factory.mktemp("viclip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch], vocab[ch + "</w>"] = len(vocab), len(vocab) + 1
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt")).save_pretrained(root / "tokenizer")
    state = official_state_dict(len(vocab))
    torch.save({"model": state}, root / viclip.VICLIP_FILE)
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "viclip.safetensors"))
    return root, state


def features(checkpoint, name=viclip.VICLIP_FILE, head_dim=16):
    root, _ = checkpoint
    return viclip.ViClipFeatures(root / name, tokenizer=str(root / "tokenizer"), head_dim=head_dim)


def video(frames=13, height=40, width=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------- VBench's protocol, known answers

def test_middle_frames_are_vbench_middle_sampling():
    # edges int(linspace(0, n, 9)), middle (start + end - 1) // 2; shorter clips padded with their last frame
    assert vbench.middle_frames(81) == [4, 14, 24, 34, 44, 54, 64, 75]
    assert vbench.middle_frames(13) == [0, 1, 3, 4, 6, 8, 9, 11]
    assert vbench.middle_frames(5) == [0, 1, 2, 3, 4, 4, 4, 4]
    assert vbench.middle_frames(1) == [0] * 8


def test_clip_transform_size_crop_quantisation_and_normalisation():
    assert feature_models.resized_size(480, 832, 224) == (224, 388)
    assert feature_models.resized_size(96, 170, 224) == (224, 396)  # 396.67 truncated, as torchvision
    assert feature_models.resized_size(300, 223, 224) == (301, 224)
    grey = feature_models.clip_pixels(np.full((2, 96, 170, 3), 128, np.uint8))
    assert grey.shape == (2, 3, 224, 224)
    expected = (128 / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(grey[:, :, 5, 7], expected.expand(2, 3), atol=1e-6)  # bicubic keeps a flat frame flat
    levels = feature_models.clip_pixels(video(2, 60, 90)) * torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    levels = (levels + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) * 255
    assert (levels - levels.round()).abs().max() < 1e-3  # torchvision brings the resized uint8 frame back to 8 bits
    for width, left in ((397, 86), (399, 88)):  # (397 - 224) / 2 = 86.5 -> 86 and 87.5 -> 88: round half to even
        columns = np.broadcast_to((np.arange(width) % 256).astype(np.uint8)[None, None, :, None], (1, 224, width, 3))
        first = feature_models.clip_pixels(columns)[0, 0, 0, 0] * CLIP_STD[0] + CLIP_MEAN[0]
        assert float(first) * 255 == pytest.approx(left, abs=1e-3)


def test_prompt_cleaning_and_truncation_to_32_tokens(checkpoint):
    assert viclip.clean_prompt(" \u201ca cat&amp;amp;dog\u201d jump\u2019s ") == '"a cat&dog" jump\'s'
    tokenizer = features(checkpoint).tokenizer
    ids = tokenizer(viclip.clean_prompt("abc " * 40), truncation=True, max_length=32)["input_ids"]
    # VBench: start + the first 30 tokens + end-of-text ("abc" = a, b, c</w>)
    assert len(ids) == 32 and ids[0] == 0 and ids[-1] == 1 and ids[1:4] == [3, 5, 8]


# ---------------------------------------------------------------- the model

def reference_features(state, frames, tokens, heads):
    """VBench's computation with nn.MultiheadAttention (sequence first), frame-major tokens reordered as VBench's
    (patch, frame) order, and the text at full 32-token context, zero padded, taking the argmax (end) token."""
    def transformer(x, prefix, mask=None):
        for i in range(LAYERS):
            p = f"{prefix}.transformer.resblocks.{i}."
            attention = torch.nn.MultiheadAttention(WIDTH, heads)
            attention.load_state_dict({k[len(p) + 5:]: v for k, v in state.items() if k.startswith(p + "attn.")})
            h = F.layer_norm(x, (WIDTH,), state[p + "ln_1.weight"], state[p + "ln_1.bias"])
            x = x + attention(h, h, h, need_weights=False, attn_mask=mask)[0]
            h = F.layer_norm(x, (WIDTH,), state[p + "ln_2.weight"], state[p + "ln_2.bias"])
            h = F.linear(h, state[p + "mlp.c_fc.weight"], state[p + "mlp.c_fc.bias"])
            x = x + F.linear(h * torch.sigmoid(1.702 * h), state[p + "mlp.c_proj.weight"], state[p + "mlp.c_proj.bias"])
        return x

    v = "vision_encoder."
    patches = F.conv2d(frames, state[v + "conv1.weight"][:, :, 0], stride=PATCH).flatten(2).transpose(1, 2)  # [T, N, W]
    patches = patches + state[v + "positional_embedding"][1:] + state[v + "temporal_positional_embedding"][0, :, None]
    cls = state[v + "class_embedding"] + state[v + "positional_embedding"][0]
    x = torch.cat([cls[None], patches.transpose(0, 1).reshape(-1, WIDTH)])[:, None]  # [1 + N * T, 1, W]
    x = transformer(F.layer_norm(x, (WIDTH,), state[v + "ln_pre.weight"], state[v + "ln_pre.bias"]), "vision_encoder")
    video_feature = F.layer_norm(x[0, 0], (WIDTH,), state[v + "ln_post.weight"], state[v + "ln_post.bias"]) @ state[v + "proj"]

    t = "text_encoder."
    padded = torch.zeros(CONTEXT, dtype=torch.long)
    padded[:len(tokens)] = torch.tensor(tokens)
    x = (state[t + "token_embedding.weight"][padded] + state[t + "positional_embedding"])[:, None]
    x = transformer(x, "text_encoder", torch.full((CONTEXT, CONTEXT), float("-inf")).triu(1))
    x = F.layer_norm(x[:, 0], (WIDTH,), state[t + "ln_final.weight"], state[t + "ln_final.bias"])
    text_feature = x[len(tokens) - 1] @ state[t + "text_projection"]
    return F.normalize(video_feature, dim=-1), F.normalize(text_feature, dim=-1)


def test_features_match_an_independent_multihead_attention_reference(checkpoint):
    model = features(checkpoint)
    frames = video()
    prompt = "a white square moves right"
    tokens = model.tokenizer(prompt)["input_ids"]
    pixels = feature_models.clip_pixels(frames[vbench.middle_frames(len(frames))], GRID * PATCH)
    with torch.no_grad():
        video_ref, text_ref = reference_features(checkpoint[1], pixels, tokens, heads=WIDTH // 16)
    assert (model.video(frames) - video_ref).abs().max() < 1e-5  # measured 0.0 (video) and 1.9e-7 (text), float32
    assert (model.text(prompt) - text_ref).abs().max() < 1e-5


def test_shapes_range_determinism_and_what_the_score_depends_on(checkpoint):
    model, frames = features(checkpoint), video()
    feature = model.video(frames)
    assert feature.shape == (EMBED,) and float(feature.norm()) == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(feature, model.video(frames.copy()))  # same input, same score
    text = model.text("a white square moves right")
    assert text.shape == (EMBED,) and torch.equal(text, model.text("a white square moves right"))
    score = vbench.text_alignment(feature, text)
    assert -1.0 <= score <= 1.0
    unsampled, sampled = frames.copy(), frames.copy()
    unsampled[12] = 0  # 13 frames: 12 is not among VBench's middle frames [0, 1, 3, 4, 6, 8, 9, 11]
    sampled[11] = 0
    assert torch.equal(model.video(unsampled), feature) and not torch.allclose(model.video(sampled), feature)
    assert not torch.allclose(model.video(frames[::-1].copy()), feature, atol=1e-4)  # the temporal embedding sees order
    assert not torch.allclose(model.text("a black circle"), text, atol=1e-4)


def test_safetensors_and_bare_state_dict_load_the_same_model(checkpoint, tmp_path):
    frames = video(seed=3)
    expected = features(checkpoint).video(frames)
    assert torch.equal(features(checkpoint, "viclip.safetensors").video(frames), expected)
    torch.save(checkpoint[1], tmp_path / "bare.pth")
    loaded = viclip.ViClipFeatures(tmp_path / "bare.pth", str(checkpoint[0] / "tokenizer"), head_dim=16)
    assert torch.equal(loaded.video(frames), expected)


class Exploit:
    def __reduce__(self):
        return (open, ("pwned_by_viclip_checkpoint", "w"))


def test_bad_checkpoints_are_refused_with_the_file_named(checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": checkpoint[1], "payload": Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(ModelUnavailable, match=r"evil.pth is not a plain tensor checkpoint and was not loaded \(.*open"):
        viclip.load_viclip(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned_by_viclip_checkpoint").exists()
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelUnavailable, match="junk.safetensors is not a plain tensor checkpoint"):
        viclip.load_viclip(tmp_path / "junk.safetensors")
    with pytest.raises(ModelUnavailable, match="missing.pth not found.*--viclip"):
        viclip.load_viclip(tmp_path / "missing.pth")
    broken = {k: v for k, v in checkpoint[1].items() if "resblocks.1.mlp" not in k or "text" in k}
    torch.save({"model": broken}, tmp_path / "broken.pth")
    with pytest.raises(ModelUnavailable, match=r"broken.pth does not match ViCLIP: missing \['vision_encoder"):
        viclip.load_viclip(tmp_path / "broken.pth")
    torch.save({"model": {k: v for k, v in checkpoint[1].items() if k.startswith("text")}}, tmp_path / "text.pth")
    with pytest.raises(ModelUnavailable, match="text.pth does not have ViCLIP's layout"):
        viclip.load_viclip(tmp_path / "text.pth")


def test_text_alignment_uses_viclip_when_given_and_never_falls_back(checkpoint, tmp_path):
    root, _ = checkpoint
    tokenizer = str(root / "tokenizer")
    with pytest.raises(ModelUnavailable, match="not found"):
        load_scorers(dino=None, clip=None, viclip=str(tmp_path / "absent.pth"), viclip_tokenizer=tokenizer)
    plain = load_scorers(dino=None, clip=None)
    assert plain.used["text_alignment"] is None and "text_alignment" in plain.unavailable
    scorers = load_scorers(dino=None, clip=None, viclip=str(root / viclip.VICLIP_FILE), viclip_tokenizer=tokenizer)
    assert scorers.used["text_alignment"] == f"ViCLIP {viclip.VICLIP_FILE} (VBench overall_consistency)"
    assert "text_alignment" not in scorers.unavailable

    frames = torch.from_numpy(video(9, 32, 32, seed=5)).permute(3, 0, 1, 2).float() / 255
    alpha = torch.zeros(1, 9, 32, 32)
    alpha[..., 8:20, 8:20] = 1.0
    clip = LayeredClip(name="s", source="generated", full=frames, background=frames.flip(-1), foregrounds=[frames.flip(-2)], alphas=[alpha],
                       prompts={"full": "a red circle moves right", "background": "grey noise",
                                "foregrounds": ["a red circle"]})
    scores = vbench_scores(clip, scorers)["text_alignment"]
    expected = vbench.text_alignment(scorers.viclip.video(vbench.to_frames(frames)),
                                     scorers.viclip.text("a red circle moves right"))
    assert set(scores) == {"FG", "BG", "BL"} and scores["BL"] == pytest.approx(expected, abs=1e-6)
    torch.save({"model": official_state_dict(vocab_size=99)}, tmp_path / "other_vocab.pth")
    with pytest.raises(ModelUnavailable, match="has 55 tokens, ViCLIP .*other_vocab.pth 99"):
        load_scorers(dino=None, clip=None, viclip=str(tmp_path / "other_vocab.pth"), viclip_tokenizer=tokenizer)


def test_evaluate_command_stops_on_a_viclip_it_cannot_use(checkpoint, tmp_path):
    from layert2v_core.cli import main
    from train.synthetic import generate_sample, write_sample

    root, _ = checkpoint
    write_sample(generate_sample(3, frames=9, height=32, width=32, split="eval"), tmp_path / "truth" / "s0",
                 lossless=True)
    args = ["evaluate", str(tmp_path / "truth"), "--quiet", "--no-sheets"]
    with pytest.raises(SystemExit, match="absent.pth not found"):  # before any other model or sample is touched
        main(args + ["--out", str(tmp_path / "r0"), "--viclip", str(tmp_path / "absent.pth")])
    with pytest.raises(SystemExit, match="--viclip asks for a model and --no-models for none"):
        main(args + ["--out", str(tmp_path / "r1"), "--viclip", str(root / viclip.VICLIP_FILE), "--no-models"])
