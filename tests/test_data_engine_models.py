"""The data engine's model backends through the real library classes with tiny random configs (no downloads):
SAM3 text-to-mask (transformers Sam3Model), SAM2 video tracking (Sam2VideoModel) for matting, Wan2.1 VACE
(diffusers WanVACEPipeline) for removal, Qwen3-VL (Qwen3VLForConditionalGeneration) for annotation and scoring.
Random weights say nothing about quality; these tests check the wiring: inputs reach the model the way the library
expects, outputs come back at the video's size and are used only where they should be."""
import json

import pytest
import torch

from train.data_engine.classical import dilate
from train.data_engine.hf_backends import Sam2VideoMatter, Sam3Masker, VaceRemover
from train.data_engine.pipeline import Engine, Rules, first_frame_masks
from train.data_engine.stages import Annotation, Rejection, Subject
from train.synthetic import generate_sample

SIZE, HIDDEN = 64, 128  # SAM2's pointer memory needs hidden > 64, its fixed memory width


WORDS = "<pad> <unk> a red cyan white circle star square moves left over blue striped background".split()


def tiny_sam3():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Sam3Config, Sam3Model

    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", unk_token="<unk>")
    small = dict(num_layers=1, num_attention_heads=2, intermediate_size=32, hidden_size=32)
    config = Sam3Config(  # 56 px = 4 x 4 patches of 14; the FPN scales them by 4, 2, 1
        vision_config=dict(model_type="sam3_vision_model", fpn_hidden_size=32,
                           backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],
                           backbone_config=dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=2, image_size=56,
                                                patch_size=14, window_size=2, global_attn_indexes=[1],
                                                pretrain_image_size=56)),
        text_config=dict(model_type="clip_text_model", vocab_size=len(WORDS), hidden_size=32, intermediate_size=64,
                         projection_dim=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                         bos_token_id=None, eos_token_id=2, pad_token_id=0),
        geometry_encoder_config=small, detr_encoder_config=small, detr_decoder_config={**small, "num_queries": 8},
        mask_decoder_config=dict(hidden_size=32, num_upsampling_stages=2, num_attention_heads=2))
    return Sam3Model(config), tokenizer


def test_sam3_masker_picks_a_free_instance_above_the_threshold():
    model, tokenizer = tiny_sam3()
    frames = torch.rand(3, 40, 48, 3)
    masker = Sam3Masker(model, tokenizer, threshold=0.0)
    first = masker.first_frame_mask(frames, "a red circle")
    assert first.shape == (40, 48) and set(first.unique().tolist()) <= {0.0, 1.0} and first.sum() > 0
    second = masker.first_frame_mask(frames, "a red circle", exclude=first)
    assert (second * first).sum() * 2 < second.sum()  # not the first subject again
    others = [masker.first_frame_mask(frames, caption) for caption in ("a cyan star moves left", "white square")]
    assert any(not torch.equal(other, first) for other in others)  # the caption reaches the model
    masker.threshold = 1.01  # nothing is sure enough: the stage rejects the video
    engine = Engine(None, masker, None, None, None, Rules(min_area=0.0))
    with pytest.raises(Rejection, match="empty mask"):
        first_frame_masks(engine, frames, Annotation([Subject("1", "a red circle")], "x", "y"))


