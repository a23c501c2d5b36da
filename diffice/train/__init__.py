"""Training: the DDPM denoiser (ddpm: ``diffice train ddpm``; ``train_ddpm`` re-exported here, where diffice.train.ddpm
was before the subpackages), the guiding classifier, segmenter and oracle (networks: ``diffice train
segmenter|classifier|oracle``), and what both share (checkpoints: resumable runs, stop flags, loss plots)."""

from .checkpoints import plot_loss
from .ddpm import TrainResult, load_images, train_ddpm

__all__ = ["train_ddpm", "TrainResult", "load_images", "plot_loss"]
