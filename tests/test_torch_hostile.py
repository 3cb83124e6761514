"""mlecore.torch under hostile use: aliasing, small label types, autograd modes and
transforms, mixed devices, the buffer pool, edge values, fork. Each test names the defect
class it guards against."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import mlecore
import mlecore.torch as mt

inf, nan = float("inf"), float("nan")
BACKENDS = ["rust", "torch"]


def _case(rows=4, classes=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, classes, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (rows,), generator=gen)
    return x, y


# --- out= that shares memory with what the kernel reads ------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_out_sharing_memory_with_the_targets_is_refused_not_a_crash(backend):
    base = torch.zeros(4 * 5 + 4, dtype=torch.float64)
    out = base[:20].view(4, 5)
    labels = base.view(torch.int64)[:4]  # the labels are an int64 view of out's memory
    x, _ = _case()
    with pytest.raises(ValueError, match="out overlaps target"):
        mt.cross_entropy_with_grad(x, labels, out=out, backend=backend)
    probs = torch.softmax(torch.randn(4, 5, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match="out overlaps target"):
        mt.cross_entropy_with_grad(x, probs, out=probs, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_partly_overlapping_input_or_weight_is_refused(backend):
    big = torch.randn(5, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="out overlaps input"):
        mt.cross_entropy_with_grad(big[:4], y, out=big[1:], backend=backend)
    w = torch.ones(25, dtype=torch.float64)
    x, _ = _case()
    with pytest.raises(ValueError, match="out overlaps weight"):
        mt.cross_entropy_with_grad(x, y, weight=w[:5], out=w[:20].view(4, 5), backend=backend)
    # In place stays allowed, and is right.
    _, want = mt.cross_entropy_with_grad(x, y, backend=backend)
    xi = x.clone()
    mt.cross_entropy_with_grad(xi, y, out=xi, backend=backend)
    torch.testing.assert_close(xi, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_writes_through_out_are_seen_by_autograd(backend):
    # A tensor autograd saved, then overwritten through out=: backward must refuse, as after
    # any in-place write (the Rust path writes memory directly).
    x, y = _case()
    a = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    buf = torch.zeros(4, 5, dtype=torch.float64)
    saved = (a * buf).sum()  # saves buf for backward
    version = buf._version
    mt.cross_entropy_with_grad(x, y, out=buf, backend=backend)
    assert buf._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_refuses_what_torch_refuses(backend):
    x, y = _case()
    leaf = torch.zeros(4, 5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="out requires grad"):
        mt.cross_entropy_with_grad(x, y, out=leaf, backend=backend)
    with torch.inference_mode():
        frozen = torch.zeros(4, 5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="inference tensor"):
        mt.cross_entropy_with_grad(x, y, out=frozen, backend=backend)


# --- labels of small integer types ----------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_small_label_types_never_wrap_around(backend):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 256, generator=gen, dtype=torch.float64)
    y = torch.tensor([156, 0, 255, 7, 200, 1])
    want = F.cross_entropy(x, y)
    want_nll = F.nll_loss(torch.log_softmax(x, 1), y)
    logp = torch.log_softmax(x, 1)
    for dtype in (torch.uint8, torch.int16, torch.int32, torch.uint16, torch.uint32,
                  torch.uint64):
        # A uint8 156 is not ignore_index −100; 256 classes fit uint8 labels exactly.
        yt = y.to(dtype)
        torch.testing.assert_close(mt.cross_entropy(x, yt, backend=backend), want)
        torch.testing.assert_close(mt.nll_loss(logp, yt, backend=backend), want_nll)
        torch.testing.assert_close(mlecore.cross_entropy(x, yt, backend=backend), want)
    # int8 −100 is a label out of range when ignore_index is 156, never ignored.
    y8 = torch.tensor([-100, 1], dtype=torch.int8)
    for fn in (mt.cross_entropy, mt.nll_loss):
        with pytest.raises(IndexError, match=r"Target -100 is out of bounds: target\[0\]"):
            fn(x[:2], y8, ignore_index=156, backend=backend)
    big = torch.tensor([0, -1], dtype=torch.int64).view(torch.uint64)  # 2**64 − 1
    with pytest.raises(IndexError, match=f"Target {2**64 - 1} is out of bounds"):
        mt.cross_entropy(x[:2], big, backend=backend)


# --- autograd modes and torch.func transforms -----------------------------------------------

FUNCTIONS = {
    "cross_entropy": (lambda x, y: mt.cross_entropy(x, y, label_smoothing=0.1),
                      lambda x, y: F.cross_entropy(x, y, label_smoothing=0.1)),
    "with_grad": (lambda x, y: mt.cross_entropy_with_grad(x, y)[0],
                  lambda x, y: F.cross_entropy(x, y)),
    "nll_loss": (lambda x, y: mt.nll_loss(x, y), lambda x, y: F.nll_loss(x, y)),
    "logsumexp": (lambda x, y: mt.logsumexp(x, 1).sum(),
                  lambda x, y: torch.logsumexp(x, 1).sum()),
    "log_softmax": (lambda x, y: mt.log_softmax(x, 1)[:, 0].sum(),
                    lambda x, y: F.log_softmax(x, 1)[:, 0].sum()),
    "softmax": (lambda x, y: (mt.softmax(x, 1)[:, 1] ** 2).sum(),
                lambda x, y: (F.softmax(x, 1)[:, 1] ** 2).sum()),
}


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_forward_mode_and_every_transform_agree_with_torch(name, backend):
    ours, theirs = FUNCTIONS[name]
    x, y = _case(3, 5)
    t = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    xb = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def f(x):
        with mt_backend(backend):
            return ours(x, y)

    def g(x):
        return theirs(x, y)

    close = torch.testing.assert_close
    close(jvp(f, (x,), (t,))[1], jvp(g, (x,), (t,))[1])  # silent zeros before
    close(jacfwd(f)(x), jacfwd(g)(x))
    close(grad(f)(x), grad(g)(x))
    close(vjp(f, x)[1](torch.tensor(1.0, dtype=torch.float64)),
          vjp(g, x)[1](torch.tensor(1.0, dtype=torch.float64)))
    close(jacrev(f)(x), jacrev(g)(x))
    close(hessian(f)(x), hessian(g)(x))
    close(vmap(f)(xb), vmap(g)(xb))
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        a = fwAD.unpack_dual(f(fwAD.make_dual(x, t))).tangent
        b = fwAD.unpack_dual(g(fwAD.make_dual(x, t))).tangent
    close(a, b)


class mt_backend:
    """Runs mlecore.torch's functions with `backend` (a test helper)."""

    def __init__(self, backend):
        self.backend = backend

    def __enter__(self):
        import functools

        self.saved = {k: getattr(mt, k) for k in ("cross_entropy", "cross_entropy_with_grad",
                                                  "nll_loss", "logsumexp", "log_softmax",
                                                  "softmax")}
        for k, fn in self.saved.items():
            setattr(mt, k, functools.partial(fn, backend=self.backend))

    def __exit__(self, *exc):
        for k, fn in self.saved.items():
            setattr(mt, k, fn)


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward_through_with_grad_is_a_true_gradient_penalty(backend):
    x, y = _case()
    hs = []
    for fn in (lambda x: mt.cross_entropy_with_grad(x, y, backend=backend)[0],
               lambda x: F.cross_entropy(x, y)):
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(fn(xi), xi, create_graph=True)
        (h,) = torch.autograd.grad((g ** 2).sum(), xi)
        hs.append(h)
    assert hs[1].abs().max() > 1e-3  # a penalty that moves the logits
    torch.testing.assert_close(hs[0], hs[1])