def tiny_sam2():
    from transformers import Sam2VideoConfig, Sam2VideoModel

    feature = [[SIZE // 4] * 2, [SIZE // 8] * 2, [SIZE // 16] * 2]
    backbone = dict(model_type="sam2_hiera_det_model", hidden_size=8, embed_dim_per_stage=[8, 16, 32, 64],
                    blocks_per_stage=[1, 1, 2, 1], num_attention_heads_per_stage=[1, 1, 1, 1],
                    window_size_per_stage=[4, 4, 4, 4], global_attention_blocks=[3], image_size=[SIZE, SIZE],
                    window_positional_embedding_background_size=[2, 2])
    config = Sam2VideoConfig(
        vision_config=dict(model_type="sam2_vision_model", backbone_config=backbone,
                           backbone_channel_list=[64, 32, 16, 8], backbone_feature_sizes=feature,
                           fpn_hidden_size=HIDDEN),
        prompt_encoder_config=dict(hidden_size=HIDDEN, image_size=SIZE, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=HIDDEN, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16),
        image_size=SIZE, num_maskmem=2, memory_attention_hidden_size=HIDDEN, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=32, memory_attention_rope_feat_sizes=feature[2],
        memory_encoder_hidden_size=HIDDEN, memory_encoder_output_channels=64, mask_downsampler_embed_dim=HIDDEN,
        memory_fuser_embed_dim=HIDDEN, memory_fuser_intermediate_dim=32)
    return Sam2VideoModel(config)


def test_sam2_video_matter_tracks_from_the_first_frame_mask():
    frames = generate_sample(1, 6, 48, 40, num_foregrounds=1, static_camera=True).full.permute(1, 2, 3, 0)
    y, x = torch.meshgrid(torch.arange(48), torch.arange(40), indexing="ij")
    first = (((y - 22) ** 2 + (x - 18) ** 2) < 12 ** 2).float()
    alpha = Sam2VideoMatter(tiny_sam2()).matte(frames.contiguous(), first)
    assert alpha.shape == (6, 48, 40) and torch.isfinite(alpha).all() and 0 <= alpha.min() <= alpha.max() <= 1
    # SAM2 returns a frame's mask prompt as that frame's mask: frame 0 is the prompt after a trip through the
    # tracker's 16 x 16 mask grid (64 px input, stride 4)
    hit = (alpha[0] > 0.5) & (first > 0.5)
    iou = hit.sum() / ((alpha[0] > 0.5) | (first > 0.5)).sum()
    assert iou > 0.85, iou


def tiny_vace():
    import os
    import tempfile

    pytest.importorskip("ftfy")  # diffusers' Wan pipelines need it for prompts
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanVACEPipeline, \
        WanVACETransformer3DModel
    from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

    from train.tiny_models import example_sentences, sentencepiece_model

    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "spiece.model"), "wb") as handle:
        handle.write(sentencepiece_model(example_sentences()))
    tokenizer = T5Tokenizer(vocab_file=os.path.join(folder, "spiece.model"))
    text = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1,
                                       num_heads=2))
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    # VACE's context: 16 latent channels each for kept and generated pixels, 8 x 8 mask pixels per latent pixel
    transformer = WanVACETransformer3DModel(num_attention_heads=2, attention_head_dim=8, text_dim=32, freq_dim=16,
                                            ffn_dim=32, num_layers=2, rope_max_seq_len=32, vace_layers=[0],
                                            vace_in_channels=96)
    return WanVACEPipeline(tokenizer=tokenizer, text_encoder=text, vae=vae, transformer=transformer,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))


def test_vace_remover_fills_only_the_covered_pixels():
    frames = torch.rand(7, 24, 40, 3)  # 7 frames: VACE takes 5 (4k + 1), the last result fills the tail
    alpha = torch.zeros(7, 24, 40)
    for t in range(7):  # a box moving right
        alpha[t, 6:14, 12 + t:22 + t] = 1.0
    remover = VaceRemover(tiny_vace(), steps=2, margin=2, max_side=32)
    background = remover.remove(frames, alpha)
    assert background.shape == frames.shape and torch.isfinite(background).all()
    covered = dilate(alpha > 0.02, 2)
    assert torch.equal(background[~covered], frames[~covered])
    assert (background[covered] - frames[covered]).abs().mean() > 0.05  # generated, not copied
    both = covered[4] & covered[6]  # the tail frames repeat the last generated frame
    assert both.any() and torch.equal(background[6][both], background[4][both])


QWEN_SPECIAL = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# The layout of Qwen3-VL's own chat template, for images and text only.
QWEN_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
                 "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}"
                 "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")


