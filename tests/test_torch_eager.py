"""The eager CPU path (mlecore/torch/_eager.py) skips the torch dispatcher; it must give the
operators' results bit for bit, and hand everything it does not take to them."""

import pytest
import torch
import torch.nn.functional as F

import mlecore.torch as mt
from mlecore.torch import _eager

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SHAPES = [(1, 1), (1, 2), (3, 10), (64, 10), (17, 33), (5, 1000), (4, 2049), (0, 5), (6, 0),
          (7,)]


@pytest.fixture
def via_operators(monkeypatch):
    """Runs a function with the eager path switched off: every call goes to the operators."""
    def run(fn):
        with monkeypatch.context() as m:
            m.setattr(_eager, "usable", lambda x: False)
            return fn()
    return run


def _both(fn, via_operators, make_inputs):
    """(value, gradients) of `fn` on fresh inputs, once eagerly and once via the operators."""
    results = []
    for path in ("eager", "operators"):
        inputs = make_inputs()
        out = fn(*inputs) if path == "eager" else via_operators(lambda i=inputs: fn(*i))
        grads = []
        if out.requires_grad:
            g = torch.full_like(out, 3.0) if out.ndim else torch.tensor(0.37, dtype=out.dtype)
            out.backward(g)
            grads = [t.grad for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
        results.append((out.detach(), grads))
    return results


def _same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.view(torch.uint8) if a.dtype.itemsize == 1 else a, b) or (
        torch.isnan(a).equal(torch.isnan(b)) and torch.equal(a.nan_to_num(), b.nan_to_num()))


def _check(results):
    (v1, g1), (v2, g2) = results
    _same(v1, v2)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2, strict=True):
        _same(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_is_bit_identical_on_both_paths(dtype, shape, reduction, via_operators):
    gen = torch.Generator().manual_seed(hash((shape, reduction)) % 2**31)
    classes = shape[-1]
    rows = shape[0] if len(shape) == 2 else None

    def make(index=True, smoothing=0.0, weighted=False, z=0.0):
        def inputs():
            x = (torch.randn(shape, generator=gen) * 3).to(dtype).requires_grad_()
            if index:
                t_shape = (rows,) if rows is not None else ()
                t = torch.randint(0, max(classes, 1), t_shape, generator=gen)
                if classes == 0:
                    t = torch.full(t_shape, -100)
                elif t.ndim and t.numel() > 2:
                    t[1] = -100
            else:
                t = torch.softmax(torch.randn(shape, generator=gen), -1).to(dtype)
            w = (torch.rand(classes, generator=gen) + 0.5).to(dtype) if weighted else None
            return x, t, w, smoothing, z
        return inputs

    def fn(x, t, w, eps, z):
        return mt.cross_entropy(x, t, w, reduction=reduction, label_smoothing=eps,
                                lse_square_scale=z)

    for kind in [dict(), dict(smoothing=0.1, weighted=True), dict(index=False),
                 dict(index=False, smoothing=0.2, weighted=True), dict(z=1e-3)]:
        gen.manual_seed(hash((shape, reduction, str(kind))) % 2**31)
        state = gen.get_state()

        def inputs(kind=kind, state=state):
            gen.set_state(state)
            return make(**kind)()
        _check(_both(fn, via_operators, inputs))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2), (64, 10), (3, 4, 5), (5, 2049), (0, 3), (4, 0),
                                   (9,)])
@pytest.mark.parametrize("name", ["logsumexp", "log_softmax", "softmax", "nll"])
def test_normalizers_and_nll_are_bit_identical_on_both_paths(dtype, shape, name,
                                                             via_operators):
    gen = torch.Generator().manual_seed(7)
    state = gen.get_state()

    def inputs():
        gen.set_state(state)
        x = (torch.randn(shape, generator=gen) * 4).to(dtype).requires_grad_()
        return (x,)

    def fn(x):
        if name == "logsumexp":
            return mt.logsumexp(x, -1)
        if name == "nll":
            if x.shape[-1] == 0 or x.ndim > 2:
                return mt.logsumexp(x, -1)  # nll's (N, C, d) case is covered elsewhere
            lp = mt.log_softmax(x, -1)
            t_shape = x.shape[:1] if x.ndim == 2 else ()
            t = torch.randint(0, x.shape[-1], t_shape, generator=torch.Generator()
                              .manual_seed(1))
            return mt.nll_loss(lp, t, reduction="sum")
        return getattr(mt, name)(x, -1)
    _check(_both(fn, via_operators, inputs))


