"""Command line: ``python -m mlecore demo`` (the main job) and ``python -m mlecore bench``."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from . import __version__


def _count(least: int):
    """An argparse type: an int ≥ `least`, else a usage error naming what was expected."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if n < least:
            raise argparse.ArgumentTypeError(f"expected an integer ≥ {least}, got {n}")
        return n

    parse.__name__ = "int"
    return parse


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a None in sys.modules: imports of it fail
        return False


def _writable(path: str) -> str | None:
    """Why `path` cannot be written as a file (the benchmark writes it only at the end),
    or None."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return f"{path} is a directory"
    parent = os.path.dirname(path)
    while not os.path.isdir(parent):  # the benchmark creates the missing directories
        if os.path.exists(parent):
            return f"{parent} is not a directory"
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def _check_bench(bench: argparse.ArgumentParser, args) -> None:
    """What would fail only after minutes of measuring fails now, as a usage error."""
    if args.plot and not _installed("matplotlib"):
        bench.error("--plot needs matplotlib, which is not installed "
                    "(pip install matplotlib, or leave --plot out)")
    for flag, path in (("--plot", args.plot), ("--json", args.json)):
        why = path and _writable(path)
        if why:
            bench.error(f"{flag}: cannot write {path}: {why}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlecore", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mlecore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the seed example, then a maximum-likelihood fit")
    demo.add_argument("--seed", type=_count(0), default=0,
                      help="random seed of the generated data (an integer ≥ 0)")
    bench = sub.add_parser("bench", help="mlecore against torch, scipy and numpy")
    bench.add_argument("--quick", action="store_true", help="a small set of cases")
    bench.add_argument("--plot", metavar="FILE.png",
                       help="draw the comparison as a bar chart (needs matplotlib)")
    bench.add_argument("--json", metavar="FILE", help="write the raw numbers as JSON")
    bench.add_argument("--repeat", type=_count(1), default=None,
                       help="timed runs per case (an integer ≥ 1)")
    bench.add_argument("--sizes", action="store_true",
                       help="the sweep of every function from (1, 2) to (4096, 32000), "
                            "forward and forward+backward, against torch, numpy and scipy")
    sub.add_parser("config", help="print the version, SIMD tier and threads")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run

        return run(seed=args.seed)
    if args.command == "bench":
        _check_bench(bench, args)
        if args.sizes:
            from ._bench_sizes import run as sweep

            return sweep(quick=args.quick, plot_path=args.plot, json_path=args.json,
                         repeat=args.repeat)
        from ._bench import run

        return run(quick=args.quick, plot=args.plot, json_path=args.json, repeat=args.repeat)
    from ._config import show_config

    show_config()
    return 0


if __name__ == "__main__":
    sys.exit(main())