# --- devices -------------------------------------------------------------------------------

def test_mixed_devices_raise_as_torch_does():
    x, y = _case()
    for target in (y.to("meta"), torch.softmax(x, 1).to("meta")):
        with pytest.raises(RuntimeError, match="target is on device meta"):
            mt.cross_entropy(x, target)
        with pytest.raises(RuntimeError):
            F.cross_entropy(x, target)  # torch refuses too
    with pytest.raises(RuntimeError, match="target is on device meta"):
        mt.nll_loss(x, y.to("meta"))
    with pytest.raises(RuntimeError, match="weight is on device meta"):
        mt.cross_entropy(x, y, weight=torch.ones(5, device="meta"))


# --- the buffer pool -------------------------------------------------------------------------

POOL_RSS = """
import os, torch, mlecore.torch as mt
from mlecore.torch._buffers import POOL

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

x = torch.randn(2000, 1000)  # 8 MB results
mt.log_softmax(x, 1)  # the first call into the dispatcher loads ~150 MB of torch itself
base = rss_mb()
held = [mt.log_softmax(x, 1) for _ in range(40)]
del held
for _ in range(100):
    mt.log_softmax(x, 1)
assert len(POOL) <= 2, len(POOL)
print(rss_mb() - base)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_pool_holds_at_most_two_results_whatever_was_dropped():
    # In a fresh process: after a long test session, glibc's adaptive mmap threshold may
    # have risen past 8 MB, and freed results then stay in its heap whatever the pool does.
    out = subprocess.run([sys.executable, "-c", POOL_RSS], capture_output=True, text=True,
                         check=True, timeout=120)
    # 40 dropped results of 8 MB used to stay resident; now at most two remain.
    assert float(out.stdout.split()[-1]) < 3 * 8 + 8, out.stdout


def test_pooled_results_behave_like_ordinary_tensors():
    x = torch.randn(2000, 1000)
    out = mt.log_softmax(x, 1)
    keep = out.clone()
    out.resize_(10, 10)  # storage of a pooled result is resizable
    assert out.shape == (10, 10)
    cat = mt.log_softmax(x, 1)
    torch.cat([keep[:1000], keep[1000:]], out=cat)
    torch.testing.assert_close(cat, keep)
    again = mt.log_softmax(x, 1)
    again.untyped_storage().resize_(0)
    assert again.untyped_storage().nbytes() == 0
    torch.testing.assert_close(mt.log_softmax(x, 1), keep)
    # Inputs keep their properties too (Tensor.numpy() made their storage fixed-size).
    y = torch.randint(0, 1000, (2000,))
    mt.cross_entropy(x, y)
    assert x.untyped_storage().resizable() and y.untyped_storage().resizable()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_child_forked_while_the_pool_lock_is_held_still_allocates():
    from mlecore.torch._buffers import POOL

    x = torch.randn(2000, 1000)
    with POOL._lock:  # as if another thread were inside the pool at the fork
        pid = os.fork()
        if pid == 0:
            # Only mlecore's work here: torch's own OpenMP team may hang in a forked child.
            ok = False
            try:
                ok = bool(np.isfinite(mt.log_softmax(x, 1).numpy()).all())
            finally:
                os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# --- accuracy and one behaviour on both backends --------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_softmax_in_half_precision_is_rounded_once(dtype):
    x = torch.randn(64, 300, generator=torch.Generator().manual_seed(5)).mul(3).to(dtype)
    ref = torch.softmax(x.double(), 1)

    def err(y):
        return ((y.double() - ref).abs() / ref).max().item()

    theirs = err(torch.softmax(x, 1))
    for backend in BACKENDS:
        assert err(mt.softmax(x, 1, backend=backend)) <= 1.01 * theirs  # was 9×


EDGE_ROWS = torch.tensor([
    [1.0, 2.0, 3.0],        # ordinary
    [-inf, -inf, -inf],      # all −inf, not ignored: NaN loss and gradient
    [inf, 0.0, 1.0],         # +inf: NaN loss and gradient
    [nan, 0.0, 1.0],         # NaN: NaN loss and gradient
    [-inf, -inf, -inf],      # all −inf, ignored: 0 and 0
    [inf, nan, 1.0],         # ignored: 0 and 0
    [0.0, -inf, 5.0],        # a −inf logit in an ordinary row
], dtype=torch.float64)
EDGE_LABELS = torch.tensor([2, 0, 1, 2, -100, -100, 0])


def _all_paths(x, target, **kw):
    """(per-row losses, gradient) from every path: numpy API, fused and autograd on each
    backend."""
    out = {}
    loss, g = mlecore.cross_entropy_with_grad(x.numpy(), target.numpy(), reduction="none",
                                              **{k: v.numpy() for k, v in kw.items()})
    out["numpy"] = (torch.from_numpy(np.asarray(loss)), torch.from_numpy(g))
    for backend in BACKENDS:
        loss, g = mt.cross_entropy_with_grad(x, target, reduction="none", backend=backend, **kw)
        out[f"fused-{backend}"] = (loss, g)
        xi = x.clone().requires_grad_()
        loss = mt.cross_entropy(xi, target, reduction="none", backend=backend, **kw)
        loss.sum().backward()
        out[f"autograd-{backend}"] = (loss.detach(), xi.grad)
    return out


def test_edge_rows_follow_one_rule_on_every_path():
    paths = _all_paths(EDGE_ROWS, EDGE_LABELS)
    loss, g = paths["numpy"]
    assert torch.isfinite(loss[[0, 6]]).all() and torch.isfinite(g[[0, 6]]).all()
    assert torch.isnan(loss[1:4]).all() and torch.isnan(g[1:4]).all()
    assert (loss[4:6] == 0).all() and (g[4:6] == 0).all()
    for name, (lo, gr) in paths.items():
        torch.testing.assert_close(lo, loss, equal_nan=True, msg=name)
        torch.testing.assert_close(gr, g, equal_nan=True, msg=name)
    # nll_loss of log_softmax follows the same rule.
    nll = mlecore.nll_loss(mlecore.log_softmax(EDGE_ROWS.numpy(), axis=1),
                           EDGE_LABELS.numpy(), reduction="none")
    torch.testing.assert_close(torch.from_numpy(nll)[:4], loss[:4], equal_nan=True)


def test_rows_of_no_weight_contribute_nothing_on_every_path():
    # All-zero probability targets, also on a row of all −inf; a class of weight 0.
    x = torch.tensor([[-inf, -inf, -inf], [1.0, 2.0, 3.0], [0.5, 0.0, -1.0]],
                     dtype=torch.float64)
    p = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    for name, (lo, gr) in _all_paths(x, p).items():
        assert (lo[:2] == 0).all() and (gr[:2] == 0).all(), name
        assert torch.isfinite(lo).all() and torch.isfinite(gr).all(), name
    w = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    for name, (lo, gr) in _all_paths(x, y, weight=w).items():
        assert (lo[:2] == 0).all() and (gr[:2] == 0).all(), name


# --- arguments torch accepts -----------------------------------------------------------------

def test_dtype_argument_and_index_like_dims():
    x = torch.randn(4, 6, dtype=torch.bfloat16)
    for fn, ref in ((mt.softmax, F.softmax), (mt.log_softmax, F.log_softmax)):
        got = fn(x, -1, dtype=torch.float32)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref(x, -1, dtype=torch.float32))
    for dim in (np.int64(1), torch.tensor(1)):
        torch.testing.assert_close(mt.logsumexp(x.float(), dim), torch.logsumexp(x.float(), 1))
        torch.testing.assert_close(mt.softmax(x.float(), dim), torch.softmax(x.float(), 1))


@pytest.mark.parametrize("softcap", [None, 4.0])
def test_the_statistics_log_sum_exp_carries_its_gradient(softcap):
    """`stats.loss + s·(stats.lse ** 2).mean()`, a z-loss written by hand, must get the
    second term's gradient (it was silently dropped: issue 23, item 10)."""
    gen = torch.Generator().manual_seed(21)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    x.data[0] = -torch.inf  # a row of all −inf keeps its −inf, not a NaN
    y = torch.tensor([-100, 1, 2, 3, 4, 0])
    stats = mt.cross_entropy(x, y, softcap=softcap, return_stats=True)
    assert torch.isfinite(stats.lse[1:]).all()
    if softcap is None:  # capped, the row is −c everywhere: a finite log-sum-exp
        assert stats.lse[0] == -torch.inf
    (g,) = torch.autograd.grad(stats.loss + 0.1 * (stats.lse[1:] ** 2).mean(), x)
    xr = x.detach().clone().requires_grad_()
    z = xr if softcap is None else softcap * torch.tanh(xr / softcap)
    want_loss = torch.nn.functional.cross_entropy(z, y)
    (want,) = torch.autograd.grad(want_loss + 0.1 * (torch.logsumexp(z, 1)[1:] ** 2).mean(),
                                  xr)
    torch.testing.assert_close(g[1:], want[1:])