def _mlecore_ops(fn) -> set[str]:
    """The mlecore operators that `fn` runs through the dispatcher."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages() if e.key.startswith("mlecore::")}


def test_the_eager_path_never_calls_the_dispatcher():
    """In plain eager CPU mode the operators are not entered (that is the point); for a
    tensor subclass (its __torch_function__ rules) they are."""
    x = torch.randn(8, 5, requires_grad=True)
    y = torch.randint(0, 5, (8,))

    def eager():
        mt.cross_entropy(x, y).backward()
        mt.cross_entropy(x, torch.softmax(x.detach(), 1), label_smoothing=0.1).backward()
        mt.nll_loss(mt.log_softmax(x, 1), y).backward()
        mt.logsumexp(x, 1).sum().backward()
        mt.softmax(x, -1).sum().backward()
        with torch.no_grad():
            mt.cross_entropy(x, y)
    assert _mlecore_ops(eager) == set()
    class Logged(torch.Tensor):  # a subclass with torch-function rules of its own
        pass
    s = torch.randn(8, 5).as_subclass(Logged).requires_grad_()
    assert "mlecore::cross_entropy" in _mlecore_ops(lambda: mt.cross_entropy(s, y).backward())
    # A Parameter is a plain tensor to torch (no torch-function rules): the eager path.
    p = torch.nn.Parameter(torch.randn(8, 5))
    assert _mlecore_ops(lambda: mt.cross_entropy(p, y).backward()) == set()
    w = torch.nn.Parameter(torch.randn(5, 4))
    assert _mlecore_ops(lambda: mt.linear_cross_entropy(torch.randn(8, 4), w, y).backward()
                        ) == set()
    assert "mlecore::cross_entropy" in _mlecore_ops(
        lambda: mt.cross_entropy(x, y, softcap=5.0).backward())


def test_repeated_backward_passes_give_the_same_gradient():
    x = torch.randn(16, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (16,))
    loss = mt.cross_entropy(x, y, label_smoothing=0.1) * 3
    first = torch.autograd.grad(loss, x, retain_graph=True)[0]
    for _ in range(3):
        assert torch.equal(torch.autograd.grad(loss, x, retain_graph=True)[0], first)
    assert torch.autograd.gradcheck(lambda z: mt.cross_entropy(z, y, reduction="sum"), (x,))


def test_in_place_changes_to_saved_logits_are_caught():
    """As with torch's own functions: the saved logits may not be modified before backward."""
    x = torch.randn(4, 3, requires_grad=True)
    z = x * 1
    loss = mt.cross_entropy(z, torch.tensor([0, 1, 2, 0]))
    with torch.no_grad():
        z.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_compiled_and_eager_agree_bit_for_bit():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(32, 11, generator=gen)
    y = torch.randint(0, 11, (32,), generator=gen)

    def step(x, y):
        x = x.clone().requires_grad_()
        loss = mt.cross_entropy(x, y, label_smoothing=0.1)
        loss.backward()
        return loss.detach(), x.grad

    compiled = torch.compile(lambda x, y: mt.cross_entropy(x, y, label_smoothing=0.1),
                             fullgraph=True)
    xc = x.clone().requires_grad_()
    lc = compiled(xc, y)
    lc.backward()
    le, ge = step(x, y)
    assert torch.equal(lc.detach(), le)
    assert torch.equal(xc.grad, ge)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [dict(), dict(softcap=3.0, label_smoothing=0.1),
                                     dict(lse_square_scale=1e-3, chunk_size=5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_linear_cross_entropy_is_bit_identical_on_both_paths(reduction, options, dtype,
                                                              via_operators):
    gen = torch.Generator().manual_seed(11)
    state = gen.get_state()

    def inputs():
        gen.set_state(state)
        x = torch.randn(13, 6, generator=gen).to(dtype).requires_grad_()
        w = torch.randn(9, 6, generator=gen).to(dtype).requires_grad_()
        b = torch.randn(9, generator=gen).to(dtype).requires_grad_()
        y = torch.randint(0, 9, (13,), generator=gen)
        y[3] = -100
        return x, w, b, y

    def fn(x, w, b, y):
        return mt.linear_cross_entropy(x, w, y, linear_bias=b, reduction=reduction, **options)
    _check(_both(fn, via_operators, inputs))


def test_repeated_linear_backward_passes_give_the_same_gradients():
    """The first pass hands over the gradients the forward pass computed; a later one
    (retain_graph) computes them again the same way (issue 23, item 9)."""
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(10, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (10,), generator=gen)
    for reduction, scale in (("mean", 1.0), ("sum", 3.0), ("mean", -0.5)):
        loss = mt.linear_cross_entropy(x, w, y, reduction=reduction, chunk_size=4) * scale
        first = torch.autograd.grad(loss, (x, w), retain_graph=True)
        for _ in range(2):
            again = torch.autograd.grad(loss, (x, w), retain_graph=True)
            assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert torch.autograd.gradcheck(
        lambda a, b: mt.linear_cross_entropy(a, b, y, reduction="sum") * 3, (x, w),
        nondet_tol=0.0)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_a_batch_of_incoming_gradients_gets_torchs_answer(reduction):
    """`torch.autograd.grad(..., is_grads_batched=True)`: the incoming gradients arrive as a
    batched tensor with no memory of its own; the backward uses torch's operations for it
    (issue 23, item 8, in part)."""
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(8, 5, generator=gen)
    y = torch.randint(0, 5, (8,), generator=gen)
    v = torch.eye(8) if reduction == "none" else torch.tensor([1.0, 2.0, -3.0])
    got, want = [], []
    for loss, out in ((lambda a: mt.cross_entropy(a, y, reduction=reduction), got),
                      (lambda a: F.cross_entropy(a, y, reduction=reduction), want)):
        a = x.clone().requires_grad_()
        out.append(torch.autograd.grad(loss(a), a, v, is_grads_batched=True)[0])
    torch.testing.assert_close(got[0], want[0])
    if reduction != "none":
        w = torch.randn(6, 5, generator=gen)
        a = x.clone().requires_grad_()
        g = torch.autograd.grad(mt.linear_cross_entropy(a, w, y, reduction=reduction), a, v,
                                is_grads_batched=True)[0]
        b = x.clone().requires_grad_()
        e = torch.autograd.grad(F.cross_entropy(F.linear(b, w), y, reduction=reduction), b,
                                v, is_grads_batched=True)[0]
        torch.testing.assert_close(g, e)
