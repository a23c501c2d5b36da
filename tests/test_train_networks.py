"""Supervised training of the image networks: gradients of the losses, and the loss falls on phantoms."""
import numpy as np
import torch

from diffice import Segmenter, phantoms
from diffice.train_networks import (binary_cross_entropy_grad, pixel_cross_entropy_grad, segmentation_labels,
                                    train_network)
from conftest import rel_err, randn

CLASSES = ["background", "skull", "thalami", "csp", "posterior_fossa"]


def test_loss_gradients_match_torch(rng):
    logits = randn(rng, 2, 5, 6, 7)
    labels = rng.integers(0, 5, (2, 6, 7))
    lt = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(lt, torch.from_numpy(labels))
    loss.backward()
    got_loss, got_grad = pixel_cross_entropy_grad(logits, labels)
    assert abs(got_loss - loss.item()) <= 1e-6 * abs(loss.item())
    assert rel_err(got_grad, lt.grad) <= 1e-5
    z, t = randn(rng, 4, 3), rng.integers(0, 2, (4, 3))
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(zt, torch.from_numpy(t).double())
    bce.backward()
    got_loss, got_grad = binary_cross_entropy_grad(z, t)
    assert abs(got_loss - bce.item()) <= 1e-6 and rel_err(got_grad, zt.grad) <= 1e-5


def test_segmenter_loss_falls_on_phantoms():
    seg = Segmenter(classes=len(CLASSES), width=8, levels=2, groups=4)
    seg._randomize(0)

    def batches(rng):
        b = phantoms.generate(8, size=(32, 40), seed=int(rng.integers(1 << 30)))
        return b.images, segmentation_labels(b.masks, b.structure_names, CLASSES)

    history = train_network(seg, batches, lambda outputs, y: (lambda l, g: (l, (g,)))(
        *pixel_cross_entropy_grad(outputs[0], y)), steps=40, lr=5e-3, progress=False)["loss"]
    assert np.mean(history[-5:]) < 0.7 * np.mean(history[:5])
