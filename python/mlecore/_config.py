"""Threads and the run-time configuration report."""

from __future__ import annotations

import operator
import platform
import sys

from . import _mlecore as _ext


def set_num_threads(n: int) -> None:
    """Set the number of threads mlecore's kernels use.

    Parameters
    ----------
    n : int
        At least 1 (at most 4096). Results do not depend on it: per-row values and
        reductions are computed in a fixed order. Where the system cannot start that many
        threads, kernels run on fewer (on the calling thread alone, at worst), never fail.

    Notes
    -----
    The calling thread is one of the ``n``; the other ``n - 1`` are mlecore's own workers.
    After a call, a worker keeps watching for the next one for up to 200 µs before it
    sleeps (``MLECORE_LINGER_US`` sets how long; 0: never): waking a sleeping thread takes
    tens of microseconds on a virtual machine, as long as a short call, which the calling
    thread would then do alone. Only the first 20 µs of the watch are a pure spin; after
    them the watcher yields its core at every look, so another library's threads (torch's
    OpenMP team, BLAS) that want the core get it at once.

    A count set here (or by ``MLECORE_NUM_THREADS``) is mlecore's own: calls from
    `mlecore.torch` then no longer follow ``torch.get_num_threads()``.

    Examples
    --------
    >>> import mlecore
    >>> mlecore.set_num_threads(1)
    >>> mlecore.get_num_threads()
    1
    """
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"the number of threads must be an int, got {n!r}") from None
    _ext.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads mlecore's kernels use.

    The default is the environment variable ``MLECORE_NUM_THREADS`` when set; else, once
    `mlecore.torch` has run a kernel large enough for threads, torch's own
    ``torch.get_num_threads()`` (read at each such call, so ``torch.set_num_threads``
    limits both libraries); else the number of cores available to the process.

    Examples
    --------
    >>> import mlecore
    >>> mlecore.get_num_threads() >= 1
    True
    """
    return _ext.get_num_threads()


def show_config(file=None) -> None:
    """Print mlecore's version, the SIMD level chosen at run time and the thread count.

    Parameters
    ----------
    file : file-like, optional
        Where to print; standard output by default.

    Examples
    --------
    >>> import mlecore
    >>> mlecore.show_config()  # doctest: +SKIP
    mlecore 0.1.0
      simd:     avx512 (detected: avx512)
      threads:  2
      python:   3.11.7 (x86_64)
    """
    out = file or sys.stdout
    print(f"mlecore {_ext.__version__}", file=out)
    print(f"  simd:     {_ext.simd_tier()} (detected: {_ext.detected_simd_tier()})", file=out)
    print(f"  threads:  {_ext.get_num_threads()}", file=out)
    print(f"  python:   {platform.python_version()} ({platform.machine()})", file=out)
