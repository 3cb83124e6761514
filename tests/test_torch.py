"""mlecore.torch: both backends against each other and against torch, autograd, opcheck,
torch.compile, a real training run, and the top-level API on tensors."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

import mlecore
import mlecore.torch as mt

CUDA = torch.cuda.is_available()


def _ce_case(gen, shape, soft, dtype=torch.float64, ignore=True):
    x = torch.randn(shape, generator=gen, dtype=torch.float64).mul(2).to(dtype)
    c = shape[0] if len(shape) == 1 else shape[1]
    if soft:
        t = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64),
                          dim=0 if len(shape) == 1 else 1).to(dtype)
    else:
        tshape = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
        t = torch.randint(0, c, tshape, generator=gen)
        if ignore and t.numel() > 2:
            t.view(-1)[::3] = -100
    return x, t, c


CONFIGS = list(itertools.product(
    [(7, 5), (5,), (3, 4, 6), (2, 3, 2, 2), (4, 2049), (0, 3)],
    [False, True], [False, True], [0.0, 0.2], ["mean", "sum", "none"]))


@pytest.mark.parametrize("shape, soft, weighted, eps, reduction", CONFIGS)
def test_backends_agree_and_match_torch(shape, soft, weighted, eps, reduction):
    gen = torch.Generator().manual_seed(hash((shape, soft, weighted, eps, reduction)) % 2**31)
    x, t, c = _ce_case(gen, shape, soft)
    w = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5 if weighted else None
    kw = dict(weight=w, reduction=reduction, label_smoothing=eps)
    results = {}
    for backend in ["rust", "torch", "F"]:
        xi = x.clone().requires_grad_()
        ti = t.clone().requires_grad_() if soft else t
        fn = F.cross_entropy if backend == "F" else mt.cross_entropy
        extra = {} if backend == "F" else dict(backend=backend)
        loss = fn(xi, ti, **kw, **extra)
        loss.sum().backward()
        results[backend] = (loss.detach(), xi.grad, ti.grad if soft else None)
    for backend in ["rust", "torch"]:
        for got, want in zip(results[backend], results["F"], strict=True):
            if want is None:
                continue
            if reduction == "mean" and x.numel() == 0:
                assert torch.isnan(got).all() == torch.isnan(want).all()
                continue
            torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_dtypes(dtype):
    gen = torch.Generator().manual_seed(1)
    x, t, c = _ce_case(gen, (33, 3001), False, dtype)
    for backend in ["rust", "torch"]:
        xi = x.clone().requires_grad_()
        loss = mt.cross_entropy(xi, t, label_smoothing=0.1, backend=backend)
        loss.backward()
        assert loss.dtype == dtype and xi.grad.dtype == dtype
        xr = x.double().requires_grad_()
        ref = F.cross_entropy(xr, t, label_smoothing=0.1)
        ref.backward()
        rtol = {torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
        torch.testing.assert_close(loss.double(), ref, rtol=rtol, atol=0)
        torch.testing.assert_close(xi.grad.double(), xr.grad, rtol=rtol, atol=rtol * 1e-3)


def test_rust_and_torch_backends_on_edge_values():
    inf = torch.inf
    x = torch.tensor([[-inf, -inf, -inf], [1.0, 2.0, 3.0], [0.0, -inf, 5.0]],
                     dtype=torch.float64)
    y = torch.tensor([-100, 2, 0])
    for backend in ["rust", "torch"]:
        xi = x.clone().requires_grad_()
        loss = mt.cross_entropy(xi, y, backend=backend)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.equal(xi.grad[0], torch.zeros(3, dtype=torch.float64))
        assert torch.isfinite(xi.grad).all()
        # logsumexp of an all −inf row: −inf, with a zero gradient (torch: NaN).
        xl = x.clone().requires_grad_()
        out = mt.logsumexp(xl, 1, backend=backend)
        assert out[0] == -inf
        out[0:2].sum().backward()
        assert torch.equal(xl.grad[0], torch.zeros(3, dtype=torch.float64))
        # A zero probability on a −inf logit adds nothing (torch: NaN).
        p = torch.tensor([[0.0, 0.5, 0.5]], dtype=torch.float64)
        z = torch.tensor([[-inf, 0.0, 5.0]], dtype=torch.float64)
        assert torch.isfinite(mt.cross_entropy(z, p, backend=backend))


def test_gradcheck_and_gradgradcheck():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, -100, 1, 2])
    p = torch.softmax(torch.randn(5, 4, generator=gen, dtype=torch.float64), 1)
    p.requires_grad_()
    w = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5
    for backend in ["rust", "torch"]:
        fns = [
            (lambda z, b=backend: mt.cross_entropy(z, y, w, label_smoothing=0.2, backend=b),
             (x,)),
            (lambda z, t, b=backend: mt.cross_entropy(z, t, w, label_smoothing=0.1,
                                                      reduction="none", backend=b), (x, p)),
            (lambda z, b=backend: mt.logsumexp(z, (0, 1), backend=b), (x,)),
            (lambda z, b=backend: mt.logsumexp(z, 1, keepdim=True, backend=b), (x,)),
            (lambda z, b=backend: mt.log_softmax(z, 0, backend=b), (x,)),
            (lambda z, b=backend: mt.softmax(z, 1, backend=b), (x,)),
            (lambda z, b=backend: mt.nll_loss(z, y, w, backend=b), (x,)),
        ]
        for fn, args in fns:
            assert torch.autograd.gradcheck(fn, args)
            assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("prefix", ["", "torch_"])
def test_opcheck(prefix):
    ops = torch.ops.mlecore
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 9, generator=gen)
    strided = torch.randn(9, 12, generator=gen).t()[::2]  # non-contiguous (6, 9)
    labels = torch.tensor([0, 8, -100, 3, 3, 1])
    probs = torch.softmax(torch.randn(6, 9, generator=gen), 1)
    w = torch.rand(9, generator=gen)
    cases = [
        (getattr(ops, prefix + "logsumexp"), (x.clone().requires_grad_(),)),
        (getattr(ops, prefix + "logsumexp"), (strided,)),
        (getattr(ops, prefix + "log_softmax"), (strided.clone().requires_grad_(),)),
        (getattr(ops, prefix + "log_softmax"), (x.double(),)),
        (getattr(ops, prefix + "softmax"), (strided.clone().requires_grad_(),)),
        (getattr(ops, prefix + "softmax"), (x.bfloat16(),)),
        (getattr(ops, prefix + "cross_entropy"), (x.clone().requires_grad_(), labels, w, -100,
                                                   0.1, 0.0)),
        (getattr(ops, prefix + "cross_entropy"), (strided, labels.to(torch.int32), None, -100,
                                                   0.0, 0.01)),
        (getattr(ops, prefix + "cross_entropy"), (x.clone().requires_grad_(),
                                                   probs.clone().requires_grad_(), w, -100,
                                                   0.3, 0.02)),
        (getattr(ops, prefix + "cross_entropy"), (x.bfloat16().requires_grad_(), labels, None,
                                                   -100, 0.0, 0.0)),
        (getattr(ops, prefix + "cross_entropy_backward"),
         (torch.rand(6, dtype=torch.float64), x, labels, w,
          torch.logsumexp(x, 1), -100, 0.1, 0.01)),
        (ops.check_targets, (labels, 9, -100)),
    ]
    for op, args in cases:
        opcheck(op.default, args)


def _small_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.Tanh(),
                               torch.nn.Linear(24, 5))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_torch_compile_fullgraph_matches_eager(label_smoothing):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(32, 12, generator=gen)
    y = torch.randint(0, 5, (32,), generator=gen)
    y[::7] = -100

    def loss_fn(model, x, y):
        return mt.cross_entropy(model(x), y, label_smoothing=label_smoothing)

    grads = []
    for fn in [loss_fn, torch.compile(loss_fn, fullgraph=True)]:
        model = _small_model(0)
        loss = fn(model, x, y)
        loss.backward()
        grads.append((loss.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b)


def test_torch_compile_soft_k_dim_and_module():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 5, generator=gen, requires_grad=True)
    p = torch.softmax(torch.randn(3, 4, 5, generator=gen), 1)
    loss_fn = mt.CrossEntropyLoss(label_smoothing=0.05)
    compiled = torch.compile(lambda a, b: loss_fn(a, b), fullgraph=True)
    torch.testing.assert_close(compiled(x, p), F.cross_entropy(x, p, label_smoothing=0.05))


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.tensor(digits.data / 16.0, dtype=torch.float32), torch.tensor(digits.target)


def _train(loss_fn, steps=300, witness=None):
    """SGD with momentum on scikit-learn's digits; `witness(model, xb, yb)` sees each step's
    state before the update. Returns the loss of every step."""
    x, y = _digits()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    trace = []
    for step in range(steps):
        idx = order[(step * 128) % 1664:][:128]
        if witness:
            witness(model, x[idx], y[idx])
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx], label_smoothing=0.05)
        loss.backward()
        opt.step()
        trace.append(loss.item())
    return np.array(trace)


def test_training_run_on_digits_matches_torch_step_by_step():
    # Lockstep: at every step of mlecore's run, torch's loss and gradients on the same state.
    def witness(model, xb, yb):
        grads = []
        for fn in (mt.cross_entropy, F.cross_entropy):
            model.zero_grad()
            loss = fn(model(xb), yb, label_smoothing=0.05)
            loss.backward()
            grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        torch.testing.assert_close(grads[0][0], grads[1][0], rtol=2e-6, atol=1e-7)
        for a, b in zip(grads[0][1], grads[1][1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-6)

    ours = _train(mt.cross_entropy, witness=witness)
    theirs = _train(F.cross_entropy)
    assert theirs[-20:].mean() < 0.4  # it really trained
    # Two independent runs: float32 rounding differences grow slowly through 300 momentum
    # steps, yet the trajectories stay together.
    np.testing.assert_allclose(ours[:100], theirs[:100], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(ours, theirs, rtol=3e-3)


def test_bad_labels_raise_the_numpy_apis_index_error():
    x = torch.zeros(4, 3)
    for backend in ["rust", "torch"]:
        with pytest.raises(IndexError, match=r"Target 5 is out of bounds: target\[2\] = 5, "
                                             r"expected a class index in \[0, 3\)"):
            mt.cross_entropy(x, torch.tensor([0, 1, 5, 2]), backend=backend)
        with pytest.raises(IndexError, match=r"target\[1, 0\] = -2"):
            mt.cross_entropy(torch.zeros(2, 3, 2), torch.tensor([[0, 1], [-2, 0]]),
                             backend=backend)
        with pytest.raises(IndexError, match=r"target\[0\] = 9"):
            mt.nll_loss(x, torch.tensor([9, 0, 0, 0]), backend=backend)
    with pytest.raises(IndexError, match=r"target\[2\] = 5"):
        mlecore.cross_entropy(x.numpy(), np.array([0, 1, 5, 2]))


def test_bad_arguments():
    x = torch.zeros(4, 3)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="label_smoothing"):
        mt.cross_entropy(x, y, label_smoothing=-0.5)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\), one per class"):
        mt.cross_entropy(x, y, weight=torch.ones(4))
    with pytest.raises(TypeError, match="dtype"):
        mt.cross_entropy(torch.zeros(4, 3, dtype=torch.long), y)
    with pytest.raises(ValueError, match="backend='rust' runs on CPU tensors only"):
        mt.cross_entropy(torch.zeros(4, 3, device="meta"), y.to("meta"), backend="rust")
    with pytest.raises(ValueError, match="backend must be one of"):
        mlecore.cross_entropy(x, y, backend="gpu")
    for fn in (mt.cross_entropy, mt.nll_loss):
        with pytest.raises(ValueError, match="backend must be one of"):
            fn(x, y, backend="gpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        mt.logsumexp(x, 1, backend="gpu")


@pytest.mark.filterwarnings("ignore:size_average and reduce args")
def test_module_matches_torch_module():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(8, 4, generator=gen)
    y = torch.randint(0, 4, (8,), generator=gen)
    w = torch.rand(4, generator=gen)
    for kw in [dict(), dict(weight=w, reduction="sum"), dict(ignore_index=2,
               label_smoothing=0.2), dict(size_average=False), dict(reduce=False)]:
        ours, theirs = mt.CrossEntropyLoss(**kw), torch.nn.CrossEntropyLoss(**kw)
        torch.testing.assert_close(ours(x, y), theirs(x, y))
    m = mt.CrossEntropyLoss(weight=w)
    assert "weight" in dict(m.named_buffers())


def test_top_level_functions_take_tensors():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (6,), generator=gen)
    loss = mlecore.cross_entropy(x, y)
    assert isinstance(loss, torch.Tensor) and loss.grad_fn is not None
    torch.testing.assert_close(loss, F.cross_entropy(x, y))
    torch.testing.assert_close(mlecore.logsumexp(x, axis=1), torch.logsumexp(x, 1))
    torch.testing.assert_close(mlecore.logsumexp(x, axis=1, keepdims=True),
                               torch.logsumexp(x, 1, keepdim=True))
    torch.testing.assert_close(mlecore.logsumexp(x), torch.logsumexp(x.reshape(-1), 0))
    torch.testing.assert_close(mlecore.softmax(x, axis=0), torch.softmax(x, 0))
    torch.testing.assert_close(mlecore.log_softmax(x, axis=1, backend="torch"),
                               torch.log_softmax(x, 1))
    torch.testing.assert_close(mlecore.nll_loss(torch.log_softmax(x, 1), y), loss)
    with pytest.raises(ValueError, match="numpy input only"):
        mlecore.logsumexp(x, b=torch.ones(5))


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_cross_entropy_with_grad_on_tensors(backend):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (2, 3), generator=gen)
    xr = x.clone().requires_grad_()
    F.cross_entropy(xr, y, label_smoothing=0.1).backward()
    loss, grad = mlecore.cross_entropy_with_grad(x, y, label_smoothing=0.1, backend=backend)
    torch.testing.assert_close(grad, xr.grad)
    # In place (2-D contiguous) and into a buffer (K-dim).
    x2 = torch.randn(7, 4, generator=gen)
    y2 = torch.randint(0, 4, (7,), generator=gen)
    _, want = mt.cross_entropy_with_grad(x2, y2, reduction="sum", backend=backend)
    inplace = x2.clone()
    _, g = mt.cross_entropy_with_grad(inplace, y2, reduction="sum", out=inplace,
                                      backend=backend)
    assert g is inplace
    torch.testing.assert_close(inplace, want)
    buf = torch.empty_like(x)
    _, g = mt.cross_entropy_with_grad(x, y, label_smoothing=0.1, out=buf, backend=backend)
    assert g is buf
    torch.testing.assert_close(buf, xr.grad)
    # The loss carries autograd, reusing the fused gradient; per-row with reduction="none".
    xa = x.clone().requires_grad_()
    loss, _ = mt.cross_entropy_with_grad(xa, y, reduction="none", backend=backend)
    (loss * torch.arange(6.0, dtype=torch.float64).reshape(2, 3)).sum().backward()
    xb = x.clone().requires_grad_()
    (F.cross_entropy(xb, y, reduction="none") * torch.arange(6.0, dtype=torch.float64)
     .reshape(2, 3)).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    with pytest.raises(ValueError, match="requires grad"):
        mt.cross_entropy_with_grad(xa, y, out=xa)


@pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(9)
    for soft in [False, True]:
        x, t, c = _ce_case(gen, (64, 1000), soft, torch.float32)
        xc = x.clone().requires_grad_()
        xg = x.cuda().requires_grad_()
        lc = mt.cross_entropy(xc, t, label_smoothing=0.1)
        lg = mt.cross_entropy(xg, t.cuda(), label_smoothing=0.1)
        lc.backward()
        lg.backward()
        torch.testing.assert_close(lg.cpu(), lc, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-5, atol=1e-7)
    with pytest.raises(IndexError, match="out of bounds"):
        mt.cross_entropy(torch.zeros(2, 3, device="cuda"), torch.tensor([0, 3], device="cuda"))
    with pytest.raises(ValueError, match="CPU tensors only"):
        mt.cross_entropy(torch.zeros(2, 3, device="cuda"), torch.tensor([0, 1], device="cuda"),
                         backend="rust")


def test_gradient_memory_is_reused_only_when_nothing_refers_to_it():
    from mlecore.torch._buffers import BufferPool

    pool = BufferPool(keep=2, min_bytes=1024)
    a = pool.empty((64, 64), torch.float32)
    ptr = a.data_ptr()
    view = a[3]
    del a
    b = pool.empty((64, 64), torch.float32)  # `view` still uses the first array
    assert b.data_ptr() != ptr
    del view
    c = pool.empty((64, 64), torch.float32)
    assert c.data_ptr() == ptr  # free again: reused
    assert pool.empty((4, 4), torch.float32).numel() == 16  # small: plain allocation
    h = pool.empty((64, 64), torch.bfloat16)
    assert h.dtype == torch.bfloat16 and h.shape == (64, 64)
    del b, c, h
    pool.clear()
    mt.release_buffers()


def test_autograd_gradients_held_by_the_caller_are_never_overwritten():
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(300, 4000, generator=gen, requires_grad=True)  # 4.8 MB: pooled
    y = torch.randint(0, 4000, (300,), generator=gen)
    mt.cross_entropy(x, y).backward()
    first, keep = x.grad, x.grad.clone()
    x.grad = None
    mt.cross_entropy(x * 1.5, y).backward()
    assert torch.equal(first, keep) and first.data_ptr() != x.grad.data_ptr()
    ref = x.detach().clone().requires_grad_()
    F.cross_entropy(ref * 1.5, y).backward()
    torch.testing.assert_close(x.grad, ref.grad)
