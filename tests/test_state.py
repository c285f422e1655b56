"""State that never lies (issue 3): atomic, versioned, crash- and damage-proof."""

import json
import os
import random
import re
import signal
import subprocess
import time

import pytest

from conftest import UID, gone, kill_quietly

FAULTS = ["before-write", "mid-write", "before-fsync", "before-rename", "after-rename", "before-unlock"]


def sh_cli(genv, *args, pid, eid=None, **env):
    extra = {"GENV_SHELL_PID": str(pid)}
    if eid is not None:
        extra["GENV_ENVIRONMENT_ID"] = eid
    extra.update(env)
    return genv.cli(*args, **extra)


@pytest.mark.parametrize("fault", FAULTS)
def test_kill_at_each_step_leaves_old_or_new_state(genv, sleepers, fault):
    keep = sleepers()
    assert sh_cli(genv, "sh-activate", "--gpus", "1", pid=keep, GENV_DEVICES="4").returncode == 0
    before = genv.state()
    victim = sleepers()
    result = sh_cli(genv, "sh-activate", "--gpus", "2", pid=victim, GENV_DEVICES="4", GENV_FAULT=fault)
    assert result.returncode == -signal.SIGKILL
    after = genv.state()  # parses: never a broken file
    ids = sorted(env["id"] for env in after["envs"])
    if fault in ("after-rename", "before-unlock"):
        assert ids == sorted([str(keep), str(victim)])
    else:
        assert after == before
    assert next(env for env in after["envs"] if env["id"] == str(keep)) == before["envs"][0]
    # The next command sweeps what the killed writer left behind.
    assert genv.cli("envs").returncode == 0
    assert [name for name in os.listdir(genv.tmpdir) if name.startswith(".tmp")] == []


