"""Networks and model files: the denoiser (UNet) and its diffusion schedule, the guiding classifier f = l(s(x), x)
(Segmenter, SonoNet, PlaneClassifier), the perceptual networks, the concept oracle, and loading any of them from
a file (diffice.models.files; ``load_model`` & co. are re-exported here, where they were before the subpackages).

Layers, each using only those above it: network (the base class), description (what a diffice model file
records) -> the network classes -> files (the loaders, which know every class).
"""

from .files import load_classifier, load_model, load_perceptual, load_run_models, load_unet, save_model

__all__ = ["load_model", "load_classifier", "load_unet", "load_perceptual", "load_run_models", "save_model"]
