"""cross_entropy and nll_loss against float64 references (torch.nn.functional, and its
semantics transcribed in numpy) on every option."""

import itertools

import numpy as np
import pytest

import mlecore
from conftest import CLASS_COUNTS, numpy_ce, tol
from mlecore._demo import SEED_LABELS, SEED_LOGITS, SEED_SOFT

LABEL_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                np.uint64]


def test_seed_example_to_the_digit():
    s, y = SEED_LOGITS, SEED_LABELS
    hard = mlecore.cross_entropy(s, y)
    soft = mlecore.cross_entropy(s, SEED_SOFT)
    onehot = mlecore.cross_entropy(s, np.eye(3, dtype=np.float32)[y])
    assert (f"{hard:.4f}", f"{soft:.4f}", f"{onehot:.4f}") == ("1.0686", "1.0685", "1.0686")
    assert hard == onehot and hard.dtype == np.float32
    # The float64 result correctly rounded.
    assert hard == np.float32(numpy_ce(s, y)) and soft == np.float32(numpy_ce(s, SEED_SOFT))


@pytest.mark.torch
def test_seed_example_matches_torch_to_the_float32_digit():
    import torch
    import torch.nn.functional as F

    from conftest import torch_ce

    s, y = SEED_LOGITS, SEED_LABELS
    hard = mlecore.cross_entropy(s, y)
    soft = mlecore.cross_entropy(s, SEED_SOFT)
    ts = torch.from_numpy(s)
    t_hard = F.cross_entropy(ts, torch.from_numpy(y)).item()
    t_soft = F.cross_entropy(ts, torch.from_numpy(SEED_SOFT)).item()
    # torch's float32 arithmetic lands within an ulp; mlecore is the correctly rounded value.
    assert hard == pytest.approx(t_hard, abs=1.2e-7) and soft == pytest.approx(t_soft, abs=1.2e-7)
    assert hard == np.float32(torch_ce(s, y)) and soft == np.float32(torch_ce(s, SEED_SOFT))


def _case(rng, shape, soft, dtype=np.float64):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    c = shape[0] if len(shape) == 1 else shape[1]
    tshape = () if len(shape) == 1 else (shape[0],) + tuple(shape[2:])
    if soft:
        p = rng.random(shape)
        return x, (p / p.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)).astype(dtype), c
    y = rng.integers(0, c, tshape)
    if y.ndim and y.size > 2:
        y.reshape(-1)[::4] = -100  # some ignored targets
    return x, y, c


OPTIONS = list(itertools.product([False, True], [0.0, 0.15, 1.0], ["mean", "sum", "none"]))


@pytest.mark.parametrize("shape", [(6, 5), (1, 1), (4, 1), (5,), (3, 4, 7), (2, 3, 4, 5),
                                   (0, 5), (3, 2049)])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("weighted, eps, reduction", OPTIONS)
def test_every_option_matches_torch(rng, ref, shape, soft, weighted, eps, reduction):
    x, t, c = _case(rng, shape, soft)
    if not soft and len(shape) == 1:
        t = np.int64(rng.integers(0, c))
    w = rng.random(c) + 0.5 if weighted else None
    kw = dict(weight=w, reduction=reduction, label_smoothing=eps)
    got = mlecore.cross_entropy(x, t, **kw)
    want = ref.ce(x, t, **kw)
    assert np.shape(got) == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("cols", CLASS_COUNTS)
def test_low_precision_against_float64(rng, ref, dtype, cols):
    x, y, _ = _case(rng, (9, cols), False, dtype)
    got = mlecore.cross_entropy(x, y, reduction="none")
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref.ce(x, y, reduction="none"), *tol(dtype))
    mean = mlecore.cross_entropy(x, y, label_smoothing=0.1)
    np.testing.assert_allclose(mean, ref.ce(x, y, label_smoothing=0.1), *tol(dtype))


@pytest.mark.parametrize("classes", [7, 257])
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES)
def test_every_integer_label_dtype(rng, ref, label_dtype, classes):
    """Every integer width and sign, on rows of few classes (their labels read a vector of
    rows at a time) and on long rows (one label per row), with ignored rows: ignore_index is
    −100 for signed labels and a large one of the type for unsigned ones."""
    info = np.iinfo(label_dtype)
    ignore = -100 if info.min < 0 else min(int(info.max), 2**31 - 1)
    x = rng.standard_normal((50, classes))
    y = rng.integers(0, min(classes, info.max), 50)
    y[[3, 17, 40]] = ignore
    typed = y.astype(label_dtype)
    assert mlecore.cross_entropy(x, typed, ignore_index=ignore) == pytest.approx(
        ref.ce(x, y, ignore_index=ignore), rel=1e-13)
    loss, grad = mlecore.cross_entropy_with_grad(x, typed, ignore_index=ignore,
                                                 reduction="sum")
    want_loss, want_grad = ref.ce_grad(x, y, ignore_index=ignore, reduction="sum")
    assert loss == pytest.approx(float(want_loss), rel=1e-13)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-11, atol=1e-13)
    assert not grad[[3, 17, 40]].any()


