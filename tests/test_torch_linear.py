"""`mlecore.torch.linear_cross_entropy` against torch's own `F.linear_cross_entropy` and the
composition F.linear + F.cross_entropy: values, gradients, shapes, options, autograd,
torch.compile, memory, and bad input."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import mlecore.torch as mt
from conftest import ticks_while
from mlecore import _bench_linear
from mlecore._linear_chunks import chunk_rows
from mlecore.torch import _linear


def _linear_rows(n, c):
    return chunk_rows(n, c, 4, None)

BACKENDS = ["auto", "torch"]


def _problem(n=13, d=7, c=20, dtype=torch.float64, bias=True, probs=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, dtype=dtype, generator=g).requires_grad_()
    w = (torch.randn(c, d, dtype=dtype, generator=g) * 0.7).requires_grad_()
    b = torch.randn(c, dtype=dtype, generator=g).requires_grad_() if bias else None
    if probs:
        t = torch.softmax(torch.randn(n, c, dtype=dtype, generator=g) * 2, 1)
    else:
        t = torch.randint(0, c, (n,), generator=g)
        t[::4] = -100
    return x, w, b, t


def _grads(loss, *inputs):
    ins = [t for t in inputs if t is not None]
    return torch.autograd.grad(loss.sum(), ins)


CASES = [
    {},
    {"label_smoothing": 0.15},
    {"weight": "w"},
    {"weight": "w", "label_smoothing": 0.05},
    {"ignore_index": 3},
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("probs", [False, True])
def test_agrees_with_torchs_linear_cross_entropy(backend, reduction, case, probs):
    x, w, b, t = _problem(probs=probs, seed=case)
    kw = dict(CASES[case])
    if kw.get("weight") == "w":
        kw["weight"] = torch.rand(w.shape[0], dtype=w.dtype) + 0.5
    if probs:
        kw.pop("ignore_index", None)
    elif "ignore_index" in kw:
        t = torch.where(t == -100, kw["ignore_index"], t)
    want = F.linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction, **kw)
    expected = _grads(want, x, w, b)
    for chunk in (1, 5, None):
        got = mt.linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction,
                                      chunk_size=chunk, backend=backend, **kw)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for g, e in zip(_grads(got, x, w, b), expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [False, True])
def test_float32_agrees_with_linear_then_cross_entropy(backend, bias):
    x, w, b, t = _problem(n=300, d=33, c=1001, dtype=torch.float32, bias=bias)
    got = mt.linear_cross_entropy(x, w, t, linear_bias=b, chunk_size=64, backend=backend)
    want = F.cross_entropy(F.linear(x, w, b), t)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)
    for g, e in zip(_grads(got, x, w, b), _grads(want, x, w, b), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_with_softcap_and_z_loss(reduction, backend):
    x, w, b, t = _problem(n=9, d=4, c=6)

    def f(x, w, b):
        return mt.linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction,
                                       softcap=1.5, lse_square_scale=0.05, chunk_size=4,
                                       label_smoothing=0.1, backend=backend)

    # A second backward pass recomputes the gradients that the first one was handed (a
    # different order of summation): reentrant to rounding, not to the bit.
    assert torch.autograd.gradcheck(f, (x, w, b), nondet_tol=1e-13)
    assert torch.autograd.gradgradcheck(f, (x, w, b), nondet_tol=1e-13)


def test_softcap_and_z_loss_agree_with_the_materialized_loss():
    x, w, b, t = _problem(n=40, d=6, c=30)
    kw = dict(softcap=2.0, lse_square_scale=1e-2, label_smoothing=0.1)
    got = mt.linear_cross_entropy(x, w, t, linear_bias=b, chunk_size=7, **kw)
    want = mt.cross_entropy(F.linear(x, w, b), t, **kw)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for g, e in zip(_grads(got, x, w, b), _grads(want, x, w, b), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-11, atol=1e-12)
    stats = mt.linear_cross_entropy(x, w, t, linear_bias=b, return_stats=True, **kw)
    ref = mt.cross_entropy(F.linear(x, w, b), t, return_stats=True, **kw)
    for g, e in zip(stats, ref, strict=True):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_in_float32(dtype):
    x, w, b, t = _problem(n=64, d=16, c=50, dtype=dtype)
    got = mt.linear_cross_entropy(x, w, t, linear_bias=b, chunk_size=8)
    assert got.dtype == dtype
    gx, gw, gb = _grads(got, x, w, b)
    assert gx.dtype == gw.dtype == gb.dtype == dtype
    x64, w64, b64 = (a.detach().double().requires_grad_() for a in (x, w, b))
    want = F.cross_entropy(F.linear(x64, w64, b64), t)
    ex, ew, eb = _grads(want, x64, w64, b64)
    torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=1e-2)
    # One rounding of a float32 sum, not the error of a sum of rounded terms.
    torch.testing.assert_close(gw.double(), ew, rtol=1e-2, atol=2e-4)
    torch.testing.assert_close(gb.double(), eb, rtol=1e-2, atol=2e-4)


def test_torchs_shapes_unbatched_probabilities_and_k_dimensional():
    x, w, b, t = _problem(dtype=torch.float32)
    one = mt.linear_cross_entropy(x[0], w, t[1], linear_bias=b, reduction="none")
    assert one.shape == ()
    torch.testing.assert_close(one, F.linear_cross_entropy(x[0], w, t[1], linear_bias=b,
                                                           reduction="none"))
    p = torch.softmax(torch.randn(20), 0)
    torch.testing.assert_close(mt.linear_cross_entropy(x[0], w, p),
                               F.linear_cross_entropy(x[0], w, p))
    wk = torch.randn(20, 3, 7)
    bk = torch.randn(20, 3)
    yk = torch.randint(0, 20, (13, 3))
    torch.testing.assert_close(mt.linear_cross_entropy(x, wk, yk, linear_bias=bk),
                               F.linear_cross_entropy(x, wk, yk, linear_bias=bk))
    # A probability target that requires grad gets its gradient, as torch's reference.
    q = torch.softmax(torch.randn(13, 20, dtype=torch.float64), 1).requires_grad_()
    xd = x.detach().double()
    (gq,) = torch.autograd.grad(mt.linear_cross_entropy(xd, w.detach().double(), q), q)
    (eq,) = torch.autograd.grad(F.linear_cross_entropy(xd, w.detach().double(), q), q)
    torch.testing.assert_close(gq, eq)


def test_options_batch_chunk_size_is_honored():
    opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=3)
    assert _linear._chunk(opts, None, 100, 50, torch.float32) == 3
    assert _linear._chunk(None, None, 2048, 50257, torch.float32) == 1024
    assert _linear._chunk(None, None, 8192, 32000, torch.float32) == 2048
    x, w, _, t = _problem(bias=False)
    torch.testing.assert_close(mt.linear_cross_entropy(x, w, t, options=opts),
                               F.linear_cross_entropy(x, w, t, options=opts))
    with pytest.raises(ValueError, match="disagree"):
        mt.linear_cross_entropy(x, w, t, options=opts, chunk_size=4)
    with pytest.raises(TypeError, match="LinearCrossEntropyOptions"):
        mt.linear_cross_entropy(x, w, t, options="chunked")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_all_ignored_and_single_rows(backend):
    w = torch.randn(5, 3, requires_grad=True)
    x0 = torch.zeros(0, 3, requires_grad=True)
    y0 = torch.zeros(0, dtype=torch.long)
    for red in ("mean", "sum", "none"):
        got = mt.linear_cross_entropy(x0, w, y0, reduction=red, backend=backend)
        want = F.linear_cross_entropy(x0, w, y0, reduction=red)
        torch.testing.assert_close(got, want, equal_nan=True)
    x = torch.randn(4, 3, requires_grad=True)
    y = torch.full((4,), -100)
    loss = mt.linear_cross_entropy(x, w, y, chunk_size=1, backend=backend)
    assert torch.isnan(loss)
    loss.backward()
    assert not x.grad.any() and not w.grad.any()


def test_compiles_without_a_graph_break():
    x, w, b, t = _problem(dtype=torch.float32)

    def f(x, w, b, t):
        return mt.linear_cross_entropy(x, w, t, linear_bias=b, chunk_size=4,
                                       label_smoothing=0.1)

    got = torch.compile(f, fullgraph=True)(x, w, b, t)
    want = f(x, w, b, t)
    torch.testing.assert_close(got, want)
    for g, e in zip(_grads(got, x, w, b), _grads(want, x, w, b), strict=True):
        torch.testing.assert_close(g, e)


def test_backward_twice_with_retain_graph():
    x, w, b, t = _problem()
    loss = mt.linear_cross_entropy(x, w, t, linear_bias=b)
    loss.backward(retain_graph=True)
    first = w.grad.clone()
    loss.backward()
    torch.testing.assert_close(w.grad, 2 * first)


def test_frozen_weight_gets_no_gradient_and_input_does():
    x, w, _, t = _problem(bias=False)
    w = w.detach()
    loss = mt.linear_cross_entropy(x, w, t)
    (gx,) = torch.autograd.grad(loss, x)
    (ex,) = torch.autograd.grad(F.cross_entropy(x @ w.T, t), x)
    torch.testing.assert_close(gx, ex)


def test_module_matches_torchs_module():
    torch.manual_seed(1)
    theirs = torch.nn.LinearCrossEntropyLoss(8, 30, bias=True, label_smoothing=0.1)
    ours = mt.LinearCrossEntropyLoss(8, 30, bias=True, label_smoothing=0.1, chunk_size=3)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(10, 8)
    y = torch.randint(0, 30, (10,))
    a, e = ours(x, y), theirs(x, y)
    torch.testing.assert_close(a, e)
    a.backward()
    e.backward()
    torch.testing.assert_close(ours.linear.weight.grad, theirs.linear.weight.grad)
    torch.testing.assert_close(ours.linear.bias.grad, theirs.linear.bias.grad)


def test_gil_is_released():
    x = torch.randn(2048, 256)
    w = torch.randn(16384, 256, requires_grad=True)
    t = torch.randint(0, 16384, (2048,))
    ticks, seconds = ticks_while(lambda: mt.linear_cross_entropy(x, w, t).backward())
    assert ticks >= 5, f"only {ticks} ticks in {seconds:.3f}s"


def test_bad_input_gets_clear_errors():
    x, w, b, t = _problem(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="expected equal input and linear_weight"):
        mt.linear_cross_entropy(x[:, :3], w, t)
    with pytest.raises(RuntimeError, match="expected linear_bias shape"):
        mt.linear_cross_entropy(x, w, t, linear_bias=b[:3])
    with pytest.raises(RuntimeError, match="same dtype"):
        mt.linear_cross_entropy(x, w.double(), t)
    with pytest.raises(RuntimeError, match="dimensionality 1 or 2"):
        mt.linear_cross_entropy(x[None], w, t)
    bad = t.clone()
    bad[5] = 20
    with pytest.raises(IndexError, match=r"target\[5\] = 20"):
        mt.linear_cross_entropy(x, w, bad)
    with pytest.raises(ValueError, match="softcap"):
        mt.linear_cross_entropy(x, w, t, softcap=-1.0)
    with pytest.raises(ValueError, match="lse_square_scale"):
        mt.linear_cross_entropy(x, w, t, lse_square_scale=-0.1)
    p = torch.softmax(torch.randn(13, 20), 1)
    with pytest.raises(RuntimeError, match="ignore_index cannot be specified"):
        mt.linear_cross_entropy(x, w, p, ignore_index=-100)
    with pytest.raises(ValueError, match="weight"):
        mt.linear_cross_entropy(x, w, t, weight=torch.ones(3))
    with pytest.raises(ValueError, match="target of class indices must have shape"):
        mt.linear_cross_entropy(x, w, t[:4])


@pytest.mark.processes
def test_peak_memory_is_one_chunk_not_the_logits():
    # The logits would be 2 GiB in float32. mlecore's forward and backward add one chunk of
    # them (256 MiB), the weight's gradient (4 MiB), per-row results, and the BLAS libraries'
    # working buffers (about 55 MiB for each of numpy's and scipy's OpenBLAS, allocated on
    # first use). Measured as the rise of a fresh process's peak resident size, as the bench
    # measures it, against the materialized F.linear + F.cross_entropy.
    n, d, c = 16384, 32, 32768
    ours = _bench_linear.peak_extra_bytes("mlecore.torch", n, d, c)
    one_chunk = _linear_rows(n, c) * c * 4
    assert ours <= one_chunk + (128 << 20), (ours, one_chunk)
    theirs = _bench_linear.peak_extra_bytes("torch-plain", n, d, c)
    assert theirs >= 2 * n * c * 4, theirs  # the logits and their gradient, seen
    assert ours * 8 <= theirs, (ours, theirs)


def test_incoming_gradients_scale_the_precomputed_ones():
    x, w, b, t = _problem()
    loss = mt.linear_cross_entropy(x, w, t, linear_bias=b, reduction="sum")
    got = torch.autograd.grad(loss * -2.5, (x, w, b))
    want = F.linear_cross_entropy(x, w, t, linear_bias=b, reduction="sum")
    for g, e in zip(got, torch.autograd.grad(want * -2.5, (x, w, b)), strict=True):
        torch.testing.assert_close(g, e)


def test_the_numpy_functions_hand_tensors_to_mlecore_torch():
    import mlecore

    x, w, b, t = _problem()
    torch.testing.assert_close(mlecore.linear_cross_entropy(x, w, t, b, label_smoothing=0.1),
                               mt.linear_cross_entropy(x, w, t, linear_bias=b,
                                                       label_smoothing=0.1))
    with pytest.raises(TypeError, match="mlecore.torch.linear_cross_entropy"):
        mlecore.linear_cross_entropy_with_grad(x, w, t)


def test_torch_func_transforms_take_the_reference_path():
    x, w, b, t = _problem(n=5, d=3, c=4)
    x, w = x.detach(), w.detach()

    def f(w):
        return mt.linear_cross_entropy(x, w, t, label_smoothing=0.1)

    def g(w):
        return F.linear_cross_entropy(x, w, t, label_smoothing=0.1)

    torch.testing.assert_close(torch.func.grad(f)(w), torch.func.grad(g)(w))
    torch.testing.assert_close(torch.func.hessian(f)(w), torch.func.hessian(g)(w))


_FORK_DURING_THE_LINEAR_LOSS = """
import os, threading, time, torch
import mlecore.torch as mt
x = torch.randn(512, 256, requires_grad=True)
w = torch.randn(1000, 256, requires_grad=True)
y = torch.randint(0, 1000, (512,))
stop = threading.Event()
def train():
    while not stop.is_set():
        mt.linear_cross_entropy(x, w, y, chunk_size=128).backward()
