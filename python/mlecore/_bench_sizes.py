"""``python -m mlecore bench --sizes``: the cost of a call at every size, from (1, 2) to
(4096, 32000), against what a user would otherwise call.

Each row times one function at one shape in one mode (forward only, or forward and
backward through autograd) for mlecore and its contender in one process: round after
round, the contender, then mlecore, then the contender again, each a batch of calls long
enough to be timed; the table gives medians. The contender is timed both before and after
mlecore in every round because one library's threads can leave the other slowed for a while
(spinning, or woken late); the ratio uses the faster of the two, so mlecore is never
credited with a contender that it slowed down.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import _mlecore as _ext
from ._config import get_num_threads

#: (rows, classes) of the sweep; the quick sweep (`--quick`, the test) takes every other.
SHAPES = [(1, 2), (1, 10), (64, 10), (256, 100), (128, 1000), (1024, 1000), (512, 32000),
          (4096, 32000)]
#: (N, D, V) of the fused linear loss.
LINEAR = [(64, 64, 10), (512, 256, 1000), (1024, 512, 8000), (4096, 768, 32000)]


@dataclass
class Row:
    family: str
    shape: tuple
    mode: str  # "forward" or "forward+backward"
    contender: str
    mlecore_us: float
    before_us: float  # the contender, timed before mlecore in each round
    after_us: float  # and after it

    @property
    def speedup(self) -> float:
        """The contender's time over mlecore's (> 1: mlecore is faster)."""
        return min(self.before_us, self.after_us) / self.mlecore_us


def _batch(fn, calls: int) -> float:
    """Microseconds per call over `calls` calls."""
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1e6


def _calls_for(fn, target_s: float) -> int:
    """How many calls of `fn` take about `target_s` seconds (after one warm-up call)."""
    fn()
    once = _batch(fn, 1) * 1e-6
    return max(1, min(20000, int(target_s / max(once, 1e-7))))


def pair(mine, theirs, rounds: int, target_s: float) -> tuple[float, float, float]:
    """Medians (µs per call) of the contender before, mlecore, and the contender after."""
    n = min(_calls_for(mine, target_s), _calls_for(theirs, target_s))
    before, ours, after = [], [], []
    for _ in range(rounds):
        before.append(_batch(theirs, n))
        ours.append(_batch(mine, n))
        after.append(_batch(theirs, n))
    return statistics.median(before), statistics.median(ours), statistics.median(after)


def _torch_cases(torch, F, mt, shapes, linear_shapes):
    """(family, shape, mode, contender name, mlecore's call, the contender's call)."""
    gen = torch.Generator().manual_seed(0)
    for rows, classes in shapes:
        x = torch.randn(rows, classes, generator=gen) * 2
        y = torch.randint(0, classes, (rows,), generator=gen)
        p = torch.softmax(torch.randn(rows, classes, generator=gen), 1)
        xg = x.clone().requires_grad_()
        families = [
            ("cross_entropy", "F.cross_entropy",
             lambda a, y=y: mt.cross_entropy(a, y), lambda a, y=y: F.cross_entropy(a, y)),
            ("cross_entropy ε=0.1", "F.cross_entropy",
             lambda a, y=y: mt.cross_entropy(a, y, label_smoothing=0.1),
             lambda a, y=y: F.cross_entropy(a, y, label_smoothing=0.1)),
            ("cross_entropy probabilities", "F.cross_entropy",
             lambda a, p=p: mt.cross_entropy(a, p), lambda a, p=p: F.cross_entropy(a, p)),
            ("nll_loss(log_softmax)", "F.nll_loss(F.log_softmax)",
             lambda a, y=y: mt.nll_loss(mt.log_softmax(a, 1), y),
             lambda a, y=y: F.nll_loss(F.log_softmax(a, 1), y)),
            ("logsumexp", "torch.logsumexp",
             lambda a: mt.logsumexp(a, 1).sum(), lambda a: torch.logsumexp(a, 1).sum()),
        ]
        for family, name, ours, theirs in families:
            yield (family, (rows, classes), "forward", name,
                   _no_grad(torch, ours, x), _no_grad(torch, theirs, x))
            yield (family, (rows, classes), "forward+backward", name,
                   _backward(ours, xg), _backward(theirs, xg))
    for n, d, v in linear_shapes:
        x = torch.randn(n, d, generator=gen).requires_grad_()
        w = (torch.randn(v, d, generator=gen) * d ** -0.5).requires_grad_()
        y = torch.randint(0, v, (n,), generator=gen)

        def ours(x=x, w=w, y=y):
            x.grad = w.grad = None
            mt.linear_cross_entropy(x, w, y).backward()

        def composite(x=x, w=w, y=y):
            x.grad = w.grad = None
            F.cross_entropy(F.linear(x, w), y).backward()

        yield ("linear_cross_entropy", (n, d, v), "forward+backward", "F.linear + F.cross_entropy",
               ours, composite)
        if hasattr(F, "linear_cross_entropy"):
            def fused(x=x, w=w, y=y):
                x.grad = w.grad = None
                F.linear_cross_entropy(x, w, y).backward()
            yield ("linear_cross_entropy", (n, d, v), "forward+backward",
                   "F.linear_cross_entropy", ours, fused)


def _training_cases(torch, F, mt, quick: bool):
    """Whole training steps that differ only in the loss: the digits MLP (64-128-10, batch
    64, SGD) with cross_entropy, and a small language model (an embedding, one hidden layer,
    a head of 4000 classes) with linear_cross_entropy against F.linear + F.cross_entropy."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    xs = torch.tensor(digits.data[:1024], dtype=torch.float32) / 16
    ys = torch.tensor(digits.target[:1024])

    def mlp_epoch(loss_fn):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                    torch.nn.Linear(128, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def epoch():
            for i in range(0, len(xs), 64):
                opt.zero_grad()
                loss_fn(model(xs[i:i + 64]), ys[i:i + 64]).backward()
                opt.step()
        return epoch

    yield ("training: digits MLP epoch (16 steps)", (1024, 64, 10), "forward+backward",
           "F.cross_entropy", mlp_epoch(mt.cross_entropy), mlp_epoch(F.cross_entropy))

    vocab, dim, hidden, batch = (1000 if quick else 4000), 64, 128, 256
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab, (batch * 9,), generator=gen)

    def lm_steps(head_loss):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(vocab, dim)
        body = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.Tanh())
        head = torch.nn.Parameter(torch.randn(vocab, hidden) * hidden ** -0.5)
        opt = torch.optim.SGD([*emb.parameters(), *body.parameters(), head], lr=0.1)

        def steps():
            for i in range(0, 8 * batch, batch):
                opt.zero_grad()
                h = body(emb(tokens[i:i + batch]))
                head_loss(h, head, tokens[i + 1:i + 1 + batch]).backward()
                opt.step()
        return steps

    yield ("training: small LM, 8 steps", (batch, hidden, vocab), "forward+backward",
           "F.linear + F.cross_entropy", lm_steps(mt.linear_cross_entropy),
           lm_steps(lambda h, w, y: F.cross_entropy(F.linear(h, w), y)))


