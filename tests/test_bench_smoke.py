"""The benchmark keeps working (issues 5, 9, 10, 11, 12, 17 and 18): tiny runs, no
timing assertions (the targets and their measurements are the bench's own:
docs/performance.md).

The scenarios run in four groups, one bench run each (``--only``), so that
the groups run side by side with the rest of the suite; each takes a few
seconds. The kernel scenario starts kernels with the test runner's
interpreter when it has ipykernel and jupyter_client (the test extra),
instead of installing them into a venv; without them it is left out. The
monitor's scrape needs prometheus-client installed into the bench's venv
(pip): where that fails, the bench says why and the scrape is left out. The
hosts scenario needs OpenSSH's sshd (tests/sshd_hosts.py): without it, the
bench says why and leaves it out."""

import json
import os
import subprocess
import sys

from conftest import REPO
from sshd_hosts import missing as sshd_missing


def has_jupyter(python):
    probe = [python, "-c", "import ipykernel, jupyter_client"]
    return subprocess.run(probe, capture_output=True, timeout=120).returncode == 0


def bench(tmp_path, *options):
    """``bench/run --reps 1 OPTIONS``: its stdout and its JSON summary, after
    the checks every run must pass."""
    out = tmp_path / "bench.json"
    done = subprocess.run([os.path.join(REPO, "bench", "run"), "--reps", "1", *options, "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no GPU handed out twice" in done.stdout and "bench: wall time per scenario (s): " in done.stdout
    summary = json.loads(out.read_text())
    assert summary["checks_ok"] and summary["races_ok"]
    assert all(isinstance(value, (int, float)) for value in summary["targets"].values())
    assert set(summary["targets_met"]) == set(summary["targets"])
    assert all(seconds >= 0 for seconds in summary["seconds"].values())
    return done.stdout, summary


def test_bench_smoke_commands(tmp_path):
    """Issue 5: the cycle, the shim, listings with live environments, races."""
    stdout, summary = bench(tmp_path, "--only", "cycle,shim,envs,race", "--envs", "1,3", "--racers", "6")
    assert "| cycle |" in stdout
    medians = summary["medians"]["genv"]
    for scenario in ("init", "activate", "config", "attach", "detach", "deactivate", "cycle", "envs_1", "envs_3",
                     "devices_3", "floor_bash", "floor_python"):
        assert medians[scenario] is not None and medians[scenario] >= 0, scenario
    assert isinstance(medians["shim_overhead"], float)  # a difference: may be negative on a busy machine
    race = summary["races"]["genv"]["race_6"]
    assert race["winners"] == 4 and race["double_bookings"] == 0
    assert set(summary["seconds"]) >= {"cycle", "shim", "envs", "race"}


def test_bench_smoke_processes(tmp_path):
    """Issue 9: processes on the GPUs."""
    _, summary = bench(tmp_path, "--only", "procs", "--procs", "0,6")
    medians = summary["medians"]["genv"]
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


def test_bench_smoke_sharing(tmp_path):
    """Issue 10: shares, packing, waiting."""
    stdout, summary = bench(tmp_path, "--only", "share,pack,wait", "--pack", "12", "--waiters", "2", "--idle", "0.5")
    assert "packing and waiting checks: passed" in stdout
    medians = summary["medians"]["genv"]
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
    assert wait["idle_s"] >= 0.5 and wait["cpu_s"] >= 0 and wait["cpu_per_waiter_pct"] >= 0
    assert abs(wait["cpu_total_pct"] - wait["cpu_per_waiter_pct"] * 2) < 1e-9


def test_bench_smoke_admin_run_and_kernels(tmp_path):
    """Issue 11: enforce and the monitor's scrape, with 4 environments (3
    attached, each with a process) and 4 processes (1 unmanaged). Issue 12:
    genv run, import genv.sdk, kernels."""
    kernel = has_jupyter(sys.executable)
    kernel_options = ["--kernel-reps", "1", "--kernel-python", sys.executable] if kernel else ["--kernel-reps", "0"]
    stdout, summary = bench(tmp_path, "--only", "admin,run,sdk,kernel", "--admin", "4", *kernel_options)
    medians = summary["medians"]["genv"]
    for scenario in ("enforce_4", "enforce_smi_4", "floor_admin_4"):
        assert medians[scenario] is not None and medians[scenario] > 0, scenario
    assert isinstance(medians["enforce_net_4"], float)
    admin = summary["admin"]["4"]
    assert admin["environments"] == 4 and admin["attached"] == 3 and admin["unmanaged"] == 1
    assert admin["findings"] == {"unmanaged": 1}
    assert admin["calls"]["enforce"] == {"--query-compute-apps": 1}
    if "scrape" in summary["skipped"]:
        assert summary["skipped"]["scrape"] and "skipped scrape: " in stdout
        assert admin["scrape"] is None and "scrape_4" not in medians
    else:
        for scenario in ("scrape_4", "scrape_smi_4"):
            assert medians[scenario] is not None and medians[scenario] > 0, scenario
        assert isinstance(medians["scrape_net_4"], float)
        assert admin["scrape"] == {"environments": 4, "unmanaged": 1, "processes": 4}
        assert admin["calls"]["scrape"] == {"--query-compute-apps": 1, "--query-gpu": 1}

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
    assert "enforce and kernel checks: passed" in stdout


def test_bench_smoke_hosts_and_slurm(tmp_path):
    """Issue 18: listings across hosts over ssh (sshd on loopback); issue 17:
    off Slurm nothing asked, on a Slurm node (a replayed answer) one scontrol
    per command."""
    stdout, summary = bench(tmp_path, "--only", "hosts,slurm", "--hosts-slow", "0.3")
    medians = summary["medians"]["genv"]
    if sshd_missing():
        assert summary["skipped"]["hosts"] == sshd_missing() and summary["hosts"] is None
    else:
        for scenario in ("hosts_1_first", "hosts_1_reused", "hosts_3_first", "hosts_3_reused", "hosts_1_slow",
                         "hosts_3_slow"):
            assert medians[scenario] is not None and medians[scenario] > 0, scenario
        assert medians["hosts_1_slow"] >= 300 and summary["hosts"] == {"slow_seconds": 0.3}
        assert "genv devices -H over ssh" in stdout
    slurm = summary["slurm"]
    assert slurm["source"] == "replayed"
    assert set(slurm["calls"]["off"].values()) == {0} and set(slurm["calls"]["disabled"].values()) == {0}
    for mode in ("node", "job"):
        assert slurm["calls"][mode] == {"devices": 1, "ps": 1, "attach": 1, "status": 1, "deactivate": 0}, mode
    for mode in ("off", "disabled", "node", "job"):
        for command in ("devices", "ps", "attach"):
            assert medians["slurm_%s_%s" % (mode, command)] > 0
    assert 0 < medians["slurm_import"] < 50


def test_bench_smoke_record(tmp_path):
    """Issue 19: what a listing pays to record what it saw."""
    _, summary = bench(tmp_path, "--only", "record", "--record", "5")
    assert [facts["count"] for facts in summary["record"]] == [5] and summary["record"][0]["same"]
    assert 0 <= summary["record"][0]["again"] < 1000
