"""An independent PyTorch SonoNet-k for the tests (the layout of the common PyTorch port of the authors' model).

features: 5 blocks (Sequential) of 2, 2, 3, 3, 3 conv layers, each Sequential(conv3x3 no bias, BatchNorm2d(eps
1e-4), ReLU); the first four blocks end with MaxPool2d(2) (no parameters, so names stay features.B.I.*).
adaption: Sequential(conv1x1 8k->4k, BN, ReLU, conv1x1 4k->classes, BN). forward -> (logits, cam, features).

ReLU and max pooling are not differentiable where a pre-activation is 0 or a pool window ties, and a float32
forward can land on the other side of such a point than the float64 reference (a single flipped ReLU deep in the
network moves the input gradient by percents). forward(x, gates) therefore takes optional `gates`: the ReLU masks
and pool argmax indices of the float32 forward under test, in network order, and applies them instead of deciding
in float64; the gradient then is the float64 gradient of the same piecewise-linear branch.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def conv_layer(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout, eps=1e-4), nn.ReLU()
    )


class SonoNetReference(nn.Module):
    def __init__(self, k: int = 16, in_channels: int = 1, num_classes: int = 14, standardize: bool = True):
        super().__init__()
        self.standardize = standardize
        blocks, cin = [], in_channels
        for b, (n, mult) in enumerate(zip((2, 2, 3, 3, 3), (1, 2, 4, 8, 8))):
            layers = []
            for _ in range(n):
                layers.append(conv_layer(cin, mult * k))
                cin = mult * k
            if b < 4:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*blocks)
        self.adaption = nn.Sequential(
            nn.Conv2d(8 * k, 4 * k, 1, bias=False),
            nn.BatchNorm2d(4 * k, eps=1e-4),
            nn.ReLU(),
            nn.Conv2d(4 * k, num_classes, 1, bias=False),
            nn.BatchNorm2d(num_classes, eps=1e-4),
        )

    def units(self):
        """The layers in order: conv/BN units as (conv, bn, relu or None), pools as the MaxPool2d module."""
        for block in self.features:
            for layer in block:
                yield layer if isinstance(layer, nn.MaxPool2d) else (layer[0], layer[1], layer[2])
        a = self.adaption
        yield (a[0], a[1], a[2])
        yield (a[3], a[4], None)

    def forward(self, x: torch.Tensor, gates=None):
        if gates is not None:
            return self._gated_forward(x, list(gates))
        if self.standardize:  # per image and channel, population std (ddof 0)
            mean = x.mean(dim=(2, 3), keepdim=True)
            std = x.std(dim=(2, 3), keepdim=True, unbiased=False)
            x = 255.0 * (x - mean) / std
        features = self.features(x)
        cam = self.adaption(features)
        logits = cam.mean(dim=(2, 3))
        return logits, cam, features

    def _gated_forward(self, x: torch.Tensor, gates):
        if self.standardize:
            x = 255.0 * (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True, unbiased=False)
        features = None
        for i, unit in enumerate(self.units()):
            if isinstance(unit, nn.MaxPool2d):
                idx = gates.pop(0)  # (N, C, h, w) flat indices into each (H, W) plane
                x = x.flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
                continue
            conv, bn, relu = unit
            x = bn(conv(x))
            if relu is not None:
                x = x * gates.pop(0).to(x.dtype)
            if i == 16:  # 13 conv units + 4 pools: the last feature unit
                features = x
        return x.mean(dim=(2, 3)), x, features


def float32_gates(model: SonoNetReference, x, conv2d, batch_norm, max_pool2d, standardize):
    """ReLU masks and pool indices of a float32 forward computed with the given float32 ops (numpy in/out)."""
    import numpy as np

    gates = []
    h = np.asarray(x, dtype=np.float32)
    if standardize:
        h64 = h.astype(np.float64)
        mean = h64.mean(axis=(2, 3), keepdims=True)
        h = (255.0 * (h64 - mean) / h64.std(axis=(2, 3), keepdims=True)).astype(np.float32)
    for unit in model.units():
        if isinstance(unit, nn.MaxPool2d):
            _, idx = torch.nn.functional.max_pool2d(torch.from_numpy(h), 2, return_indices=True)
            gates.append(idx)
            h = max_pool2d(h)
            continue
        conv, bn, relu = unit
        f32 = lambda t: t.detach().numpy().astype(np.float32)  # noqa: E731
        h = conv2d(h, f32(conv.weight), padding=conv.padding[0])
        h = batch_norm(h, f32(bn.running_mean), f32(bn.running_var), f32(bn.weight), f32(bn.bias), eps=bn.eps)
        if relu is not None:
            gates.append(torch.from_numpy(h > 0))
            h = np.maximum(h, 0)
    return gates
