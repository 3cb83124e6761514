"""Vocabulary-parallel cross-entropy on `torch.distributed`: each rank holds the logits of its
own slice of the classes, and every rank gets the loss over all of them.

The algebra: a row's log-sum-exp over the whole vocabulary is the log-sum-exp of the ranks'
partial ones, and the loss's other terms (the target's logit and weight, the weighted sum of
logits that label smoothing needs) are sums over the ranks. So one `all_gather` of a few
float64 per row carries everything, and the backward pass needs none: each rank's gradient is
its slice of the full gradient, softmax(x − lse) from the saved global log-sum-exp, computed
by the Rust kernel on CPU.

Before it, a call header (one all_gather of a few int64 per rank) settles what decides the
size and number of the collectives that follow, from what every rank sees alike: each
rank's call (shapes, options, chunk size, local errors) is compared, and the slices' sizes
exchanged. A disagreement raises the same error on every rank instead of leaving ranks in
collectives of different sizes (an abort inside gloo) or giving each a different loss.

The anchors need more collectives: Megatron's vocab-parallel cross-entropy three all-reduces
(max, target logit, sum of exponentials), torch's `loss_parallel` three, flash-attn's two.
Megatron also smooths labels over each partition instead of the vocabulary (about 1% off
under tensor parallelism, Megatron-DeepSpeed #394); here the smoothing is exact.
"""

from __future__ import annotations

import math
import operator
import struct
import sys
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from .. import _spec
from .._linear_chunks import chunk_rows
from . import _reference as R
from ._functional import _class_rows, _float_input, _reduce, _target_kind
from ._ops import RUST

#: Columns of the gathered per-row payload.
_LSE, _XY, _WY, _WX, _Y = range(5)
_WIDTH = 5
#: Column of the payload's header row: Σ of this rank's class weights.
_WSUM = 0

#: The functions, as the call header names them (a rank in the other one disagrees).
_CALLS = ("cross_entropy", "linear_cross_entropy")
#: Exception types a rank's local check may raise, as the call header carries them: the
#: other ranks raise the same type (a ValueError for any other).
_ERRORS = (ValueError, TypeError, IndexError, RuntimeError)
#: Dimensions of the target's shape carried whole; more are folded into the last one.
_DIMS = 8


def _bits(v: float) -> int:
    """A float64's bits as an int64: compared exactly, NaN included."""
    return struct.unpack("<q", struct.pack("<d", v))[0]


def _unbits(b: int) -> float:
    return struct.unpack("<d", struct.pack("<q", b))[0]


def _shape_code(shape) -> list[int]:
    shape = tuple(shape)
    if len(shape) > _DIMS:
        shape = shape[:_DIMS - 1] + (math.prod(shape[_DIMS - 1:]),)
    return [len(tuple(shape))] + list(shape) + [0] * (_DIMS - len(shape))


def _optional_float(v: float | None) -> list[int]:
    return [0, 0] if v is None else [1, _bits(v)]


#: What every rank's call must agree on, in the call header's order: (name, width, encode,
#: decode). The width is fixed, so the header has one length on every rank whatever its
#: call holds.
_FIELDS = (
    ("the function", 1, lambda v: [_CALLS.index(v)], lambda c: _CALLS[c[0]]),
    ("the target's shape", _DIMS + 1, _shape_code, lambda c: tuple(c[1:1 + c[0]])),
    ("whether class_start is given", 1, lambda v: [int(v)], lambda c: bool(c[0])),
    ("ignore_index", 1, lambda v: [v], lambda c: c[0]),
    ("label_smoothing", 1, lambda v: [_bits(v)], lambda c: _unbits(c[0])),
    ("lse_square_scale", 1, lambda v: [_bits(v)], lambda c: _unbits(c[0])),
    ("softcap", 2, _optional_float, lambda c: _unbits(c[1]) if c[0] else None),
    ("reduction", 1, lambda v: [_spec.REDUCTIONS.index(v)],
     lambda c: _spec.REDUCTIONS[c[0]]),
    ("whether class weights are given", 1, lambda v: [int(v)], lambda c: bool(c[0])),
    ("the input's features", 1, lambda v: [v], lambda c: c[0]),
    ("chunk_size", 1, lambda v: [0 if v is None else v], lambda c: c[0] or None),
    ("whether the input needs a gradient", 1, lambda v: [int(v)], lambda c: bool(c[0])),
    ("whether the target is a DTensor", 1, lambda v: [int(v)], lambda c: bool(c[0])),
)
#: Columns after the compared fields: this rank's own class count, first class, compute
#: dtype's item size, and the type of its local error (0: none).
_OWN = ("size", "start", "itemsize", "error")


