#!/usr/bin/env bash
# The aarch64 wheel, installed and imported by an aarch64 Python under qemu-user: Debian's
# arm64 python3.11 (downloaded without root into target/aarch64-python, once) and numpy's
# aarch64 wheel from PyPI. Runs the seed example, a gradient, and checks that the NEON tier is
# the one in use.
#
#     tools/aarch64_smoke.sh dist/mlecore-*-manylinux*_aarch64.whl PIP
set -euo pipefail
wheel=$1
pip=$2
top=$(pwd)/target/aarch64-python
root=$top/root
if [ ! -x "$root/usr/bin/python3.11" ]; then
    rm -rf "$top" && mkdir -p "$top"/{lists/partial,cache/archives/partial,debs}
    o=(-oAPT::Architecture=arm64 -oAPT::Architectures=arm64 -oDir::State::Lists="$top/lists"
       -oDir::Cache="$top/cache" -oDebug::NoLocking=1 -q)
    apt-get "${o[@]}" update >/dev/null
    (cd "$top/debs" && apt-get "${o[@]}" download python3.11-minimal libpython3.11-minimal \
        libpython3.11-stdlib libc6 libexpat1 zlib1g libffi8 libssl3 libbz2-1.0 liblzma5 \
        libncursesw6 libtinfo6 libreadline8 libsqlite3-0 libuuid1 libcrypt1 libgcc-s1 \
        libstdc++6 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
    for deb in "$top"/debs/*.deb; do dpkg -x "$deb" "$root"; done
fi
site=$top/site
rm -rf "$site" "$top/wheels" && mkdir -p "$site"
$pip download -q --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux2014_aarch64 "numpy>=1.24" -d "$top/wheels"
for w in "$top"/wheels/*.whl "$wheel"; do python3 -m zipfile -e "$w" "$site"; done
qemu-aarch64 -L "$root" "$root/usr/bin/python3.11" - "$site" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import io
import numpy as np
import mlecore
from mlecore._demo import SEED_LABELS, SEED_LOGITS, SEED_SOFT

out = io.StringIO()
mlecore.show_config(file=out)
print(out.getvalue(), end="")
assert "simd:     neon" in out.getvalue(), "the NEON tier is not in use"
hard = mlecore.cross_entropy(SEED_LOGITS, SEED_LABELS)
soft = mlecore.cross_entropy(SEED_LOGITS, SEED_SOFT)
assert (f"{hard:.4f}", f"{soft:.4f}") == ("1.0686", "1.0685"), (hard, soft)
z = np.array([[2.0, 0.0, -1.0]])
loss, grad = mlecore.cross_entropy_with_grad(z, np.array([0]))
assert np.allclose(grad, mlecore.softmax(z, axis=1) - [1, 0, 0])
print(f"aarch64 wheel under qemu: seed example {hard:.4f} / {soft:.4f}, gradient ok")
PY
