"""The benchmark keeps working (issue 5): a tiny run, no timing assertions."""

import json
import os
import subprocess

from conftest import REPO


def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [os.path.join(REPO, "bench", "run"), "--reps", "2", "--envs", "1,3", "--racers", "6", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "| cycle |" in done.stdout and "no GPU handed out twice" in done.stdout
    summary = json.loads(out.read_text())
    medians = summary["medians"]["genv"]
    for scenario in ("init", "activate", "config", "attach", "detach", "deactivate", "cycle", "envs_1", "envs_3",
                     "devices_3", "shim_overhead", "floor_bash", "floor_python"):
        assert medians[scenario] is not None and medians[scenario] >= 0
    race = summary["races"]["genv"]["race_6"]
    assert race["winners"] == 4 and race["double_bookings"] == 0
