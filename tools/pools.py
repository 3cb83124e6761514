"""How mlecore's workers and torch's OpenMP team share the cores: a pipeline that alternates
a torch operation and an mlecore call, against each timed alone.

    python tools/pools.py            # this build
    MLECORE_LINGER_US=0 python tools/pools.py

Prints, per pipeline, the median time of one step alone (torch op, mlecore call) and of the
two alternated; "overlap cost" is alternated − (torch alone + mlecore alone). Timings are
medians of rounds in one process; the machine must be otherwise idle.
"""

import statistics
import time

import torch

import mlecore
import mlecore.torch as mt


def _median_us(fn, calls, rounds=15):
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t) / calls * 1e6)
    return statistics.median(times)


def main():
    torch.manual_seed(0)
    a, b = torch.randn(384, 384), torch.randn(384, 384)
    big = torch.randn(2048, 1000)
    y = torch.randint(0, 1000, (2048,))
    act = torch.randn(2048, 1024)
    pipelines = {
        "matmul 384³ | cross_entropy (2048, 1000)": (lambda: torch.mm(a, b),
                                                      lambda: mt.cross_entropy(big, y)),
        "gelu (2048, 1024) | cross_entropy (2048, 1000)": (
            lambda: torch.nn.functional.gelu(act), lambda: mt.cross_entropy(big, y)),
        "matmul 384³ | log_softmax (2048, 1000)": (lambda: torch.mm(a, b),
                                                    lambda: mt.log_softmax(big, 1)),
    }
    print(f"mlecore {mlecore.__version__} from {mlecore.__file__}; torch threads "
          f"{torch.get_num_threads()}, mlecore threads {mlecore.get_num_threads()}")
    print("| pipeline | torch alone µs | mlecore alone µs | alternated µs | overlap cost µs |")
    print("|---|---:|---:|---:|---:|")
    with torch.no_grad():
        for name, (theirs, ours) in pipelines.items():
            for f in (theirs, ours):
                f()

            def both(theirs=theirs, ours=ours):
                theirs()
                ours()
            t = _median_us(theirs, 50)
            m = _median_us(ours, 50)
            tm = _median_us(both, 50)
            print(f"| {name} | {t:.0f} | {m:.0f} | {tm:.0f} | {tm - t - m:+.0f} |")


if __name__ == "__main__":
    main()
