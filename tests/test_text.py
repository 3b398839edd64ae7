"""umt5 text encoding: every file layout against the in-memory transformers model, padding, truncation, layering.

A tiny random UMT5EncoderModel and a tiny sentencepiece tokenizer are built here (no downloads) and written in each
layout a user may have: a Hugging Face folder (and diffusers' text_encoder/ + tokenizer/), Wan's .pth in Wan's own
names (with google/umt5-xxl beside it), and ComfyUI's fp16 and scaled-fp8 single files (tokenizer inside).
Tolerance: fp32, max |out - ref| <= 1e-6 * max |ref|.
"""
from __future__ import annotations

import copy
import io
import logging
import math
import random

import pytest
import sentencepiece
import torch
from safetensors.torch import save_file
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

from layert2v_core import LayerSpec, load_text_encoder
from layert2v_core.text import (DEFAULT_BACKGROUND_PROMPT, DEFAULT_FOREGROUND_PROMPT, WAN_NEGATIVE_PROMPT,
                                batch_layered_contexts, encode_layer_prompts)
from layert2v_core.text_tokenizer import EOS_ID, PromptTokenizer
from layert2v_core.weights import CheckpointError

REL_TOL = 1e-6
HEADS = 4
PROMPTS = ["fo ba ke", "the sky", "mi  ra   to ze\tvo ku pa", "", "ku ku ku ku ku ku ku ku ku ku ku ku ku ku ku ku"]
LINEAR_NAMES = ("SelfAttention.q.", "SelfAttention.k.", "SelfAttention.v.", "SelfAttention.o.", "wi_0.", "wi_1.",
                "wo.")
# Wan's umt5 names, written here from Wan's module tree (T5Encoder: token_embedding, blocks[i].{norm1, attn, norm2,
# ffn.gate[0] (GELU branch), ffn.fc1, ffn.fc2, pos_embedding.embedding}, norm), independently of the loader's table.
TRANSFORMERS_TO_WAN_BLOCK = {
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
}


# ---- tiny tokenizer and model ----

def _train_sentencepiece() -> bytes:
    rng = random.Random(0)
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(300)] + ["the", "sky"]
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + rng.choice([".", ",", "!", ""])
                 for _ in range(600)]
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buffer, vocab_size=256, model_type="unigram", pad_id=0,
        eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2)
    return buffer.getvalue()


