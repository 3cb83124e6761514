"""mlecore.torch beside torch's own thread pools: it follows torch's thread count unless it
was given one, and its workers leave the cores to torch's threads when those want them."""

import os
import subprocess
import sys

_FOLLOW = """
import torch, mlecore, mlecore.torch as mt
x, y = torch.randn(512, 1000), torch.randint(0, 1000, (512,))
counts = []
for n in (1, 2, 1):
    torch.set_num_threads(n)
    mt.cross_entropy(x, y)          # large enough for threads: reads torch's count
    counts.append(mlecore.get_num_threads())
mt.cross_entropy(x[:2], y[:2])      # a small call reads nothing
counts.append(mlecore.get_num_threads())
mlecore.set_num_threads(2)          # mlecore's own count wins from now on
torch.set_num_threads(1)
mt.cross_entropy(x, y)
counts.append(mlecore.get_num_threads())
print(counts)
"""


def _run(code, **env):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=os.environ | env)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_kernels_follow_torchs_thread_count_unless_given_their_own():
    env = {k: v for k, v in os.environ.items() if k != "MLECORE_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", _FOLLOW], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[1, 2, 1, 1, 2]"
    # MLECORE_NUM_THREADS is a count of mlecore's own too.
    assert _run(_FOLLOW, MLECORE_NUM_THREADS="3") == "[3, 3, 3, 3, 2]"


_LINGER = """
import mlecore, numpy as np
mlecore.set_num_threads(2)
x = np.random.default_rng(0).standard_normal((256, 4096), dtype=np.float32)
y = np.random.default_rng(1).integers(0, 4096, 256)
print(repr([float(mlecore.cross_entropy(x, y)) for _ in range(3)]))
"""


def test_the_watch_after_a_call_is_a_setting_and_changes_no_result():
    """MLECORE_LINGER_US=0: workers go back to sleep at once after a call; 1 s is the most
    it takes. Either way the numbers are the same."""
    results = {_run(_LINGER, MLECORE_LINGER_US=v) for v in ("0", "50", "200", "5000000")}
    assert len(results) == 1
