"""The benchmark keeps working (issues 5, 9 and 10): a tiny run, no timing
assertions."""

import json
import os
import subprocess

from conftest import REPO


def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [os.path.join(REPO, "bench", "run"), "--reps", "2", "--envs", "1,3", "--racers", "6",
         "--procs", "0,6", "--pack", "12", "--waiters", "2", "--idle", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| cycle |" in done.stdout and "no GPU handed out twice" in done.stdout
    assert "packing and waiting checks: passed" in done.stdout
    summary = json.loads(out.read_text())
    medians = summary["medians"]["genv"]
    for scenario in ("init", "activate", "config", "attach", "detach", "deactivate", "cycle", "envs_1", "envs_3",
                     "devices_3", "shim_overhead", "floor_bash", "floor_python"):
        assert medians[scenario] is not None and medians[scenario] >= 0
    race = summary["races"]["genv"]["race_6"]
    assert race["winners"] == 4 and race["double_bookings"] == 0

    # Issue 9: processes on the GPUs.
    for n in (0, 6):
        for scenario in ("ps_%d", "ps_smi_%d", "devices_procs_%d", "devices_procs_smi_%d", "attach_procs_%d",
                         "attach_procs_smi_%d", "detach_procs_%d", "shim_table_%d", "direct_table_%d",
                         "shim_list_%d", "direct_list_%d", "floor_procs_%d"):
            assert medians[scenario % n] is not None and medians[scenario % n] > 0, scenario % n
        for derived in ("ps_net_%d", "devices_procs_net_%d", "attach_procs_net_%d", "filter_overhead_%d",
                        "plain_overhead_%d"):
            assert isinstance(medians[derived % n], float), derived % n  # a difference: may be negative
        calls = summary["nvidia_smi_calls"][str(n)]
        for command in ("ps", "devices", "attach"):
            assert calls[command] and all(number >= 1 for number in calls[command].values()), (command, calls)
        assert "--query-compute-apps" in calls["ps"]
        assert calls["shim_table"] == {"table": 1} and calls["shim_list"] == {"-L": 1}
        starts = summary["shim_python_starts"][str(n)]
        assert set(starts) == {"table", "apps", "list", "query_gpu", "dmon"}
        assert all(number >= 0 for number in starts.values())
    assert medians["attach_nosmi"] > 0

    # Issue 10: shares, packing, waiting.
    for scenario in ("share_plain_attach", "share_activate", "share_config", "share_memory", "share_attach",
                     "share_detach", "share_deactivate", "share_cycle"):
        assert medians[scenario] is not None and medians[scenario] > 0, scenario
    pack = summary["packing"]
    assert pack["terminals"] == 12 and pack["gpus"] == 8 and pack["total_mib"] == 8 * 80 * 1024
    assert pack["attached"] + pack["refused"] == 12 and pack["attached"] >= 8
    assert pack["over_committed"] == 0 and pack["whole_shared"] == 0 and pack["consistent"]
    assert 0 <= pack["lock_timeouts"] <= pack["refused"]
    assert 0 < pack["placed_mib"] <= pack["total_mib"] and pack["wall_ms"] > 0
    wait = summary["waiting"]
    assert wait["ok"] and wait["waiters"] == 2 and wait["attached"] == 2
    assert len(wait["latencies_ms"]) == 2 and all(latency > 0 for latency in wait["latencies_ms"])
    assert wait["methods"] == ["kill -9", "deactivate"]
    assert wait["idle_s"] >= 1 and wait["cpu_s"] >= 0 and wait["cpu_per_waiter_pct"] >= 0
    assert summary["checks_ok"] and summary["races_ok"]
    assert all(isinstance(value, (int, float)) for value in summary["targets"].values())
    assert set(summary["targets_met"]) == set(summary["targets"])
