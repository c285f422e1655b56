"""The benchmark keeps working (issues 5, 9, 10, 11, 12 and 18): a tiny run,
no timing assertions.

The kernel scenario starts kernels with the test runner's interpreter when it
has ipykernel and jupyter_client (the test extra), instead of installing them
into a venv; without them it is left out. The monitor's scrape needs
prometheus-client installed into the bench's venv (pip): where that fails,
the bench says why and the scrape is left out. The hosts scenario needs
OpenSSH's sshd (tests/sshd_hosts.py): without it, the bench says why and
leaves it out."""

import json
import os
import subprocess
import sys

from conftest import REPO
from sshd_hosts import missing as sshd_missing


def has_jupyter(python):
    probe = [python, "-c", "import ipykernel, jupyter_client"]
    return subprocess.run(probe, capture_output=True, timeout=120).returncode == 0


def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    kernel = has_jupyter(sys.executable)
    kernel_options = ["--kernel-reps", "1", "--kernel-python", sys.executable] if kernel else ["--kernel-reps", "0"]
    done = subprocess.run(
        [os.path.join(REPO, "bench", "run"), "--reps", "2", "--envs", "1,3", "--racers", "6",
         "--procs", "0,6", "--pack", "12", "--waiters", "2", "--idle", "1", "--admin", "4", "--hosts-slow", "0.3",
         "--record", "5", *kernel_options,
         "--json", str(out)],
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

    # Issue 11: enforce and the monitor's scrape, with 4 environments (3
    # attached, each with a process) and 4 processes (1 unmanaged).
    for scenario in ("enforce_4", "enforce_smi_4", "floor_admin_4"):
        assert medians[scenario] is not None and medians[scenario] > 0, scenario
    assert isinstance(medians["enforce_net_4"], float)
    admin = summary["admin"]["4"]
    assert admin["environments"] == 4 and admin["attached"] == 3 and admin["unmanaged"] == 1
    assert admin["findings"] == {"unmanaged": 1}
    assert admin["calls"]["enforce"] == {"--query-compute-apps": 1}
    if "scrape" in summary["skipped"]:
        assert summary["skipped"]["scrape"] and "skipped scrape: " in done.stdout
        assert admin["scrape"] is None and "scrape_4" not in medians
    else:
        for scenario in ("scrape_4", "scrape_smi_4"):
            assert medians[scenario] is not None and medians[scenario] > 0, scenario
        assert isinstance(medians["scrape_net_4"], float)
        assert admin["scrape"] == {"environments": 4, "unmanaged": 1, "processes": 4}
        assert admin["calls"]["scrape"] == {"--query-compute-apps": 1, "--query-gpu": 1}

    # Issue 12: genv run, import genv.sdk, kernels.
    for scenario in ("run_direct", "run_plain", "run_plain_smi", "run_gpu", "run_gpu_smi", "floor_run",
                     "sdk_import", "sdk_floor"):
        assert medians[scenario] is not None and medians[scenario] > 0, scenario
    for derived in ("run_plain_over", "run_plain_net", "run_gpu_over", "run_gpu_net", "sdk_net"):
        assert isinstance(medians[derived], float), derived
    calls = summary["run_calls"]
    assert set(calls) == {"plain", "gpu"} and "--query-compute-apps" in calls["gpu"]
    assert all(number >= 1 for kinds in calls.values() for number in kinds.values())
    if kernel:
        for scenario in ("kernel_plain", "kernel_genv", "kernel_smi"):
            assert medians[scenario] is not None and medians[scenario] > 0, scenario
        assert isinstance(medians["kernel_diff"], float) and isinstance(medians["kernel_net"], float)
        facts = summary["kernel"]
        assert facts["environments_left"] == 0 and facts["reps"] == 1
        assert "--query-compute-apps" in facts["calls"]
    else:
        assert summary["kernel"] is None and "kernel_plain" not in medians
    assert "enforce and kernel checks: passed" in done.stdout

    # Issue 18: listings across hosts over ssh (sshd on loopback).
    if sshd_missing():
        assert summary["skipped"]["hosts"] == sshd_missing() and summary["hosts"] is None
    else:
        for scenario in ("hosts_1_first", "hosts_1_reused", "hosts_3_first", "hosts_3_reused", "hosts_1_slow",
                         "hosts_3_slow"):
            assert medians[scenario] is not None and medians[scenario] > 0, scenario
        assert medians["hosts_1_slow"] >= 300 and summary["hosts"] == {"slow_seconds": 0.3}
        assert "genv devices -H over ssh" in done.stdout
    # Issue 19: recording what a listing saw.
    assert [facts["count"] for facts in summary["record"]] == [5] and summary["record"][0]["same"]
    assert 0 <= summary["record"][0]["again"] < 1000
    assert summary["checks_ok"] and summary["races_ok"]
    assert all(isinstance(value, (int, float)) for value in summary["targets"].values())
    assert set(summary["targets_met"]) == set(summary["targets"])