def _no_grad(torch, fn, x):
    def run():
        with torch.no_grad():
            fn(x)
    return run


def _backward(fn, x):
    def run():
        x.grad = None
        fn(x).backward()
    return run


def _numpy_cases(shapes):
    import scipy.special as sp

    from . import _losses, _special

    rng = np.random.default_rng(0)
    for rows, classes in shapes:
        x = (rng.standard_normal((rows, classes), dtype=np.float32) * 2)
        y = rng.integers(0, classes, rows)
        index = np.arange(rows)

        def composite(x=x, y=y, index=index):
            m = x.max(axis=1, keepdims=True)
            lse = np.log(np.exp(x - m).sum(axis=1)) + m[:, 0]
            return (lse - x[index, y]).mean()

        yield ("cross_entropy", (rows, classes), "forward", "numpy max/exp/sum/log/gather",
               lambda x=x, y=y: _losses.cross_entropy(x, y), composite)
        yield ("logsumexp", (rows, classes), "forward", "scipy.special.logsumexp",
               lambda x=x: _special.logsumexp(x, axis=1),
               lambda x=x: sp.logsumexp(x, axis=1))
        yield ("softmax", (rows, classes), "forward", "scipy.special.softmax",
               lambda x=x: _special.softmax(x, axis=1), lambda x=x: sp.softmax(x, axis=1))


