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


def test_bad_arguments_are_usage_errors_before_anything_runs(tmp_path, monkeypatch, capsys):
    """`demo --seed -1` ended in a numpy traceback, `bench --repeat -1` after 20 s of
    warm-ups, `--plot` without matplotlib after the whole benchmark: each is now argparse's
    usage error (exit status 2) before any work."""
    import pytest

    from mlecore import _bench, _demo
    from mlecore.__main__ import main

    def never(**kw):
        raise AssertionError("ran despite a bad argument")

    monkeypatch.setattr(_bench, "run", never)
    monkeypatch.setattr(_demo, "run", never)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [(["demo", "--seed", "-1"], r"--seed: expected an integer ≥ 0, got -1"),
             (["demo", "--seed", "x"], "--seed: expected an integer, got 'x'"),
             (["bench", "--repeat", "-1"], r"--repeat: expected an integer ≥ 1, got -1"),
             (["bench", "--repeat", "0"], r"--repeat: expected an integer ≥ 1, got 0"),
             (["bench", "--json", str(blocker / "b.json")], "is not a directory"),
             (["bench", "--json", str(tmp_path)], "is a directory")]
    for argv, msg in cases:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv
        err = capsys.readouterr().err
        assert "usage: python -m mlecore" in err and msg in err, (argv, err)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--quick", "--plot", str(tmp_path / "p.png")])
    assert exit_.value.code == 2
    assert "--plot needs matplotlib, which is not installed" in capsys.readouterr().err
    # Called directly, the runners refuse the same values.
    monkeypatch.undo()
    with pytest.raises(ValueError, match="repeat must be an integer ≥ 1"):
        _bench.run(repeat=-1)
    with pytest.raises(ValueError, match="seed must be an integer ≥ 0"):
        _demo.run(seed=-1)
