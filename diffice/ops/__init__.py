"""diffice.ops: the C core's tensor ops on numpy float32 arrays (NCHW), forward and backward.

Every function takes ``backend='cpu'`` (oneDNN + OpenMP) or ``backend='ref'`` (the plain C reference kernels
the fast ones are tested against). Inputs must be float32, C-contiguous and finite; anything else raises
TypeError/ValueError naming the argument. Backward functions return gradients with respect to the inputs
(and parameters), given the gradient ``dy`` of the output.
"""

from . import _attention, _conv, _diffusion, _elementwise, _loss, _net, _norm, _optim, _spatial
from ._attention import *  # noqa: F401,F403
from ._backend import BACKENDS, cuda_available, cuda_device_count, get_backend
from ._conv import *  # noqa: F401,F403
from ._diffusion import *  # noqa: F401,F403
from ._elementwise import *  # noqa: F401,F403
from ._loss import *  # noqa: F401,F403
from ._net import *  # noqa: F401,F403
from ._norm import *  # noqa: F401,F403
from ._optim import *  # noqa: F401,F403
from ._spatial import *  # noqa: F401,F403

__all__ = [
    "BACKENDS",
    "get_backend",
    "cuda_available",
    "cuda_device_count",
    *_conv.__all__,
    *_elementwise.__all__,
    *_norm.__all__,
    *_loss.__all__,
    *_spatial.__all__,
    *_attention.__all__,
    *_diffusion.__all__,
    *_optim.__all__,
    *_net.__all__,
]
