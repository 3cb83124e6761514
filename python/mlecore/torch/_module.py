"""The loss modules: torch.nn's constructors on mlecore's functions."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._functional import cross_entropy
from ._linear import linear_cross_entropy


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


class LinearCrossEntropyLoss(torch.nn.Module):
    """Drop-in for `torch.nn.LinearCrossEntropyLoss`: it owns the projection (``self.linear``,
    of (C·∏out_features, in_features)) and computes `mlecore.torch.linear_cross_entropy`.

    Parameters
    ----------
    in_features, num_classes : int
    out_features : tuple of int, optional
        Extra class dimensions of a K-dimensional loss.
    bias : bool, optional
        Whether the projection has a learnable bias.
    device, dtype : optional
        Of the projection's parameters.
    reduction, weight, ignore_index, label_smoothing, options
        As in torch (``weight`` is kept as a buffer).
    softcap, lse_square_scale, chunk_size, backend : optional
        mlecore's additions (keyword only), as in `linear_cross_entropy`.

    Examples
    --------
    >>> import torch, mlecore.torch as mt
    >>> head = mt.LinearCrossEntropyLoss(8, 100, bias=True)
    >>> loss = head(torch.randn(5, 8), torch.randint(0, 100, (5,)))
    >>> loss.backward()
    >>> head.linear.weight.grad.shape
    torch.Size([100, 8])
    """

    def __init__(self, in_features: int, num_classes: int, *,
                 out_features: tuple[int, ...] = (), bias: bool = False, device=None,
                 dtype=None, reduction: str = "mean", weight: Tensor | None = None,
                 ignore_index: int | None = None, label_smoothing: float = 0.0, options=None,
                 softcap: float | None = None, lse_square_scale: float = 0.0,
                 chunk_size: int | None = None, backend: str = "auto"):
        super().__init__()
        if weight is not None and weight.shape != (num_classes,):
            raise RuntimeError(f"expected weight shape to be {(num_classes,)}, got "
                               f"{tuple(weight.shape)}")
        self.register_buffer("weight", weight)
        self.num_classes = num_classes
        self.out_features = tuple(out_features)
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.options = options
        self.softcap = softcap
        self.lse_square_scale = lse_square_scale
        self.chunk_size = chunk_size
        self.backend = backend
        self.linear = torch.nn.Linear(in_features, math.prod(self.out_features,
                                                             start=num_classes),
                                      bias=bias, device=device, dtype=dtype)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        shape = (self.num_classes, *self.out_features)
        w = self.linear.weight.reshape(*shape, self.linear.in_features)
        b = None if self.linear.bias is None else self.linear.bias.reshape(shape)
        return linear_cross_entropy(
            input, w, target, linear_bias=b, weight=self.weight, reduction=self.reduction,
            ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
            options=self.options, softcap=self.softcap,
            lse_square_scale=self.lse_square_scale, chunk_size=self.chunk_size,
            backend=self.backend)

    def extra_repr(self) -> str:
        return (f"in_features={self.linear.in_features}, num_classes={self.num_classes}, "
                f"out_features={self.out_features}, bias={self.linear.bias is not None}, "
                f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, "
                f"label_smoothing={self.label_smoothing}, backend={self.backend!r}")