class _Agreed(NamedTuple):
    """What the call header settles, alike on every rank: every rank's first class and
    class count, and the largest compute dtype's item size (for the default chunk)."""
    starts: tuple[int, ...]
    sizes: tuple[int, ...]
    itemsize: int


def _header_device(x, group):
    """Where the call header travels: the input's device (NCCL needs the GPU), else the
    backend's."""
    if isinstance(x, Tensor):
        return x.device
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agree(fn: str, group, device, fields: dict | None, size: int = 0,
           class_start: int | None = None, itemsize: int = 8,
           error: BaseException | None = None) -> _Agreed | None:
    """The call header: one small all_gather, before any collective whose size or count
    depends on the call, of what every rank's call must agree on (`fields`, by the names
    of `_FIELDS`) and this rank's class count and first class. A disagreement, slices that
    do not tile the classes, or a local `error` on any rank raise on every rank, alike:
    none is left waiting in a collective its peers never join."""
    code = []
    for name, width, encode, _ in _FIELDS:
        part = [0] * width if fields is None else encode(fields[name])
        code += part
    kind = 0 if error is None else 1 + next(
        (i for i, t in enumerate(_ERRORS) if isinstance(error, t)), 0)
    code += [size, 0 if class_start is None else class_start, itemsize, kind]
    mine = torch.tensor(code, dtype=torch.int64, device=device)
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine, group=group)
    rows = [[int(v) for v in g.tolist()] for g in gathered]
    if error is not None:  # the caller raises it
        return None
    own = len(code) - len(_OWN)
    failed = [r for r, row in enumerate(rows) if row[own + 3]]
    if failed:
        raise _ERRORS[rows[failed[0]][own + 3] - 1](
            f"mlecore.torch.distributed.{fn}: the call failed on rank(s) {failed} (see the "
            f"error there); every rank of the group raises")
    at = 0
    for name, width, _, decode in _FIELDS:
        values = [decode(row[at:at + width]) for row in rows]
        if any(v != values[0] for v in values):
            raise ValueError(f"mlecore.torch.distributed.{fn}: the ranks' calls disagree on "
                             f"{name}: {values} on ranks 0..{world - 1}; every rank must pass "
                             f"the same")
        at += width
    sizes = tuple(row[own] for row in rows)
    if class_start is None:  # on every rank alike (compared above): slices in rank order
        starts = tuple(sum(sizes[:r]) for r in range(world))
    else:
        starts = tuple(row[own + 1] for row in rows)
    edge = 0
    for s, n in sorted(zip(starts, sizes, strict=True)):
        if s != edge:
            raise ValueError(f"the ranks' classes must tile [0, C) without gaps or overlap: "
                             f"got slices starting at {list(starts)} of sizes {list(sizes)}")
        edge = s + n
    return _Agreed(starts, sizes, max(row[own + 2] for row in rows))


class _GradState(NamedTuple):
    """What `_vocab_grad` needs of `_vocab_forward`: per-row tensors (`_ROW_STATE`), the class
    weights `w` (the same for every chunk of rows) and the smoothing's ε/C."""
    yl: Tensor
    local: Tensor
    valid: Tensor
    w: Tensor
    lse: Tensor
    lse_local: Tensor
    a: Tensor
    smooth: float