def tiny_qwen3_vl_folder(folder):
    """A random Qwen3-VL (1 text layer, 1 vision block) saved as a model folder: model, tokenizer with Qwen's
    special tokens, PIL image processor with Qwen3-VL's 16-px patches merged 2x2, chat template beside them."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (PreTrainedTokenizerFast, Qwen2VLImageProcessorPil, Qwen3VLConfig,
                              Qwen3VLForConditionalGeneration)

    vocabulary = ["<pad>", "<unk>", *QWEN_SPECIAL, *WORDS[2:], *'system user assistant { } : , " 0 1 2'.split()]
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", unk_token="<unk>",
                                        eos_token="<|im_end|>", additional_special_tokens=QWEN_SPECIAL)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL}
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=len(vocabulary), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=2048,
                         rope_scaling=dict(rope_type="default", mrope_section=[2, 3, 3], mrope_interleaved=True),
                         eos_token_id=ids["<|im_end|>"]),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                           deepstack_visual_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    Qwen3VLForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2, min_pixels=32 * 32,
                             max_pixels=64 * 64, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(QWEN_TEMPLATE)
    return folder


def test_transformers_vlm_prepares_images_as_the_qwen_processor(tmp_path):
    from train.data_engine.vlm import TransformersVLM, VLMAnnotator

    vlm = TransformersVLM.from_pretrained(str(tiny_qwen3_vl_folder(tmp_path / "qwen")), device="cpu")
    vlm.max_tokens = 6
    vision, text = [], []  # what the vision tower and the language model are given
    vlm.model.model.visual.register_forward_pre_hook(lambda _, args, kwargs: vision.append((args[0], kwargs)),
                                                      with_kwargs=True)
    vlm.model.register_forward_pre_hook(lambda _, args, kwargs: text.append(kwargs["input_ids"]), with_kwargs=True)
    frames = torch.rand(5, 40, 56, 3)
    answer = VLMAnnotator(vlm, frames=2).annotate(frames, "a red circle moves left", {})
    assert isinstance(answer, str) and answer.strip()
    (pixels, kwargs), = vision
    grid = kwargs["grid_thw"]
    assert grid.tolist() == [[1, 2, 4]] * 2  # each of the 2 frames resized to 32x64: 2x4 patches of 16 px
    expected = vlm.image_processor(images=[(f * 255 + 0.5).to(torch.uint8).numpy() for f in frames[[0, 4]]],
                                   return_tensors="pt")["pixel_values"]
    assert torch.equal(pixels, expected)  # the sampled frames, first and last, reach the vision tower
    prompt = text[0]  # the prompt's forward; later ones are the generated tokens
    image_tokens = int((prompt == vlm.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert image_tokens == int(grid.prod(-1).sum()) // 4 == 4  # one token per 2x2 merged patch
    decoded = vlm.tokenizer.decode(prompt[0])
    assert decoded.startswith("<|im_start|>") and decoded.rstrip().endswith("assistant")
    assert 1 <= len(text) <= vlm.max_tokens


def test_transformers_vlm_answers_are_untrusted(tmp_path):
    # A random model's answer is no annotation: every video is rejected at annotation with its reason, no crash.
    from test_data_engine import SMALL_SUBJECTS, write_videos
    from train.data_engine.run import run

    videos, _ = write_videos(tmp_path, [(1, 1), (3, 1)], frames=9, size=48)
    folder = tiny_qwen3_vl_folder(tmp_path / "qwen")
    assert run(["--videos", str(videos), "--out", str(tmp_path / "out"), "--annotator", "transformers",
                "--checker", "transformers", "--vlm-folder", str(folder), "--vlm-max-tokens", "6",
                "--device", "cpu", *SMALL_SUBJECTS]) == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "out" / ".engine").glob("*.json")]
    assert len(records) == 2 and all(r["status"] == "rejected" and r["stage"] == "annotate" for r in records)
    assert all("no JSON object" in r["reason"] or "empty" in r["reason"] for r in records)