worker = threading.Thread(target=train, daemon=True)
worker.start()
for _ in range(6):
    time.sleep(0.05)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
stop.set()
worker.join()
print("forked")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_fork_while_another_thread_runs_the_linear_loss_does_not_hang():
    """The products run on torch's own BLAS, not numpy's OpenBLAS, whose fork handler
    deadlocked a fork while another thread was inside it (issue 23, item 2). In a process
    of its own, so that a hang is a failure, not a hung suite."""
    try:
        done = subprocess.run([sys.executable, "-c", _FORK_DURING_THE_LINEAR_LOSS],
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("fork() hung while another thread ran mt.linear_cross_entropy")
    assert done.returncode == 0 and "forked" in done.stdout, done.stderr


def test_accuracy_is_judged_on_the_soft_capped_logits_on_every_path():
    """Saturated logits tie after the cap: the fused linear loss judged probability targets
    before it (accuracy 1/3) and cross_entropy after it (1); one rule now (issue 23, item
    10)."""
    import mlecore

    x = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    w = torch.tensor([[1000.0], [900.0], [-5.0]], dtype=torch.float64)
    t = torch.tensor([[0.1, 0.8, 0.1]] * 3, dtype=torch.float64)
    logits = F.linear(x, w)
    want = mt.cross_entropy(logits, t, softcap=1.0, return_stats=True).accuracy
    assert float(want) == 1.0  # c·tanh(z/c) saturates both large logits to the same 1.0
    for backend in ("rust", "torch"):
        got = mt.linear_cross_entropy(x, w, t, softcap=1.0, return_stats=True,
                                      backend=backend).accuracy
        assert float(got) == float(want), backend
    got = mlecore.linear_cross_entropy(x.numpy(), w.numpy(), t.numpy(), softcap=1.0,
                                       return_stats=True).accuracy
    assert got == float(mlecore.cross_entropy(logits.numpy(), t.numpy(), softcap=1.0,
                                              return_stats=True).accuracy) == 1.0


def test_a_backward_pass_through_the_fused_losss_lse_is_a_clear_error():
    """Its gradient would need the logits; it was silently dropped (issue 23, item 10)."""
    x, w, b, t = _problem()
    stats = mt.linear_cross_entropy(x, w, t, linear_bias=b, return_stats=True)
    with pytest.raises(RuntimeError, match="stats.lse of linear_cross_entropy carries no"):
        (stats.loss + 0.1 * (stats.lse ** 2).mean()).backward()
    stats = mt.linear_cross_entropy(x, w, t, linear_bias=b, return_stats=True)
    (stats.loss + 0.1 * (stats.lse.detach() ** 2).mean()).backward()  # detached: fine
    assert x.grad is not None
