"""Vocabulary-parallel cross-entropy on real processes (gloo on 127.0.0.1, a file store):
every rank's loss equals the single-process loss of the concatenated logits, every rank's
gradient is its slice of the single-process gradient, a call header and one collective per
forward pass (per chunk of rows) and none in the backward, errors on every rank and never a
hang or an abort (a stuck run fails on a timeout), calls that disagree between ranks, random
ones included, and a tensor-parallel training run that follows the single-process one."""

import datetime
import itertools
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessExitedException

import mlecore.torch as mt
import mlecore.torch.distributed as mtd

TIMEOUT = 240

CONFIGS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"label_smoothing": 0.2},
    {"weight": True, "label_smoothing": 0.1},
    {"softcap": 2.5, "lse_square_scale": 1e-2},
    {"ignore_index": 4, "weight": True},
]


def _run(world, fn, *args):
    """Runs fn(rank, world, *args) on `world` processes of one gloo group; fails (and stops
    them) past TIMEOUT seconds instead of hanging."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        store = f"{tmp}/store"
        ctx = mp.start_processes(_entry, args=(world, store, fn, args), nprocs=world,
                                 join=False, start_method="spawn")
        deadline = time.monotonic() + TIMEOUT
        try:
            while not ctx.join(timeout=1):
                if time.monotonic() > deadline:
                    for p in ctx.processes:
                        p.kill()
                    pytest.fail(f"{world} ranks did not finish in {TIMEOUT} s")
        except ProcessExitedException as e:
            # gloo itself, tearing a group down after every rank finished and passed the
            # closing barrier, has aborted a rank ("terminate called without an active
            # exception"): every rank's marker says its checks all passed. Anything else,
            # or an abort before a marker, fails the test.
            finished = all(os.path.exists(f"{store}.passed{r}") for r in range(world))
            if not (finished and e.signal_name == "SIGABRT"):
                raise


def _entry(rank, world, store, fn, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        fn(rank, world, *args)
        # Every rank past its last collective before any tears gloo down: a rank that
        # destroyed its group while a peer's last exchange was still in flight once died
        # with "terminate called without an active exception" (SIGABRT) in CI. A rank that
        # failed skips it, so that its error is not held up behind peers that never come.
        dist.barrier()
        open(f"{store}.passed{rank}", "w").close()
    finally:
        dist.destroy_process_group()


class _Counted:
    """Counts the collectives mlecore issues (the module calls torch.distributed's)."""

    def __init__(self):
        self.calls = 0
        self._gather = dist.all_gather

    def __enter__(self):
        def counted(*a, **k):
            self.calls += 1
            return self._gather(*a, **k)

        dist.all_gather = counted
        return self

    def __exit__(self, *exc):
        dist.all_gather = self._gather


def _agreement(rank, world, sizes, dtype):
    g = torch.Generator().manual_seed(7)
    c = sum(sizes)
    start = sum(sizes[:rank])
    n = 23
    full = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, c, (n,), generator=g)
    y[::5] = -100
    cw = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    for cfg in CONFIGS:
        kw = dict(cfg)
        labels = y
        if "ignore_index" in kw:
            labels = torch.where(y == -100, kw["ignore_index"], y)
        weight = kw.pop("weight", None) and cw.to(dtype)
        xl = full[:, start:start + sizes[rank]].to(dtype).clone().requires_grad_()
        with _Counted() as forward:
            loss = mtd.cross_entropy(xl, labels, weight=None if weight is None else
                                     weight[start:start + sizes[rank]], **kw)
        xf = full.to(dtype).clone().requires_grad_()
        ref = mt.cross_entropy(xf, labels, weight=weight, **kw)
        torch.testing.assert_close(loss, ref, **tol)
        with _Counted() as backward:
            (loss.sum() * 1.5).backward()
        (ref.sum() * 1.5).backward()
        torch.testing.assert_close(xl.grad, xf.grad[:, start:start + sizes[rank]], **tol)
        assert forward.calls == 2, forward.calls  # the call header, then the rows
        assert backward.calls == 0, backward.calls
    # K-dimensional logits and class_start given explicitly.
    xk = torch.randn(4, c, 3, generator=g, dtype=torch.float64)
    yk = torch.randint(0, c, (4, 3), generator=g)
    got = mtd.cross_entropy(xk[:, start:start + sizes[rank]], yk, class_start=start,
                            reduction="none")
    torch.testing.assert_close(got, mt.cross_entropy(xk, yk, reduction="none"))