#: The fields of `_GradState` with one value per row.
_ROW_STATE = ("yl", "local", "valid", "lse", "lse_local", "a")


def _vocab_forward(x, y, weight, start, ignore, eps, z, group, classes, target_shape,
                   offset=0):
    """Rows of this rank's capped logits x (R, C_local) in the compute dtype, global int64
    labels y (R,), `classes` in all: the per-row losses (float64, every rank alike), the
    `mean` denominator, and what the gradient needs (`_vocab_grad`). One collective, of a
    size the call header settled. `offset`: the rows' position in the whole target, for
    the errors."""
    rows, size = x.shape
    valid = y != ignore
    local = valid & (y >= start) & (y < start + size)
    yl = torch.where(local, y - start, 0)
    w = torch.ones(size, dtype=x.dtype, device=x.device) if weight is None else \
        weight.to(x.dtype)
    payload = torch.zeros(rows + 1, _WIDTH, dtype=torch.float64, device=x.device)
    payload[0, _WSUM] = w.to(torch.float64).sum()
    lse_local = RUST.logsumexp(x)  # the Rust kernel on CPU, torch's elsewhere
    payload[1:, _LSE] = lse_local.to(torch.float64)
    if size:
        xy = x.gather(1, yl.unsqueeze(1)).squeeze(1).to(torch.float64)
        payload[1:, _XY] = torch.where(local, xy, 0.0)
        payload[1:, _WY] = torch.where(local, w[yl].to(torch.float64), 0.0)
        if eps:
            payload[1:, _WX] = (x.to(torch.float64) @ w.to(torch.float64))
    payload[1:, _Y] = y.to(torch.float64)
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(payload) for _ in range(world)]
    dist.all_gather(gathered, payload, group=group)  # the one collective
    g = torch.stack(gathered)  # (world, R + 1, width), the same on every rank
    _check_gathered(g, y, ignore, classes, target_shape, offset)
    parts = g[:, 1:]
    lse = torch.logsumexp(parts[..., _LSE], dim=0)
    xy, wy = parts[..., _XY].sum(0), parts[..., _WY].sum(0)
    wsum, wx = g[:, 0, _WSUM].sum(), parts[..., _WX].sum(0)
    smooth = eps / classes if classes else 0.0
    a = (1 - eps) * wy + smooth * wsum
    loss = (1 - eps) * wy * (lse - xy)
    if eps:
        loss = loss + smooth * (wsum * lse - wx)
    loss = torch.where(a == 0, 0.0, loss)
    if z:
        loss = loss + z * lse * lse
    poisoned = (lse == torch.inf) | torch.isnan(lse)
    loss = torch.where(poisoned, torch.nan, loss)
    loss = torch.where(valid, loss, 0.0)
    denom = torch.where(valid, wy, 0.0).sum()
    return loss, denom, _GradState(yl, local, valid, w, lse, lse_local, a, smooth)


def _vocab_grad(x, saved: _GradState, eps, z, grad_rows):
    """This rank's slice of d loss / d x from `_vocab_forward`'s `saved`; no collective."""
    yl, local, valid, w, lse, lse_local, a, smooth = saved
    s = torch.where(valid, grad_rows, 0.0)
    if z:
        a = a + 2 * z * lse
    # softmax over the whole vocabulary = the local softmax · e^(lse_local − lse).
    empty = lse_local == -torch.inf  # all −inf here: no probability on this rank
    factor = (s * a * torch.exp(lse_local.to(torch.float64) - lse)).to(x.dtype)
    factor = torch.where((a == 0) | empty, 0.0, factor)
    g = RUST.softmax(x)  # a fresh result: scaled in place below
    g.masked_fill_(empty.unsqueeze(1), 0.0)
    g.mul_(factor.unsqueeze(1))
    if eps:
        g.sub_((s * smooth).to(x.dtype).unsqueeze(1) * w)
    if x.shape[-1]:
        hot = torch.where(local, s * (1 - eps) * w[yl].to(torch.float64), 0.0)
        g.scatter_add_(1, yl.unsqueeze(1), -hot.to(x.dtype).unsqueeze(1))
    poisoned = (lse == torch.inf) | torch.isnan(lse)
    return g.masked_fill_((poisoned & valid).unsqueeze(1), torch.nan)


