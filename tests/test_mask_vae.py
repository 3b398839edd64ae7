"""Mask VAE: identity at initialisation, official and own file formats, and a short optimisation that learns."""
from __future__ import annotations

import pytest
import torch

from layert2v_core import MaskVAE, load_mask_vae, save_mask_vae
from layert2v_core.mask_vae import MaskVAEConfig
from layert2v_core.vae import VAEConfig, WanVAE
from layert2v_core.weights import CheckpointError

CONFIG = MaskVAEConfig(lora_rank=4, lora_alpha=8.0, proj_hidden=8, proj_res_blocks=1)


def _vae() -> WanVAE:
    torch.manual_seed(11)
    return WanVAE(VAEConfig(dim=8, z_dim=4, num_res_blocks=1)).eval().requires_grad_(False)


def _mattes(frames: int = 5, size: int = 16) -> torch.Tensor:
    """A soft disc moving right, one per batch element."""
    t = torch.arange(frames).view(frames, 1, 1).float()
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    dist = ((x - 4 - t) ** 2 + (y - size / 2) ** 2).sqrt()
    return torch.sigmoid(2.0 * (size / 4 - dist)).view(1, 1, frames, size, size)


def test_initial_mask_vae_is_the_plain_vae_round_trip():
    vae = _vae()
    mask_vae = MaskVAE(vae, CONFIG)
    alpha = _mattes()
    with torch.no_grad():
        ours = mask_vae.decode(mask_vae.encode(alpha))
        rgb = vae.decode(vae.encode(alpha.expand(-1, 3, -1, -1, -1) * 2 - 1))
    plain = ((rgb.mean(1, keepdim=True) + 1) / 2).clamp(0, 1)
    assert ours.shape == alpha.shape
    assert torch.equal(ours, plain)
    assert 0 <= ours.min() and ours.max() <= 1


def test_base_weights_are_shared_and_frozen():
    vae = _vae()
    mask_vae = MaskVAE(vae, CONFIG)
    conv = mask_vae.decoder.head[2]
    assert conv.base.weight is vae.decoder.head[2].weight
    assert vae.decoder.head[2].__class__.__name__ == "CausalConv3d"  # the RGB decoder is untouched
    trainable = mask_vae.trainable_parameters()
    assert trainable and all(p.requires_grad for p in trainable)
    frozen = [p for p in mask_vae.parameters() if p.requires_grad]
    assert {id(p) for p in frozen} == {id(p) for p in trainable}


def _official_state(mask_vae: MaskVAE) -> dict:
    """The structure the official trainer writes: project_in state, model.-prefixed LoRA tensors, config."""
    torch.manual_seed(12)
    project_in = {k[len("head."):]: torch.randn_like(v) * 0.1 for k, v in mask_vae.adapter_state_dict().items()
                  if k.startswith("head.")}
    project_in["gate"] = torch.tensor(0.5)
    lora = {"model." + k: torch.randn_like(v) * 0.05 for k, v in mask_vae.adapter_state_dict().items()
            if not k.startswith("head.")}
    config = {"lora_rank": CONFIG.lora_rank, "lora_alpha": CONFIG.lora_alpha, "proj_hidden": CONFIG.proj_hidden,
              "proj_res_blocks": CONFIG.proj_res_blocks, "proj_use_attention": True, "proj_dropout": 0.0}
    return {"project_in": project_in, "decoder_lora": lora, "config": config}


def test_official_file_loads_and_round_trips_through_our_format(tmp_path):
    vae = _vae()
    state = _official_state(MaskVAE(vae, CONFIG))
    official = tmp_path / "mask_vae_lora.pt"
    torch.save(state, official)
    loaded = load_mask_vae(vae, official)
    assert loaded.config == CONFIG
    ours = loaded.adapter_state_dict()
    assert torch.equal(ours["head.gate"], state["project_in"]["gate"])
    for key, value in state["decoder_lora"].items():
        assert torch.equal(ours[key[len("model."):]], value)

    alpha = _mattes()
    with torch.no_grad():
        out = loaded.decode(loaded.encode(alpha))
        fresh = MaskVAE(vae, CONFIG)
        assert not torch.equal(out, fresh.decode(fresh.encode(alpha)))  # the adapters are in use

    own = tmp_path / "mask_vae.safetensors"
    save_mask_vae(loaded, own)
    again = load_mask_vae(vae, own)
    with torch.no_grad():
        assert torch.equal(again.decode(again.encode(alpha)), out)


def test_other_mask_modes_and_bad_files_are_rejected(tmp_path):
    vae = _vae()
    project = tmp_path / "vae_project.pt"
    torch.save({"proj_in": {"w": torch.zeros(1)}, "proj_out": {"w": torch.zeros(1)}, "config": {}}, project)
    with pytest.raises(CheckpointError, match="vae-lora"):
        load_mask_vae(vae, project)
    joint = tmp_path / "mask_vae.pt"
    torch.save({"encoder": {}, "decoder": {}, "config": {}}, joint)
    with pytest.raises(CheckpointError, match="dedicated MaskVAE of the 'mask-vae-project' / 'mask-vae-joint' "
                                              "modes; load it in one of those modes"):
        load_mask_vae(vae, joint)  # the vae-lora loader points to the modes that read this file
    state = _official_state(MaskVAE(vae, CONFIG))
    state["decoder_lora"].pop(next(iter(state["decoder_lora"])))
    partial = tmp_path / "partial.pt"
    torch.save(state, partial)
    with pytest.raises(CheckpointError, match="missing"):
        load_mask_vae(vae, partial)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        MaskVAE(vae, CONFIG).encode(_mattes() * 2 - 1)


def test_short_optimisation_lowers_the_loss():
    vae = _vae()
    mask_vae = MaskVAE(vae, CONFIG)
    alpha = _mattes()
    optimiser = torch.optim.AdamW(mask_vae.trainable_parameters(), lr=3e-3, weight_decay=0.01)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.smooth_l1_loss(mask_vae(alpha), alpha)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
