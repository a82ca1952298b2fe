"""VGG-11 for 32x32 inputs as in the paper (B.1.3): 8 convs, 2 hidden dense layers, no BN."""

from __future__ import annotations

import torch
from torch import nn

from archgrow.models.activations import make_activation
from archgrow.models.init import InitName, initialize
from archgrow.models.scaling import scaled

VGG11_CONVS: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG11_DENSE: tuple[int, int] = (4096, 4096)


class VGG11(nn.Module):
    """conv3x3 (pad 1) -> activation [-> maxpool 2x2], flatten, two dense layers, classifier.

    Five pools bring 32x32 down to 1x1, so the flatten maps each channel to one dense input
    (algorithms.md §6.3); other input sizes give an H*W block per channel, which archgrow maps too.
    ``init``: ``paper`` (Xavier-uniform, zero bias), ``torch`` or ``kaiming`` (:mod:`archgrow.models.init`).
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        width_mult: float = 1.0,
        in_channels: int = 3,
        activation: str = "modified_relu",
        input_size: int = 32,
        init: InitName = "paper",
    ):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for item in VGG11_CONVS:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                width = scaled(int(item), width_mult)
                layers += [nn.Conv2d(prev, width, 3, padding=1), make_activation(activation)]
                prev = width
        self.features = nn.Sequential(*layers)
        spatial = max(1, input_size // 32)
        dense = [scaled(w, width_mult) for w in VGG11_DENSE]
        self.classifier = nn.Sequential(
            nn.Linear(prev * spatial * spatial, dense[0]),
            make_activation(activation),
            nn.Linear(dense[0], dense[1]),
            make_activation(activation),
            nn.Linear(dense[1], num_classes),
        )
        initialize(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg11(num_classes: int = 10, *, width_mult: float = 1.0, **kwargs) -> VGG11:
    return VGG11(num_classes, width_mult=width_mult, **kwargs)
