"""What really runs on the GPUs (issue 9): attribution of GPU processes,
``genv ps``, the process columns of ``devices`` and ``status``, table / CSV /
JSON output, attach avoiding busy GPUs, and the nvidia-smi shim showing a
terminal only its own environment's processes.

Everything runs against real processes: ``sleep`` started from real bash and
zsh terminals (``Shell``), from outside any terminal (``subprocess.Popen`` in
the test), and as a second real user (root only). The fake nvidia-smi lists
them from a file (FAKE_NVIDIA_SMI_APPS: ``<pid> <gpu> <MiB> <name>``; only
live PIDs are shown). Bad answers from nvidia-smi (failures, garbage, a PID
that has exited, a PID reused after the query began) come from a small
wrapper script placed before the fake on PATH.

The sections:

1. attribution and ``genv ps`` from real terminals
2. a second real user, and a spoofed GENV_ENVIRONMENT_ID
3. output formats: ps, devices, status, envs; --format and --json
4. bad data from nvidia-smi and /proc: one ``genv:`` line or nulls, never a
   traceback, never a wrong attribution
5. attach avoids GPUs busy outside genv
6. the nvidia-smi shim
"""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from conftest import ME, PLAIN_PATH, UID, as_user, kill_quietly, one_line, system_python, uuid, wrapper
from genv.text import printable

PS_FIELDS = ["gpu", "pid", "uid", "user", "env_id", "env_name", "memory", "command", "managed", "misplaced"]
DEVICES_CSV = ["index", "uuid", "name", "memory_total", "memory_used", "memory_available", "processes",
               "env_id", "env_name", "env_uid", "env_user", "env_memory", "attached"]
STATUS_CSV = ["active", "id", "uid", "user", "name", "gpus", "gpu_memory", "devices", "pids", "created",
              "processes", "memory"]
ENVS_CSV = ["id", "uid", "user", "name", "gpus", "gpu_memory", "created", "pids", "devices"]
ENV_FIELDS = ["id", "uid", "user", "name", "gpus", "gpu_memory", "created", "pids", "devices"]
PS_TITLES = ["GPU", "PID", "USER", "ENV ID", "ENV NAME", "MEMORY", "NOTE", "COMMAND"]
DEVICES_TITLES = ["ID", "ENV ID", "ENV NAME", "ATTACHED", "SHARE", "FREE", "GPU", "MEMORY"]
NO_PROCESSES = "  No running processes found"


# --- helpers: real processes on fake GPUs -----------------------------------------


def dead_pid():
    """A PID that no process has (one that just exited and was reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    assert not os.path.exists("/proc/%d" % child.pid)
    return child.pid


# --- helpers: nvidia-smi wrappers -------------------------------------------------


def answering(genv, output, status=0, when="*\" --query-compute-apps=\"*", stderr=b""):
    """A wrapper that answers the calls matching ``when`` with ``output``
    (bytes) and exit ``status``. Returns the PATH to use."""
    out = os.path.join(genv.base, "answer-%d" % len(os.listdir(genv.base)))
    with open(out, "wb") as handle:
        handle.write(output)
    with open(out + ".err", "wb") as handle:
        handle.write(stderr)
    os.chmod(out, 0o644)
    os.chmod(out + ".err", 0o644)
    return wrapper(genv, when, 'cat %s; cat %s.err >&2; exit %d' % (out, out, status))


# --- helpers: reading the output -------------------------------------------------


def ps(genv, shell=None, **env):
    """``genv ps --json``, from a terminal or as a plain command."""
    if shell is not None:
        return json.loads(shell.ok("genv ps --json"))
    result = genv.cli("ps", "--json", **env)
    assert result.returncode == 0 and result.stderr == b"", result
    return json.loads(result.stdout)


def by_pid(docs):
    found = {}
    for doc in docs:
        assert doc["pid"] not in found, docs
        found[doc["pid"]] = doc
    return found


def columns(text, titles):
    """A table's rows as dicts, cut where the header's titles start."""
    lines = text.splitlines()
    header = lines[0]
    starts = [header.index(title) for title in titles]
    assert starts == sorted(starts), header
    rows = []
    for line in lines[1:]:
        cells = [line[start:(starts[n + 1] if n + 1 < len(starts) else None)].strip()
                 for n, start in enumerate(starts)]
        rows.append(dict(zip(titles, cells)))
    return rows


def parse_csv(text):
    """RFC 4180 checks, then the header and the rows as dicts."""
    assert text.endswith("\r\n"), repr(text)
    assert "\n" not in text.replace("\r\n", ""), "a bare line feed: %r" % text
    assert "\r" not in text.replace("\r\n", ""), "a bare carriage return: %r" % text
    rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    assert rows and all(len(row) == len(rows[0]) for row in rows), rows
    return rows[0], [dict(zip(rows[0], row)) for row in rows[1:]]


def csv_text(value):
    """How a JSON value is written in CSV."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(map(str, value))
    if isinstance(value, str):  # escaped, and never a formula for a spreadsheet
        text = printable(value)
        return "'" + text if text.lstrip(" ").startswith(("=", "+", "-", "@")) else text
    return str(value)


def has_fields(doc, fields):
    """The documented fields are there (more may be added, docs/formats.md)."""
    return set(fields) <= set(doc)


def gpu_of(shell):
    return shell.var("CUDA_VISIBLE_DEVICES")


def smi_table_pids(text):
    """The PIDs in every process section of an nvidia-smi table; a section
    saying ``No running processes found`` contributes ``None``."""
    pids = []
    state = None
    for line in text.splitlines():
        if "Processes:" in line:
            state = "header"
        elif state == "header" and line.startswith("|="):
            state = "rows"
        elif state == "rows":
            if line.startswith("+"):
                state = None
            elif NO_PROCESSES.strip() in line:
                pids.append(None)
            else:
                pids.append(int(line.strip("|").split()[3]))
    return pids


# === 1. attribution and genv ps from real terminals ====================================