def sweep(quick: bool = False, rounds: int | None = None, out=print) -> list[Row]:
    """Every case, printed as it is measured; the rows."""
    import torch
    import torch.nn.functional as F

    import mlecore.torch as mt

    shapes = SHAPES[::2] if quick else SHAPES
    linear_shapes = LINEAR[:2] if quick else LINEAR
    rounds = rounds or (3 if quick else 7)
    target = 0.002 if quick else 0.01
    results = []
    out("| framework | function | shape | mode | contender | before µs | mlecore µs | "
        "after µs | mlecore's speedup |")
    out("|---|---|---|---|---|---:|---:|---:|---:|")
    for framework, cases in (("torch", _training_cases(torch, F, mt, quick)),
                             ("torch", _torch_cases(torch, F, mt, shapes, linear_shapes)),
                             ("numpy", _numpy_cases(shapes))):
        for family, shape, mode, name, ours, theirs in cases:
            big = math.prod(shape) >= 1 << 24
            before, mine, after = pair(ours, theirs, 3 if big and not quick else rounds,
                                       target)
            row = Row(f"{framework} {family}", shape, mode, name, mine, before, after)
            results.append(row)
            out(f"| {framework} | {family} | {shape} | {mode} | {name} | {before:.1f} | "
                f"{mine:.1f} | {after:.1f} | {row.speedup:.2f}× |")
    return results


def plot(results: list[Row], path: str) -> None:
    """Time against size (log-log), one panel per function and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r.family, r.mode) for r in results})
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, (family, mode) in zip(axes.flat, panels, strict=False):
        for contender in sorted({r.contender for r in results
                                 if (r.family, r.mode) == (family, mode)}):
            rs = [r for r in results if (r.family, r.mode, r.contender) ==
                  (family, mode, contender)]
            size = [math.prod(r.shape) for r in rs]
            ax.loglog(size, [min(r.before_us, r.after_us) for r in rs], "o--",
                      label=contender)
        rs = [r for r in results if (r.family, r.mode) == (family, mode)]
        seen = {}
        for r in rs:
            seen.setdefault(r.shape, r.mlecore_us)
        ax.loglog([math.prod(s) for s in seen], list(seen.values()), "o-", label="mlecore",
                  linewidth=2)
        ax.set_title(f"{family}\n{mode}", fontsize=9)
        ax.set_xlabel("elements" if "linear" not in family else "N·D·V")
        ax.set_ylabel("µs per call")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"mlecore {_ext.__version__}, {_ext.simd_tier()}, {get_num_threads()} "
                 "threads: time per call against size")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=90)


def run(quick: bool = False, plot_path: str | None = None, json_path: str | None = None,
        repeat: int | None = None) -> int:
    """The sweep, its table on stdout, and the plot and JSON where asked."""
    from ._bench import _cpu_name

    print(f"mlecore {_ext.__version__} · {_cpu_name()} · SIMD {_ext.simd_tier()} · "
          f"{get_num_threads()} threads · medians of rounds (contender, mlecore, contender)")
    results = sweep(quick, repeat)
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump({"cpu": _cpu_name(), "simd": _ext.simd_tier(),
                       "threads": get_num_threads(),
                       "rows": [asdict(r) | {"speedup": r.speedup} for r in results]}, f,
                      indent=1)
    if plot_path:
        plot(results, plot_path)
    return 0