def _errors(rank, world, sizes):
    c = sum(sizes)
    start = sum(sizes[:rank])
    x = torch.randn(6, sizes[rank])
    y = torch.tensor([0, 1, 2, c - 1, 3, -100])
    bad = y.clone()
    bad[3] = c
    with pytest.raises(IndexError, match=rf"target\[3\] = {c}"):
        mtd.cross_entropy(x, bad)
    differ = y.clone()
    if rank == world - 1:
        differ[4] = 0
    with pytest.raises(RuntimeError, match="target differs between ranks: row 4"):
        mtd.cross_entropy(x, differ)
    with pytest.raises(ValueError, match="tile"):
        mtd.cross_entropy(x, y, class_start=start + 1)
    mtd.cross_entropy(x, y)  # the group still works after every error


def _training(rank, world, sizes):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0)
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(10, 64, generator=g, dtype=torch.float64) * 0.01
    start = sum(sizes[:rank])
    mine = w0[start:start + sizes[rank]].clone().requires_grad_()
    full = w0.clone().requires_grad_()
    for _ in range(300):
        loss = mtd.cross_entropy(x @ mine.T, y, label_smoothing=0.05)
        loss.backward()
        ref = mt.cross_entropy(x @ full.T, y, label_smoothing=0.05)
        ref.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            mine -= 0.5 * mine.grad
            full -= 0.5 * full.grad
        mine.grad = full.grad = None
    torch.testing.assert_close(mine.detach(), full.detach()[start:start + sizes[rank]])
    assert ref < 0.5  # it learned