def test_ps_attributes_every_kind_of_process(genv, sh, gpus):
    alpha = genv.shell(sh)
    alpha.ok("genv activate --name alpha --gpus 1")
    beta = genv.shell(sh)
    beta.ok("genv activate --name beta --gpus 1")
    assert (gpu_of(alpha), gpu_of(beta)) == ("0", "1")
    aid, bid = alpha.var("GENV_ENVIRONMENT_ID"), beta.var("GENV_ENVIRONMENT_ID")

    child = gpus.in_shell(alpha, gpu=0, mib=1000)
    deep = gpus.grandchild(alpha, gpu=uuid(0), mib=10)  # by ancestry only, the GPU named by UUID
    orphan = gpus.orphan(alpha, gpu=0, mib=20)  # by its GENV_ENVIRONMENT_ID only
    misplaced = gpus.in_shell(alpha, gpu=2, mib=30)
    theirs = gpus.in_shell(beta, gpu=1, mib=2000)
    fallback = gpus.outside(gpu=1, mib=40, env_id=aid)  # root's own environment: accepted
    stranger = gpus.outside(gpu=3, mib=300)
    bogus = gpus.outside(gpu=3, mib=50, env_id="no-such-env")
    terminal = gpus.put(beta.pid, 1, 60)  # the terminal itself on a GPU (think `exec python`)

    docs = ps(genv, alpha)
    assert ps(genv) == docs  # the same from inside and outside any environment
    assert [(d["gpu"], d["pid"]) for d in docs] == sorted((d["gpu"], d["pid"]) for d in docs)
    assert all(has_fields(doc, PS_FIELDS) for doc in docs), docs
    rows = by_pid(docs)
    assert sorted(rows) == sorted([child, deep, orphan, misplaced, theirs, fallback, stranger, bogus, terminal])
    expected = {
        child: (0, aid, "alpha", 1000, True, False),
        deep: (0, aid, "alpha", 10, True, False),
        orphan: (0, aid, "alpha", 20, True, False),
        misplaced: (2, aid, "alpha", 30, True, True),
        theirs: (1, bid, "beta", 2000, True, False),
        fallback: (1, aid, "alpha", 40, True, True),
        stranger: (3, None, None, 300, False, False),
        bogus: (3, None, None, 50, False, False),
        terminal: (1, bid, "beta", 60, True, False),
    }
    for pid, (gpu, eid, name, memory, managed, wrong) in expected.items():
        doc = rows[pid]
        assert (doc["gpu"], doc["env_id"], doc["env_name"], doc["memory"], doc["managed"], doc["misplaced"]) == (
            gpu, eid, name, memory, managed, wrong), doc
        assert (doc["uid"], doc["user"]) == (UID, ME), doc
    assert rows[child]["command"] == "sleep 600"  # from /proc, not nvidia-smi's "python"

    table = alpha.ok("genv ps")
    shown = {int(row["PID"]): row for row in columns(table, PS_TITLES)}
    assert sorted(shown) == sorted(rows)
    assert shown[child] == {"GPU": "0", "PID": str(child), "USER": rows[child]["user"], "ENV ID": aid,
                            "ENV NAME": "alpha", "MEMORY": "1000MiB", "NOTE": "", "COMMAND": "sleep 600"}
    assert shown[misplaced]["NOTE"] == "MISPLACED" and shown[fallback]["NOTE"] == "MISPLACED"
    assert shown[stranger]["NOTE"] == "UNMANAGED" and shown[stranger]["ENV ID"] == "-"
    assert shown[bogus]["NOTE"] == "UNMANAGED"
    assert shown[theirs]["NOTE"] == "" and shown[theirs]["ENV NAME"] == "beta"


def test_a_terminal_pid_taken_by_another_process_claims_nothing(genv, sh, gpus):
    """An environment's terminal closed and its PID now belongs to an
    unrelated process (simulated: the state names a live process with a
    token that is not its own). That process's children are not the
    environment's."""
    shell = genv.shell(sh)
    shell.ok("genv activate --name stale")
    parent, child = gpus.outside_grandchild(gpu=1)
    path = os.path.join(genv.tmpdir, "user-%d.json" % UID)
    with open(path) as handle:
        data = json.load(handle)
    [env] = data["envs"]
    env["terminals"].append({"pid": parent, "token": "linux:00000000:1"})
    with open(path, "r+") as handle:
        handle.truncate(0)
        json.dump(data, handle)
    row = by_pid(ps(genv))[child]
    assert (row["env_id"], row["managed"]) == (None, False), row


def test_a_process_whose_environment_is_gone_is_unmanaged(genv, sh, gpus):
    """The terminal closed; its process lives on with GENV_ENVIRONMENT_ID of
    an environment that no longer exists: unmanaged, in every listing, from
    the first look (not only after some other command pruned the state)."""
    gone = genv.shell(sh)
    gone.ok("genv activate --name gone")  # no GPUs: nothing makes ps look at it
    eid = gone.var("GENV_ENVIRONMENT_ID")
    pid = gpus.orphan(gone, gpu=2, mib=100)
    assert by_pid(ps(genv))[pid]["env_id"] == eid  # alive: its own
    gone.close()
    first = by_pid(ps(genv))[pid]
    assert (first["env_id"], first["managed"], first["misplaced"]) == (None, False, False), first
    devices = json.loads(genv.cli("devices", "--json").stdout)
    assert [(p["pid"], p["managed"]) for p in devices[2]["processes"]] == [(pid, False)]
    assert genv.cli("envs").returncode == 0  # prunes the dead environment
    later = by_pid(ps(genv))[pid]
    assert later == first


def test_status_lists_the_environments_own_processes(genv, sh, gpus):
    mine = genv.shell(sh)
    mine.ok("genv activate --name mine --gpus 1")
    other = genv.shell(sh)
    other.ok("genv activate --name other --gpus 1")
    own = gpus.in_shell(mine, gpu=0, mib=1000, name="train")
    wrong = gpus.in_shell(mine, gpu=1, mib=24)
    gpus.in_shell(other, gpu=1, mib=512)
    gpus.outside(gpu=0, mib=77)  # a stranger on my GPU is not mine

    doc = json.loads(mine.ok("genv status --json"))
    assert doc["active"] is True and doc["name"] == "mine" and doc["devices"] == [0]
    assert [(p["pid"], p["gpu"], p["memory"], p["misplaced"]) for p in doc["processes"]] == [
        (own, 0, 1000, False), (wrong, 1, 24, True)]
    assert all(has_fields(p, PS_FIELDS) for p in doc["processes"])
    assert json.loads(mine.ok("genv status --format json")) == doc

    text = mine.ok("genv status")
    assert "processes: 2, 1024MiB in use\n" in text
    assert "  GPU 0  pid %d  1000MiB  sleep 600\n" % own in text
    assert "  GPU 1  pid %d  24MiB  sleep 600  (MISPLACED: not a GPU of this environment)\n" % wrong in text
    assert text.count(" pid ") == 2

    header, rows = parse_csv(mine.ok("genv status --format csv"))
    assert header[:len(STATUS_CSV)] == STATUS_CSV and len(rows) == 1
    row = rows[0]
    assert (row["active"], row["id"], row["name"], row["devices"], row["processes"], row["memory"]) == (
        "true", doc["id"], "mine", "0", "2", "1024")
    assert row["pids"] == str(mine.pid) and row["gpu_memory"] == ""

    idle = genv.shell(sh)
    idle.ok("genv activate --name idle")
    assert "processes: 0\n" in idle.ok("genv status")
    assert json.loads(idle.ok("genv status --json"))["processes"] == []


def test_status_outside_an_environment(genv, sh):
    shell = genv.shell(sh)
    assert shell.ok("genv status") == "not active\n"
    assert json.loads(shell.ok("genv status --json")) == {"active": False}
    header, rows = parse_csv(shell.ok("genv status --format csv"))
    assert header[:len(STATUS_CSV)] == STATUS_CSV and len(rows) == 1
    assert rows[0]["active"] == "false" and set(rows[0].values()) == {"false", ""}


# === 2. a second real user, and a spoofed GENV_ENVIRONMENT_ID ==========================


