"""The fused linear cross-entropy cases of ``python -m mlecore bench``: an LM head's forward
and backward (loss, dx, dw) against torch's chunked `F.linear_cross_entropy`, the plain
F.linear + F.cross_entropy, and the bare matrix products every contender must do (the
ceiling). Peak memory is measured in a fresh subprocess per contender (the rise of its peak
resident size over the inputs), since a process's peak only grows.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np

#: (N, D, V): GPT-2 small's head at two batch sizes, and a Llama-sized one.
SHAPES = [(2048, 768, 50257), (4096, 768, 50257), (8192, 1024, 32000)]
QUICK_SHAPES = [(512, 256, 8192)]

NAMES = {
    "mlecore": "mlecore linear_cross_entropy_with_grad (numpy)",
    "mlecore.torch": "mlecore.torch.linear_cross_entropy, autograd",
    "torch-chunked": "torch F.linear_cross_entropy, LinearCrossEntropyOptions()",
    "torch-plain": "torch F.linear + F.cross_entropy, autograd",
    "bare": "bare products x@wᵀ, g@w, gᵀ@x (numpy's BLAS)",
}


def data(n: int, d: int, v: int):
    """float32 hidden states (N, D), a head (V, D) and labels (N,)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((v, d), dtype=np.float32) * np.float32(d ** -0.5)
    return x, w, rng.integers(0, v, n)


def contender(which: str, x, w, y):
    """A zero-argument function running `which` once on the arrays of `data`."""
    n, v = x.shape[0], w.shape[0]
    if which == "mlecore":
        from ._linear import linear_cross_entropy_with_grad

        dx, dw = np.empty_like(x), np.empty_like(w)
        return lambda: linear_cross_entropy_with_grad(x, w, y, out=(dx, dw))
    if which == "bare":
        z = np.empty((n, v), np.float32)
        dx, dw = np.empty_like(x), np.empty_like(w)

        def bare():
            np.matmul(x, w.T, out=z)
            np.matmul(z, w, out=dx)
            np.matmul(z.T, x, out=dw)
        return bare
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    yt = torch.from_numpy(y)
    if which == "mlecore.torch":
        import mlecore.torch as mt

        def loss():
            return mt.linear_cross_entropy(xt, wt, yt)
    elif which == "torch-chunked":
        options = torch.nn.LinearCrossEntropyOptions()

        def loss():
            return F.linear_cross_entropy(xt, wt, yt, options=options)
    else:
        def loss():
            return F.cross_entropy(F.linear(xt, wt), yt)

    def step():
        xt.grad = wt.grad = None
        loss().backward()
    return step


def peak_extra_bytes(which: str, n: int, d: int, v: int) -> int:
    """The rise of a fresh process's resident memory over what it held before one call (the
    inputs, and buffers it had already allocated and not yet touched count in) to the peak
    of the call, after a warm-up call on a small problem. First-call setup is not counted;
    the BLAS libraries' working buffers, about 55 MiB for each of numpy's and scipy's
    OpenBLAS at these sizes, are."""
    code = ("import sys; from mlecore import _bench_linear as b; "
            "print(b._peak_here(sys.argv[1], *map(int, sys.argv[2:])))")
    out = subprocess.run([sys.executable, "-c", code, which, str(n), str(d), str(v)],
                         capture_output=True, text=True, timeout=900, check=True)
    return int(out.stdout.split()[-1])


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _peak_here(which: str, n: int, d: int, v: int) -> int:
    contender(which, *data(min(n, 256), d, min(v, 1024)))()
    run = contender(which, *data(n, d, v))
    # Linux: writing 5 resets the peak resident size (VmHWM) to the current one, so that
    # allocations made while preparing the inputs do not count.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - before) * 1024


def linear_cases(quick: bool, torch, Case, Contender):
    """The cases, each with its contenders' peak extra memory."""
    cases = []
    chunked = hasattr(torch.nn, "LinearCrossEntropyOptions")
    for n, d, v in QUICK_SHAPES if quick else SHAPES:
        flops = 3 * 2 * n * d * v
        kinds = ["mlecore", "mlecore.torch"] + (["torch-chunked"] if chunked else []) + [
            "torch-plain", "bare"]
        roles = {"mlecore": "mlecore", "bare": "ceiling"}
        memory = {NAMES[k]: peak_extra_bytes(k, n, d, v) for k in kinds}
        arrays = data(n, d, v)
        cases.append(Case(
            f"linear cross-entropy forward+backward (loss, dx, dw), N={n}, D={d}, V={v}, "
            f"float32", [Contender(NAMES[k], contender(k, *arrays), flops,
                                   roles.get(k, "other")) for k in kinds],
            note="throughput in GFLOP/s of the three products; peak extra memory in a fresh "
                 "process", unit="GFLOP/s", memory=memory, rounds=3))
    return cases
