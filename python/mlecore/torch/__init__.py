"""mlecore as a torch loss: operators in the torch dispatcher, with autograd and fakes.

Importing this module (the only one of mlecore that imports torch) registers
`torch.ops.mlecore.logsumexp`, `log_softmax`, `cross_entropy`, their `*_backward` operators, and
the `torch_*` variants that run torch's own operations on every device. On CPU the operators
run the Rust kernels on the tensors' own memory; on CUDA and other devices they hand the work
to torch's operations; `torch.compile(fullgraph=True)` traces them without a graph break.

Swap ``torch.nn.functional.cross_entropy`` for ``mlecore.torch.cross_entropy`` (or
``nn.CrossEntropyLoss`` for ``mlecore.torch.CrossEntropyLoss``) and change nothing else.
"""

from ._buffers import release_buffers
from ._functional import (
    cross_entropy,
    cross_entropy_with_grad,
    log_softmax,
    logsumexp,
    nll_loss,
    softmax,
)
from ._linear import linear_cross_entropy
from ._module import CrossEntropyLoss, LinearCrossEntropyLoss

__all__ = [
    "CrossEntropyLoss",
    "LinearCrossEntropyLoss",
    "cross_entropy",
    "cross_entropy_with_grad",
    "linear_cross_entropy",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "release_buffers",
    "softmax",
]