def test_huge_class_count(rng, ref):
    x = rng.standard_normal((4, 131_073)).astype(np.float32)
    y = rng.integers(0, 131_073, 4)
    np.testing.assert_allclose(mlecore.cross_entropy(x, y, reduction="none"),
                               ref.ce(x, y, reduction="none"), rtol=2e-6)


@pytest.mark.parametrize("layout", ["F", "strided", "reversed"])
def test_non_contiguous_inputs(rng, ref, layout):
    base = rng.standard_normal((12, 9))
    x = {"F": np.asfortranarray(base), "strided": base[::2, ::2],
         "reversed": base[::-1, ::-1]}[layout]
    y = rng.integers(0, x.shape[1], x.shape[0])
    p = np.asfortranarray(mlecore.softmax(rng.standard_normal(x.shape), axis=1))
    assert mlecore.cross_entropy(x, y) == pytest.approx(ref.ce(x, y), rel=1e-13)
    assert mlecore.cross_entropy(x, p) == pytest.approx(ref.ce(x, p), rel=1e-13)


def test_ignore_index_need_not_be_a_class_and_all_ignored_is_nan(rng, ref):
    x = rng.standard_normal((4, 3))
    y = np.array([0, 7, 2, 7])
    assert mlecore.cross_entropy(x, y, ignore_index=7) == pytest.approx(
        ref.ce(x, y, ignore_index=7), rel=1e-14)
    assert np.isnan(mlecore.cross_entropy(x, np.full(4, -100)))
    assert mlecore.cross_entropy(x, np.full(4, -100), reduction="sum") == 0.0
    assert np.isnan(mlecore.cross_entropy(np.zeros((0, 3)), np.zeros(0, np.int64)))


def test_zero_probability_on_neg_inf_logit_adds_nothing(ref):
    x = np.array([[-np.inf, 0.0, 1.0]])
    p = np.array([[0.0, 0.5, 0.5]])
    got = mlecore.cross_entropy(x, p)
    assert np.isfinite(got)  # torch gives nan here (0·−inf)
    assert got == pytest.approx(ref.ce(x[:, 1:], p[:, 1:]), rel=1e-15)


@pytest.mark.parametrize("shape", [(6, 5), (5,), (3, 4, 7)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss_matches_torch(rng, ref, shape, weighted, reduction):
    x, y, c = _case(rng, shape, False)
    if len(shape) == 1:
        y = np.int64(2)
    logp = mlecore.log_softmax(x, axis=0 if len(shape) == 1 else 1)
    w = rng.random(c) + 0.5 if weighted else None
    got = mlecore.nll_loss(logp, y, weight=w, reduction=reduction)
    # nll_loss of log_softmax(x) is cross_entropy(x), up to the rounding of log_softmax's
    # output (logits of size ~10: ~1e-15 absolute).
    np.testing.assert_allclose(got, ref.ce(x, y, weight=w, reduction=reduction), rtol=1e-13,
                               atol=1e-14)
    if ref.name == "torch":
        import torch
        import torch.nn.functional as F

        want = F.nll_loss(torch.from_numpy(logp), torch.from_numpy(np.asarray(y)),
                          weight=None if w is None else torch.from_numpy(w),
                          reduction=reduction)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (64, 10), (0, 5), (7, 0), (33, 2049)])
def test_plain_rows_take_the_short_path_with_the_general_paths_numbers(dtype, shape):
    """C-contiguous (N, C) rows skip the layout steps (mlecore._arrays.plain_rows); a
    Fortran-ordered copy of them, or axis given as a tuple, goes the general way."""
    rng = np.random.default_rng(shape[0] * 31 + shape[1])
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    y = rng.integers(0, max(shape[1], 1), shape[0])
    if shape[1] == 0:
        y[:] = -100
    elif len(y) > 2:
        y[1] = -100
    general = np.asfortranarray(x) if x.size else x.reshape(shape)
    for kw in [dict(), dict(reduction="sum"), dict(reduction="none"),
               dict(label_smoothing=0.1, lse_square_scale=1e-3)]:
        a, b = mlecore.cross_entropy(x, y, **kw), mlecore.cross_entropy(general, y, **kw)
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(a, b)
    for fn in (mlecore.logsumexp, mlecore.softmax, mlecore.log_softmax):
        np.testing.assert_array_equal(fn(x, axis=1), fn(x, axis=(1,)))
    if shape[0] and shape[1]:
        bad = y.copy()
        bad[-1] = shape[1]
        with pytest.raises(IndexError, match=rf"target\[{shape[0] - 1}\] = {shape[1]}"):
            mlecore.cross_entropy(x, bad)