def _linear_head(rank, world, sizes, dtype):
    """The tensor-parallel head, whole and in chunks of rows (one gather per chunk forward,
    none backward), against the single-process fused loss on every option."""
    g = torch.Generator().manual_seed(5)
    c, n, d = sum(sizes), 11, 6
    start, stop = sum(sizes[:rank]), sum(sizes[:rank + 1])
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    y[::4] = -100
    cw = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    for cfg, chunk in itertools.product(CONFIGS, (None, 4, 1)):
        kw = dict(cfg)
        labels = y
        if "ignore_index" in kw:
            labels = torch.where(y == -100, kw["ignore_index"], y)
        weight = kw.pop("weight", None) and cw.to(dtype)
        xs, xr = (x.to(dtype).clone().requires_grad_() for _ in range(2))
        ws = w[start:stop].to(dtype).clone().requires_grad_()
        bs = b[start:stop].to(dtype).clone().requires_grad_()
        wr, br = w.to(dtype).clone().requires_grad_(), b.to(dtype).clone().requires_grad_()
        with _Counted() as forward:
            loss = mtd.linear_cross_entropy(
                xs, ws, labels, local_bias=bs, chunk_size=chunk,
                weight=None if weight is None else weight[start:stop], **kw)
        with _Counted() as backward:
            (loss.sum() * 1.5).backward()
        ref = mt.linear_cross_entropy(xr, wr, labels, linear_bias=br, weight=weight, **kw)
        (ref.sum() * 1.5).backward()
        what = f"{cfg} chunk_size={chunk}"
        torch.testing.assert_close(loss, ref, **tol, msg=what)
        torch.testing.assert_close(xs.grad, xr.grad, **tol, msg=what)  # summed over ranks
        torch.testing.assert_close(ws.grad, wr.grad[start:stop], **tol, msg=what)
        torch.testing.assert_close(bs.grad, br.grad[start:stop], **tol, msg=what)
        assert forward.calls == 1 + -(-n // (chunk or n)), (what, forward.calls)
        assert backward.calls == 0, (what, backward.calls)
    # An out-of-range label in a later chunk is named by its place in the whole target.
    bad = y.clone()
    bad[9] = c
    with pytest.raises(IndexError, match=rf"target\[9\] = {c}"):
        mtd.linear_cross_entropy(x, w[start:stop], bad, chunk_size=4)
    # Shapes and chunk sizes are checked before any collective, alike on every rank.
    with pytest.raises(ValueError, match=rf"local_weight must have shape \(C_local, {d}\)"):
        mtd.linear_cross_entropy(x, w[start:stop, :3], y)
    with pytest.raises(ValueError, match="local_bias must have shape"):
        mtd.linear_cross_entropy(x, w[start:stop], y, local_bias=b)
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        mtd.linear_cross_entropy(x, w[start:stop], y, chunk_size=0)
    # Unbatched input, and no gradient wanted.
    one = mtd.linear_cross_entropy(x[0], w[start:stop], y[1], chunk_size=1)
    torch.testing.assert_close(one, mt.linear_cross_entropy(x[0], w, y[1]))
    with torch.no_grad():
        torch.testing.assert_close(mtd.linear_cross_entropy(x, w[start:stop], y, chunk_size=3),
                                   mt.linear_cross_entropy(x, w, y))


def _peak_bytes(run) -> int:
    """How far this process's resident memory rose above its level before `run()`."""
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current VmRSS
        f.write("5")

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    before = status("VmRSS:")
    run()
    return status("VmHWM:") - before


def _head_memory(rank, world):
    """A rank's logits would be 128 MiB (a peak of 130 MiB measured in one chunk); in chunks
    of 256 rows (8 MiB of logits) the call's peak stays under half of that (32-40 MiB)."""
    g = torch.Generator().manual_seed(1)
    n, d, size = 4096, 32, 8192
    x = torch.randn(n, d, generator=g).requires_grad_()
    w = (torch.randn(size, d, generator=g) * 0.1).requires_grad_()
    y = torch.randint(0, size * world, (n,), generator=g)

    def step():
        mtd.linear_cross_entropy(x, w, y, chunk_size=256).backward()

    step()  # allocator and thread pools warmed up, gradients allocated
    peak = _peak_bytes(step)
    assert peak < 64 << 20, f"rank {rank}: {peak / 2**20:.0f} MiB above the resting level"


def _linear_and_dtensor(rank, world, sizes):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    g = torch.Generator().manual_seed(3)
    c = sum(sizes)
    start = sum(sizes[:rank])
    x = torch.randn(9, 5, generator=g, dtype=torch.float64)
    w = torch.randn(c, 5, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (9,), generator=g)
    xs = x.clone().requires_grad_()
    ws = w[start:start + sizes[rank]].clone().requires_grad_()
    bs = b[start:start + sizes[rank]].clone().requires_grad_()
    loss = mtd.linear_cross_entropy(xs, ws, y, local_bias=bs, label_smoothing=0.1)
    with _Counted() as gathers:
        loss.backward()
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
    ref = mt.linear_cross_entropy(xr, wr, y, linear_bias=br, label_smoothing=0.1)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(xs.grad, xr.grad)  # summed over the ranks
    torch.testing.assert_close(ws.grad, wr.grad[start:start + sizes[rank]])
    torch.testing.assert_close(bs.grad, br.grad[start:start + sizes[rank]])
    assert gathers.calls == 0
    # A DTensor sharded over classes, as torch's loss_parallel takes it.
    mesh = init_device_mesh("cpu", (world,))
    logits = torch.randn(7, 10, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (7,), generator=g)
    dt = distribute_tensor(logits, mesh, [Shard(1)]).requires_grad_()
    got = mtd.cross_entropy(dt, labels, label_smoothing=0.2)
    got.backward()
    full = logits.clone().requires_grad_()
    want = mt.cross_entropy(full, labels, label_smoothing=0.2)
    want.backward()
    torch.testing.assert_close(got, want)
    mine = dt.grad.to_local()
    piece = -(-10 // world)
    lo = min(rank * piece, 10)
    torch.testing.assert_close(mine, full.grad[:, lo:lo + mine.shape[1]])
    # A DTensor target, and one on some ranks only: its gathering is a collective, run only
    # after the call header has compared that every rank's target is one.
    dy = distribute_tensor(labels, mesh, [Shard(0)])
    torch.testing.assert_close(mtd.cross_entropy(dt.detach(), dy, label_smoothing=0.2), want)
    torch.testing.assert_close(mtd.linear_cross_entropy(x[:7], ws.detach(), dy),
                               mt.linear_cross_entropy(x[:7], w, labels))
    with pytest.raises(ValueError, match="disagree on whether the target is a DTensor"):
        mtd.cross_entropy(dt.detach(), dy if rank == 0 else labels)


@pytest.mark.parametrize("sizes", [(11,), (3, 8), (5, 0, 6), (4, 1, 7, 2)])
def test_every_rank_gets_the_single_process_loss_and_its_gradient_slice(sizes):
    _run(len(sizes), _agreement, sizes, torch.float64)


def test_float32_shards():
    _run(2, _agreement, (9, 4), torch.float32)


def test_bad_calls_raise_on_every_rank_and_never_hang():
    _run(3, _errors, (4, 3, 5))


def test_tensor_parallel_training_follows_the_single_process_run():
    _run(2, _training, (6, 4))


def test_tensor_parallel_head_and_sharded_dtensors():
    _run(3, _linear_and_dtensor, (4, 6, 3))


@pytest.mark.parametrize("sizes,dtype", [((5, 0, 6), torch.float64), ((9, 4), torch.float32)])
def test_tensor_parallel_head_in_chunks_of_rows(sizes, dtype):
    _run(len(sizes), _linear_head, sizes, dtype)


def test_tensor_parallel_head_never_holds_a_ranks_logits():
    _run(2, _head_memory)


def _default_chunks_agree(rank, world, sizes):
    """The default chunk comes from what every rank agrees on: with budgets shrunk so that
    the rank of 50 classes would take 16-row chunks and the rank of 2 one chunk of 40 rows,
    the ranks once ran different numbers of all_gathers (an abort in gloo on one, a false
    "target differs" on the other)."""
    from mlecore import _linear_chunks

    g = torch.Generator().manual_seed(11)
    c, n, d = sum(sizes), 40, 3
    start, stop = sum(sizes[:rank]), sum(sizes[:rank + 1])
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    _linear_chunks.CHUNK_BYTES, _linear_chunks.MAX_CHUNK_BYTES = 1024, 2048
    xs, ws = x.clone().requires_grad_(), w[start:stop].clone().requires_grad_()
    with _Counted() as forward:
        loss = mtd.linear_cross_entropy(xs, ws, y, label_smoothing=0.1)
    loss.backward()
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = mt.linear_cross_entropy(xr, wr, y, label_smoothing=0.1)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(xs.grad, xr.grad)
    torch.testing.assert_close(ws.grad, wr.grad[start:stop])
    assert forward.calls == 1 + 3, forward.calls  # the header, then 40 rows in chunks of 16


def _disagreements(rank, world):
    """Calls that differ between the ranks in shape or options raise the same ValueError on
    every rank, before any collective of the rows: never an abort in gloo, a hang, or a
    different wrong loss on each rank."""
    g = torch.Generator().manual_seed(2)
    sizes = (3, 4)
    c, start = sum(sizes), sum(sizes[:rank])
    mine = slice(start, start + sizes[rank])
    x = torch.randn(12, c, generator=g, dtype=torch.float64)
    h = torch.randn(12, 5, generator=g, dtype=torch.float64)
    w = torch.randn(c, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (12,), generator=g)
    other = rank == world - 1

    def ce(**kw):
        return mtd.cross_entropy(x[:, mine], y, **kw)

    def head(**kw):
        return mtd.linear_cross_entropy(h, w[mine], y, **kw)

    cases = [
        ("the target's shape", lambda: mtd.cross_entropy(x[:8 if other else 12, mine],
                                                         y[:8 if other else 12])),
        ("the target's shape", lambda: head() if not other else
         mtd.linear_cross_entropy(h[:8], w[mine], y[:8])),
        ("whether class_start is given", lambda: ce(class_start=start if other else None)),
        ("label_smoothing", lambda: ce(label_smoothing=0.1 if other else 0.0)),
        ("label_smoothing", lambda: head(label_smoothing=0.1 if other else 0.0)),
        ("ignore_index", lambda: ce(ignore_index=3 if other else -100)),
        ("ignore_index", lambda: head(ignore_index=3 if other else -100)),
        ("lse_square_scale", lambda: ce(lse_square_scale=1e-3 if other else 0.0)),
        ("lse_square_scale", lambda: head(lse_square_scale=1e-3 if other else 0.0)),
        ("softcap", lambda: ce(softcap=5.0 if other else None)),
        ("softcap", lambda: head(softcap=5.0 if other else 4.0)),
        ("reduction", lambda: ce(reduction="sum" if other else "mean")),
        ("whether class weights are given",
         lambda: ce(weight=torch.ones(sizes[rank], dtype=torch.float64) if other else None)),
        ("chunk_size", lambda: head(chunk_size=4 if other else None)),
        ("the input's features", lambda: head() if not other else
         mtd.linear_cross_entropy(h[:, :3], w[mine, :3], y)),
        ("whether the input needs a gradient",
         lambda: mtd.linear_cross_entropy(h.requires_grad_(other), w[mine], y)),
        ("the function", lambda: head() if other else ce()),
    ]
    for name, call in cases:
        with pytest.raises(ValueError, match=f"disagree on {name}: "):
            call()
        h.requires_grad_(False)
    # A call refused on one rank alone (a bias of the wrong shape there) raises on every
    # rank, of the same type.
    with pytest.raises(ValueError, match="local_bias must have shape" if other else
                       r"the call failed on rank\(s\) \[1\]"):
        head(local_bias=torch.zeros(c if other else sizes[rank], dtype=torch.float64))
    with pytest.raises(ValueError, match="local_bias must have shape" if other else
                       r"the call failed on rank\(s\) \[1\]"):
        head(local_bias=[0.0] * sizes[rank] if other else None)
    with pytest.raises(TypeError, match="local_logits has dtype" if other else
                       r"the call failed on rank\(s\) \[1\]"):
        mtd.cross_entropy(x[:, mine].to(torch.int64) if other else x[:, mine], y)
    # A cap outside float32's range (NaN silently, once) is refused on every rank alike.
    with pytest.raises(ValueError, match=r"softcap must be in \[1.175494e-38"):
        head(softcap=1e300)
    torch.testing.assert_close(ce(), mt.cross_entropy(x, y))  # the group still works


def _double_backward(rank, world, sizes):
    """The first derivative with create_graph=True is the single-process one; the second
    raises an error naming mlecore (it once failed inside torch: "modified by an inplace
    operation")."""
    g = torch.Generator().manual_seed(4)
    c, n, d = sum(sizes), 6, 3
    mine = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
    z = torch.randn(n, c, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    zl, zf = z[:, mine].clone().requires_grad_(), z.clone().requires_grad_()
    (gz,) = torch.autograd.grad(mtd.cross_entropy(zl, y, label_smoothing=0.1), zl,
                                create_graph=True)
    (want,) = torch.autograd.grad(mt.cross_entropy(zf, y, label_smoothing=0.1), zf)
    torch.testing.assert_close(gz, want[:, mine])
    with pytest.raises(RuntimeError, match="mlecore.torch.distributed's losses .* have no "
                                           "second derivative"):
        gz.square().sum().backward()
    for chunk in (None, 2):
        xs, ws = x.clone().requires_grad_(), w[mine].clone().requires_grad_()
        gx, gw = torch.autograd.grad(mtd.linear_cross_entropy(xs, ws, y, chunk_size=chunk),
                                     (xs, ws), create_graph=True)
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        wx, ww = torch.autograd.grad(mt.linear_cross_entropy(xr, wr, y), (xr, wr))
        torch.testing.assert_close(gx, wx)
        torch.testing.assert_close(gw, ww[mine])
        for second in (gx, gw):
            with pytest.raises(RuntimeError, match="mlecore.torch.distributed's losses .* "
                                                   "have no second derivative"):
                torch.autograd.grad(second.square().sum(), (xs, ws))


def test_the_default_chunk_is_the_same_on_every_rank():
    _run(2, _default_chunks_agree, (2, 50))


def test_calls_that_disagree_between_ranks_raise_alike_on_every_rank():
    _run(2, _disagreements)


def test_double_backward_gives_the_first_derivative_then_a_clear_error():
    _run(2, _double_backward, (3, 5))


#: What the property test's last rank does differently, and what every rank must then raise
#: (None: nothing differs, every rank returns the single-process result).
_DISAGREEMENTS = {None: None, "rows": "ValueError", "label_smoothing": "ValueError",
                  "ignore_index": "ValueError", "softcap": "ValueError",
                  "lse_square_scale": "ValueError", "reduction": "ValueError",
                  "class_start": "ValueError", "weight": "ValueError",
                  "chunk_size": "ValueError", "target": "RuntimeError",
                  "label": "IndexError"}


def _outcome(rank, world, case, rng):
    """One random call on every rank, the last one perhaps disagreeing: "ok" where it
    returned the single-process loss and gradient, else the exception's type name."""
    sizes = [rng.randint(0, 5) for _ in range(world)]
    sizes[rng.randrange(world)] += 1
    c, start = sum(sizes), sum(sizes[:rank])
    mine = slice(start, start + sizes[rank])
    linear = rng.random() < 0.5
    kind = rng.choice([None, None, None, *list(_DISAGREEMENTS)[1:]])
    n = rng.randint(1 if kind in ("target", "label") else 0, 9)
    kw = {"label_smoothing": rng.choice([0.0, 0.1]), "ignore_index": rng.choice([-100, 1]),
          "softcap": rng.choice([None, 3.0]), "lse_square_scale": rng.choice([0.0, 1e-2]),
          "reduction": rng.choice(["mean", "sum", "none"])}
    weighted = rng.random() < 0.3
    chunk = rng.choice([None, 1, 3]) if linear else None
    g = torch.Generator().manual_seed(1000 + case)
    z = torch.randn(n + 1, c, generator=g, dtype=torch.float64) * 2
    x = torch.randn(n + 1, 3, generator=g, dtype=torch.float64)
    w = torch.randn(c, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n + 1,), generator=g)
    y[::3] = kw["ignore_index"]
    cw = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    rows, class_start = n, None
    if kind == "label":  # on every rank: the same IndexError everywhere
        y[0] = c + 5
    if rank == world - 1:
        if kind == "rows":
            rows = n + 1
        elif kind in ("label_smoothing", "lse_square_scale"):
            kw[kind] += 0.05
        elif kind == "ignore_index":
            kw[kind] += 7
        elif kind == "softcap":
            kw[kind] = None if kw[kind] else 3.0
        elif kind == "reduction":
            kw[kind] = {"mean": "sum", "sum": "none", "none": "mean"}[kw[kind]]
        elif kind == "class_start":
            class_start = start
        elif kind == "weight":
            weighted = not weighted
        elif kind == "chunk_size":
            chunk = {None: 2, 1: 2, 3: None}[chunk]
            linear = True
        elif kind == "target":
            y[0] = (int(y[0]) + 1) % c if c > 1 and y[0] >= 0 else (0 if y[0] < 0 else -3)
    if kind == "chunk_size":
        linear = True
    expected = _DISAGREEMENTS[kind]
    local_w = cw[mine] if weighted else None
    try:
        if linear:
            xs, ws = x[:rows].clone().requires_grad_(), w[mine].clone().requires_grad_()
            loss = mtd.linear_cross_entropy(xs, ws, y[:rows], weight=local_w,
                                            class_start=class_start, chunk_size=chunk, **kw)
        else:
            zs = z[:rows, mine].clone().requires_grad_()
            loss = mtd.cross_entropy(zs, y[:rows], weight=local_w, class_start=class_start,
                                     **kw)
        loss.sum().backward()
    except (ValueError, RuntimeError, IndexError, TypeError) as e:
        return type(e).__name__, expected, str(e)
    weight = cw if weighted else None
    if linear:
        xr, wr = x[:n].clone().requires_grad_(), w.clone().requires_grad_()
        ref = mt.linear_cross_entropy(xr, wr, y[:n], weight=weight, **kw)
        ref.sum().backward()
        pairs = [(loss, ref), (xs.grad, xr.grad), (ws.grad, wr.grad[mine])]
    else:
        zr = z[:n].clone().requires_grad_()
        ref = mt.cross_entropy(zr, y[:n], weight=weight, **kw)
        ref.sum().backward()
        pairs = [(loss, ref), (zs.grad, zr.grad[:, mine])]
    try:
        for got, want in pairs:
            torch.testing.assert_close(got, want, equal_nan=True)
    except AssertionError as e:
        return "wrong", expected, str(e)
    return "ok", expected, ""


def _random_calls(rank, world, seed, cases):
    """Random shards, options and deliberate disagreements: every rank returns the
    single-process result, or every rank raises the same type of error; none aborts or
    hangs (the runner's timeout)."""
    import random

    rng = random.Random(seed)  # the same draws on every rank
    for case in range(cases):
        got, expected, message = _outcome(rank, world, case, rng)
        outcomes = [None] * world
        dist.all_gather_object(outcomes, got)
        assert outcomes == [expected or "ok"] * world, (case, outcomes, expected, message)


def test_random_calls_return_the_single_process_result_or_raise_alike_on_every_rank():
    _run(2, _random_calls, 23, 16)