def test_second_user_and_spoofed_variable(genv, sh, gpus, other_user):
    mine = genv.shell(sh)
    mine.ok("genv activate --name mine --gpus 1")
    theirs = genv.shell(sh, user=other_user)
    theirs.ok("genv activate --name theirs --gpus 1")
    assert (gpu_of(mine), gpu_of(theirs)) == ("0", "1")
    rid, tid = mine.var("GENV_ENVIRONMENT_ID"), theirs.var("GENV_ENVIRONMENT_ID")
    plain = genv.shell(sh, user=other_user)  # theirs, in no environment

    p_mine = gpus.in_shell(mine, gpu=0, mib=100)
    p_theirs = gpus.in_shell(theirs, gpu=1, mib=200)
    # Spoofs: the other user claims root's environment, by hand.
    spoof_outside = gpus.outside(gpu=0, mib=300, user=other_user, env_id=rid)
    spoof_shell = gpus.in_shell(plain, gpu=2, mib=400, command="GENV_ENVIRONMENT_ID=%s sleep 600" % rid)
    # In their own terminal the variable does not beat the ancestry.
    spoof_own = gpus.in_shell(theirs, gpu=1, mib=500, command="GENV_ENVIRONMENT_ID=%s sleep 600" % rid)
    # Root's own process outside any terminal, naming root's environment: accepted.
    fallback = gpus.outside(gpu=0, mib=600, env_id=rid)
    # Root naming the other user's environment: not root's, so unmanaged.
    root_spoof = gpus.outside(gpu=3, mib=700, env_id=tid)

    rows = by_pid(ps(genv, mine))
    other = other_user.pw_name
    seen = {pid: (doc["user"], doc["env_id"], doc["managed"]) for pid, doc in rows.items()}
    assert seen == {
        p_mine: ("root", rid, True),
        p_theirs: (other, tid, True),
        spoof_outside: (other, None, False),
        spoof_shell: (other, None, False),
        spoof_own: (other, tid, True),
        fallback: ("root", rid, True),
        root_spoof: ("root", None, False),
    }
    assert rows[spoof_outside]["uid"] == other_user.pw_uid

    # The other user sees the same, except what only root may read: root's
    # process that only its environment variable attributes.
    result = genv.cli("ps", "--json", user=other_user)
    assert result.returncode == 0 and result.stderr == b"", result
    theirs_view = by_pid(json.loads(result.stdout))
    for pid in (p_mine, p_theirs, spoof_outside, spoof_shell, spoof_own, root_spoof):
        assert theirs_view[pid] == rows[pid], pid
    assert theirs_view[fallback]["env_id"] in (rid, None)  # never somebody else's

    # Each status lists its own processes only.
    assert [p["pid"] for p in json.loads(mine.ok("genv status --json"))["processes"]] == sorted(
        [p_mine, fallback])
    assert [p["pid"] for p in json.loads(theirs.ok("genv status --json"))["processes"]] == sorted(
        [p_theirs, spoof_own])

    # The shim shows each terminal its own processes: on root's GPU 0 run
    # root's two and the other user's spoof.
    assert sorted(map(int, mine.ok("nvidia-smi --query-compute-apps=pid --format=csv,noheader").split())) == sorted(
        [p_mine, fallback])
    assert sorted(map(int, theirs.ok("nvidia-smi --query-compute-apps=pid --format=csv,noheader").split())) == sorted(
        [p_theirs, spoof_own])

    # A spoofed variable does not make a GPU look free. GPUs 0 and 1 are
    # held; on GPU 2 runs the other user's spoof, on GPU 3 root's: both
    # unmanaged, so nothing is left, and the error says who is where.
    late = genv.shell(sh)
    result = late.run("genv activate --gpus 1")
    assert result.rc == 1 and gpu_of(late) == "", result
    assert "pid %d (%s)" % (spoof_shell, other) in result.err and "GPU 2" in result.err, result
    assert "pid %d (root)" % root_spoof in result.err and "GPU 3" in result.err, result
    assert "Traceback" not in result.err


def test_a_terminal_planted_in_ones_own_state_file_claims_nobody_elses_process(genv, sh, gpus, other_user):
    """The other user owns their state file and can write into it a terminal
    that is root's shell (its PID and token are public in /proc). Root's
    process started from that shell must not become theirs, and the GPU it
    keeps busy must stay busy."""
    theirs = genv.shell(sh, user=other_user)
    theirs.ok("genv activate --name theirs")
    tid = theirs.var("GENV_ENVIRONMENT_ID")
    victim = genv.shell(sh)  # root's terminal, in no environment
    job = gpus.in_shell(victim, gpu=2, mib=1000)
    assert by_pid(ps(genv))[job]["managed"] is False

    path = os.path.join(genv.tmpdir, "user-%d.json" % other_user.pw_uid)
    plant = (
        "import json, sys\n"
        "path, pid, eid = sys.argv[1], int(sys.argv[2]), sys.argv[3]\n"
        "data = json.load(open(path))\n"
        "stat = open('/proc/%d/stat' % pid).read()\n"
        "ticks = int(stat[stat.rfind(')') + 2:].split()[19])\n"
        "boot = open('/proc/sys/kernel/random/boot_id').read().strip()[:8]\n"
        "for env in data['envs']:\n"
        "    if env['id'] == eid:\n"
        "        env['terminals'].append({'pid': pid, 'token': 'linux:%s:%d' % (boot, ticks)})\n"
        "with open(path, 'r+') as handle:\n"
        "    handle.truncate(0)\n"
        "    json.dump(data, handle)\n"
    )
    done = subprocess.run([system_python(), "-c", plant, path, str(victim.pid), tid], capture_output=True,
                          **as_user(other_user))
    assert done.returncode == 0, done
    row = by_pid(ps(genv))[job]
    assert (row["env_id"], row["managed"]) == (None, False), row
    grab = genv.shell(sh, user=other_user)
    result = grab.run("genv activate --gpus 4")
    assert result.rc == 1 and "GPU 2" in result.err and "pid %d (root)" % job in result.err, result


# === 3. output formats ==================================================================


def test_ps_csv_matches_json(genv, gpus):
    shell = genv.shell("bash")
    shell.ok("genv activate --name job --gpus 1")
    gpus.in_shell(shell, gpu=0, mib=1000)
    gpus.in_shell(shell, gpu=3, mib="[N/A]")
    gpus.outside(gpu=1, mib=0)
    docs = ps(genv)
    result = genv.cli("ps", "--format", "csv")
    assert result.returncode == 0 and result.stderr == b"", result
    header, rows = parse_csv(result.stdout.decode())
    assert header[:len(PS_FIELDS)] == PS_FIELDS
    assert [{field: row[field] for field in PS_FIELDS} for row in rows] == [
        {field: csv_text(doc[field]) for field in PS_FIELDS} for doc in docs]
    assert [row["memory"] for row in rows] == ["1000", "0", ""]
    assert [(row["managed"], row["misplaced"]) for row in rows] == [("true", "false"), ("false", "false"),
                                                                    ("true", "true")]
    assert genv.cli("ps", "--format=csv").stdout == result.stdout
    assert json.loads(genv.cli("ps", "--format=json").stdout) == docs


def test_hostile_command_lines_are_quoted_and_escaped(genv, gpus):
    shell = genv.shell("bash")
    shell.ok("genv activate --name job --gpus 1")
    evil = 'a,b "c"\nd\x1b]0;owned\x07e\\f \xe9'
    pid = gpus.outside(gpu=0, argv=["bash", "-c", 'exec -a "$0" sleep 600', evil])
    command = evil + " 600"
    assert by_pid(ps(genv))[pid]["command"] == command  # JSON: exact
    header, rows = parse_csv(genv.cli("ps", "--format", "csv").stdout.decode())
    assert [row["command"] for row in rows] == [printable(command)]
    assert "\x1b" not in rows[0]["command"] and "\x07" not in rows[0]["command"]
    for args in (["ps"], ["devices"], ["status"]):
        out = genv.cli(*args).stdout.decode()
        assert "\x1b" not in out and "\x07" not in out and "\r" not in out, args
    assert printable(command) in genv.cli("ps").stdout.decode()


def test_ps_without_processes(genv, sh, gpus):
    shell = genv.shell(sh)
    assert shell.ok("genv ps") == "No GPU processes found\n"
    header, rows = parse_csv(shell.ok("genv ps --format csv"))
    assert header[:len(PS_FIELDS)] == PS_FIELDS and rows == []
    assert json.loads(shell.ok("genv ps --json")) == []
    gpus.put(dead_pid(), 0, 100)  # listed in the file, but not running: the fake omits it
    assert shell.ok("genv ps") == "No GPU processes found\n"
    # Mock GPUs have no processes, and nvidia-smi is not asked.
    log = os.path.join(genv.base, "smi-log")
    mock = genv.shell(sh, GENV_DEVICES="2", FAKE_NVIDIA_SMI_LOG=log)
    assert mock.ok("genv ps") == "No GPU processes found\n"
    assert json.loads(mock.ok("genv ps --json")) == []
    assert not os.path.exists(log) or open(log).read() == ""


