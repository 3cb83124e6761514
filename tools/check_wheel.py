"""Checks a built wheel as a package index and a user would see it:

    python tools/check_wheel.py dist/mlecore-*.whl

- `auditwheel show` must report a manylinux tag (its verdict is the test);
- the wheel holds the type stubs and py.typed, the license, and no tests or build files;
- the compiled module is stripped of its symbol table;
- its size is reported.

Exits non-zero on the first failure, saying what was expected.
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

REQUIRED = ["mlecore/__init__.py", "mlecore/_mlecore.pyi", "mlecore/py.typed",
            "mlecore/torch/__init__.py"]
FORBIDDEN = re.compile(r"(^|/)(tests?|rust|benches|tools|\.github)/|Cargo\.(toml|lock)$|"
                       r"\.rs$|Makefile$|__pycache__|\.pyc$")


def fail(message: str) -> None:
    raise SystemExit(f"check_wheel: {message}")


def elf_sections(data: bytes) -> set[str]:
    """The section names of a 64-bit ELF file."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        fail("the compiled module is not a 64-bit ELF file")
    end = "<" if data[5] == 1 else ">"
    shoff, = struct.unpack_from(end + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)

    def header(i):
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            end + "IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, stroff, strsize = header(shstrndx)
    strings = data[stroff: stroff + strsize]
    names = set()
    for i in range(shnum):
        name = header(i)[0]
        names.add(strings[name: strings.index(b"\0", name)].decode())
    return names


def main(path: str) -> int:
    wheel = Path(path)
    tag = re.search(r"-(manylinux[^.]*(?:\.manylinux[^.]*)*)\.whl$", wheel.name)
    if not tag:
        fail(f"{wheel.name} has no manylinux platform tag")
    show = subprocess.run(["auditwheel", "show", str(wheel)], capture_output=True, text=True)
    verdict = re.search(r'consistent with the following platform tag:\s*"([^"]+)"',
                        show.stdout.replace("\n", " "))
    if show.returncode or not verdict or not verdict.group(1).startswith("manylinux"):
        fail(f"auditwheel does not find {wheel.name} manylinux:\n{show.stdout}{show.stderr}")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        missing = [n for n in REQUIRED if n not in names]
        if missing:
            fail(f"{wheel.name} lacks {missing}")
        if not any(re.search(r"dist-info/licenses/LICENSE$", n) for n in names):
            fail(f"{wheel.name} lacks the license file")
        stray = [n for n in names if FORBIDDEN.search(n)]
        if stray:
            fail(f"{wheel.name} holds files that belong to the source tree: {stray}")
        modules = [n for n in names if re.match(r"mlecore/_mlecore\..*\.so$", n)]
        if len(modules) != 1:
            fail(f"{wheel.name} holds {len(modules)} compiled modules, expected one")
        module = z.read(modules[0])
        if ".symtab" in elf_sections(module):
            fail(f"{modules[0]} is not stripped (it has a .symtab section)")
    print(f"{wheel.name}: auditwheel says {verdict.group(1)}; {len(names)} files; "
          f"{wheel.stat().st_size / 1e6:.2f} MB compressed, compiled module "
          f"{len(module) / 1e6:.2f} MB, stripped; stubs, py.typed and license present")
    return 0


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        main(arg)
