"""mlecore: log-sum-exp, softmax, log-softmax, NLL and cross-entropy with their gradients.

The hot paths are Rust kernels (SIMD chosen at run time, multithreaded) behind a numpy API
that follows scipy.special and torch.nn.functional. torch tensors are accepted too and
handed to `mlecore.torch`; importing mlecore never imports torch.
"""

from ._config import get_num_threads, set_num_threads, show_config
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad
from ._losses import cross_entropy, cross_entropy_with_grad, nll_loss
from ._mlecore import __version__
from ._spec import CrossEntropyStats
from ._special import log_softmax, logsumexp, softmax

__all__ = [
    "CrossEntropyStats",
    "__version__",
    "cross_entropy",
    "cross_entropy_with_grad",
    "get_num_threads",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "set_num_threads",
    "show_config",
    "softmax",
]
