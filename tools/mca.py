"""Static cost of the AVX2 inner loops on a CPU we may not have: llvm-mca's model of it.

    python3 tools/mca.py [--mcpu znver3] [--dtype f32|f64]

Builds the `inner` benchmark's assembly (the same instantiations `cargo bench --bench inner`
times), finds the loops of the AVX2 tier's `run_f32`/`run_f64`, and prints, for the loops that
call `exp` (the statistics pass's exp-and-sum and the write pass), llvm-mca's block throughput:
cycles per iteration on the modelled core and the pressure per execution port. The loops'
vectors per iteration are read from their loads. A model, not a measurement: BENCHMARKS.md
quotes both.
"""

import argparse
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_asm():
    subprocess.run(
        ["cargo", "rustc", "--quiet", "--release", "--bench", "inner", "--",
         "--emit", "asm", "-C", "codegen-units=1"],
        cwd=ROOT, check=True)
    files = glob.glob(os.path.join(ROOT, "target/release/deps/inner-*.inner.*.s"))
    return max(files, key=os.path.getmtime)


def function(lines, name):
    """The lines of the first function whose mangled name contains `name`."""
    start = next(i for i, s in enumerate(lines)
                 if s.startswith("_ZN") and name in s and s.rstrip().endswith(":"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(".Lfunc_end"))
    return lines[start:end]


def loops(body):
    """(label, instructions) of every innermost backward-branch loop."""
    labels = {s.rstrip()[:-1]: i for i, s in enumerate(body) if re.match(r"^\.LBB\w+:", s)}
    spans = []
    for i, s in enumerate(body):
        m = re.match(r"^\s+j\w+\s+(\.LBB\w+)", s)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            spans.append((m.group(1), labels[m.group(1)], i))
    found = []
    for label, a, b in spans:
        if any((a, b) != (c, d) and a <= c and d <= b for _, c, d in spans):
            continue
        insts = [x for x in body[a + 1:b + 1]
                 if x.startswith("\t") and not x.lstrip().startswith((".", "#"))]
        found.append((label, insts))
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mcpu", default="znver3")
    ap.add_argument("--dtype", default="f32", choices=["f32", "f64"])
    ap.add_argument("--show", action="store_true", help="print the loops' instructions")
    args = ap.parse_args()
    lines = open(build_asm()).read().splitlines()
    body = function(lines, "4avx27run_" + args.dtype)
    for label, insts in loops(body):
        fmas = sum("vfn" in x or "vfmadd" in x for x in insts)
        if fmas < 4:
            continue
        # The data's loads: through a register other than the stack's and rip.
        loads = sum(bool(re.search(r"\s-?\d*\(%r(?!sp|ip)\w+(,%r\w+,\d)?\),\s*%ymm", x))
                    and "prefetch" not in x for x in insts)
        # A store through a pointer other than the stack's is the write pass's output.
        stores = sum(bool(re.search(r"vmov\w*\s+%ymm\d+,\s*-?\d*\(%r(?!sp)", x)) for x in insts)
        kind = "write pass" if stores else "stats pass"
        report = subprocess.run(
            ["llvm-mca", f"-mcpu={args.mcpu}", "-iterations=400", "-bottleneck-analysis"],
            input="\n".join(insts) + "\n", capture_output=True, text=True, check=True).stdout
        cycles = float(re.search(r"Block RThroughput:\s*([\d.]+)", report).group(1))
        total = float(re.search(r"Total Cycles:\s*(\d+)", report).group(1)) / 400
        print(f"{args.dtype} {kind} loop {label}: {len(insts)} instructions, {fmas} FMA, "
              f"{loads} vector loads; llvm-mca {args.mcpu}: {total:.2f} cycles/iteration "
              f"(throughput bound {cycles:.2f})")
        if args.show:
            print("\n".join(insts))
            print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
