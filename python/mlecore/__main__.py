"""Command line: ``python -m mlecore demo`` (the main job) and ``python -m mlecore bench``."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlecore", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mlecore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the seed example, then a maximum-likelihood fit")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the generated data")
    bench = sub.add_parser("bench", help="mlecore against torch, scipy and numpy")
    bench.add_argument("--quick", action="store_true", help="a small set of cases")
    bench.add_argument("--plot", metavar="FILE.png", help="draw the comparison as a bar chart")
    bench.add_argument("--json", metavar="FILE", help="write the raw numbers as JSON")
    bench.add_argument("--repeat", type=int, default=None, help="timed runs per case")
    sub.add_parser("config", help="print the version, SIMD tier and threads")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run

        return run(seed=args.seed)
    if args.command == "bench":
        from ._bench import run

        return run(quick=args.quick, plot=args.plot, json_path=args.json, repeat=args.repeat)
    from ._config import show_config

    show_config()
    return 0


if __name__ == "__main__":
    sys.exit(main())