def test_random_kill_loop(genv, sleepers):
    keep = sleepers()
    assert sh_cli(genv, "sh-activate", "--gpus", "1", pid=keep, GENV_DEVICES="4").returncode == 0
    rng = random.Random(1234)
    terminals = [sleepers() for _ in range(4)]
    for round_ in range(40):
        pid = rng.choice(terminals)
        args = rng.choice([
            ("sh-activate", "--gpus", str(rng.randint(0, 2))),
            ("sh-config", "name", "round%d" % round_),
            ("sh-attach",),
            ("sh-detach",),
            ("sh-deactivate",),
        ])
        env = dict(genv.environ(GENV_DEVICES="4", GENV_SHELL_PID=str(pid)))
        if args[0] != "sh-activate":
            env["GENV_ENVIRONMENT_ID"] = str(pid)
        proc = subprocess.Popen([os.path.join(genv.root, "bin", "genv"), *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Kill at a random instant: anywhere from before Python starts to after it exits.
        deadline = time.monotonic() + rng.random() * 0.05
        while time.monotonic() < deadline and proc.poll() is None:
            pass
        kill_quietly(proc.pid)
        proc.wait()
        state = genv.state()
        assert str(keep) in [env["id"] for env in state["envs"]]
        check = genv.cli("envs", "--json")
        assert check.returncode == 0 and b"damaged" not in check.stderr, check
    used = [d["index"] for env in genv.state()["envs"] for d in env["devices"]]
    assert len(used) == len(set(used))


def test_format_1_is_migrated(genv, sleepers):
    pid = sleepers()
    os.makedirs(genv.tmpdir, mode=0o1777)
    os.chmod(genv.tmpdir, 0o1777)
    old = {"format": 1, "envs": {"legacy": {"created": time.time() - 60, "config": {"gpus": 1, "name": "old"},
                                             "pids": [pid, 999999999], "devices": [2]}}}
    with open(os.path.join(genv.tmpdir, "user-%d.json" % UID), "w") as handle:
        json.dump(old, handle)
    result = genv.cli("envs", "--json", GENV_DEVICES="4")
    assert result.returncode == 0, result
    rows = json.loads(result.stdout)
    assert [(row["id"], row["name"], row["pids"], row["devices"]) for row in rows] == [("legacy", "old", [pid], [2])]
    state = genv.state()
    assert state["format"] == 4 and state["envs"][0]["terminals"][0]["pid"] == pid


def test_format_2_is_migrated(genv, sleepers):
    """Format 3 added shares and the line of waiters; a format 2 file is
    read as it is and written back as format 3 by its owner."""
    pid = sleepers()
    assert sh_cli(genv, "sh-activate", "--gpus", "2", pid=pid, GENV_DEVICES="4").returncode == 0
    state = genv.state()
    state["format"] = 2
    for env in state["envs"]:
        env.pop("waiting", None)
    with open(os.path.join(genv.tmpdir, "user-%d.json" % UID), "w") as handle:
        json.dump(state, handle)
    rows = json.loads(genv.cli("envs", "--json", GENV_DEVICES="4").stdout)
    assert [(row["id"], row["devices"], row["waiting"]) for row in rows] == [(str(pid), [0, 1], None)]
    assert genv.state()["format"] == 4
    other = sleepers()
    result = sh_cli(genv, "sh-activate", "--gpus", "2", pid=other, GENV_DEVICES="4")
    assert result.returncode == 0 and b"CUDA_VISIBLE_DEVICES='2,3'" in result.stdout


def test_newer_format_is_refused(genv):
    os.makedirs(genv.tmpdir)
    os.chmod(genv.tmpdir, 0o1777)
    path = os.path.join(genv.tmpdir, "user-%d.json" % UID)
    with open(path, "w") as handle:
        json.dump({"format": 99, "uid": UID, "whatever": True}, handle)
    result = genv.cli("envs")
    assert result.returncode == 1
    assert result.stderr.decode().strip().startswith("genv: state was written by a newer genv")
    assert json.load(open(path))["format"] == 99


# UID stands for the uid the tests run as (the file's own), OTHER for another.
@pytest.mark.parametrize("content", [
    b'{"format": 2, "uid": UID, "devices": null}',
    b'{"format": 2, "uid": OTHER, "devices": null, "envs": []}',
    b'{"format": "2"}', b'{"format"', b'{"format":3,"uid":UID,"devices":null,"envs":[{"id":"x","cre',
    b'  {  "format": 3, "uid": UID, "devices": null, "envs": []} trailing', b'{"format": 3, "uid": UID, "\xff"',
])
def test_damaged_file_is_moved_aside(genv, sleepers, content):
    content = content.replace(b"OTHER", b"%d" % (UID + 1)).replace(b"UID", b"%d" % UID)
    name = "user-%d.json" % UID
    os.makedirs(genv.tmpdir)
    os.chmod(genv.tmpdir, 0o1777)
    with open(os.path.join(genv.tmpdir, name), "wb") as handle:
        handle.write(content)
    result = genv.cli("envs", GENV_DEVICES="4")
    assert result.returncode == 0
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and name in lines[0] and "damaged" in lines[0], lines
    assert b"Traceback" not in result.stderr
    aside = [entry for entry in os.listdir(genv.tmpdir)
             if re.match(re.escape(name) + r"\.damaged-\d{8}T\d{6}Z-\d+$", entry)]
    assert len(aside) == 1
    with open(os.path.join(genv.tmpdir, aside[0]), "rb") as handle:
        assert handle.read() == content
    # genv carries on: a new environment works, the damage is not reported again.
    pid = sleepers()
    assert sh_cli(genv, "sh-activate", "--gpus", "1", pid=pid, GENV_DEVICES="4").returncode == 0
    assert genv.cli("envs").stderr == b""


@pytest.mark.parametrize("damage", [{"id": 3}, {"config": {"gpus": 1.5}}, {"devices": [{"index": 0}]},
                                    {"waiting": {"pid": 1}}, {"created": 1e300}])
def test_a_damaged_environment_costs_only_itself(genv, sleepers, damage):
    """The user's other environments stay, with their GPUs (issue 15, B9)."""
    pid = sleepers()
    assert sh_cli(genv, "sh-activate", "--gpus", "1", pid=pid, GENV_DEVICES="4").returncode == 0
    state = genv.state()
    (good,) = state["envs"]
    state["envs"].append({**good, "id": "bad", **damage})
    name = "user-%d.json" % UID
    with open(os.path.join(genv.tmpdir, name), "w") as handle:
        json.dump(state, handle)
    result = genv.cli("envs", "--json", GENV_DEVICES="4")
    assert result.returncode == 0
    assert [(row["id"], row["devices"]) for row in json.loads(result.stdout)] == [(good["id"], [0])]
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and name in lines[0] and "dropped a damaged environment" in lines[0], lines
    # Written back without it, once: the next command says nothing.
    assert [env["id"] for env in genv.state()["envs"]] == [good["id"]]
    assert genv.cli("envs").stderr == b""
    assert not [entry for entry in os.listdir(genv.tmpdir) if ".damaged-" in entry]


@pytest.mark.parametrize("content", [b"", b"{", b"\x00\xff\xfe", b"[1, 2, 3]", b"null", b"hello"])
def test_a_file_genv_did_not_write_is_left_alone(genv, sleepers, content):
    """Under genv's name, but not what genv writes (genv's files start with
    {"format"): not moved, not replaced; commands that must write say so."""
    name = "user-%d.json" % UID
    os.makedirs(genv.tmpdir)
    os.chmod(genv.tmpdir, 0o1777)
    with open(os.path.join(genv.tmpdir, name), "wb") as handle:
        handle.write(content)
    result = genv.cli("envs", GENV_DEVICES="4")
    assert result.returncode == 0 and result.stdout.splitlines()[1:] == []
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and name in lines[0] and "not a genv state file" in lines[0], lines
    pid = sleepers()
    result = sh_cli(genv, "sh-activate", "--gpus", "1", pid=pid, GENV_DEVICES="4")
    assert result.returncode == 1 and result.stdout == b""
    assert b"a file that genv did not write is in the way; move it away" in result.stderr
    assert sorted(os.listdir(genv.tmpdir)) == [name]
    with open(os.path.join(genv.tmpdir, name), "rb") as handle:
        assert handle.read() == content


def test_other_users_files_survive_damage_elsewhere(genv, sleepers):
    pid = sleepers()
    assert sh_cli(genv, "sh-activate", pid=pid).returncode == 0
    with open(os.path.join(genv.tmpdir, "user-4242.json"), "w") as handle:
        handle.write("{broken")
    result = genv.cli("envs", "--json")
    assert result.returncode == 0
    assert [row["id"] for row in json.loads(result.stdout)] == [str(pid)]


def test_reused_pid_does_not_keep_an_environment_alive(genv, sleepers):
    pid = sleepers()
    assert sh_cli(genv, "sh-activate", "--gpus", "2", pid=pid, GENV_DEVICES="4").returncode == 0
    state = genv.state()
    token = state["envs"][0]["terminals"][0]["token"]
    kind, boot, ticks = token.split(":")
    # The PID is alive, but it is not the process that activated: it started
    # at another time (what a reused PID looks like).
    state["envs"][0]["terminals"][0]["token"] = "%s:%s:%d" % (kind, boot, int(ticks) - 1)
    with open(os.path.join(genv.tmpdir, "user-%d.json" % UID), "w") as handle:
        json.dump(state, handle)
    assert genv.cli("envs", "--json").stdout == b"[]\n"
    assert genv.state()["envs"] == []
    other = sleepers()
    result = sh_cli(genv, "sh-activate", "--gpus", "4", pid=other, GENV_DEVICES="4")
    assert result.returncode == 0, result


def test_zombie_terminal_is_dead(genv):
    proc = subprocess.Popen(["sleep", "600"])
    try:
        assert sh_cli(genv, "sh-activate", pid=proc.pid).returncode == 0
        os.kill(proc.pid, signal.SIGKILL)
        # Not reaped yet: a zombie still has its PID and start time.
        while open("/proc/%d/stat" % proc.pid).read().rsplit(")", 1)[1].split()[0] != "Z":
            os.sched_yield()
        assert genv.cli("envs", "--json").stdout == b"[]\n"
    finally:
        proc.wait()


def gpu_file(genv, uuids):
    path = os.path.join(genv.base, "gpus")
    with open(path, "w") as handle:
        for uuid in uuids:
            handle.write("%s 81920 NVIDIA H100 80GB HBM3\n" % uuid)
    return path


def test_devices_rediscovered_and_reservations_kept(genv, sleepers):
    path = gpu_file(genv, ["GPU-a", "GPU-b", "GPU-c", "GPU-d"])
    genv.extra.update(FAKE_NVIDIA_SMI_GPUS=path, GENV_DEVICES_TTL="0")
    one, two = sleepers(), sleepers()
    assert sh_cli(genv, "sh-activate", "--gpus", "1", pid=one).returncode == 0
    assert sh_cli(genv, "sh-activate", "--gpus", "2", pid=two).returncode == 0
    devices = {env["id"]: [(d["index"], d["uuid"]) for d in env["devices"]] for env in genv.state()["envs"]}
    assert devices == {str(one): [(0, "GPU-a")], str(two): [(1, "GPU-b"), (2, "GPU-c")]}
    # GPU-b falls off the bus, GPU-e appears: the list is updated, "one"
    # keeps GPU-a, "two" keeps GPU-c (now index 1) and loses GPU-b.
    gpu_file(genv, ["GPU-a", "GPU-c", "GPU-d", "GPU-e"])
    result = genv.cli("devices", "--json")
    rows = json.loads(result.stdout)
    assert [(r["index"], r["uuid"], [e["id"] for e in r["environments"]]) for r in rows] == [
        (0, "GPU-a", [str(one)]), (1, "GPU-c", [str(two)]), (2, "GPU-d", []), (3, "GPU-e", [])]
    result = sh_cli(genv, "sh-attach", pid=two, eid=str(two))
    warnings = result.stderr.decode().splitlines()
    assert len(warnings) == 2
    assert "GPU 1 (GPU-b) is no longer on this machine" in warnings[0]
    assert "GPU 2 (GPU-c) is now GPU 1" in warnings[1]
    assert "CUDA_VISIBLE_DEVICES='1,2'" in result.stdout.decode()  # reattached to 2 again
    assert sh_cli(genv, "sh-attach", pid=two, eid=str(two)).stderr == b""  # told once


def test_status_tells_an_environment_its_warnings_once_and_the_sdk_leaves_them(genv, sleepers):
    """A GPU that disappeared is told once by `genv status` (on stderr, and
    taken from the state); genv.sdk.status() returns the same document and
    leaves the warnings for the terminal."""
    from conftest import system_python

    path = gpu_file(genv, ["GPU-a", "GPU-b", "GPU-c"])
    genv.extra.update(FAKE_NVIDIA_SMI_GPUS=path, GENV_DEVICES_TTL="0")
    two = sleepers()
    assert sh_cli(genv, "sh-activate", "--gpus", "2", pid=two).returncode == 0
    gpu_file(genv, ["GPU-a", "GPU-c"])
    assert genv.cli("devices", "--format", "json").returncode == 0  # the list is rediscovered
    sdk = subprocess.run([system_python(), "-c", "import json, genv.sdk; print(json.dumps(genv.sdk.status()))"],
                         env=genv.environ(PYTHONPATH=genv.root, GENV_ENVIRONMENT_ID=str(two)), capture_output=True,
                         cwd=genv.work, timeout=60)
    assert (sdk.returncode, sdk.stderr) == (0, b""), sdk
    assert json.loads(sdk.stdout)["id"] == str(two)
    [env] = genv.state()["envs"]
    assert len(env["warnings"]) == 1 and "GPU 1 (GPU-b) is no longer on this machine" in env["warnings"][0]
    told = sh_cli(genv, "status", "--format", "json", pid=two, eid=str(two))
    assert told.returncode == 0 and json.loads(told.stdout)["id"] == str(two), told
    assert told.stderr.decode().splitlines() == ["genv: " + env["warnings"][0]]
    again = sh_cli(genv, "status", "--format", "json", pid=two, eid=str(two))
    assert (again.returncode, again.stderr) == (0, b""), again
    assert genv.state()["envs"][0]["warnings"] == []


def test_device_list_is_cached(genv, sleepers):
    """The GPU list is asked once and cached; attach asks only for the
    processes (busy GPUs), devices for memory and processes, once each."""
    log = os.path.join(genv.base, "calls")
    genv.extra.update(FAKE_NVIDIA_SMI_LOG=log)

    def calls():
        lines = open(log).read().splitlines()
        return [line.split()[0] for line in lines]

    pid = sleepers()
    assert sh_cli(genv, "sh-activate", "--gpus", "1", pid=pid).returncode == 0
    for _ in range(3):
        assert sh_cli(genv, "sh-attach", pid=pid, eid=str(pid)).returncode == 0
    queries = calls()
    assert queries.count("--query-gpu=index,uuid,name,memory.total") == 1
    assert queries.count("--query-compute-apps=pid,gpu_uuid,used_memory,process_name") == 4
    assert len(queries) == 5
    assert genv.cli("devices").returncode == 0
    # (side by side: in either order)
    assert sorted(calls()[5:]) == ["--query-compute-apps=pid,gpu_uuid,used_memory,process_name",
                                   "--query-gpu=index,uuid,name,memory.total,memory.used"]
    assert sh_cli(genv, "sh-attach", pid=pid, eid=str(pid), GENV_DEVICES_TTL="0").returncode == 0
    assert calls()[7:] == ["--query-gpu=index,uuid,name,memory.total",
                           "--query-compute-apps=pid,gpu_uuid,used_memory,process_name"]


def test_nvidia_smi_failure_is_reported(genv):
    result = genv.cli("devices", FAKE_NVIDIA_SMI_FAIL="driver")
    assert result.returncode == 1
    assert result.stderr.decode().startswith("genv: nvidia-smi failed with exit status 9: NVIDIA-SMI has failed")


def test_lock_is_not_held_while_asking_nvidia_smi(genv):
    """A slow nvidia-smi in one command does not block another command."""
    ready, go = os.path.join(genv.base, "ready"), os.path.join(genv.base, "go")
    os.mkfifo(ready)
    os.mkfifo(go)
    slow = os.path.join(genv.base, "slow")
    os.makedirs(slow)
    with open(os.path.join(slow, "nvidia-smi"), "w") as handle:
        handle.write('#!/bin/bash\ncase "$1" in --query-gpu=*) echo started > "%s"; read -r _ < "%s" ;; esac\n'
                     'exec "%s/tests/fake/nvidia-smi" "$@"\n'
                     % (ready, go, genv.root))
    os.chmod(os.path.join(slow, "nvidia-smi"), 0o755)
    path = "%s/bin:%s:/usr/bin:/bin" % (genv.root, slow)
    assert genv.cli("envs").returncode == 0  # the state folder exists
    waiting = subprocess.Popen([os.path.join(genv.root, "bin", "genv"), "devices"],
                               env=genv.environ(PATH=path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with open(ready) as handle:  # blocks until the slow query has started
        assert handle.read().strip() == "started"
    quick = genv.cli("envs", "--json")  # would hang if the lock were held
    assert quick.returncode == 0
    with open(go, "w") as handle:
        handle.write("go\n")
    out, _ = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and len(out.splitlines()) == 5


@pytest.mark.parametrize("racers", [16, 24])
def test_racing_attaches_never_share_a_gpu(genv, sleepers, racers):
    for round_ in range(3):
        pids = [sleepers() for _ in range(racers)]
        procs = [
            subprocess.Popen([os.path.join(genv.root, "bin", "genv"), "sh-activate", "--gpus", "1"],
                             env=genv.environ(GENV_DEVICES="4", GENV_SHELL_PID=str(pid)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for pid in pids
        ]
        winners = []
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            match = re.search(r"CUDA_VISIBLE_DEVICES='(\d*)'\nexport CUDA_VISIBLE_DEVICES\n", out.decode())
            assert match, out
            if proc.returncode == 0:
                winners.append(match.group(1))
            else:
                assert match.group(1) == ""
        assert sorted(winners) == ["0", "1", "2", "3"]
        held = sorted(d["index"] for env in genv.state()["envs"] for d in env["devices"])
        assert held == [0, 1, 2, 3]
        for pid in pids:
            kill_quietly(pid)
        for pid in pids:  # SIGKILL takes effect when the process next runs
            gone(pid)
        assert genv.cli("envs", "--json").stdout == b"[]\n"


def test_state_folder_must_not_be_a_symlink(genv, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.symlink(str(target), genv.tmpdir)
    result = genv.cli("envs")
    assert result.returncode == 1 and b"symbolic link" in result.stderr
    assert list(target.iterdir()) == []


def test_insecure_state_folder_is_refused(genv):
    os.makedirs(genv.tmpdir)
    os.chmod(genv.tmpdir, 0o777)
    result = genv.cli("envs")
    assert result.returncode == 1 and b"sticky" in result.stderr


def test_state_folder_is_created_for_everyone(genv):
    old = os.umask(0o077)
    try:
        assert genv.cli("devices", GENV_DEVICES="2").returncode == 0
    finally:
        os.umask(old)
    assert os.stat(genv.tmpdir).st_mode & 0o7777 == 0o1777
