"""PyTorch references for the standard-plane classifier's networks, for tests only.

Their module paths are the C networks' parameter names (csrc/nets/segmenter.h, plane_classifier.h), so a
state_dict moves between them 1:1: ``Segmenter`` (the UNet-style segmenter s), ``SmallClassifier`` (the stand-in
for l) and ``PlaneClassifier`` (f(x) = l(s(x), x), children under ``segmenter.`` and ``classifier.``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DoubleConv(nn.Sequential):
    """[conv3x3 (no bias), GroupNorm, ReLU] x 2."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.GroupNorm(groups, cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.GroupNorm(groups, cout),
            nn.ReLU(),
        )


class Up(nn.Module):
    """Nearest x2, conv3x3 (halves the channels; no bias: the next conv and GroupNorm make it all but redundant),
    concatenate [skip, up], DoubleConv."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.block = DoubleConv(2 * cout, cout, groups)

    def forward(self, x, skip):
        up = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        return self.block(torch.cat([skip, up], dim=1))


class Segmenter(nn.Module):
    def __init__(self, classes: int, width: int = 32, levels: int = 4, groups: int = 8, in_channels: int = 1):
        super().__init__()
        widths = [width * 2**level for level in range(levels)]
        self.encoder = nn.ModuleList(
            DoubleConv(in_channels if level == 0 else widths[level - 1], widths[level], groups)
            for level in range(levels)
        )
        self.decoder = nn.ModuleList(
            Up(widths[level + 1], widths[level], groups) for level in reversed(range(levels - 1))
        )
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        skips = []
        for level, block in enumerate(self.encoder):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up in self.decoder:
            x = up(x, skips.pop())
        return self.head(x)


class SmallClassifier(nn.Module):
    def __init__(self, in_channels: int, width: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


class PlaneClassifier(nn.Module):
    """f(x) = l([x, maps]), maps = softmax over classes of s(x) (or s(x) itself); s detached when not
    grad_through_segmenter (as SASN runs it under no_grad). Returns (logits, segmentation logits)."""

    def __init__(
        self,
        segmenter: nn.Module,
        classifier: nn.Module,
        grad_through_segmenter: bool = True,
        seg_input: str = "probabilities",
    ):
        super().__init__()
        self.segmenter = segmenter
        self.classifier = classifier
        self.grad_through_segmenter = grad_through_segmenter
        self.seg_input = seg_input

    def forward(self, x):
        if self.grad_through_segmenter:
            seg = self.segmenter(x)
        else:
            with torch.no_grad():
                seg = self.segmenter(x)
        maps = seg.softmax(dim=1) if self.seg_input == "probabilities" else seg
        return self.classifier(torch.cat([x, maps], dim=1)), seg
