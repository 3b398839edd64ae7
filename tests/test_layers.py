"""Property tests of LayerSpec, the single source of truth for the serialized layout and routing."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layert2v_core.layers import ROUTING_POLICIES, LayerSpec


def test_segment_and_prompt_order():
    spec = LayerSpec(2)
    assert spec.segments == ("full", "bg", "fg1", "mask1", "fg2", "mask2")
    assert spec.prompts == ("full", "fg1", "fg2", "bg")
    assert spec.categories == (0, 1, 2, 3, 4, 5)
    assert spec.category_source_rows() == (0, 1, 2, 3, 2, 3)


def test_paper_and_official_visibility_n1():
    # rows: full, bg, fg1, mask1; columns: full, fg1, bg
    paper = LayerSpec(1, "paper").visibility().int().tolist()
    assert paper == [[1, 1, 1], [0, 0, 1], [0, 1, 0], [0, 1, 0]]
    official = LayerSpec(1, "official").visibility().int().tolist()
    assert official == [[1, 1, 1], [1, 0, 1], [1, 1, 0], [1, 1, 0]]


@pytest.mark.parametrize("bad", [0, 4, 1.0, "2"])
def test_invalid_foreground_count(bad):
    with pytest.raises(ValueError, match="num_foregrounds"):
        LayerSpec(bad)


def test_invalid_policy_and_lengths():
    with pytest.raises(ValueError, match="routing policy"):
        LayerSpec(1, "loose")
    spec = LayerSpec(1)
    with pytest.raises(ValueError, match="at least one token"):
        spec.routing_mask([[3, 0, 2]], 16)
    with pytest.raises(ValueError, match="exceed"):
        spec.routing_mask([[10, 5, 2]], 16)
    with pytest.raises(ValueError, match=r"\[batch, 3\]"):
        spec.routing_mask([[3, 2]], 16)
    with pytest.raises(ValueError, match="do not divide"):
        spec.split(torch.zeros(1, 4, 7, 2, 2))


layouts = st.builds(LayerSpec, st.integers(1, 3), st.sampled_from(ROUTING_POLICIES))


@settings(max_examples=60, deadline=None)
@given(spec=layouts, frames=st.integers(1, 4), height=st.integers(1, 5), width=st.integers(1, 5),
       batch=st.integers(1, 3), data=st.data())
def test_routing_and_categories_properties(spec, frames, height, width, batch, data):
    lens = torch.tensor([[data.draw(st.integers(1, 12)) for _ in spec.prompts] for _ in range(batch)])
    context_len = int(lens.sum(1).max()) + data.draw(st.integers(0, 6))
    mask = spec.routing_mask(lens, context_len)
    assert mask.shape == (batch, spec.num_segments, context_len)
    # No segment row is ever fully masked (that would be NaN in attention).
    assert mask.any(-1).all()
    vis = spec.visibility()
    for b in range(batch):
        start = 0
        for p, n in enumerate(lens[b].tolist()):
            block = mask[b, :, start:start + n]
            # A prompt's rows are visible exactly to the segments the policy lets see that prompt.
            assert torch.equal(block, vis[:, p:p + 1].expand_as(block))
            start += n
        assert not mask[b, :, start:].any()  # padding rows are never attended
    full = spec.segment_index("full")
    assert torch.equal(mask[:, full], torch.arange(context_len) < lens.sum(1, keepdim=True))
    for name in spec.segments:
        kind, s = spec.kind(name), spec.segment_index(name)
        if kind in ("fg", "mask") and spec.policy != "shared":
            number = spec.foreground_number(name)
            assert vis[s, spec.prompts.index(f"fg{number}")]
            assert not vis[s, spec.prompts.index("bg")]
    if spec.policy != "shared":
        assert (vis <= LayerSpec(spec.num_foregrounds, "official").visibility()).all()
    # The additive bias and the dense per-token mask agree with the per-segment mask.
    bias = spec.attention_bias(lens, context_len)
    assert torch.equal(bias == 0, mask) and torch.isinf(bias[~mask]).all()
    tokens = frames * height * width
    dense = spec.token_routing_mask(lens, context_len, tokens)
    cats = spec.token_categories(frames, height, width)
    assert dense.shape[1] == cats.numel() == spec.num_segments * tokens
    for i in range(0, cats.numel(), max(1, tokens // 2)):
        assert torch.equal(dense[:, i], mask[:, cats[i]])
    assert torch.equal(cats.unique(), torch.tensor(spec.categories))
    assert cats.unique_consecutive().numel() == spec.num_segments  # each segment is one contiguous run


@settings(max_examples=30, deadline=None)
@given(spec=layouts, frames=st.integers(1, 4), channels=st.integers(1, 4))
def test_split_join_roundtrip(spec, frames, channels):
    latent = torch.randn(2, channels, spec.num_segments * frames, 3, 2)
    parts = spec.split(latent)
    assert list(parts) == list(spec.segments)
    assert all(p.shape[2] == frames for p in parts.values())
    assert torch.equal(spec.join(parts), latent)
    assert torch.equal(spec.join(list(parts.values())), latent)
    with pytest.raises(ValueError, match="missing layers"):
        spec.join({k: v for k, v in parts.items() if k != "bg"})