def _hf_tokenizer(model_bytes: bytes) -> T5Tokenizer:
    """transformers' own T5 tokenizer over the same pieces and scores (what a google/umt5-xxl folder holds)."""
    sp = sentencepiece.SentencePieceProcessor(model_proto=model_bytes)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _random_model(vocab: int) -> UMT5EncoderModel:
    config = UMT5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=HEADS,
                        relative_attention_num_buckets=32, relative_attention_max_distance=128)
    model = UMT5EncoderModel(config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                value = 1 + 0.2 * torch.randn(p.shape, generator=gen)
            elif "relative_attention_bias" in name or name == "shared.weight":
                value = torch.randn(p.shape, generator=gen)
            else:
                value = torch.randn(p.shape, generator=gen) * p.shape[1] ** -0.5 * 2
            # bf16-representable values are exact in fp16 and fp32 too, so every file stores the same model.
            p.copy_(value.to(torch.bfloat16).float())
    return model


def _real_tokens(model: UMT5EncoderModel, ids: list[int]) -> torch.Tensor:
    """Reference, Wan's way: pad the ids to 512 with a mask, run transformers, keep the real tokens."""
    padded = torch.zeros(1, 512, dtype=torch.long)
    padded[0, :len(ids)] = torch.tensor(ids)
    mask = (torch.arange(512) < len(ids)).long()[None]
    with torch.no_grad():
        return model(input_ids=padded, attention_mask=mask).last_hidden_state[0, :len(ids)]


def _fp8_scaled(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = weight.abs().max().float() / torch.finfo(torch.float8_e4m3fn).max
    return (weight / scale).to(torch.float8_e4m3fn), scale.reshape(())


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Models this small run fastest on one thread; more only wait on each other on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, _one_thread):
    model_bytes = _train_sentencepiece()
    sp = sentencepiece.SentencePieceProcessor(model_proto=model_bytes)
    model = _random_model(sp.get_piece_size())
    root = tmp_path_factory.mktemp("umt5")
    hf_tok = _hf_tokenizer(model_bytes)
    state = {k: v for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    paths = {}

    paths["hf"] = root / "umt5-xxl"
    model.save_pretrained(paths["hf"])
    hf_tok.save_pretrained(paths["hf"])

    paths["diffusers"] = root / "diffusers" / "text_encoder"
    model.save_pretrained(paths["diffusers"])
    hf_tok.save_pretrained(root / "diffusers" / "tokenizer")

    wan_state = {}
    for key, value in state.items():
        if key == "shared.weight":
            wan_state["token_embedding.weight"] = value
        elif key == "encoder.final_layer_norm.weight":
            wan_state["norm.weight"] = value
        else:
            _, _, block, rest = key.split(".", 3)
            wan_state[f"blocks.{block}.{TRANSFORMERS_TO_WAN_BLOCK[rest]}"] = value
    paths["wan"] = root / "wan" / "models_t5_umt5-xxl-enc-bf16.pth"
    paths["wan"].parent.mkdir()
    torch.save({k: v.to(torch.bfloat16) for k, v in wan_state.items()}, paths["wan"])
    hf_tok.save_pretrained(root / "wan" / "google" / "umt5-xxl")

    spiece = torch.frombuffer(bytearray(model_bytes), dtype=torch.uint8)
    paths["comfy_fp16"] = root / "umt5_xxl_fp16.safetensors"
    save_file({**{k: v.half() for k, v in state.items()}, "spiece_model": spiece}, paths["comfy_fp16"])

    fp8_file, fp8_model = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn), "spiece_model": spiece}, \
        copy.deepcopy(model)
    fp8_params = dict(fp8_model.named_parameters())
    for key, value in state.items():
        if any(n in key for n in LINEAR_NAMES):
            stored, scale = _fp8_scaled(value)
            base = key[: -len(".weight")]
            fp8_file[key], fp8_file[base + ".scale_weight"] = stored, scale
            fp8_file[base + ".scale_input"] = torch.ones(())  # ComfyUI writes these too; they must be ignored
            with torch.no_grad():
                fp8_params[key].copy_(stored.float() * scale)  # the model the fp8 file actually holds
        else:
            fp8_file[key] = value.half()
    paths["comfy_fp8"] = root / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    save_file(fp8_file, paths["comfy_fp8"])

    return dict(model=model, fp8_model=fp8_model, sp=sp, model_bytes=model_bytes, paths=paths, root=root,
                wan_state=wan_state, hf_tok=hf_tok)


def _ids(tiny, text: str) -> list[int]:
    return tiny["sp"].encode(" ".join(text.split())) + [EOS_ID]


def _assert_close(out: torch.Tensor, ref: torch.Tensor, what: str, rel_tol: float = REL_TOL):
    err = (out.float() - ref.float()).abs().max().item()
    bound = rel_tol * ref.abs().max().item()
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.3e}"


# ---- tokenizer ----

def test_tokenizer_sources_agree(tiny):
    from_bytes = PromptTokenizer.from_sentencepiece_bytes(tiny["model_bytes"])
    from_folder = PromptTokenizer.from_folder(tiny["paths"]["hf"])
    for text in PROMPTS + ["zo, ma! ke.", "  spaces   around  "]:
        expected = _ids(tiny, text)
        assert list(from_bytes(text).ids) == expected, text
        assert list(from_folder(text).ids) == expected, text
        assert list(from_folder(text).ids) == tiny["hf_tok"](" ".join(text.split()))["input_ids"], text