def test_devices_formats(genv, sh, gpus):
    shell = genv.shell(sh)
    shell.ok("genv activate --name job --gpus 1")
    eid = shell.var("GENV_ENVIRONMENT_ID")
    a = gpus.in_shell(shell, gpu=0, mib=1000)
    b = gpus.outside(gpu=0, mib=500)
    c = gpus.outside(gpu=2, mib="[N/A]")

    table = shell.ok("genv devices")
    header = table.splitlines()[0].split("  ")
    assert [word for word in header if word][:4] == ["ID", "ENV ID", "ENV NAME", "ATTACHED"]
    rows = columns(table, ["ID", "ENV ID", "ENV NAME", "ATTACHED", "SHARE", "FREE", "GPU", "MEMORY"])
    assert [row["ID"] for row in rows] == ["0", "1", "2", "3"]
    assert (rows[0]["ENV ID"], rows[0]["ENV NAME"], rows[0]["ATTACHED"]) == (eid, "job", "just now")
    assert all(row["GPU"] == "NVIDIA A100-SXM4-40GB" for row in rows)
    assert [row["MEMORY"] for row in rows] == ["1500MiB / 40960MiB", "0MiB / 40960MiB", "0MiB / 40960MiB",
                                               "0MiB / 40960MiB"]

    docs = json.loads(shell.ok("genv devices --json"))
    assert [d["index"] for d in docs] == [0, 1, 2, 3]
    assert docs[0]["uuid"] == uuid(0) and docs[0]["name"] == "NVIDIA A100-SXM4-40GB"
    assert (docs[0]["memory_total"], docs[0]["memory_used"], docs[0]["memory_available"]) == (40960, 1500, 0)
    assert (docs[1]["memory_used"], docs[1]["memory_available"]) == (0, 40960)
    assert [e["id"] for e in docs[0]["environments"]] == [eid] and docs[1]["environments"] == []
    assert docs[0]["environments"][0]["memory"] is None and docs[0]["environments"][0]["user"] == ME
    assert [p["pid"] for p in docs[0]["processes"]] == sorted([a, b])
    assert [(p["pid"], p["memory"], p["managed"]) for p in docs[2]["processes"]] == [(c, None, False)]
    assert all(has_fields(p, PS_FIELDS) for d in docs for p in d["processes"])
    assert docs[1]["processes"] == docs[3]["processes"] == []
    ps_rows = by_pid(ps(genv))
    assert all(p == ps_rows[p["pid"]] for d in docs for p in d["processes"])

    header, rows = parse_csv(shell.ok("genv devices --format csv"))
    assert header[:len(DEVICES_CSV)] == DEVICES_CSV
    assert [(r["index"], r["processes"], r["env_id"], r["memory_used"]) for r in rows] == [
        ("0", "2", eid, "1500"), ("1", "0", "", "0"), ("2", "1", "", "0"), ("3", "0", "", "0")]
    assert rows[0]["uuid"] == uuid(0) and rows[0]["env_user"] == ME and rows[0]["env_memory"] == ""
    assert float(rows[0]["attached"]) == docs[0]["environments"][0]["attached"]


def test_devices_with_mock_gpus_know_no_memory_in_use(genv, sh):
    shell = genv.shell(sh, GENV_DEVICES="2", GENV_DEVICES_MEMORY="16g")
    docs = json.loads(shell.ok("genv devices --json"))
    assert [(d["uuid"], d["name"], d["memory_total"], d["memory_used"], d["processes"]) for d in docs] == [
        (None, None, 16384, None, [])] * 2
    rows = columns(shell.ok("genv devices"), DEVICES_TITLES)
    assert [(r["GPU"], r["MEMORY"]) for r in rows] == [("", "- / 16384MiB")] * 2
    header, rows = parse_csv(shell.ok("genv devices --format csv"))
    assert [(r["uuid"], r["memory_used"], r["processes"]) for r in rows] == [("", "", "0")] * 2


def test_envs_formats(genv, sh):
    a = genv.shell(sh)
    a.ok("genv activate --name 'one, \"two\"' --gpus 2")
    b = genv.shell(sh)
    b.ok("genv activate --no-attach")
    docs = json.loads(a.ok("genv envs --json"))
    assert all(set(ENV_FIELDS) <= set(doc) for doc in docs), docs  # fields may be added, none removed
    assert [(d["name"], d["gpus"], d["gpu_memory"], d["pids"], d["devices"]) for d in docs] == [
        ('one, "two"', 2, None, [a.pid], [0, 1]), (None, None, None, [b.pid], [])]
    assert json.loads(a.ok("genv envs --format json")) == docs
    header, rows = parse_csv(a.ok("genv envs --format csv"))
    assert header[:len(ENVS_CSV)] == ENVS_CSV
    assert [{field: row[field] for field in ENVS_CSV if field != "created"} for row in rows] == [
        {field: csv_text(doc[field]) for field in ENVS_CSV if field != "created"} for doc in docs]
    assert [float(row["created"]) for row in rows] == [doc["created"] for doc in docs]
    assert rows[0]["devices"] == "0 1" and rows[0]["name"] == 'one, "two"'
    raw = a.ok("genv envs --format csv").split("\r\n")[1]
    assert raw.startswith('%s,%d,%s,"one, ""two""",2,,' % (docs[0]["id"], UID, ME)), raw


# Text that a spreadsheet opening the CSV would take for a formula (OWASP's
# CSV injection: =, +, - and @ first, also after spaces).
FORMULAS = ["=1+1", "=cmd|' /C calc'!A0", "+1+1", "-1+1", "@SUM(A1:A2)", "=SUM(1,2)", "  =1+1", "-bash"]


def test_csv_text_cells_are_never_formulas(genv, gpus):
    """Names and command lines are chosen by any user; an admin opens the
    export in a spreadsheet. In CSV, such a cell starts with ``'`` (shown as
    text); JSON stays exact, and so do tables."""
    shell = genv.shell("bash")
    shell.ok("genv activate --gpus 1")
    eid = shell.var("GENV_ENVIRONMENT_ID")
    for text in FORMULAS:
        quoted = "'" + text.replace("'", "'\\''") + "'"
        shell.ok("genv config name -- %s" % quoted)
        assert [d["name"] for d in json.loads(shell.ok("genv envs --json"))] == [text]
        assert json.loads(shell.ok("genv status --json"))["name"] == text
        _, rows = parse_csv(shell.ok("genv envs --format csv"))
        assert [row["name"] for row in rows] == ["'" + text], text
        _, rows = parse_csv(shell.ok("genv status --format csv"))
        assert [row["name"] for row in rows] == ["'" + text], text
        _, rows = parse_csv(shell.ok("genv devices --format csv"))
        assert [row["env_name"] for row in rows if row["env_id"] == eid] == ["'" + text], text
        assert text.strip() in shell.ok("genv envs")  # the table: as it is
    pids = {gpus.outside(gpu=0, argv=["bash", "-c", 'exec -a "$0" sleep 600', text]): text + " 600"
            for text in FORMULAS}
    docs = by_pid(ps(genv))
    assert {pid: docs[pid]["command"] for pid in pids} == pids  # JSON: exact
    _, rows = parse_csv(genv.cli("ps", "--format", "csv").stdout.decode())
    assert {int(row["pid"]): row["command"] for row in rows} == {pid: "'" + command for pid, command in pids.items()}
    table = genv.cli("ps").stdout.decode()
    assert all(command in table for command in pids.values())
    # Numbers genv writes itself stay numbers; other text is unchanged.
    assert [row["gpu"] for row in rows] == ["0"] * len(pids) and rows[0]["user"] == ME


