"""VGG16 perceptual loss for stage 1, built in plain torch and filled from torchvision-layout weights
(`features.N.weight/bias`, e.g. vgg16-397923af.pth, read with weights_only=True) — no torchvision needed."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from layert2v_core.weights import CheckpointError, open_weights

# (in, out) of the convolutions up to relu3_3, and the feature indices (torchvision numbering) they live at.
_CONVS = ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256))
_POOL_AFTER = {2, 7}              # max-pool after these convolutions
_TAPS = {2: "relu1_2", 7: "relu2_2", 14: "relu3_3"}
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class VGGPerceptual(nn.Module):
    def __init__(self, weights: str):
        super().__init__()
        self.convs = nn.ModuleDict({str(i): nn.Conv2d(a, b, 3, padding=1) for i, a, b in _CONVS})
        source = open_weights(weights)
        with torch.no_grad():
            for i, conv in self.convs.items():
                for kind in ("weight", "bias"):
                    key = f"features.{i}.{kind}"
                    if key not in source:
                        raise CheckpointError(f"{weights} is not a torchvision VGG16 state dict (no {key})")
                    getattr(conv, kind).copy_(source[key])
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def features(self, frames: torch.Tensor) -> list[torch.Tensor]:
        x = (frames.expand(-1, 3, -1, -1) - self.mean) / self.std
        taps = []
        for i, a, b in _CONVS:
            x = F.relu(self.convs[str(i)](x))
            if i in _TAPS:
                taps.append(x)
            if i in _POOL_AFTER:
                x = F.max_pool2d(x, 2)
        return taps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean L1 between relu1_2 / relu2_2 / relu3_3 features of [B, C, T, H, W] videos in [0, 1]."""
        p = pred.float().transpose(1, 2).flatten(0, 1)
        t = target.float().transpose(1, 2).flatten(0, 1)
        return sum(F.l1_loss(a, b) for a, b in zip(self.features(p), self.features(t))) / len(_TAPS)
