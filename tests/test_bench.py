"""`python -m mlecore bench` runs end to end (numbers are checked by people, not by tests)."""

import json
import subprocess
import sys


def test_quick_bench_writes_table_json_and_plot(tmp_path):
    js, png = tmp_path / "bench.json", tmp_path / "bench.png"
    out = subprocess.run(
        [sys.executable, "-m", "mlecore", "bench", "--quick", "--repeat", "1", "--json",
         str(js), "--plot", str(png)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| contender | median ms | GB/s | of ceiling | mlecore's speedup |" in out.stdout
    data = json.loads(js.read_text())
    cases = {r["case"] for r in data["results"]}
    assert any("cross_entropy forward+backward" in c for c in cases)
    assert any("few classes" in c for c in cases)
    assert all(r["ms"] > 0 and len(r["times_ms"]) == 1 for r in data["results"])
    assert png.stat().st_size > 10_000