@pytest.mark.parametrize("command", ["envs", "devices", "ps", "status"])
def test_format_options(genv, command):
    shell = genv.shell("bash")
    shell.ok("genv activate --gpus 1")
    as_json = json.loads(shell.ok("genv %s --json" % command))
    for spelling in ("--format json", "--format=json", "--json --format json", "--format json --json"):
        assert json.loads(shell.ok("genv %s %s" % (command, spelling))) == as_json, spelling
    parse_csv(shell.ok("genv %s --format csv" % command))
    assert shell.ok("genv %s --format table" % command) == shell.ok("genv %s" % command)
    for bad, words in (("--json --format csv", "disagree"), ("--format csv --json", "disagree"),
                       ("--format xml", "xml"), ("--format", "needs a value"), ("--format ''", "format"),
                       ("--format JSON", "JSON"), ("--csv", "--csv")):
        result = shell.run("genv %s %s" % (command, bad))
        assert result.rc != 0 and result.out == "", (bad, result)
        assert words in result.err and "Traceback" not in result.err, (bad, result)


# === 4. bad data from nvidia-smi and /proc ============================================


FAILURES = [
    ("driver", b"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n\n", 9, b""),
    ("stderr only", b"", 2, b'Field "pid" is not a valid field to query.\n'),
    ("garbage", b"hello world\n", 0, b""),
    ("truncated", b"%(pid)d, %(uuid)s\n", 0, b""),
    ("cut mid-row", b"%(pid)d, %(uuid)s, 10", 0, b""),
    ("binary", b"\xff\xfe\x00\x1b]0;owned\x07\n", 0, b""),
    ("pid zero", b"0, %(uuid)s, 10, x\n", 0, b""),
    ("negative pid", b"-5, %(uuid)s, 10, x\n", 0, b""),
    ("huge pid", b"99999999999999999999999, %(uuid)s, 10, x\n", 0, b""),
    ("pid not a number", b"[N/A], %(uuid)s, 10, x\n", 0, b""),
    ("unicode digits", "\u0661\u0662, %(uuid)s, 10, x\n".encode(), 0, b""),
    ("a long line", b"x" * 100000 + b"\n", 0, b""),
    ("good then bad", b"%(pid)d, %(uuid)s, 10, x\nboom\n", 0, b""),
]


@pytest.mark.parametrize("case", FAILURES, ids=[case[0] for case in FAILURES])
def test_a_bad_process_query_is_one_clear_line(genv, gpus, case):
    _, output, status, stderr = case
    live = gpus.outside()
    path = answering(genv, output.replace(b"%(pid)d", str(live).encode()).replace(b"%(uuid)s", uuid(0).encode()),
                     status, stderr=stderr)
    for command in ("ps", "devices"):
        for form in ("table", "csv", "json"):
            err = one_line(genv.cli(command, "--format", form, PATH=path))
            assert "nvidia-smi" in err, err
            assert len(err) < 400, err


def test_nvidia_smi_killed_or_missing(genv, gpus):
    path = wrapper(genv, "*\" --query-compute-apps=\"*", "kill -9 $$")
    assert "nvidia-smi" in one_line(genv.cli("ps", PATH=path))
    err = one_line(genv.cli("ps", PATH=PLAIN_PATH + ":%s/bin" % genv.root))
    assert "nvidia-smi is not on PATH" in err
    one_line(genv.cli("devices", PATH=PLAIN_PATH))
    for form in ("table", "json"):
        one_line(genv.cli("ps", "--format", form, FAKE_NVIDIA_SMI_FAIL="nvml"))


def test_unusual_rows_give_nulls(genv, gpus):
    live = gpus.outside()
    gone = dead_pid()
    lines = [
        "%d, %s, [N/A], python" % (live, uuid(0)),
        "%d, %s, [Not Supported], python" % (live, uuid(1)),
        "%d, GPU-ffffffff-0000-0000-0000-000000000000, 5, python" % live,  # a GPU genv does not know
        "%d, [N/A], 6, python" % live,
        "%d, %s, 7 MiB, python" % (live, uuid(2)),  # units despite nounits: unknown, not a crash
        "%d, %s, 8, [Not Found]" % (live, uuid(3)),
        "%d, %s, 9, /opt/my, app/\u00fcn\u00ef.py --x=1, 2" % (gone, uuid(3)),
        "  %d , %s , 10 , padded\r" % (gone, uuid(2)),
    ]
    path = answering(genv, ("\n".join(lines) + "\n\n").encode())
    result = genv.cli("ps", "--json", PATH=path)
    assert result.returncode == 0 and result.stderr == b"", result
    docs = json.loads(result.stdout)
    got = [(d["gpu"], d["pid"], d["memory"], d["command"], d["managed"], d["user"]) for d in docs]
    expected = [
        (0, live, None, "sleep 600", False, ME),
        (1, live, None, "sleep 600", False, ME),
        (2, gone, 10, "padded", None, None),
        (2, live, None, "sleep 600", False, ME),
        (3, gone, 9, "/opt/my, app/\u00fcn\u00ef.py --x=1, 2", None, None),
        (3, live, 8, "sleep 600", False, ME),
        (None, live, 5, "sleep 600", False, ME),
        (None, live, 6, "sleep 600", False, ME),
    ]
    assert got == sorted(expected, key=lambda row: (row[0] if row[0] is not None else 99, row[1], row[2])), got
    table = genv.cli("ps", PATH=path)
    assert table.returncode == 0 and table.stderr == b""
    rows = columns(table.stdout.decode(), PS_TITLES)
    assert [row["GPU"] for row in rows] == ["0", "1", "2", "2", "3", "3", "-", "-"]
    assert rows[0]["MEMORY"] == "-" and rows[0]["NOTE"] == "UNMANAGED"
    ghost = [row for row in rows if row["PID"] == str(gone) and row["GPU"] == "2"][0]
    assert (ghost["USER"], ghost["NOTE"], ghost["COMMAND"]) == ("unknown", "unknown (exited or PID reused)", "padded")
    devices = json.loads(genv.cli("devices", "--json", PATH=path).stdout)
    assert sum(len(d["processes"]) for d in devices) == 6  # the two on unknown GPUs belong to no GPU
    for path in (answering(genv, b""), answering(genv, b"No devices were found\n", 6)):
        assert ps(genv, PATH=path) == []


GPU_ANSWERS = [
    ("used unknown", "%(i)d, %(uuid)s, NVIDIA A100-SXM4-40GB, 40960, [N/A]\n", 0, (40960, None), None),
    ("total unsupported", "%(i)d, %(uuid)s, NVIDIA A100-SXM4-40GB, [Not Supported], 10\n", 0, (None, 10), None),
    ("name with a comma", "%(i)d, %(uuid)s, NVIDIA A100, SXM4, 40960, 10\n", 0, (40960, 10), "NVIDIA A100, SXM4"),
    ("garbage", "garbage\n", 0, None, None),
    ("cut", "%(i)d, %(uuid)s\n", 0, None, None),
    ("failing", "Unable to determine the device handle for GPU 0000:07:00.0: Unknown Error\n", 15, None, None),
]


@pytest.mark.parametrize("case", GPU_ANSWERS, ids=[case[0] for case in GPU_ANSWERS])
def test_odd_gpu_queries_in_devices(genv, case):
    _, line, status, memory, name = case
    output = "".join(line % {"i": i, "uuid": uuid(i)} for i in range(4)).encode()
    path = answering(genv, output, status, when="*\" --query-gpu=\"*memory.used*")
    result = genv.cli("devices", "--json", PATH=path)
    if memory is None:
        one_line(result)
        one_line(genv.cli("devices", PATH=path))
        return
    assert result.returncode == 0 and result.stderr == b"", result
    docs = json.loads(result.stdout)
    assert [(d["memory_total"], d["memory_used"]) for d in docs] == [memory] * 4
    if name:
        assert [d["name"] for d in docs] == [name] * 4
    table = genv.cli("devices", PATH=path)
    assert table.returncode == 0 and b"Traceback" not in table.stderr


