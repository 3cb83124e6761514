"""Threads, the GIL, fork, configuration, and that `import mlecore` leaves torch alone."""

import os
import subprocess
import sys

import numpy as np
import pytest

import mlecore
from conftest import ticks_while
from mlecore import _mlecore as ext


def run_py(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=os.environ | env, timeout=120, check=True).stdout


def test_import_does_not_import_torch():
    out = run_py("import sys, numpy as np, mlecore; mlecore.logsumexp(np.ones(3)); "
                 "print('torch' in sys.modules)")
    assert out.strip() == "False"


def test_thread_count_default_env_and_setter():
    assert run_py("import mlecore; print(mlecore.get_num_threads())",
                  MLECORE_NUM_THREADS="3").strip() == "3"
    before = mlecore.get_num_threads()
    try:
        mlecore.set_num_threads(1)
        assert mlecore.get_num_threads() == 1
    finally:
        mlecore.set_num_threads(before)


def test_results_do_not_depend_on_threads(rng):
    x = rng.standard_normal((5000, 129)).astype(np.float32)
    y = rng.integers(0, 129, 5000)
    before = mlecore.get_num_threads()
    try:
        res = []
        for n in (1, 2, 4):
            mlecore.set_num_threads(n)
            loss, grad = mlecore.cross_entropy_with_grad(x, y)
            res.append((loss, grad, mlecore.logsumexp(x[:3].ravel())))
    finally:
        mlecore.set_num_threads(before)
    for r in res[1:]:
        assert r[0] == res[0][0] and r[2] == res[0][2]
        np.testing.assert_array_equal(r[1], res[0][1])


def test_gil_is_released_during_a_kernel(rng):
    x = rng.standard_normal((2000, 50_000)).astype(np.float32)  # 400 MB: ~100 ms a pass

    def run():
        for _ in range(3):
            mlecore.logsumexp(x, axis=1)

    ticks, seconds = ticks_while(run)
    assert ticks >= 5, f"only {ticks} ticks in {seconds:.3f}s"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_kernels_work_in_a_forked_child():
    code = """
import os, sys, numpy as np, mlecore
x = np.random.default_rng(0).standard_normal((4000, 300))
a = mlecore.logsumexp(x, axis=1)          # starts the thread pool in the parent
pid = os.fork()
if pid == 0:
    b = mlecore.logsumexp(x, axis=1)      # must not hang on the parent's pool
    os._exit(0 if np.array_equal(a, b) else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    assert run_py(code).strip() == "0"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_forks_while_other_threads_run_kernels_never_hang_a_child():
    # Threads of the parent are inside mlecore (its pool lock, its settings) when the main
    # thread forks; every child runs a kernel at once and must finish. Run in a subprocess
    # so that a hung child cannot outlive the test.
    code = """
import os, sys, threading, time, numpy as np, mlecore
mlecore.set_num_threads(2)
x = np.random.default_rng(0).standard_normal((4, 70000)).astype(np.float32)  # two tasks
want = mlecore.logsumexp(x, axis=1)
stop = threading.Event()
def work(k):
    while not stop.is_set():
        if k == 0:  # a new thread count: the pool is rebuilt under its lock
            mlecore.set_num_threads(3 - mlecore.get_num_threads() % 2)
        mlecore.logsumexp(x, axis=1)
threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
for t in threads:
    t.start()
hung = bad = 0
for _ in range(300):
    pid = os.fork()
    if pid == 0:
        ok = np.array_equal(mlecore.logsumexp(x, axis=1), want)
        os._exit(0 if ok else 3)
    deadline = time.monotonic() + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            bad += os.waitstatus_to_exitcode(status) != 0
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            hung += 1
            break
        time.sleep(0.001)
    if hung:
        break
stop.set()
for t in threads:
    t.join()
print(hung, bad)
"""
    assert run_py(code).split() == ["0", "0"]


def test_show_config_and_tiers(capsys):
    mlecore.show_config()
    out = capsys.readouterr().out
    assert f"mlecore {mlecore.__version__}" in out
    assert ext.simd_tier() in out and f"threads:  {mlecore.get_num_threads()}" in out
    with pytest.raises(ValueError, match="unknown SIMD tier"):
        ext.set_simd_tier("sse9")


@pytest.mark.parametrize("tier", ["scalar", "neon", "avx2", "avx512"])
def test_every_tier_agrees_with_the_reference(rng, ref, tier):
    import scipy.special as sp

    x = rng.standard_normal((37, 2051)) * 3
    y = rng.integers(0, 2051, 37)
    old = ext.simd_tier()
    try:
        ext.set_simd_tier(tier)
        lse = mlecore.logsumexp(x.astype(np.float32), axis=1)
        loss, grad = mlecore.cross_entropy_with_grad(x, y, label_smoothing=0.1)
    finally:
        ext.set_simd_tier(old)
    np.testing.assert_allclose(lse, sp.logsumexp(x.astype(np.float32).astype(np.float64),
                                                 axis=1), rtol=3e-7)
    wl, wg = ref.ce_grad(x, y, label_smoothing=0.1)
    np.testing.assert_allclose(loss, wl, rtol=1e-13)
    np.testing.assert_allclose(grad, wg, rtol=1e-11, atol=1e-15)


def test_demo_runs_and_reproduces_the_seed_example():
    out = subprocess.run([sys.executable, "-m", "mlecore", "demo"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(" ok") == 3 and "MISMATCH" not in out.stdout
    assert "true model" in out.stdout and "fitted (MLE)" in out.stdout
