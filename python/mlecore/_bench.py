"""``python -m mlecore bench``: mlecore against torch, scipy and plain numpy, side by side.

Every case runs its contenders in alternation, round after round, in one process and with the
same thread count, and reports medians. Each case also times the physical ceiling on the same
array: a threaded read (torch.sum), or a copy into an existing buffer for read+write, so the
table says what fraction of the memory bandwidth each kernel reaches.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import _mlecore as _ext
from ._config import get_num_threads, set_num_threads
from ._losses import cross_entropy, cross_entropy_with_grad
from ._special import logsumexp


@dataclass
class Contender:
    name: str
    fn: object
    bytes: int  # memory traffic of one call, for GB/s
    role: str = "other"  # "mlecore", "ceiling" or "other"


@dataclass
class Result:
    case: str
    name: str
    role: str
    ms: float
    gbs: float
    times_ms: list = field(default_factory=list)


@dataclass
class Case:
    title: str
    contenders: list
    note: str = ""
    unit: str = "GB/s"  # of `Contender.bytes` per second (GFLOP/s where bytes are flops)
    memory: dict = field(default_factory=dict)  # contender → peak extra bytes, if measured
    rounds: int = 0  # at most this many timed rounds (0: as many as asked), for long cases

    def repeats(self, repeat: int) -> int:
        return min(repeat, self.rounds) if self.rounds else repeat


def _numpy_logsumexp(x):
    m = x.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[..., 0]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_cases(quick: bool, torch, F, sp):
    """The benchmark cases; `quick` shrinks every array."""
    rng = np.random.default_rng(0)
    s = 8 if quick else 1  # shrink factor for rows

    def logits(rows, cols, dtype=np.float32):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 2).astype(dtype)

    cases = []
    n, c = 4096 // s, 32000
    x = logits(n, c)
    y = rng.integers(0, c, n)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    nb = x.nbytes
    cases.append(Case(f"cross_entropy forward, ({n}, {c}) float32, mean", [
        Contender("mlecore", lambda: cross_entropy(x, y), nb, "mlecore"),
        Contender("torch F.cross_entropy", lambda: F.cross_entropy(xt, yt), nb),
        Contender("read ceiling (torch.sum)", lambda: xt.sum(), nb, "ceiling"),
    ]))

    buf = np.empty_like(x)
    inplace = x.copy()
    xg = xt.clone().requires_grad_()
    import mlecore.torch as mt

    def torch_fb():
        xg.grad = None
        F.cross_entropy(xg, yt).backward()

    def mlecore_fb():
        xg.grad = None
        mt.cross_entropy(xg, yt).backward()

    tbuf = torch.empty_like(xt)
    cases.append(Case(f"cross_entropy forward+backward, ({n}, {c}) float32", [
        Contender("mlecore with_grad into a buffer", lambda: cross_entropy_with_grad(
            x, y, out=buf), 2 * nb, "mlecore"),
        Contender("mlecore with_grad in place", lambda: cross_entropy_with_grad(
            inplace, y, out=inplace), 2 * nb),
        Contender("mlecore.torch autograd", mlecore_fb, 2 * nb),
        Contender("torch autograd", torch_fb, 2 * nb),
        Contender("read+write ceiling (copy_ into a buffer)", lambda: tbuf.copy_(xt), 2 * nb,
                  "ceiling"),
    ], note="in place: the logits are overwritten by their gradient, call after call"))

    n2, c2 = 512 // s, 128256
    x2 = logits(n2, c2)
    x2t = torch.from_numpy(x2)
    cases.append(Case(f"logsumexp axis=-1, ({n2}, {c2}) float32", [
        Contender("mlecore", lambda: logsumexp(x2, axis=-1), x2.nbytes, "mlecore"),
        Contender("torch.logsumexp", lambda: torch.logsumexp(x2t, -1), x2.nbytes),
        Contender("scipy.special.logsumexp", lambda: sp.logsumexp(x2, axis=-1), x2.nbytes),
        Contender("plain numpy (max, exp, sum, log)", lambda: _numpy_logsumexp(x2),
                  x2.nbytes),
        Contender("read ceiling (torch.sum)", lambda: x2t.sum(), x2.nbytes, "ceiling"),
    ]))

    n3 = (1 << 20) // s
    x3 = logits(n3, 10)
    y3 = rng.integers(0, 10, n3)
    x3t, y3t = torch.from_numpy(x3), torch.from_numpy(y3)
    cases.append(Case(f"cross_entropy forward, ({n3}, 10) float32 (few classes)", [
        Contender("mlecore", lambda: cross_entropy(x3, y3), x3.nbytes, "mlecore"),
        Contender("torch F.cross_entropy", lambda: F.cross_entropy(x3t, y3t), x3.nbytes),
        Contender("read ceiling (torch.sum)", lambda: x3t.sum(), x3.nbytes, "ceiling"),
    ]))

    n4 = 2048 // s
    x4 = logits(n4, c, np.float64)
    y4 = rng.integers(0, c, n4)
    x4t, y4t = torch.from_numpy(x4), torch.from_numpy(y4)
    cases.append(Case(f"cross_entropy forward, ({n4}, {c}) float64", [
        Contender("mlecore", lambda: cross_entropy(x4, y4), x4.nbytes, "mlecore"),
        Contender("torch F.cross_entropy", lambda: F.cross_entropy(x4t, y4t), x4.nbytes),
        Contender("read ceiling (torch.sum)", lambda: x4t.sum(), x4.nbytes, "ceiling"),
    ]))

    xb = xt.to(torch.bfloat16)
    xh = x.astype(np.float16)
    xht = torch.from_numpy(xh)
    cases.append(Case(f"cross_entropy forward, ({n}, {c}) bfloat16 torch tensor", [
        Contender("mlecore.torch", lambda: mt.cross_entropy(xb, yt), xb.nbytes, "mlecore"),
        Contender("torch F.cross_entropy", lambda: F.cross_entropy(xb, yt), xb.nbytes),
        Contender("read ceiling (torch.sum)", lambda: xb.sum(), xb.nbytes, "ceiling"),
    ]))
    cases.append(Case(f"cross_entropy forward, ({n}, {c}) float16 numpy array", [
        Contender("mlecore", lambda: cross_entropy(xh, y), xh.nbytes, "mlecore"),
        Contender("torch F.cross_entropy (float16)", lambda: F.cross_entropy(xht, yt),
                  xh.nbytes),
        Contender("read ceiling (torch.sum)", lambda: xht.sum(), xh.nbytes, "ceiling"),
    ]))

    xa = logits(c, n)  # (32000, 4096): reduce the leading axis
    cases.append(Case(f"logsumexp axis=0 of ({c}, {n}) vs axis=-1 of ({n}, {c}), float32", [
        Contender("mlecore axis=0", lambda: logsumexp(xa, axis=0), xa.nbytes, "mlecore"),
        Contender("mlecore axis=-1", lambda: logsumexp(x, axis=-1), x.nbytes),
        Contender("torch.logsumexp dim=0", lambda: torch.logsumexp(torch.from_numpy(xa), 0),
                  xa.nbytes),
    ], note="the axis=-1 row's speedup below 1 is how much longer axis=0 takes"))

    one = logits(1, 262144)
    eight = logits(8, 262144)
    threads = get_num_threads()

    def single(fn):
        def run():
            set_num_threads(1)
            try:
                fn()
            finally:
                set_num_threads(threads)
        return run

    for label, arr in (("1 row", one), ("8 rows", eight)):
        cases.append(Case(f"logsumexp of {label} of 262144 classes: threads split the row", [
            Contender(f"mlecore, {threads} threads", lambda a=arr: logsumexp(a, axis=-1),
                      arr.nbytes, "mlecore"),
            Contender("mlecore, 1 thread", single(lambda a=arr: logsumexp(a, axis=-1)),
                      arr.nbytes),
        ], note="in cache: this measures the split, not the memory"))

    if torch.cuda.is_available():
        xc = xt.cuda()
        yc = yt.cuda()
        xcg = xc.clone().requires_grad_()

        def sync(fn):
            def run():
                fn()
                torch.cuda.synchronize()
            return run

        def cuda_fb(loss_fn):
            def run():
                xcg.grad = None
                loss_fn(xcg, yc).backward()
            return sync(run)

        cases.append(Case(f"CUDA cross_entropy ({n}, {c}) float32 ({torch.cuda.get_device_name()})",
                          [
            Contender("mlecore.torch forward", sync(lambda: mt.cross_entropy(xc, yc)), nb,
                      "mlecore"),
            Contender("torch forward", sync(lambda: F.cross_entropy(xc, yc)), nb),
            Contender("mlecore.torch forward+backward", cuda_fb(mt.cross_entropy), 2 * nb),
            Contender("torch forward+backward", cuda_fb(F.cross_entropy), 2 * nb),
        ]))
    from ._bench_linear import linear_cases

    return cases + linear_cases(quick, torch, Case, Contender)


def measure(cases, repeat: int, progress) -> list[Result]:
    results = []
    for case in cases:
        for c in case.contenders:  # warm-up: page faults, torch's first-call setup
            c.fn()
        times = {c.name: [] for c in case.contenders}
        for _ in range(case.repeats(repeat)):
            for c in case.contenders:  # alternating, so drift hits every contender alike
                t0 = time.perf_counter()
                c.fn()
                times[c.name].append((time.perf_counter() - t0) * 1e3)
                progress()
        for c in case.contenders:
            ms = statistics.median(times[c.name])
            results.append(Result(case.title, c.name, c.role, ms, c.bytes / ms / 1e6,
                                  times[c.name]))
    return results


def table(cases, results) -> str:
    """The results as a markdown table per case."""
    lines = []
    by_case = {}
    for r in results:
        by_case.setdefault(r.case, []).append(r)
    for case in cases:
        rs = by_case[case.title]
        ours = next(r for r in rs if r.role == "mlecore")
        ceiling = next((r for r in rs if r.role == "ceiling"), None)
        lines.append(f"\n**{case.title}**" + (f" — {case.note}" if case.note else ""))
        lines.append("")
        mem = " peak extra MiB |" if case.memory else ""
        lines.append(f"| contender | median ms | {case.unit} | of ceiling | mlecore's speedup |"
                     + mem)
        lines.append("|---|---:|---:|---:|---:|" + ("---:|" if mem else ""))
        for r in rs:
            frac = f"{r.gbs / ceiling.gbs:.2f}" if ceiling and r.role != "ceiling" else ""
            # Two digits where the ratios are close (the fused linear loss against BLAS).
            digits = 2 if case.memory else 1
            speed = "" if r is ours or r.role == "ceiling" else f"{r.ms / ours.ms:.{digits}f}×"
            peak = f" {case.memory[r.name] / 2**20:.0f} |" if mem else ""
            lines.append(f"| {r.name} | {r.ms:.2f} | {r.gbs:.1f} | {frac} | {speed} |" + peak)
    return "\n".join(lines)


def draw_plot(cases, results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for case in cases:
        rs = [r for r in results if r.case == case.title]
        ours = next(r for r in rs if r.role == "mlecore")
        for r in rs:
            if r is not ours and r.role != "ceiling":
                rows.append((f"{case.title[:48]}\nvs {r.name}", r.ms / ours.ms))
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
    ax.barh(range(len(rows)), [v for _, v in rows], color="#3b75af")
    ax.set_yticks(range(len(rows)), [k for k, _ in rows], fontsize=7)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("time of the other / time of mlecore (higher: mlecore faster)")
    ax.invert_yaxis()
    ax.set_title(f"mlecore {_ext.__version__}, {get_num_threads()} threads, {_cpu_name()}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(quick=False, plot=None, json_path=None, repeat=None) -> int:
    if repeat is not None and (isinstance(repeat, bool) or not isinstance(repeat, int)
                               or repeat < 1):
        # Checked before the warm-ups: `statistics` would fail only after them.
        raise ValueError(f"repeat must be an integer ≥ 1 or None, got {repeat!r}")
    # torch's OpenMP threads spin after each parallel region; passive waiting keeps them from
    # taking the cores from the next contender (and from torch's own next call).
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import scipy.special as sp
        import torch
        import torch.nn.functional as F
    except ImportError as e:  # pragma: no cover - the bench extra installs them
        print(f"the benchmark needs torch and scipy ({e}); `make bench` installs them")
        return 2
    threads = get_num_threads()
    torch.set_num_threads(threads)
    repeat = repeat or (3 if quick else 9)
    cases = build_cases(quick, torch, F, sp)
    total = sum(c.repeats(repeat) * len(c.contenders) for c in cases)
    try:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="benchmark", unit="run", file=sys.stderr)
        progress = bar.update
    except ImportError:
        bar = None
        done = [0]

        def progress():
            done[0] += 1
            print(f"\rbenchmark {done[0]}/{total}", end="", file=sys.stderr)

    results = measure(cases, repeat, progress)
    if bar is not None:
        bar.close()
    header = (f"mlecore {_ext.__version__} · {time.strftime('%Y-%m-%d')} · {_cpu_name()} · "
              f"{os.cpu_count()} cores · {threads} threads (mlecore and torch) · SIMD "
              f"{_ext.simd_tier()} · torch {torch.__version__} · numpy {np.__version__} · "
              f"medians of {repeat} alternating runs (of at most 3 for the linear heads)")
    print(header)
    print(table(cases, results))
    if not torch.cuda.is_available():
        print("\nNo CUDA device here: on GPUs mlecore.torch runs torch's own operations "
              "(the same code the `backend='torch'` tests check on CPU).")
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump({"header": header, "results": [asdict(r) for r in results]}, f,
                      indent=1)
    if plot:
        os.makedirs(os.path.dirname(os.path.abspath(plot)), exist_ok=True)
        draw_plot(cases, results, plot)
    return 0