def test_a_process_that_exited_is_unknown_and_never_busy(genv, sh, gpus):
    gone = dead_pid()
    path = answering(genv, ("%d, %s, 4000, ghost\n" % (gone, uuid(0))).encode())
    shell = genv.shell(sh, PATH=path)
    rows = [{field: row[field] for field in PS_FIELDS} for row in ps(genv, shell)]
    assert rows == [{"gpu": 0, "pid": gone, "uid": None, "user": None, "env_id": None, "env_name": None,
                     "memory": 4000, "command": "ghost", "managed": None, "misplaced": False}]
    table = columns(shell.ok("genv ps"), PS_TITLES)
    assert table == [{"GPU": "0", "PID": str(gone), "USER": "unknown", "ENV ID": "-", "ENV NAME": "",
                      "MEMORY": "4000MiB", "NOTE": "unknown (exited or PID reused)", "COMMAND": "ghost"}]
    shell.ok("genv activate --gpus 1")
    assert gpu_of(shell) == "0"  # a gone process keeps no GPU busy
    assert json.loads(shell.ok("genv status --json"))["processes"] == []


def _psutil_python():
    """An interpreter with psutil (for GENV_PROCESS_BACKEND=psutil), or skip."""
    for python in (system_python(), sys.executable):
        if subprocess.run([python, "-c", "import psutil"], capture_output=True).returncode == 0:
            return python
    pytest.skip("no interpreter with psutil")


@pytest.mark.parametrize("backend", ["procfs", "psutil"])
def test_a_pid_reused_after_the_query_began_is_never_attributed(genv, sh, gpus, backend):
    """The wrapper starts a process of its own while genv waits for the
    process list (at least one clock tick after the query began: a busy loop
    on /proc/uptime, no sleep) and lists it: a PID that nvidia-smi could not
    have meant. It carries the terminal's GENV_ENVIRONMENT_ID, so attributing
    it would put it into the environment."""
    env = {}
    if backend == "psutil":
        env = {"GENV_PROCESS_BACKEND": "psutil", "GENV_PYTHON": _psutil_python()}
    spawned = os.path.join(genv.base, "spawned")
    armed = os.path.join(genv.base, "armed")
    body = (
        "if [ -e %(armed)s ]; then\n"
        "  read -r t _ </proc/uptime\n"
        "  while read -r u _ </proc/uptime && [ \"$u\" = \"$t\" ]; do :; done\n"
        "  sleep 600 </dev/null >/dev/null 2>&1 &\n"
        "  echo $! >>%(spawned)s\n"
        "  printf '%%s, %%s, 100, reused\\n' $! %(uuid)s\n"
        "fi\n"
        "exit 0" % {"armed": armed, "spawned": spawned, "uuid": uuid(0)}
    )
    path = wrapper(genv, "*\" --query-compute-apps=\"*", body)
    shell = genv.shell(sh, PATH=path, **env)
    shell.ok("genv activate --name job")
    open(armed, "w").close()
    for command in ("genv ps --json", "genv status --json", "genv devices --json"):
        doc = json.loads(shell.ok(command))
        rows = doc["processes"] if command.startswith("genv status") else (
            doc[0]["processes"] if command.startswith("genv devices") else doc)
        if command.startswith("genv status"):
            assert rows == [], (command, rows)
            continue
        assert len(rows) == 1, (command, rows)
        row = rows[0]
        assert (row["managed"], row["env_id"], row["uid"], row["user"]) == (None, None, None, None), (command, row)
        assert row["command"] == "reused", row


@pytest.mark.parametrize("backend", ["procfs", "psutil"])
def test_a_process_started_in_the_same_clock_tick_as_the_query_is_not_attributed(backend):
    """The same rule, at the level of ``attribution.attribute``: a process
    that started after ``mark`` (the moment the process query began) is
    unknown, even when it started within the same 10 ms clock tick as
    ``mark`` (process start times in /proc count whole ticks), and even with
    psutil, whose start times are computed from a boot time rounded to the
    second."""
    from genv import attribution, procs
    from genv.gpus import App

    if backend == "psutil":
        pytest.importorskip("psutil")
    backend_class = procs.ProcFS if backend == "procfs" else procs.Psutil

    def tick():
        with open("/proc/uptime") as handle:
            return handle.read().split()[0]

    env = {"id": "e1", "created": 0.0, "config": {}, "terminals": [], "devices": [], "warnings": []}
    users = {UID: {"envs": [env]}}
    machine = [{"index": 0, "uuid": uuid(0), "name": None, "total": None}]
    first = tick()
    while tick() == first:  # just after a tick: the process starts within the next 10 ms
        pass
    facts = backend_class()
    mark = facts.clock()
    child = subprocess.Popen(["sleep", "600"], env={"PATH": PLAIN_PATH, "GENV_ENVIRONMENT_ID": "e1"})
    try:
        [process] = attribution.attribute([App(child.pid, uuid(0), 1 << 20, "sleep")], machine, users, facts,
                                          mark)
        assert (process.managed, process.env, process.uid) == (None, None, None)
        assert not attribution.member_test(users, env, backend_class(), mark)(child.pid)
    finally:
        child.kill()
        child.wait()


# === 5. attach avoids GPUs busy outside genv ===========================================


def test_attach_avoids_busy_gpus(genv, sh, gpus):
    busy0 = gpus.outside(gpu=0, mib=500)
    busy2 = gpus.outside(gpu=2, mib="[N/A]")  # unknown memory may be any amount
    gpus.outside(gpu=1, mib=0)  # holds no memory: not busy
    first = genv.shell(sh)
    first.ok("genv activate --gpus 1")
    assert gpu_of(first) == "1"
    # A process of an environment on a GPU it does not hold: not "busy".
    gpus.in_shell(first, gpu=3, mib=100)
    second = genv.shell(sh)
    second.ok("genv activate --gpus 1")
    assert gpu_of(second) == "3"
    third = genv.shell(sh)
    result = third.run("genv activate --gpus 1")
    assert result.rc == 1 and gpu_of(third) == "", result
    assert "GPU 0 (pid %d (%s))" % (busy0, ME) in result.err, result
    assert "GPU 2 (pid %d (%s))" % (busy2, ME) in result.err, result
    assert "Traceback" not in result.err and len(result.err.splitlines()) == 1, result
    result = third.run("genv attach --index 0")
    assert result.rc == 1 and "GPU 0" in result.err and "pid %d (%s)" % (busy0, ME) in result.err, result
    # The stranger leaves: the GPU is free again.
    gpus.stop(busy0)
    third.ok("genv attach")
    assert gpu_of(third) == "0"


def test_a_stranger_does_not_take_away_a_reservation(genv, sh, gpus):
    """An unmanaged process appears on a GPU an environment holds: the
    environment keeps it when it attaches again, and when it grows."""
    shell = genv.shell(sh)
    shell.ok("genv activate --gpus 1")
    assert gpu_of(shell) == "0"
    gpus.outside(gpu=0, mib=500)
    result = shell.run("genv attach")
    assert result.rc == 0 and gpu_of(shell) == "0", result
    shell.ok("genv config gpus 2")
    result = shell.run("genv attach")
    assert result.rc == 0 and gpu_of(shell) == "0,1", result


