"""Vocabulary-parallel cross-entropy on real processes (gloo on 127.0.0.1, a file store):
every rank's loss equals the single-process loss of the concatenated logits, every rank's
gradient is its slice of the single-process gradient, one collective per forward pass and
none in the backward, errors on every rank and never a hang (a stuck run fails on a
timeout), and a tensor-parallel training run that follows the single-process one."""

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
    with _Counted() as first:  # the first call also exchanges the class counts, once
        mtd.cross_entropy(full[:, start:start + sizes[rank]].to(dtype), y)
    assert first.calls == 2, first.calls
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
        assert forward.calls == 1, forward.calls
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
    mtd.linear_cross_entropy(x, w[start:stop], y)  # the first call exchanges the class counts
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
        assert forward.calls == -(-n // (chunk or n)), (what, forward.calls)
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