def test_per_sample_gradients_through_vmap_of_grad():
    """`vmap(grad(loss))` (DP-SGD, influence functions) over cross_entropy, the fused linear
    loss and a functional_call of LinearCrossEntropyLoss: torch's per-sample gradients (they
    raised torch's `.item()` error inside vmap: issue 23, item 8)."""
    from torch.func import functional_call, grad, vmap

    gen = torch.Generator().manual_seed(22)
    x = torch.randn(8, 5, generator=gen)
    y = torch.randint(0, 5, (8,), generator=gen)
    h = torch.randn(8, 4, generator=gen)
    w = torch.randn(5, 4, generator=gen)

    def one(loss):
        return lambda a, t: loss(a.unsqueeze(0), t.unsqueeze(0))

    torch.testing.assert_close(vmap(grad(one(mt.cross_entropy)))(x, y),
                               vmap(grad(one(F.cross_entropy)))(x, y))
    torch.testing.assert_close(
        vmap(grad(one(lambda a, t: mt.linear_cross_entropy(a, w, t))))(h, y),
        vmap(grad(one(lambda a, t: F.cross_entropy(F.linear(a, w), t))))(h, y))
    # The module's parameters are those of a Linear (`linear.weight`, `linear.bias`).
    m = mt.LinearCrossEntropyLoss(4, 5, bias=True)
    params = {k: v.detach() for k, v in m.named_parameters()}
    ref = torch.nn.Sequential()
    ref.add_module("linear", torch.nn.Linear(4, 5))

    def grads(loss):
        return vmap(grad(lambda p, a, t: loss(p, a.unsqueeze(0), t.unsqueeze(0))),
                    in_dims=(None, 0, 0))(params, h, y)
    got = grads(lambda p, a, t: functional_call(m, p, (a, t)))
    want = grads(lambda p, a, t: F.cross_entropy(functional_call(ref, p, (a,)), t))
    for k in params:
        torch.testing.assert_close(got[k], want[k])