def test_a_stranger_on_the_only_gpu_does_not_detach_its_holder(genv, sh, gpus):
    genv.extra["FAKE_NVIDIA_SMI_GPUS"] = "1"
    shell = genv.shell(sh)
    shell.ok("genv activate --gpus 1")
    assert gpu_of(shell) == "0"
    gpus.outside(gpu=0, mib=500)
    result = shell.run("genv attach")
    assert (result.rc, gpu_of(shell)) == (0, "0"), result


# === 6. the nvidia-smi shim ==============================================================


@pytest.fixture
def crowded(genv, sh, gpus):
    """Terminal ``me`` holds GPUs 1 and 2; ``other`` holds GPU 0. On GPU 1 run
    my process and the other environment's (the fake does not check
    reservations); on GPU 2 my process (by GENV_ENVIRONMENT_ID only) and a
    stranger's; on GPU 0 the other environment's own."""
    other = genv.shell(sh)
    other.ok("genv activate --gpus 1")
    me = genv.shell(sh)
    me.ok("genv activate --gpus 2")
    assert (gpu_of(other), gpu_of(me)) == ("0", "1,2")
    mine = [gpus.in_shell(me, gpu=1, mib=1000, name="mine-a"),
            gpus.outside(gpu=2, mib=2000, name="mine-b", env_id=me.var("GENV_ENVIRONMENT_ID"))]
    intruders = [gpus.in_shell(other, gpu=1, mib=3000, name="theirs"),
                 gpus.outside(gpu=2, mib=4000, name="stranger")]
    theirs = gpus.in_shell(other, gpu=0, mib=5000, name="own-0")
    return me, other, mine, intruders, theirs


def test_shim_table_shows_only_own_processes(genv, sh, gpus, crowded):
    me, other, mine, intruders, theirs = crowded
    table = me.ok("nvidia-smi")
    assert smi_table_pids(table) == mine
    assert "|   1  NVIDIA A100" in table and "|   2  NVIDIA A100" in table and "|   0  NVIDIA A100" not in table
    for pid in intruders:
        assert str(pid) not in table
    assert smi_table_pids(other.ok("nvidia-smi")) == [theirs]
    # Every line keeps the table's width.
    lines = table.splitlines()[1:]
    assert len(set(len(line) for line in lines if line.startswith(("|", "+")))) == 1
    # With none of mine left, the table says so, as nvidia-smi does.
    for pid in mine:
        gpus.drop(pid)
    empty = me.ok("nvidia-smi")
    assert smi_table_pids(empty) == [None]
    line = [line for line in empty.splitlines() if NO_PROCESSES in line][0]
    border = [line for line in empty.splitlines() if line.startswith("|=")][-1]
    assert line == "|" + NO_PROCESSES.ljust(len(border) - 2) + "|"
    # With GPUs selected by the user, the same.
    assert smi_table_pids(me.ok("nvidia-smi -i 1")) == [None]
    # Where nvidia-smi itself found none, the line is there once.
    gpus.drop(intruders[0])
    assert smi_table_pids(me.ok("nvidia-smi -i 1")) == [None]


OLD_TABLE = """\
Mon Jan  1 00:00:00 2024
+-----------------------------------------------------------------------------+
| NVIDIA-SMI 440.33.01    Driver Version: 440.33.01    CUDA Version: 10.2     |
|-------------------------------+----------------------+----------------------+
| GPU  Name        Persistence-M| Bus-Id        Disp.A | Volatile Uncorr. ECC |
|===============================+======================+======================|
|   1  Tesla V100-SXM2...  On   | 00000000:17:00.0 Off |                    0 |
+-------------------------------+----------------------+----------------------+

+-----------------------------------------------------------------------------+
| Processes:                                                       GPU Memory |
|  GPU       PID   Type   Process name                             Usage      |
|=============================================================================|
|    1     %(a)5d      C   python                                      1000MiB |
|    1     %(x)5d      C   python                                      3000MiB |
|    1       N/A      C   python                                      3000MiB |
+-----------------------------------------------------------------------------+
"""


def test_shim_reads_the_pid_column_from_the_header(genv, sh, gpus, crowded):
    """Older drivers print no GI/CI columns: the PID is the second word."""
    me, _, mine, intruders, _ = crowded
    table = OLD_TABLE % {"a": mine[0], "x": intruders[0]}
    path = answering(genv, table.encode(), when='" --id=1,2 "')
    me.ok('PATH="%s/shims:%s"' % (genv.root, path))
    shown = me.ok("nvidia-smi")
    kept = [line for line in table.splitlines() if str(intruders[0]) not in line and "N/A      C" not in line]
    assert shown.splitlines() == kept


QUERIES = [
    ("pid,used_memory", "csv,noheader,nounits", "%(a)d, 1000\n%(b)d, 2000\n"),
    ("pid,used_memory", "csv", "pid, used_gpu_memory [MiB]\n%(a)d, 1000 MiB\n%(b)d, 2000 MiB\n"),
    ("used_memory,process_name", "csv,noheader", "1000 MiB, mine-a\n2000 MiB, mine-b\n"),
    ("gpu_uuid,pid", "csv", "gpu_uuid, pid\n%(u1)s, %(a)d\n%(u2)s, %(b)d\n"),
    ("pid", "csv,noheader", "%(a)d\n%(b)d\n"),
    ("pid,pid", "csv,noheader", "%(a)d, %(a)d\n%(b)d, %(b)d\n"),
    ("process_name", "csv", "process_name\nmine-a\nmine-b\n"),
]


@pytest.mark.parametrize("query", QUERIES, ids=["%s-%s" % (q[0], q[1]) for q in QUERIES])
def test_shim_query_compute_apps_shows_only_own_processes(genv, sh, gpus, crowded, query):
    me, _, mine, _, _ = crowded
    fields, form, expected = query
    values = {"a": mine[0], "b": mine[1], "u1": uuid(1), "u2": uuid(2)}
    assert me.ok("nvidia-smi --query-compute-apps=%s --format=%s" % (fields, form)) == expected % values
    # The options in another order, and a selection of the user's own.
    assert me.ok("nvidia-smi --format=%s -i 1,2 --query-compute-apps=%s" % (form, fields)) == expected % values


def test_shim_bypass_and_outside_an_environment_show_everything(genv, sh, gpus, crowded):
    me, _, mine, intruders, theirs = crowded
    everything = sorted(mine + intruders + [theirs])
    query = "nvidia-smi --query-compute-apps=pid --format=csv,noheader"
    assert sorted(map(int, me.ok("GENV_SHIM_BYPASS=1 " + query).split())) == everything
    assert sorted(p for p in smi_table_pids(me.ok("GENV_SHIM_BYPASS=1 nvidia-smi"))) == everything
    outside = genv.shell(sh)
    outside.ok('PATH="%s/shims:$PATH"' % genv.root)
    assert sorted(map(int, outside.ok(query).split())) == everything


def test_shim_modes_without_processes_start_no_python(genv, sh, gpus):
    pylog = os.path.join(genv.base, "python-calls")
    smilog = os.path.join(genv.base, "smi-calls")
    python = os.path.join(genv.base, "logging-python")
    with open(python, "w") as handle:
        handle.write("#!/bin/sh\nprintf '%%s\\n' \"$*\" >>%s\nexec %s \"$@\"\n" % (pylog, system_python()))
    os.chmod(python, 0o755)
    shell = genv.shell(sh, GENV_PYTHON=python, FAKE_NVIDIA_SMI_LOG=smilog)
    shell.ok("genv activate --gpus 2")
    gpus.in_shell(shell, gpu=0)

    def calls(command):
        for log in (pylog, smilog):
            open(log, "w").close()
        shell.ok(command)
        return open(pylog).read().splitlines(), open(smilog).read().splitlines()

    for command in ("nvidia-smi -L", "nvidia-smi --query-gpu=index,memory.used --format=csv",
                    "nvidia-smi -i 1 -L", "nvidia-smi dmon -c 1", "nvidia-smi -h"):
        started, seen = calls(command)
        assert started == [] and len(seen) == 1, (command, started, seen)
    for command, mode in (("nvidia-smi", "table"), ("nvidia-smi --query-compute-apps=pid --format=csv", "apps")):
        started, seen = calls(command)
        assert len(started) == 1 and "shim_filter.py %s" % mode in started[0], (command, started)
        assert len(seen) == 1, (command, seen)
    started, _ = calls("genv ps")
    assert started, "the logging interpreter was not used"


