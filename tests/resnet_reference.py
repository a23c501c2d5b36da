"""PyTorch references for the ResNet feature networks and the perceptual losses (torchvision is not installed).

``ResNet`` follows torchvision.models.resnet module for module (same attribute names, so the same state_dict
keys) and, with layout="radimagenet", the Keras ResNet50 converted to PyTorch as docs/method.md section 8 describes
it: biases on every conv, BatchNorm eps 1.001e-5, stride on the first 1x1 conv of a bottleneck, a downsample in
block 0 of every stage. The input normalisation is torchvision's ImageNet mean/std or MONAI's
RadImageNetPerceptualSimilarity (RGB -> BGR, caffe mean, no std), both from x in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


class ReLU(nn.Module):
    """ReLU whose kink can be moved by shift * rms(v) (0: torch's ReLU, same value and gradient).

    A float32 network puts values within ~1e-7 rms(v) of the kink on either side of it; a test moves the kink
    both ways to find inputs where that choice changes the gradient, and avoids them.
    """

    shift = 0.0

    def forward(self, v):
        if ReLU.shift == 0.0:
            return torch.relu(v)
        return v * (v > ReLU.shift * v.detach().pow(2).mean().sqrt())


BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, bias=False, eps=1e-5, keras=False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes, eps=eps)
        self.relu = ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes, eps=eps)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, bias=False, eps=1e-5, keras=False):
        super().__init__()
        # torchvision (ResNet v1.5) strides the 3x3 conv; Keras' conv_block the first 1x1
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride if keras else 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes, eps=eps)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1 if keras else stride, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes, eps=eps)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=bias)
        self.bn3 = nn.BatchNorm2d(planes * 4, eps=eps)
        self.relu = ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class MaxPool(nn.Module):
    """MaxPool2d(3, 2, 1) that records how close its windows come to a tie: min_gap is the smallest difference,
    relative to the input's rms, between the two largest values of a window whose maximum is positive (a float32
    network may route such a window's gradient to the other value)."""

    min_gap = float("inf")

    def forward(self, v):
        with torch.no_grad():
            windows = nn.functional.unfold(nn.functional.pad(v, (1, 1, 1, 1), value=-float("inf")), 3, stride=2)
            top = windows.view(v.shape[0], v.shape[1], 9, -1).topk(2, dim=2).values
            gap = (top[:, :, 0] - top[:, :, 1])[top[:, :, 0] > 0]
            if gap.numel():
                MaxPool.min_gap = min(MaxPool.min_gap, (gap.min() / v.pow(2).mean().sqrt()).item())
        return nn.functional.max_pool2d(v, 3, 2, 1)


class ResNet(nn.Module):
    """Feature taps of a ResNet; with_fc adds torchvision's avgpool/fc head (unused, only for its state_dict)."""

    def __init__(self, depth=50, layout="torchvision", in_channels=1, taps=("layer4",), with_fc=False):
        super().__init__()
        keras = layout == "radimagenet"
        self.layout, self.in_channels, self.taps = layout, in_channels, tuple(taps)
        block = Bottleneck if depth >= 50 else BasicBlock
        bias, eps = keras, (1.001e-5 if keras else 1e-5)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=bias)
        self.bn1 = nn.BatchNorm2d(64, eps=eps)
        self.relu = ReLU()
        self.maxpool = MaxPool()
        inplanes = 64
        for s, count in enumerate(BLOCKS[depth]):
            planes, stride = 64 << s, (1 if s == 0 else 2)
            layers = []
            for i in range(count):
                st = stride if i == 0 else 1
                downsample = None
                if (keras and i == 0) or st != 1 or inplanes != planes * block.expansion:
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes * block.expansion, 1, st, bias=bias),
                        nn.BatchNorm2d(planes * block.expansion, eps=eps),
                    )
                layers.append(block(inplanes, planes, st, downsample, bias, eps, keras))
                inplanes = planes * block.expansion
            setattr(self, f"layer{s + 1}", nn.Sequential(*layers))
        if with_fc:
            self.fc = nn.Linear(inplanes, 1000)

    def normalize(self, x):
        x01 = (x + 1) / 2
        if self.in_channels == 1:
            x01 = x01.repeat(1, 3, 1, 1)
        if self.layout == "torchvision":
            mean = torch.tensor([0.485, 0.456, 0.406], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor([0.229, 0.224, 0.225], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            return (x01 - mean) / std
        bgr = x01[:, [2, 1, 0]]  # MONAI: RGB -> BGR, then subtract_mean
        return bgr - torch.tensor([0.406, 0.456, 0.485], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)

    def forward(self, x):
        h = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        out = {}
        if "stem" in self.taps:
            out["stem"] = h
        last = max(STAGES.index(t) for t in self.taps)
        for s in range(1, last + 1):
            h = getattr(self, f"layer{s}")(h)
            if STAGES[s] in self.taps:
                out[STAGES[s]] = h
        return out


def perceptual_loss(model, a, b, variant, weight):
    """Per-sample losses (N,) of a against b: DiME's mse or MONAI's normalized form, summed over the taps."""
    fa, fb = model(a), model(b)
    loss = 0
    for t in model.taps:
        if variant == "mse":
            loss = loss + weight * ((fa[t] - fb[t]) ** 2).mean(dim=(1, 2, 3))
        else:

            def unit(f):
                return f / (torch.sqrt(torch.sum(f**2, dim=1, keepdim=True)) + 1e-10)

            loss = loss + weight * ((unit(fa[t]) - unit(fb[t])) ** 2).sum(dim=1).mean(dim=(1, 2))
    return loss