# ---- the test's Wan naming is Wan's structure ----

def _wan_forward(state: dict, ids: list[int]) -> torch.Tensor:
    """Wan's T5Encoder computation over Wan-named tensors (written for this test): the names must mean what Wan
    means by them, or this disagrees with transformers."""
    def rms(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    def bucket(rel, buckets=32, max_dist=128):
        half = buckets // 2
        out = (rel > 0).long() * half
        dist = rel.abs()
        exact = half // 2
        far = exact + (torch.log(dist.float().clamp(min=1) / exact) / math.log(max_dist / exact)
                       * (half - exact)).long()
        return out + torch.where(dist < exact, dist, far.clamp(max=half - 1))

    x = state["token_embedding.weight"][torch.tensor(ids)]
    n = len(ids)
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    for i in range(sum(k.endswith("norm1.weight") for k in state)):
        w = {k[len(f"blocks.{i}."):]: v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        h = rms(x, w["norm1.weight"])
        q, k, v = ((h @ w[f"attn.{p}.weight"].T).view(n, HEADS, -1).transpose(0, 1) for p in "qkv")
        bias = w["pos_embedding.embedding.weight"][bucket(rel)].permute(2, 0, 1)
        att = torch.softmax(q @ k.transpose(1, 2) + bias, dim=-1)
        x = x + (att @ v).transpose(0, 1).reshape(n, -1) @ w["attn.o.weight"].T
        h = rms(x, w["norm2.weight"])
        gelu = torch.nn.functional.gelu(h @ w["ffn.gate.0.weight"].T, approximate="tanh")
        x = x + (gelu * (h @ w["ffn.fc1.weight"].T)) @ w["ffn.fc2.weight"].T
    return rms(x, state["norm.weight"])


def test_wan_names_mean_what_wan_means(tiny):
    ids = _ids(tiny, PROMPTS[2])
    # Separately written math sums in another order, hence 1e-5; a misnamed tensor is off by O(1).
    _assert_close(_wan_forward(tiny["wan_state"], ids), _real_tokens(tiny["model"], ids), "Wan structure", 1e-5)


# ---- every layout against the in-memory model ----

@pytest.mark.parametrize("layout", ["hf", "diffusers", "wan", "comfy_fp16", "comfy_fp8"])
def test_layout_matches_transformers(tiny, layout):
    reference = tiny["fp8_model"] if layout == "comfy_fp8" else tiny["model"]
    encoder = load_text_encoder(tiny["paths"][layout], dtype=torch.float32)
    assert encoder.dtype == torch.float32 and encoder.dim == 32
    assert encoder.model.encoder.embed_tokens is encoder.model.shared  # one embedding table, not two
    assert not any(p.is_meta for p in encoder.model.parameters())
    embeddings, lengths = encoder.encode(PROMPTS)
    assert embeddings.shape == (len(PROMPTS), 512, 32) and lengths.dtype == torch.long
    for row, text in enumerate(PROMPTS):
        ids = _ids(tiny, text)
        assert lengths[row] == len(ids)
        _assert_close(embeddings[row, :len(ids)], _real_tokens(reference, ids), f"{layout} {text!r}")
        assert torch.equal(embeddings[row, len(ids):], torch.zeros(512 - len(ids), 32))


def test_fp8_weights_are_the_files_dequantised_within_fp8_rounding(tiny):
    encoder = load_text_encoder(tiny["paths"]["comfy_fp8"], dtype=torch.float32)
    loaded = dict(encoder.model.named_parameters())
    expected = dict(tiny["fp8_model"].named_parameters())
    checked = 0
    for name, original in tiny["model"].named_parameters():
        assert torch.equal(loaded[name], expected[name]), name
        if any(n in name for n in LINEAR_NAMES):
            scale = original.abs().max() / torch.finfo(torch.float8_e4m3fn).max
            # e4m3 rounds to 3 mantissa bits (half an ulp: 2^-4 relative); below 2^-6 it steps by 2^-9 (subnormal).
            allowed = 2 ** -4 * original.abs() + scale * 2 ** -10
            assert ((loaded[name] - original).abs() <= allowed).all(), name
            checked += 1
    assert checked == 7 * 2


def test_prefixed_single_file_loads(tiny, tmp_path):
    from safetensors.torch import load_file

    prefix = "text_encoders.umt5xxl.transformer."
    prefixed = tmp_path / "umt5_prefixed.safetensors"
    save_file({prefix + k: v for k, v in load_file(tiny["paths"]["comfy_fp8"]).items()}, prefixed)
    encoder = load_text_encoder(prefixed, dtype=torch.float32)
    ids = _ids(tiny, PROMPTS[0])
    _assert_close(encoder.encode(PROMPTS[:1])[0][0, :len(ids)], _real_tokens(tiny["fp8_model"], ids), "prefixed")


@pytest.mark.parametrize("layout,dtype", [("wan", torch.bfloat16), ("comfy_fp16", torch.float16),
                                          ("comfy_fp8", torch.bfloat16), ("hf", torch.float32)])
def test_default_dtype_is_the_files(tiny, layout, dtype):
    assert load_text_encoder(tiny["paths"][layout]).dtype == dtype


# ---- padding, truncation, empty prompts ----

def test_long_prompt_is_cut_at_512_with_one_warning(tiny, caplog):
    encoder = load_text_encoder(tiny["paths"]["comfy_fp16"], dtype=torch.float32)
    long_prompt = " ".join(["fo ba ke mi ra to ze"] * 100)
    full_ids = _ids(tiny, long_prompt)
    assert len(full_ids) > 600
    with caplog.at_level(logging.WARNING):
        embeddings, lengths = encoder.encode([long_prompt, "the sky", long_prompt])
    warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1 and f" {len(full_ids) - 512} token" in warnings[0].getMessage()
    assert lengths.tolist() == [512, len(_ids(tiny, "the sky")), 512]
    kept = full_ids[:511] + [EOS_ID]
    assert list(encoder.tokenize([long_prompt])[0].ids) == kept
    _assert_close(embeddings[0], _real_tokens(tiny["model"], kept), "truncated prompt")


def test_empty_prompts_give_no_nan_downstream(tiny):
    encoder = load_text_encoder(tiny["paths"]["comfy_fp16"], dtype=torch.float32)
    embeddings, lengths = encoder.encode([""])
    assert lengths.tolist() == [1] and torch.isfinite(embeddings).all()
    spec = LayerSpec(2, "paper")
    layered = encode_layer_prompts(encoder, spec, full="", bg=" ", foregrounds=["", "\t"], negative="")
    assert layered.prompts == (("", DEFAULT_FOREGROUND_PROMPT, DEFAULT_FOREGROUND_PROMPT,
                                DEFAULT_BACKGROUND_PROMPT),)
    assert layered.negative_prompts == (WAN_NEGATIVE_PROMPT,)
    for context, lens in ((layered.context, layered.prompt_lens),
                          (layered.negative_context, layered.negative_prompt_lens)):
        bias = spec.attention_bias(lens, context.shape[1])  # [B, segments, rows]
        scores = torch.einsum("bld,bjd->blj", torch.randn(1, spec.num_segments, 32), context) + bias
        assert torch.isfinite(torch.softmax(scores, dim=-1) @ context).all()


# ---- layered prompts ----

@pytest.mark.parametrize("policy", ["paper", "official"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_layered_context_is_routing_ready(tiny, n, policy):
    encoder = load_text_encoder(tiny["paths"]["comfy_fp16"], dtype=torch.float32)
    spec = LayerSpec(n, policy)
    texts = {"full": "fo ba ke mi ra", "bg": "the sky", **{f"fg{i}": "ku " * (i + 1) for i in range(1, n + 1)}}
    layered = encode_layer_prompts(encoder, spec, texts["full"], texts["bg"],
                                   [texts[f"fg{i}"] for i in range(1, n + 1)], negative="zo ma")
    expected_lens = [len(_ids(tiny, texts[slot])) for slot in spec.prompts]
    rows = layered.context.shape[1]
    assert rows == 512 and layered.negative_context.shape == layered.context.shape == (1, 512, 32)
    assert layered.prompt_lens.tolist() == [expected_lens] and layered.prompt_lens.dtype == torch.long
    neg_len = len(_ids(tiny, "zo ma"))
    assert layered.negative_prompt_lens.tolist() == [[neg_len] * (n + 2)]
    spec.check_prompt_lens(layered.prompt_lens, rows)

    start = 0
    slot_rows = {}
    for slot, length in zip(spec.prompts, expected_lens):
        ids = _ids(tiny, texts[slot])
        _assert_close(layered.context[0, start:start + length], _real_tokens(tiny["model"], ids), slot)
        slot_rows[slot] = set(range(start, start + length))
        start += length
    assert torch.equal(layered.context[0, start:], torch.zeros(rows - start, 32))
    negative = _real_tokens(tiny["model"], _ids(tiny, "zo ma"))
    _assert_close(layered.negative_context[0, :neg_len * (n + 2)], negative.repeat(n + 2, 1), "negative")
    assert not layered.negative_context[0, neg_len * (n + 2):].any()

    mask = spec.routing_mask(layered.prompt_lens, rows)[0]
    for s, segment in enumerate(spec.segments):
        kind, number = segment.rstrip("0123456789"), segment[-1]
        seen = {"full": set().union(*slot_rows.values()), "bg": slot_rows["bg"]}.get(kind)
        if seen is None:
            seen = slot_rows[f"fg{number}"] | (slot_rows["full"] if policy == "official" else set())
        elif kind == "bg" and policy == "official":
            seen = seen | slot_rows["full"]
        assert set(mask[s].nonzero().flatten().tolist()) == seen, segment


def test_long_layered_prompts_extend_past_512(tiny):
    encoder = load_text_encoder(tiny["paths"]["comfy_fp16"], dtype=torch.float32)
    spec = LayerSpec(1)
    long_prompt = " ".join(["fo ba ke mi ra to ze"] * 30)
    layered = encode_layer_prompts(encoder, spec, long_prompt, long_prompt, [long_prompt], negative="zo")
    total = int(layered.prompt_lens.sum())
    assert total > 512 and layered.context.shape[1] == total == layered.negative_context.shape[1]
    spec.check_prompt_lens(layered.negative_prompt_lens, layered.negative_context.shape[1])


def test_batching_layered_contexts(tiny):
    encoder = load_text_encoder(tiny["paths"]["comfy_fp16"], dtype=torch.float32)
    spec = LayerSpec(1)
    a = encode_layer_prompts(encoder, spec, "fo", "ba", ["ke"])
    b = encode_layer_prompts(encoder, spec, " ".join(["fo ba ke mi ra to ze"] * 30), "ba", ["ke"], negative="zo")
    batch = batch_layered_contexts([a, b])
    rows = batch.context.shape[1]
    assert batch.context.shape == batch.negative_context.shape == (2, max(512, b.context.shape[1]), 32)
    assert torch.equal(batch.context[0, :512], a.context[0]) and not batch.context[0, 512:].any()
    spec.check_prompt_lens(batch.prompt_lens, rows)
    with pytest.raises(ValueError, match="different numbers of foregrounds"):
        batch_layered_contexts([a, encode_layer_prompts(encoder, LayerSpec(2), "fo", "ba", ["ke", "mi"])])


def test_identical_prompts_are_encoded_once(tiny, monkeypatch):
    encoder = load_text_encoder(tiny["paths"]["comfy_fp16"], dtype=torch.float32)
    sequences = []
    forward = encoder.model.forward
    monkeypatch.setattr(encoder.model, "forward",
                        lambda **kw: sequences.append(kw["input_ids"].shape[0]) or forward(**kw))
    encode_layer_prompts(encoder, LayerSpec(2), "same", "same", ["same", "other"], negative="same")
    assert sum(sequences) == 2
    embeddings, _ = encoder.encode(["x", "x"])
    assert sum(sequences) == 3 and torch.equal(embeddings[0], embeddings[1])


# ---- cache ----

def test_cache_serves_embeddings_without_running_the_model(tiny, tmp_path):
    first = load_text_encoder(tiny["paths"]["comfy_fp16"], dtype=torch.float32, cache_dir=tmp_path)
    expected, _ = first.encode(PROMPTS)
    assert len(list(tmp_path.rglob("*.safetensors"))) == len(PROMPTS)
    second = load_text_encoder(tiny["paths"]["comfy_fp16"], dtype=torch.float32, cache_dir=tmp_path)
    second.model.forward = lambda **kw: pytest.fail("the cache should have answered")
    assert torch.equal(second.encode(PROMPTS)[0], expected)
    other = load_text_encoder(tiny["paths"]["comfy_fp8"], dtype=torch.float32, cache_dir=tmp_path)
    assert other.fingerprint != first.fingerprint
    other.encode(PROMPTS[:1])
    assert len(list(tmp_path.rglob("*.safetensors"))) == len(PROMPTS) + 1
    in_bf16 = load_text_encoder(tiny["paths"]["comfy_fp16"], dtype=torch.bfloat16, cache_dir=tmp_path)
    assert in_bf16.encode(PROMPTS[:1])[0].dtype == torch.bfloat16  # a run in another dtype is its own entry
    assert len(list(tmp_path.rglob("*.safetensors"))) == len(PROMPTS) + 2
    assert not list(tmp_path.rglob("*.tmp"))


# ---- bad input ----

def test_bad_inputs_get_clear_messages(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_text_encoder(tmp_path / "missing.safetensors")
    lonely = tmp_path / "alone" / "models_t5_umt5-xxl-enc-bf16.pth"
    lonely.parent.mkdir()
    lonely.write_bytes(tiny["paths"]["wan"].read_bytes())
    with pytest.raises(FileNotFoundError, match="tokenizer="):
        load_text_encoder(lonely)
    assert load_text_encoder(lonely, tokenizer=tiny["paths"]["hf"]).layout == "Wan .pth"
    t5_style = {k: v for k, v in tiny["model"].state_dict().items()
                if "block.1.layer.0.SelfAttention.relative_attention_bias" not in k and "embed_tokens" not in k}
    save_file(t5_style, tmp_path / "t5xxl_fp16.safetensors")
    with pytest.raises(CheckpointError, match="T5 encoder"):
        load_text_encoder(tmp_path / "t5xxl_fp16.safetensors")
    save_file({"model.diffusion_model.blocks.0.ffn.0.weight": torch.zeros(2, 2)}, tmp_path / "dit.safetensors")
    with pytest.raises(CheckpointError, match="not a umt5 text encoder"):
        load_text_encoder(tmp_path / "dit.safetensors")
    with pytest.raises(TypeError, match="floating torch.dtype"):
        load_text_encoder(tiny["paths"]["comfy_fp16"], dtype="bf16")
    encoder = load_text_encoder(tiny["paths"]["comfy_fp16"], dtype=torch.float32)
    with pytest.raises(TypeError, match="list of prompts"):
        encoder.encode("one string")
    with pytest.raises(ValueError, match="2 foreground"):
        encode_layer_prompts(encoder, LayerSpec(2), "fo", "ba", ["ke"])
