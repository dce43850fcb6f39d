"""CTFA heads: the max-pooling classifiers, the LargeFOV decoder and the projection head.

Each matches the reference module of the official code parameter for parameter (no biases in the
classifiers and decoders; the projection head's last-layer gain is frozen at 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


class MaxPoolClassifier(nn.Conv2d):
    """Image-level classifier: global max pooling, then a 1×1 convolution without bias.

    The convolution weight ``[C, D, 1, 1]`` is also the CAM projection (:meth:`cam`).

    Args:
        in_dim: feature channels ``D``.
        num_classes: number of logits ``C`` (the CAM classes: foreground classes only when the
            dataset has a background class).
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__(in_dim, num_classes, kernel_size=1, bias=False)

    def forward(self, feats: Tensor) -> Tensor:
        """Logits ``[B, C]`` of features ``[B, D, h, w]``."""
        return super().forward(F.adaptive_max_pool2d(feats, 1)).flatten(1)

    def cam(self, feats: Tensor) -> Tensor:
        """Raw class activation maps ``[B, C, h, w]`` of features ``[B, D, h, w]`` (no ReLU)."""
        return F.conv2d(feats, self.weight)


class LargeFOV(nn.Module):
    """DeepLab-LargeFOV decoder as in ToCo's ``conv_head.LargeFOV``.

    3×3 conv (dilation 5) → ReLU → 3×3 conv (dilation 5) → ReLU → 1×1 conv, all without bias;
    PyTorch's default initialisation (the reference never calls its ``_init_weights``).

    Args:
        in_dim: input channels ``D``.
        num_classes: output channels ``C``.
        hidden_dim: channels of the two dilated convolutions.
        dilation: dilation (and padding) of the 3×3 convolutions; the spatial size is kept.
    """

    def __init__(self, in_dim: int, num_classes: int, *, hidden_dim: int = 512,
                 dilation: int = 5) -> None:
        super().__init__()
        self.conv6 = nn.Conv2d(in_dim, hidden_dim, 3, padding=dilation, dilation=dilation,
                               bias=False)
        self.conv7 = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=dilation, dilation=dilation,
                               bias=False)
        self.conv8 = nn.Conv2d(hidden_dim, num_classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, C, h, w]`` of features ``[B, D, h, w]``."""
        return self.conv8(F.relu(self.conv7(F.relu(self.conv6(x)))))


class ProjectionHead(nn.Module):
    """DINO-style projection head (the reference ``CTCHead``).

    3-layer MLP with GELU (``in → hidden → hidden → bottleneck``), L2 normalisation, then a
    weight-normalised linear layer without bias to ``out_dim`` whose gain is 1 and frozen, so the
    output is the cosine similarity to ``out_dim`` learned prototypes.

    Args:
        in_dim: input channels ``D``.
        out_dim: output dimension.
        hidden_dim: MLP hidden width.
        bottleneck_dim: MLP output width (before normalisation).
    """

    def __init__(self, in_dim: int, out_dim: int = 1024, *, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """Projections ``[N, out_dim]`` of tokens ``[N, in_dim]``."""
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))