class _VocabParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, weight, start, ignore, eps, z, group, classes, target_shape):
        """x: (R, C_local) capped logits in the compute dtype; y: (R,) global int64 labels.
        Returns per-row losses (float64) and the mean's denominator."""
        loss, denom, saved = _vocab_forward(x, y, weight, start, ignore, eps, z, group,
                                            classes, target_shape)
        ctx.save_for_backward(x, *saved[:-1])
        ctx.options = (eps, z, saved.smooth)
        ctx.mark_non_differentiable(denom)
        return loss, denom

    @staticmethod
    def backward(ctx, grad_rows, _grad_denom):
        """This rank's slice of the gradient; no collective."""
        x, *tensors = ctx.saved_tensors
        eps, z, smooth = ctx.options
        with torch.no_grad():  # in place, on the kernels' results
            g = _vocab_grad(x, _GradState(*tensors, smooth), eps, z, grad_rows)
        return _once(g, x, grad_rows), *[None] * 9


class _NoSecondDerivative(torch.autograd.Function):
    """The identity on a gradient; differentiating it raises. The distributed losses' second
    derivative would need collectives of its own in the double backward pass, which they do
    not have: a clear error instead of a wrong value or torch's complaint about an in-place
    write."""

    @staticmethod
    def forward(ctx, g, *inputs):
        return g.view_as(g)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("mlecore.torch.distributed's losses (cross_entropy, "
                           "linear_cross_entropy) have no second derivative (a gradient "
                           "penalty, a Hessian): differentiate the single-process "
                           "mlecore.torch.cross_entropy or linear_cross_entropy of the whole "
                           "logits or head instead")


def _once(g, *inputs):
    """`g`, made to raise if a double backward pass (create_graph=True) differentiates it."""
    if g is None or not torch.is_grad_enabled():
        return g
    return _NoSecondDerivative.apply(g, *[t for t in inputs if t is not None])


def _check_gathered(g: Tensor, y: Tensor, ignore: int, classes: int, target_shape,
                    offset: int = 0) -> None:
    """Checks what every rank sees alike (so every rank raises alike, and none hangs): the
    targets agree, every label is in [0, `classes`). Rows are named by their position in
    the whole target: `offset` + their row in `y`."""
    targets = g[:, 1:, _Y]
    differ = (targets != targets[:1]).any(dim=0)
    if bool(differ.any()):
        row = int(differ.nonzero()[0, 0])
        values = [int(v) for v in targets[:, row]]
        raise RuntimeError(f"target differs between ranks: row {row + offset} holds {values} "
                           f"on ranks 0..{len(values) - 1}; every rank must pass the same "
                           "target")
    _, valid, bad = R.labels(y, classes, ignore)
    if y.numel() and bool(bad.any()):
        position = int(bad.nonzero()[0, 0])
        raise _spec.label_error(position + offset, int(y[position]), target_shape, classes,
                                ignore)


def _is_dtensor(t) -> bool:
    tensor = sys.modules.get("torch.distributed.tensor")  # loaded if a DTensor exists
    return tensor is not None and isinstance(t, tensor.DTensor)


def _plain(target):
    """A DTensor target as a plain tensor: a collective (for a sharded one), so called only
    after the call header has compared whether every rank's target is one."""
    return target.full_tensor() if _is_dtensor(target) else target


