"""`CrossEntropyLoss`: torch.nn.CrossEntropyLoss's constructor on mlecore's cross_entropy."""

from __future__ import annotations

import torch
from torch import Tensor

from ._functional import cross_entropy


class CrossEntropyLoss(torch.nn.Module):
    """Drop-in for `torch.nn.CrossEntropyLoss`, computed by `mlecore.torch.cross_entropy`.

    Parameters
    ----------
    weight : torch.Tensor, optional
        One weight per class, kept as a buffer (it follows `.to(device)`).
    size_average, reduce : bool, optional
        torch's deprecated reduction flags, honoured as torch does.
    ignore_index : int, optional
        Class-index targets skipped by the loss.
    reduction : {"mean", "sum", "none"}, optional
    label_smoothing : float, optional
    backend : {"auto", "rust", "torch"}, optional
        Which implementation runs (keyword only; mlecore's addition).

    Examples
    --------
    >>> import torch, mlecore.torch as mt
    >>> loss_fn = mt.CrossEntropyLoss(label_smoothing=0.1)
    >>> loss_fn(torch.zeros(2, 3), torch.tensor([0, 2])).shape
    torch.Size([])
    """

    def __init__(self, weight: Tensor | None = None, size_average=None, ignore_index: int = -100,
                 reduce=None, reduction: str = "mean", label_smoothing: float = 0.0, *,
                 backend: str = "auto"):
        super().__init__()
        if size_average is not None or reduce is not None:
            reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.backend = backend

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(input, target, self.weight, self.ignore_index, self.reduction,
                             self.label_smoothing, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, backend={self.backend!r}")