def test_shim_passes_failures_on(genv, sh, gpus):
    shell = genv.shell(sh)
    shell.ok("genv activate --gpus 1")
    for command in ("nvidia-smi", "nvidia-smi --query-compute-apps=pid --format=csv"):
        result = shell.run("FAKE_NVIDIA_SMI_FAIL=driver " + command)
        assert result.rc == 9 and "NVIDIA-SMI has failed" in result.out, (command, result)
        assert "Traceback" not in result.err, (command, result)
    result = shell.run("nvidia-smi --query-compute-apps=nonsense --format=csv")
    assert result.rc == 2 and 'Field "nonsense" is not a valid field' in result.out, result
    assert "Traceback" not in result.err


def test_shim_filters_what_goes_to_a_file_too(genv, sh, gpus, crowded):
    """``-f FILE`` / ``--filename=FILE`` (nvidia-smi's "log to a file") must
    not carry what the terminal may not see. The fake lacks the option: a
    wrapper gives it to it."""
    me, _, mine, intruders, _ = crowded
    body = (
        'args=() file=\n'
        'while [ $# -gt 0 ]; do\n'
        '  case "$1" in\n'
        '  -f) file=$2; shift 2 ;;\n'
        '  --filename=*) file=${1#*=}; shift ;;\n'
        '  *) args+=("$1"); shift ;;\n'
        '  esac\n'
        'done\n'
        'exec "$real" "${args[@]}" >"$file"'
    )
    path = wrapper(genv, "*\" -f \"* | *\" --filename=\"*", body)
    me.ok('PATH="%s/shims:%s"' % (genv.root, path))
    out = os.path.join(genv.base, "out")
    me.ok("nvidia-smi --query-compute-apps=pid --format=csv,noheader -f %s" % out)
    assert open(out).read() == "".join("%d\n" % pid for pid in mine)
    me.ok("nvidia-smi --filename=%s" % out)
    text = open(out).read()
    assert smi_table_pids(text) == mine and not any(str(pid) in text for pid in intruders)


def test_shim_hides_a_nested_environments_processes(genv, sh, gpus):
    """A terminal of environment B started from a terminal of A (a nested
    shell, tmux): its processes are B's for ``genv ps``, and the shim in A
    must agree."""
    outer = genv.shell(sh)
    outer.ok("genv activate --name A --gpus 1")
    fifo = os.path.join(genv.base, "nested")
    os.mkfifo(fifo)
    script = ('unset GENV_ENVIRONMENT_ID GENV_SHELL_PID; eval "$(genv init -)"; '
              'genv activate --name B --gpus 1 >/dev/null 2>&1; '
              'sleep 600 </dev/null >/dev/null 2>&1 & echo "$! $$" >%s; wait' % fifo)
    out = outer.ok("bash --norc --noprofile -c '%s' </dev/null >/dev/null 2>&1 & read -r p <%s; echo $p"
                   % (script, fifo))
    pid, nested = map(int, out.split())
    gpus.pids += [pid, nested]
    gpus.put(pid, 0, 100)  # on A's GPU
    row = by_pid(ps(genv))[pid]
    assert row["env_name"] == "B", row
    assert outer.ok("nvidia-smi --query-compute-apps=pid --format=csv,noheader") == ""
    assert smi_table_pids(outer.ok("nvidia-smi")) == [None]


def table_rounds(text):
    """The process rows of each complete table in ``text`` (a loop prints
    table after table): per table, a list of (pid, memory cell)."""
    rounds, rows, state = [], [], None
    for line in text.splitlines():
        if "Processes:" in line:
            state = "header"
        elif state == "header" and line.startswith("|="):
            state, rows = "rows", []
        elif state == "rows":
            if line.startswith("+"):
                rounds.append(rows)
                state = None
            elif NO_PROCESSES.strip() not in line:
                words = line.strip("|").split()
                rows.append((int(words[3]), words[-1]))
    return rounds


def apps_rows(text):
    """(pid, memory) of each complete ``pid, used_memory`` row (no header)."""
    return [tuple(line.rstrip("\n").split(", ")) for line in text.splitlines(keepends=True)
            if line.endswith("\n") and line.count(", ") == 1]


LOOPS = [
    ("nvidia-smi -lms 100", "table"),
    ("nvidia-smi -l 1", "table"),
    ("nvidia-smi -i 1,2 --loop-ms=100", "table"),
    ("nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader -lms 100", "apps"),
]


@pytest.mark.parametrize("loop", LOOPS, ids=[command for command, _ in LOOPS])
def test_shim_loops_decide_membership_afresh_each_round(genv, sh, gpus, crowded, loop):
    """A loop of nvidia-smi (``-l``, ``-lms``) runs for long: a process the
    environment starts after the loop began shows, with its memory, in a
    later round, while another environment's started as late never does."""
    import time

    me, other, mine, intruders, theirs = crowded
    command, kind = loop
    out = os.path.join(genv.base, "loop.out")
    loop_pid = int(me.ok("FAKE_NVIDIA_SMI_LOOPS=600 %s >%s 2>&1 </dev/null & echo $!" % (command, out)).strip())
    gpus.pids.append(loop_pid)

    def seen():
        if not os.path.exists(out):  # (the background job opens it)
            return []
        with open(out) as handle:
            text = handle.read()
        if kind == "table":
            return [(pid, memory) for rows in table_rounds(text) for pid, memory in rows]
        return [(int(pid), memory.replace(" ", "")) for pid, memory in apps_rows(text)]

    def wait_for(what, test):
        deadline = time.monotonic() + 15
        while not test(seen()):
            assert time.monotonic() < deadline, "%s: not seen in %r" % (what, open(out).read()[-3000:])
            time.sleep(0.05)

    wait_for("the first round", lambda rows: {pid for pid, _ in rows} >= set(mine))
    late = gpus.in_shell(me, gpu=2, mib=777, name="late-mine")
    late_intruder = gpus.in_shell(other, gpu=1, mib=888, name="late-theirs")
    wait_for("the late process", lambda rows: (late, "777MiB") in rows)
    before = len(seen())
    wait_for("one more round", lambda rows: len(rows) > before)
    kill_quietly(loop_pid)
    shown = {pid for pid, _ in seen()}
    assert shown == set(mine) | {late}, (shown, mine, late)
    assert late_intruder not in shown and not shown & set(intruders + [theirs])


def test_shim_loop_option_without_its_number_is_still_filtered(genv, sh, gpus, crowded):
    """``-l`` takes an optional number (5 s without one): in ``nvidia-smi -l
    --query-compute-apps=pid ...`` the next word is the query, which must be
    filtered as without ``-l``."""
    me, _, mine, _, _ = crowded
    for command in ("nvidia-smi -l --query-compute-apps=pid --format=csv,noheader",
                    "nvidia-smi --loop --query-compute-apps=pid --format=csv,noheader"):
        out = me.ok("FAKE_NVIDIA_SMI_LOOPS=1 " + command)
        assert sorted(map(int, out.split())) == sorted(mine), (command, out)
    assert smi_table_pids(me.ok("FAKE_NVIDIA_SMI_LOOPS=1 nvidia-smi -l")) == mine