def _dtensor_shard(logits, target):
    """A DTensor sharded over the class dimension of a one-dimensional mesh: its local
    shard, group, first class; the target as given."""
    from torch.distributed.tensor import DTensor, Shard

    if not isinstance(logits, DTensor):
        return logits, None, None, target
    mesh, placements = logits.device_mesh, logits.placements
    class_dim = _spec.class_axis(logits.ndim)
    if mesh.ndim != 1 or not isinstance(placements[0], Shard) \
            or placements[0].dim % logits.ndim != class_dim:
        raise ValueError(f"a DTensor input must be sharded over its class dimension "
                         f"({class_dim}) on a one-dimensional mesh, got {placements} on a "
                         f"mesh of {mesh.ndim} dimensions")
    # Shard's split: pieces of ceil(C / world), the last ones shorter or empty.
    classes, world = logits.shape[class_dim], mesh.size()
    piece = -(-classes // world)
    start = min(mesh.get_local_rank() * piece, classes)
    return logits.to_local(), mesh.get_group(), start, target


def cross_entropy(local_logits: Tensor, target: Tensor, *, group=None,
                  class_start: int | None = None, weight: Tensor | None = None,
                  ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0, softcap: float | None = None,
                  lse_square_scale: float = 0.0) -> Tensor:
    """Cross-entropy over a vocabulary split across the ranks of a process group.

    Parameters
    ----------
    local_logits : torch.Tensor or DTensor
        (N, C_local), (C_local,) or (N, C_local, d1, ..., dk): this rank's classes
        [class_start, class_start + C_local). Or a DTensor sharded over its class dimension
        on a one-dimensional device mesh (as torch's `loss_parallel` takes): its shard, mesh
        group and offset are used.
    target : torch.Tensor
        Global class indices (any integer dtype), identical on every rank.
    group : ProcessGroup, optional
        The group whose ranks split the classes (default: the default group).
    class_start : int, optional
        This rank's first class, given on every rank or on none. By default the ranks hold
        consecutive slices in rank order, of sizes that may differ (exchanged in the call
        header).
    weight : torch.Tensor, optional
        This rank's slice of the class weights, (C_local,).
    ignore_index, reduction, label_smoothing, softcap, lse_square_scale
        As in `mlecore.torch.cross_entropy`, over the whole vocabulary (label smoothing
        included: ε/C with C all the classes).

    Returns
    -------
    torch.Tensor
        The same loss on every rank, equal to `cross_entropy` of the concatenated logits;
        its gradient (no collective) is this rank's slice of the full gradient.

    Raises
    ------
    IndexError
        A label outside [0, C) that is not `ignore_index`, on every rank.
    RuntimeError
        Targets that differ between ranks (naming the first differing row), on every rank.
    ValueError
        Calls that differ between ranks in the target's shape or an option (naming it and
        every rank's value), slices that do not tile the classes, on every rank. A rank
        whose own call is invalid raises its error; the others raise its type, naming it.

    Notes
    -----
    Two `all_gather`s in the forward pass: the call header (a few int64 per rank), then
    five float64 per row; none in the backward pass. Every check runs on what every rank
    sees alike, so that a bad call raises on every rank and never leaves one waiting in a
    collective. No second derivative: differentiating the gradient raises.

    Examples
    --------
    >>> import torch, torch.distributed as dist, mlecore.torch.distributed as mtd
    >>> # on each of the ranks of an initialized process group:
    >>> # loss = mtd.cross_entropy(local_logits, target); loss.backward()
    """
    local_logits, mesh_group, mesh_start, target = _dtensor_shard(local_logits, target)
    if mesh_group is not None:
        group, class_start = mesh_group, mesh_start
    device = _header_device(local_logits, group)
    try:  # a rank's local error is carried by the call header: its peers raise too
        reduction, eps, ignore = _spec.check_options(reduction, label_smoothing, ignore_index)
        softcap, z = _spec.check_loss_options(softcap, lse_square_scale)
        x = _float_input(local_logits, "local_logits")
        _check_class_indices(target, "cross_entropy")
        _, loss_shape = _spec.class_layout(x.shape, target.shape, True)
        layout = _class_rows(x)
        size = layout.matrix.shape[1]
        _check_class_weight(weight, size)
        class_start = _check_class_start(class_start)
    except Exception as e:  # any type: a peer left in the header would wait for good
        _agree("cross_entropy", group, device, None, error=e)
        raise
    agreed = _agree("cross_entropy", group, device, {
        "the function": "cross_entropy", "the target's shape": tuple(target.shape),
        "whether class_start is given": class_start is not None, "ignore_index": ignore,
        "label_smoothing": eps, "lse_square_scale": z, "softcap": softcap,
        "reduction": reduction, "whether class weights are given": weight is not None,
        "the input's features": 0, "chunk_size": None,
        "whether the input needs a gradient": False,
        "whether the target is a DTensor": _is_dtensor(target),
    }, size, class_start, R.compute_dtype(x.dtype).itemsize)
    y = R.wide_labels(_plain(target).reshape(-1))
    loss_rows, denom = _VocabParallel.apply(_capped(layout.matrix, softcap), y, weight,
                                            agreed.starts[dist.get_rank(group)], ignore, eps,
                                            z, group, sum(agreed.sizes), tuple(target.shape))
    return _reduce(loss_rows, denom, reduction, loss_shape, x.dtype)


class _SumGradients(torch.autograd.Function):
    """Identity in the forward pass; the backward pass sums the gradient over the group:
    each rank's classes contribute their part of d loss / d input (Megatron's
    copy-to-tensor-parallel-region)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        with torch.no_grad():
            total = grad.contiguous().clone()
            dist.all_reduce(total, group=ctx.group)
        return _once(total, grad), None


class _ParallelHead(torch.autograd.Function):
    """The tensor-parallel head's loss in chunks of rows: per chunk this rank's logits, the
    chunk's collective and losses; the backward pass recomputes each chunk's logits (no
    collective: the saved global log-sum-exps are enough) and adds its share of dx, dw, db.
    At most one chunk's logits, and its gradient, exist at a time."""

    @staticmethod
    def forward(ctx, x, w, b, y, weight, start, ignore, eps, z, softcap, group, classes,
                target_shape, step):
        """x (N, D) with N > 0; w (C_local, D); y (N,) global int64 labels. Returns per-row
        losses (float64) and the mean's denominator."""
        n = x.shape[0]
        losses, denoms, saved = [], [], []
        for i in range(0, n, step):
            capped = _head_logits(x[i:i + step], w, b, softcap)[1]
            loss, denom, keep = _vocab_forward(capped, y[i:i + step], weight, start, ignore,
                                               eps, z, group, classes, target_shape,
                                               offset=i)
            losses.append(loss)
            denoms.append(denom)
            saved.append(keep)
        # The per-row state of every chunk, concatenated (a few values per row).
        rows = [torch.cat([getattr(k, f) for k in saved]) for f in _ROW_STATE]
        ctx.save_for_backward(x, w, b, saved[0].w, *rows)
        ctx.options = (eps, z, saved[0].smooth, softcap, step)
        denom = torch.stack(denoms).sum()
        ctx.mark_non_differentiable(denom)
        return torch.cat(losses), denom

    @staticmethod
    def backward(ctx, grad_rows, _grad_denom):
        x, w, b, class_w, *rows = ctx.saved_tensors
        with torch.no_grad():  # in place, on the kernels' results
            dx, dw, db = _ParallelHead._grads(ctx, x, w, b, class_w, rows, grad_rows)
        return (*[_once(t, x, w, b, grad_rows)
                  for t in (dx, dw, db)], *[None] * 11)

    @staticmethod
    def _grads(ctx, x, w, b, class_w, rows, grad_rows):
        """dx, dw, db (None where not wanted), chunk by chunk."""
        eps, z, smooth, softcap, step = ctx.options
        state = _GradState(w=class_w, smooth=smooth, **dict(zip(_ROW_STATE, rows, strict=True)))
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        acc = R.compute_dtype(w.dtype)
        dx = torch.empty_like(x) if need_x else None
        dw = torch.zeros(w.shape, dtype=acc, device=w.device) if need_w else None
        db = torch.zeros(w.shape[0], dtype=acc, device=w.device) \
            if need_b and b is not None else None
        for i in range(0, x.shape[0], step):
            j = min(i + step, x.shape[0])
            xc = x[i:j]
            logits, capped = _head_logits(xc, w, b, softcap)
            part = state._replace(**{f: getattr(state, f)[i:j] for f in _ROW_STATE})
            g = _vocab_grad(capped, part, eps, z, grad_rows[i:j])
            if softcap is not None:  # d(c·tanh(t/c))/dt = 1 − (capped/c)²
                g.mul_(1 - (capped / softcap) ** 2)
            if dw is not None:
                dw.addmm_(g.t(), xc.to(acc))
            if db is not None:
                db += g.sum(0)
            g = g.to(logits.dtype)
            if dx is not None:
                dx[i:j] = g @ w
        return (dx, None if dw is None else dw.to(w.dtype),
                None if db is None else db.to(b.dtype))


def _head_logits(x, w, b, softcap):
    """A chunk's logits (the input's dtype, as F.linear gives them) and their capped rows
    in the compute dtype."""
    logits = torch.nn.functional.linear(x, w, b)
    return logits, _capped(logits, softcap)


def _capped(logits: Tensor, softcap: float | None) -> Tensor:
    """Rows of logits in the compute dtype, soft-capped where asked, contiguous: what
    `_VocabParallel` and `_ParallelHead` take."""
    rows = logits.to(R.compute_dtype(logits.dtype))
    if softcap is not None:
        rows = softcap * torch.tanh(rows / softcap)
    return rows.contiguous()


def _check_class_indices(target: Tensor, name: str) -> None:
    if not _target_kind(target):
        raise TypeError(f"mlecore.torch.distributed.{name} takes class indices; got a target "
                        f"of dtype {target.dtype}")


def _check_class_weight(weight, size: int) -> None:
    """The class weights are this rank's classes' (C_local,)."""
    if weight is not None and (not isinstance(weight, Tensor) or weight.shape != (size,)):
        raise _spec.weight_shape_error(size, getattr(weight, "shape", type(weight).__name__))


def _check_class_start(class_start) -> int | None:
    """`class_start` as an int ≥ 0 (one that the call header's int64 holds), or None."""
    if class_start is None:
        return None
    try:
        start = operator.index(class_start)
    except TypeError:
        raise TypeError(f"class_start must be an int or None, got {class_start!r}") from None
    if not 0 <= start < 2**62:
        raise ValueError(f"class_start must be a class index ≥ 0, got {start}")
    return start


def linear_cross_entropy(input: Tensor, local_weight: Tensor, target: Tensor, *,
                         local_bias: Tensor | None = None, group=None,
                         class_start: int | None = None, weight: Tensor | None = None,
                         ignore_index: int = -100, reduction: str = "mean",
                         label_smoothing: float = 0.0, softcap: float | None = None,
                         lse_square_scale: float = 0.0,
                         chunk_size: int | None = None) -> Tensor:
    """A tensor-parallel LM head's loss: the projection's classes split across the ranks.

    Parameters
    ----------
    input : torch.Tensor
        (N, D) or (D,), the same on every rank (replicated).
    local_weight : torch.Tensor
        This rank's rows of the projection, (C_local, D).
    target : torch.Tensor
        Global class indices, the same on every rank.
    local_bias : torch.Tensor, optional
        This rank's slice of the bias, (C_local,).
    group, class_start, weight, ignore_index, reduction, label_smoothing, softcap,
    lse_square_scale
        As in `cross_entropy`.
    chunk_size : int, optional
        Rows per chunk; by default the rule of `mlecore.linear_cross_entropy` applied to
        the largest rank's classes (logits of about 128 MiB per chunk, 2048 rows where that
        stays under 256 MiB), so the same on every rank. Given, it must be the same on
        every rank (compared in the call header).

    Returns
    -------
    torch.Tensor
        The loss of the whole head on every rank. Its backward pass gives each rank the
        gradient of its own weight rows and bias, and sums the input's gradient over the
        ranks (one all_reduce), so every rank holds the full d loss / d input.

    Notes
    -----
    This rank's logits (N, C_local) exist whole only when they fit one chunk. Otherwise the
    rows go in chunks: after the call header (as in `cross_entropy`: the ranks' calls
    compared, a disagreement raised on every rank), one `all_gather` per chunk in the
    forward pass, and the backward pass
    recomputes each chunk's logits (one matrix product more) from the saved global
    log-sum-exps, with no collective but the input gradient's `all_reduce`.

    Examples
    --------
    >>> import mlecore.torch.distributed as mtd
    >>> # on each rank: loss = mtd.linear_cross_entropy(h, head_shard.weight, y)
    """
    fn = "linear_cross_entropy"
    device = _header_device(input, group)
    try:  # a rank's local error is carried by the call header: its peers raise too
        reduction, eps, ignore = _spec.check_options(reduction, label_smoothing, ignore_index)
        softcap, z = _spec.check_loss_options(softcap, lse_square_scale)
        x = _float_input(input)
        _check_class_indices(target, fn)
        if not isinstance(local_weight, Tensor) or local_weight.ndim != 2 \
                or local_weight.shape[-1] != x.shape[-1]:
            raise ValueError(f"local_weight must have shape (C_local, {x.shape[-1]}), one row "
                             f"of the input's features per class, got "
                             f"{tuple(getattr(local_weight, 'shape', ()))}")
        size = local_weight.shape[0]
        if local_bias is not None:
            got = (tuple(local_bias.shape) if isinstance(local_bias, Tensor)
                   else type(local_bias).__name__)
            if got != (size,):
                raise ValueError(f"local_bias must have shape ({size},), got {got}")
        _check_class_weight(weight, size)
        _, loss_shape = _spec.class_layout((*x.shape[:-1], size), target.shape, True)
        chunk_size = _spec.check_chunk_size(chunk_size)
        class_start = _check_class_start(class_start)
    except Exception as e:  # any type: a peer left in the header would wait for good
        _agree(fn, group, device, None, error=e)
        raise
    # Whether the backward pass runs _SumGradients' all_reduce: the same on every rank.
    grad = torch.is_grad_enabled() and x.requires_grad
    agreed = _agree(fn, group, device, {
        "the function": fn, "the target's shape": tuple(target.shape),
        "whether class_start is given": class_start is not None, "ignore_index": ignore,
        "label_smoothing": eps, "lse_square_scale": z, "softcap": softcap,
        "reduction": reduction, "whether class weights are given": weight is not None,
        "the input's features": x.shape[-1],
        "chunk_size": None if chunk_size is None else min(chunk_size, 2**62),
        "whether the input needs a gradient": grad,
        "whether the target is a DTensor": _is_dtensor(target),
    }, size, class_start, R.compute_dtype(x.dtype).itemsize)
    target = _plain(target)
    start, classes = agreed.starts[dist.get_rank(group)], sum(agreed.sizes)
    if grad:
        x = _SumGradients.apply(x, group)
    rows = x.reshape(-1, x.shape[-1])
    y = R.wide_labels(target.reshape(-1))
    n = rows.shape[0]
    # The number of chunks, hence of all_gathers, from what the header settled: the rule of
    # the fused loss on the largest rank's classes, alike on every rank.
    step = chunk_rows(n, max(agreed.sizes), agreed.itemsize, chunk_size)
    if step >= n:  # one chunk: its logits kept for the backward pass, nothing recomputed
        capped = _head_logits(rows, local_weight, local_bias, softcap)[1]
        loss_rows, denom = _VocabParallel.apply(capped, y, weight, start, ignore, eps, z,
                                                group, classes, tuple(target.shape))
    else:
        loss_rows, denom = _ParallelHead.apply(rows, local_weight, local_bias, y, weight,
                                               start, ignore, eps, z, softcap, group,
                                               classes, tuple(target.shape), step)
    return _reduce(loss_rows, denom, reduction, loss_shape, x.dtype)
