"""Prints the requirements that pyproject.toml lists, one per line, for pip to install.

    python tools/requirements.py build runtime test

`build` is [build-system].requires, `runtime` is [project].dependencies, and any other name
is an extra of [project.optional-dependencies], with extras that name mlecore's own extras
("mlecore[torch]") expanded. pyproject.toml stays the one list of dependencies; the Makefile
installs from it without building the package first.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib

SELF = re.compile(r"^mlecore\[([^\]]+)\]$")


def requirements(project: dict, groups: list[str]) -> list[str]:
    extras = project["project"].get("optional-dependencies", {})
    out: list[str] = []
    pending = list(groups)
    seen: set[str] = set()
    while pending:
        group = pending.pop(0)
        if group in seen:
            continue
        seen.add(group)
        if group == "build":
            reqs = project["build-system"]["requires"]
        elif group == "runtime":
            reqs = project["project"].get("dependencies", [])
        elif group in extras:
            reqs = extras[group]
        else:
            raise SystemExit(f"no such requirement group in pyproject.toml: {group!r}")
        for r in reqs:
            m = SELF.match(r.replace(" ", ""))
            if m:
                pending.extend(m.group(1).split(","))
            elif r not in out:
                out.append(r)
    return out


def main(argv: list[str]) -> int:
    path = Path(__file__).resolve().parent.parent / "pyproject.toml"
    project = tomllib.loads(path.read_text())
    print("\n".join(requirements(project, argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
