"""Reservations that are used, idle, or end (issue 19): idle time, ``max_idle``
and ``genv enforce --reclaim``, ``attach --for`` and ``max_reservation``,
and terminals that follow what their environment holds.

Time passes through ``GENV_TEST_CLOCK=BOOT[:WALL]`` (genv/clock.py): whole
seconds added to genv's boot clock (deadlines, idle times) and to its wall
clock, in the commands and shells that have it. Nothing sleeps, and the
machine's clock is never touched. Processes on the fake GPUs come from
``FAKE_NVIDIA_SMI_APPS`` (test_enforce.World).

The sections:

1. idle time: what root-run and the owner's commands saw, shown by genv envs
2. genv enforce: the idle rule, --reclaim, as root and as a user
3. terminals follow: at the next genv command, at the next prompt (bash and
   zsh), --no-prompt terminals at their next command, no Python otherwise
4. attach --for: ends, renewals, the policy's max_reservation, clock jumps,
   genv run, the SDK and kernels
5. caps stop counting at once what was reclaimed or ended
"""

import json
import os
import re
import subprocess
import sys
import time

import pexpect
import pytest

from conftest import REPO, UID, SHELLS, alive as running, gone, need, spawn, until
from test_enforce import World, run_enforce, world, write_policy  # noqa: F401 (world: a fixture)

sys.path.insert(0, REPO)
from genv import procs  # noqa: E402

HOUR = 3600
RELEASED = re.compile(r"genv: GPUs? [0-9,]+ (was|were) released ")


def at(seconds, wall=0):
    """GENV_TEST_CLOCK for a command ``seconds`` later (the wall clock moved
    by ``wall`` seconds)."""
    return "%d:%d" % (seconds, wall) if wall else str(int(seconds))


def docs_of(genv, listing, clock=0, user=None, **env):
    result = genv.cli(listing, "--json", user=user, GENV_TEST_CLOCK=at(clock), **env)
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result
    return json.loads(result.stdout)


def env_of(genv, eid, clock=0, user=None):
    found = [doc for doc in docs_of(genv, "envs", clock, user) if doc["id"] == eid]
    assert found, "no environment %s" % eid
    return found[0]


def look(genv, clock=0, user=None):
    """A genv command that asks nvidia-smi for processes (genv ps), at ``clock``."""
    result = genv.cli("ps", user=user, GENV_TEST_CLOCK=at(clock))
    assert result.returncode == 0 and result.stderr == b"", result


def enforce(genv, *args, clock=0, user=None):
    """genv enforce --format json at ``clock``: (exit status, findings)."""
    rc, out, err = run_enforce(genv, "--format", "json", *args, user=user, GENV_TEST_CLOCK=at(clock))
    assert err == "", err
    return rc, json.loads(out)


def told(err):
    """The lines saying GPUs were released."""
    return [line for line in err.splitlines() if RELEASED.match(line)]


def eid(shell):
    return shell.var("GENV_ENVIRONMENT_ID")


def gpus(shell):
    return shell.var("CUDA_VISIBLE_DEVICES")


# === 1. idle time ==================================================================


def test_idle_time_follows_processes_that_come_and_go(genv, world, other_user):
    """Root's looks (genv ps) record when they saw one of the environment's
    own processes on its GPUs; genv envs shows the time since (IDLE, and
    idle_seconds), empty while in use. A process of another user that runs
    in an environment never makes it look busy."""
    need("root")
    user = genv.shell("bash", user=other_user)
    user.ok("genv activate --gpus 1")
    mine = eid(user)
    look(genv, 0)
    assert env_of(genv, mine, HOUR)["idle_seconds"] == pytest.approx(HOUR, abs=60)
    table = genv.cli("envs", GENV_TEST_CLOCK=at(HOUR)).stdout.decode()
    assert table.splitlines()[0].split()[-1] == "IDLE" and table.splitlines()[1].split()[-1] == "1h", table

    job = world.in_shell(user, gpu=0)
    look(genv, HOUR)  # root sees the job on the environment's GPU
    assert env_of(genv, mine, HOUR + 50)["idle_seconds"] is None  # in use
    os.kill(job, 9)
    assert gone(job)
    look(genv, HOUR + 100)  # and then not
    assert env_of(genv, mine, HOUR + 1900)["idle_seconds"] == pytest.approx(1900, abs=70)
    csv = genv.cli("envs", "--format", "csv", GENV_TEST_CLOCK=at(HOUR + 1900)).stdout.decode().splitlines()
    assert csv[0].endswith(",idle_seconds,until"), csv

    # The owner's own look counts for what genv envs shows, too.
    again = world.in_shell(user, gpu=0)
    user.ok("GENV_TEST_CLOCK=%d genv ps >/dev/null" % (2 * HOUR))
    assert env_of(genv, mine, 2 * HOUR + 30)["idle_seconds"] is None
    assert running(again)

    # Another user's process in root's environment: root's stays idle.
    root = genv.shell("bash")
    root.ok("genv activate --gpus 1")
    theirs = world.in_shell(root, gpu=1, command="setpriv --reuid=%d --regid=%d --clear-groups sleep 613"
                            % (other_user.pw_uid, other_user.pw_gid))
    until(lambda: World.cmdline(theirs) == "sleep 613", "setpriv's exec")
    listed = {doc["pid"]: doc for doc in docs_of(genv, "ps", 2 * HOUR)}
    assert (listed[theirs]["env_id"], listed[theirs]["user"]) == (eid(root), "genvtest"), listed[theirs]
    look(genv, 3 * HOUR)
    assert env_of(genv, eid(root), 3 * HOUR + 60)["idle_seconds"] == pytest.approx(3 * HOUR + 60, abs=70)


def test_editing_ones_own_file_does_not_make_an_environment_look_busy(genv, world, other_user):
    """After root saw the attach, the attach time and the owner's own claims
    of activity in their file do not move what enforce decides by."""
    need("root")
    write_policy(genv, {"default": {"max_idle": "1h"}})
    user = genv.shell("bash", user=other_user)
    user.ok("genv activate --gpus 1")
    look(genv, 0)
    path = os.path.join(genv.tmpdir, "user-%d.json" % other_user.pw_uid)
    data = genv.state(other_user.pw_uid)
    now = time.time()
    for env in data["envs"]:
        for device in env["devices"]:
            device["attached"] = now + 10 * HOUR  # "attached later"
        env["active"], env["busy"] = 1e9, True  # "seen busy"
    with open(path + ".new", "w") as handle:
        json.dump(data, handle)
    os.chown(path + ".new", other_user.pw_uid, other_user.pw_gid)
    os.rename(path + ".new", path)
    rc, docs = enforce(genv, clock=2 * HOUR)
    assert rc == 1 and [(doc["rule"], doc["env_id"]) for doc in docs] == [("idle", eid(user))], docs


# === 2. genv enforce: idle and --reclaim ==============================================


def test_enforce_reports_and_reclaims_environments_idle_too_long(genv, world, other_user):
    """Dry run by default (rule idle, would reclaim, exit 1, nothing
    changes); --reclaim detaches: the GPUs are free for others at once, and
    each terminal of the environment is told once, at its next command."""
    need("root")
    write_policy(genv, {"default": {"max_idle": "2h"}})
    idle = genv.shell("bash", user=other_user)
    idle.ok("genv activate --gpus 2")
    assert gpus(idle) == "0,1"
    second = genv.shell("zsh", user=other_user)
    second.ok("genv activate --id %s" % eid(idle))
    busy = genv.shell("bash", user=other_user)
    busy.ok("genv activate --gpus 1")
    job = world.in_shell(busy, gpu=2)
    assert run_enforce(genv, GENV_TEST_CLOCK=at(0)) == (0, "No process breaks the rules\n", "")

    rc, docs = enforce(genv, clock=3 * HOUR)
    assert rc == 1 and len(docs) == 1, docs
    doc = docs[0]
    assert (doc["rule"], doc["env_id"], doc["user"], doc["pid"], doc["gpu"], doc["outcome"]) == (
        "idle", eid(idle), "genvtest", None, None, "would reclaim"), doc
    assert re.match(r"GPUs 0,1 held 3h( \d+m)? with no process of the environment on them \(max_idle = 2h\)$",
                    doc["detail"]), doc
    assert [env["devices"] != [] for env in genv.state(other_user.pw_uid)["envs"]] == [True, True]
    rc, out, err = run_enforce(genv, GENV_TEST_CLOCK=at(3 * HOUR))
    assert rc == 1 and "would reclaim" in out and "idle" in out

    rc, docs = enforce(genv, "--reclaim", clock=3 * HOUR)
    assert rc == 0 and [(doc["rule"], doc["outcome"]) for doc in docs] == [("idle", "reclaimed")], docs
    state = {env["id"]: env for env in genv.state(other_user.pw_uid)["envs"]}
    assert state[eid(idle)]["devices"] == [] and state[eid(busy)]["devices"] != []
    assert os.stat(os.path.join(genv.tmpdir, "user-%d.json" % other_user.pw_uid)).st_uid == other_user.pw_uid
    assert running(job)
    # Free for others at once.
    root = genv.shell("bash")
    root.ok("genv activate --gpus 2")
    assert gpus(root) == "0,1"
    # Each terminal is told once, at its next genv command, and follows.
    for shell in (idle, second):
        result = shell.run("genv status")
        assert result.rc == 0, result
        assert len(told(result.err)) == 1, result
        assert re.match(r"genv: GPUs 0,1 were released after 3h( \d+m)? idle$", told(result.err)[0]), result
        assert gpus(shell) == ""
        result = shell.run("genv status")
        assert told(result.err) == [], result
    assert run_enforce(genv, GENV_TEST_CLOCK=at(3 * HOUR)) == (0, "No process breaks the rules\n", "")


UNWRITABLE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from genv import store
from genv.errors import GenvError
real = store.Transaction._write
def write(self, uid):  # the owner swapped their file for a folder under the lock
    if uid == int(sys.argv[2]):
        raise GenvError("cannot write user-%d.json: Is a directory" % uid)
    return real(self, uid)
store.Transaction._write = write
from genv.commands import enforce
from genv.core.context import Context
actions, over = enforce.find(Context(), True)
print(json.dumps([(action.violation.rule, action.outcome, action.failed) for action in actions]))
"""


def test_a_reclaim_that_could_not_be_written_is_not_reported_as_done(genv, world, other_user):
    """A user's file that root cannot write back (its owner swapped it for
    a folder under the lock): nothing was reclaimed, and enforce says so
    (it reported 'reclaimed' while the GPUs stayed held)."""
    need("root")
    write_policy(genv, {"default": {"max_idle": "2h"}})
    idle = genv.shell("bash", user=other_user)
    idle.ok("genv activate --gpus 1")
    assert run_enforce(genv, GENV_TEST_CLOCK=at(0)) == (0, "No process breaks the rules\n", "")
    done = subprocess.run([sys.executable, "-c", UNWRITABLE, genv.root, str(other_user.pw_uid)],
                          env=genv.environ(GENV_TEST_CLOCK=at(3 * HOUR)), cwd=genv.work, capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done
    assert json.loads(done.stdout) == [["idle", "could not reclaim", True]], done
    assert done.stderr.decode().endswith("Is a directory; it is left as it was\n"), done
    assert [env["devices"] != [] for env in genv.state(other_user.pw_uid)["envs"]] == [True]


def test_enforce_reclaim_as_a_service_logs_and_a_busy_environment_stays(genv, world, other_user):
    need("root")
    write_policy(genv, {"default": {"max_idle": "1h"}, "users": {"genvtest": {"max_idle": 7200}}})
    user = genv.shell("bash", user=other_user)
    user.ok("genv activate --gpus 1")
    look(genv, 0)
    # 1.5h: within this user's own max_idle (2h, a number of seconds).
    assert enforce(genv, "--reclaim", clock=1.5 * HOUR) == (0, [])
    service = subprocess.Popen([os.path.join(genv.root, "bin", "genv"), "enforce", "--reclaim", "--interval", "0.2"],
                               env=genv.environ(GENV_TEST_CLOCK=at(3 * HOUR)), cwd=genv.work,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = service.stdout.readline().decode()
        assert " rule=idle pid=- user=genvtest gpu=- env=%s outcome=reclaimed" % eid(user) in line, line
    finally:
        service.kill()
        service.wait()
        service.stdout.close()
        service.stderr.close()


def test_a_user_reclaims_only_their_own(genv, world, other_user):
    """genvtest runs enforce --reclaim: their own idle environment is
    reclaimed; another account's is reported as not permitted and kept."""
    need("root")
    write_policy(genv, {"default": {"max_idle": "1h"}})
    mine = genv.shell("bash", user=other_user)
    mine.ok("genv activate --gpus 1")
    stranger = 54321
    terminal = world.outside(argv=["setpriv", "--reuid=%d" % stranger, "--regid=%d" % stranger, "--clear-groups",
                                   "sleep", "613"])
    until(lambda: World.cmdline(terminal) == "sleep 613", "setpriv's exec")
    uuid = genv.state(other_user.pw_uid)["devices"]["list"][3]["uuid"]
    path = os.path.join(genv.tmpdir, "user-%d.json" % stranger)
    with open(path, "w") as handle:
        json.dump({"format": 4, "uid": stranger, "devices": None, "envs": [
            {"id": "theirs", "created": time.time(), "config": {}, "warnings": [],
             "terminals": [{"pid": terminal, "token": procs.processes().token(terminal)}],
             "devices": [{"index": 3, "uuid": uuid, "attached": time.time()}]}]}, handle)
    os.chown(path, stranger, stranger)
    look(genv, 0)
    rc, docs = enforce(genv, "--reclaim", clock=2 * HOUR, user=other_user)
    outcomes = {doc["env_id"]: (doc["rule"], doc["outcome"]) for doc in docs}
    assert rc == 1 and outcomes == {eid(mine): ("idle", "reclaimed"), "theirs": ("idle", "not permitted")}, docs
    assert [env["devices"] for env in genv.state(other_user.pw_uid)["envs"]] == [[]]
    assert [d["index"] for d in genv.state(stranger)["envs"][0]["devices"]] == [3]


def test_no_idle_rule_without_max_idle_or_root_evidence(genv, world, request):
    """Without max_idle nothing is idle. With it (as root: a trusted policy),
    an environment no root-run genv saw hold its GPUs is not judged (a
    user's enforce has only root's record to go by), root's never."""
    shell = genv.shell("bash")
    shell.ok("genv activate --gpus 1")
    assert enforce(genv, "--reclaim", clock=10 * HOUR) == (0, [])
    assert gpus(shell) == "0"
    if UID != 0:
        return  # (a policy is trusted only in root's folders)
    other_user = request.getfixturevalue("other_user")
    write_policy(genv, {"default": {"max_idle": "1h"}})
    user = genv.shell("bash", user=other_user)
    user.ok("genv activate --gpus 1")
    assert enforce(genv, "--reclaim", clock=10 * HOUR, user=other_user) == (0, [])  # root never looked
    assert enforce(genv, clock=10 * HOUR) == (0, [])  # root looks now: it just attached; root's own: never
    assert enforce(genv, clock=12 * HOUR)[1][0]["env_id"] == eid(user)


# === 3. terminals follow ===========================================================


def test_terminals_follow_another_terminals_detach_at_their_next_command(genv, sh):
    first = genv.shell(sh)
    first.ok("genv activate --gpus 2")
    second = genv.shell(sh)
    second.ok("genv activate --id %s" % eid(first))
    assert gpus(second) == "0,1"
    first.ok("genv attach --count 1")
    result = second.run("genv envs >/dev/null")  # any genv command
    assert (result.rc, told(result.err)) == (0, []), result
    assert gpus(second) == "0" and second.var("GENV_ATTACHED_GPUS") == "0"
    first.ok("genv detach")
    second.ok("genv config name x")
    assert gpus(second) == ""


def test_an_ended_reservation_is_told_once_in_each_terminal(genv, sh):
    first = genv.shell(sh)
    first.ok("export GENV_TEST_CLOCK=0; genv activate --gpus 1 && genv attach --for 1h")
    second = genv.shell(sh)
    second.ok("export GENV_TEST_CLOCK=0; genv activate --id %s" % eid(first))
    assert gpus(second) == "0"
    for shell in (second, first):
        result = shell.run("export GENV_TEST_CLOCK=%d; genv status" % (HOUR + 1))
        assert result.rc == 0 and told(result.err) == ["genv: GPU 0 was released at the end of its reservation"], \
            result
        assert gpus(shell) == "" and shell.var("_GENV_UNTIL") is None
        assert told(shell.run("genv status").err) == []


def test_the_end_is_told_ten_minutes_before_once(genv, sh):
    shell = genv.shell(sh)
    shell.ok("export GENV_TEST_CLOCK=0; genv activate --gpus 1 && genv attach --for 1h")
    assert shell.run("export GENV_TEST_CLOCK=%d; genv envs" % (HOUR - 700)).err == ""
    result = shell.run("export GENV_TEST_CLOCK=%d; genv envs" % (HOUR - 590))
    assert result.err == "genv: the reservation of GPU 0 ends in 10m ('genv attach --for DURATION' renews it)\n", \
        result
    assert shell.run("genv envs").err == ""
    assert gpus(shell) == "0"
    # Renewed (at HOUR - 590): a new end, told again when it comes near.
    shell.ok("genv attach --for 1h")
    assert shell.run("genv envs").err == ""
    assert shell.run("export GENV_TEST_CLOCK=%d; genv envs" % (2 * HOUR - 590 - 300)).err.startswith(
        "genv: the reservation of GPU 0 ends in 5m")


def test_a_fifo_or_a_link_as_the_marker_never_holds_the_shell(genv, sh):
    """The marker is read only when it is a regular file of the caller: a
    FIFO in its place (which would block a read) or a link is skipped."""
    shell = genv.shell(sh)
    shell.ok("genv activate --gpus 1 && genv attach --for 1h")
    marker = shell.var("_GENV_SYNC_FILE")
    assert marker == os.path.join(genv.tmpdir, "user-%d.sync" % UID) and os.path.isfile(marker)
    assert shell.var("_GENV_SYNC") == open(marker).read().strip()
    os.unlink(marker)
    os.mkfifo(marker, 0o644)
    started = time.monotonic()
    assert shell.run("genv envs >/dev/null", timeout=20).rc == 0
    assert shell.run("genv envs >/dev/null", timeout=20).rc == 0
    assert time.monotonic() - started < 15
    os.unlink(marker)
    os.symlink("/dev/zero", marker)
    assert shell.run("genv envs >/dev/null", timeout=20).rc == 0
    assert gpus(shell) == "0"


def test_the_prompt_hook_keeps_the_exit_status(genv):
    """What runs after genv's hook in PROMPT_COMMAND still sees $? of the
    last command."""
    child = spawn(genv, "bash")
    try:
        line(child, "genv activate")
        line(child, "PROMPT_COMMAND=\"$PROMPT_COMMAND\"';echo \"rc=$?\"'")
        child.sendline("(exit 3)")
        child.expect(r"rc=(\d+)\r\n")
        assert child.match.group(1) == "3"
    finally:
        child.close(force=True)


def line(child, text):
    """Run a line; what the terminal showed up to the next prompt."""
    marker = "M%d" % (abs(hash(text)) % 10 ** 8)
    child.sendline("%s; echo %s" % (text, marker))
    child.expect(marker + "\r\n")
    child.expect(r"P> ")
    return child.before


def value(child, name):
    child.sendline("printf '<%%s>\\n' \"$%s\"" % name)
    child.expect(r"<([^>\r\n]*)>\r\n")
    found = child.match.group(1)
    child.expect(r"P> ")
    return found


def enter(child):
    """An empty line: only the prompt is shown again."""
    child.sendline("")
    child.expect(r"P> ")
    return child.before


@pytest.mark.parametrize("kind", SHELLS)
def test_a_terminal_follows_at_its_next_prompt(genv, kind):
    child = spawn(genv, kind)
    other = genv.shell("bash")
    try:
        line(child, "export GENV_TEST_CLOCK=0; genv activate --gpus 2")
        assert value(child, "CUDA_VISIBLE_DEVICES") == "0,1"
        other.ok("genv activate --id %s && genv attach --count 1" % value(child, "GENV_ENVIRONMENT_ID"))
        shown = enter(child)  # the prompt alone brings it in line
        assert "genv:" not in shown, shown
        assert value(child, "CUDA_VISIBLE_DEVICES") == "0"
        # The end: told ten minutes before, once, then released at the first prompt after it.
        line(child, "genv attach --for 1h")
        # (the prompt after the line that moves the clock is the first to see it)
        assert "genv: the reservation of GPU 0 ends in 5m" in line(child, "GENV_TEST_CLOCK=%d" % (HOUR - 300))
        assert "genv:" not in enter(child)
        shown = line(child, "GENV_TEST_CLOCK=%d" % (HOUR + 5))
        assert "genv: GPU 0 was released at the end of its reservation" in shown, shown
        assert value(child, "CUDA_VISIBLE_DEVICES") == ""
        assert "genv:" not in enter(child)
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


@pytest.mark.parametrize("kind", SHELLS)
def test_reclaimed_gpus_are_told_at_the_next_prompt(genv, world, other_user, kind):
    """A user's interactive terminal, idle too long: root's enforce
    --reclaim detaches it; the next prompt says so once and the variables
    follow, with no command typed."""
    need("root")
    write_policy(genv, {"default": {"max_idle": "1h"}})
    child = spawn(genv, kind, user=other_user)
    try:
        line(child, "genv activate --gpus 1")
        assert value(child, "CUDA_VISIBLE_DEVICES") == "0"
        look(genv, 0)
        rc, docs = enforce(genv, "--reclaim", clock=2 * HOUR)
        assert [(doc["rule"], doc["outcome"]) for doc in docs] == [("idle", "reclaimed")], docs
        shown = enter(child)
        assert re.search(r"genv: GPU 0 was released after 2h( \d+m)? idle", shown), shown
        assert value(child, "CUDA_VISIBLE_DEVICES") == "" and value(child, "GENV_ATTACHED_GPUS") == ""
        assert "genv:" not in enter(child)
    finally:
        child.close(force=True)


@pytest.mark.parametrize("kind", SHELLS)
def test_a_no_prompt_terminal_is_told_at_its_next_command(genv, kind):
    child = spawn(genv, kind)
    other = genv.shell("bash")
    try:
        line(child, "genv activate --no-prompt --gpus 1")
        other.ok("genv activate --id %s && genv detach" % value(child, "GENV_ENVIRONMENT_ID"))
        enter(child)
        assert value(child, "CUDA_VISIBLE_DEVICES") == "0"  # no prompt hook: not yet
        line(child, "genv envs >/dev/null")
        assert value(child, "CUDA_VISIBLE_DEVICES") == ""
    finally:
        child.close(force=True)


@pytest.mark.parametrize("kind", SHELLS)
def test_the_prompt_check_runs_no_python_unless_something_changed(genv, kind):
    """GENV_PYTHON is a wrapper that counts its runs: prompts after nothing
    changed start none; one that follows a change starts one."""
    log = os.path.join(genv.base, "python-runs")
    wrapper = os.path.join(genv.base, "python-counting")
    with open(wrapper, "w") as handle:
        handle.write("#!/bin/sh\necho run >>%s\nexec %s \"$@\"\n" % (log, genv.environ()["GENV_PYTHON"]))
    os.chmod(wrapper, 0o755)
    child = spawn(genv, kind, GENV_PYTHON=wrapper)
    other = genv.shell("bash")

    def runs():
        with open(log) as handle:
            return len(handle.read().split())

    try:
        line(child, "genv activate --gpus 2 && genv attach --for 1h")
        before = runs()
        for _ in range(5):
            enter(child)
        assert runs() == before
        other.ok("genv activate --id %s && genv attach --count 1" % value(child, "GENV_ENVIRONMENT_ID"))
        enter(child)
        assert runs() == before + 1
        for _ in range(3):
            enter(child)
        assert runs() == before + 1
    finally:
        child.close(force=True)


# === 4. attach --for ===============================================================


def test_attach_for_ends_and_renews(genv, sh):
    shell = genv.shell(sh)
    shell.ok("export GENV_TEST_CLOCK=0; genv activate --gpus 1 && genv attach --for 2h")
    me = eid(shell)
    doc = env_of(genv, me)
    assert doc["until"] == pytest.approx(time.time() + 2 * HOUR, abs=60)
    table = genv.cli("envs", GENV_TEST_CLOCK=at(0)).stdout.decode().splitlines()
    assert table[0].split()[-1] == "UNTIL" and table[1].split()[-2:] == ["in", "2h"], table
    status = shell.ok("genv status")
    assert re.search(r"^ends: in 2h \(\d{4}-\d\d-\d\d \d\d:\d\d\)$", status, re.M), status
    assert json.loads(shell.ok("genv status --json"))["until"] == pytest.approx(doc["until"], abs=1)
    # Again, attached: the end moves to now + DURATION (even nearer).
    shell.ok("export GENV_TEST_CLOCK=%d; genv attach --for 30m" % HOUR)
    assert env_of(genv, me, HOUR)["until"] == pytest.approx(time.time() + 1800, abs=60)  # (the wall clock did not move)
    # A plain attach keeps the end; any command after it releases the GPUs,
    # another user's included (in memory: the owner's next command writes it).
    shell.ok("genv attach")
    assert env_of(genv, me, 1.5 * HOUR - 1)["devices"] == [0]
    assert env_of(genv, me, 1.5 * HOUR + 1)["devices"] == []
    result = shell.run("export GENV_TEST_CLOCK=%d; genv attach --count 1" % (1.5 * HOUR + 2))
    assert told(result.err) == ["genv: GPU 0 was released at the end of its reservation"], result
    assert result.rc == 0 and gpus(shell) == "0" and env_of(genv, me, 1.5 * HOUR + 2)["until"] is None
    # Detach drops the end.
    shell.ok("genv attach --for 1h && genv detach && genv attach --count 1")
    assert env_of(genv, me, 10 * HOUR)["until"] is None and env_of(genv, me, 10 * HOUR)["devices"] == [0]


@pytest.mark.parametrize("value", ["0", "-1h", "soon", "1w", "2 h", "1e3", "", "nan"])
def test_a_bad_duration_is_one_line_and_changes_nothing(genv, value):
    shell = genv.shell("bash")
    shell.ok("genv activate --gpus 1")
    before = genv.state()
    result = shell.run("genv attach --for '%s'" % value)
    assert result.rc == 1 and len(result.err.splitlines()) == 1 and "invalid --for" in result.err, result
    assert genv.state() == before and gpus(shell) == "0"
    result = genv.cli("run", "--for", value, "--", "true")
    assert result.returncode == 1 and b"invalid --for" in result.stderr, result


def test_a_wall_clock_that_jumps_neither_ends_a_reservation_nor_keeps_it(genv):
    """The end is on the boot clock: the wall clock set a day forward or back
    changes nothing; the boot clock passing the end releases the GPUs."""
    shell = genv.shell("bash")
    shell.ok("export GENV_TEST_CLOCK=0; genv activate --gpus 1 && genv attach --for 1h")
    me = eid(shell)
    for wall in (86400, -86400, 10 ** 9):
        result = genv.cli("envs", "--json", GENV_TEST_CLOCK=at(60, wall))
        doc = [d for d in json.loads(result.stdout) if d["id"] == me][0]
        assert doc["devices"] == [0], (wall, doc)
        assert doc["until"] == pytest.approx(time.time() + wall + HOUR - 60, abs=60)  # shown on that wall clock
        result = shell.run("export GENV_TEST_CLOCK=%s; genv status" % at(60, wall))
        assert result.rc == 0 and told(result.err) == [] and gpus(shell) == "0", result
    result = shell.run("export GENV_TEST_CLOCK=%s; genv status" % at(HOUR + 1, -86400))
    assert told(result.err) == ["genv: GPU 0 was released at the end of its reservation"], result
    assert gpus(shell) == ""


def test_max_reservation_caps_for_and_gives_every_attach_an_end(genv, other_user):
    need("root")  # (a policy is trusted only in root's folders)
    capped_user = other_user
    path = write_policy(genv, {"default": {"max_reservation": "1h"}})
    shell = genv.shell("bash", user=capped_user)
    shell.ok("export GENV_TEST_CLOCK=0; genv activate --gpus 1")
    me = eid(shell)
    assert env_of(genv, me)["until"] == pytest.approx(time.time() + HOUR, abs=60)  # an attach without --for
    result = shell.run("genv attach --for 1d")
    assert result.rc == 0 and result.err == (
        "genv: the reservation ends in 1h, the longest the policy allows (max_reservation in %s), not in 1d\n"
        % path), result
    assert env_of(genv, me)["until"] == pytest.approx(time.time() + HOUR, abs=60)
    shell.ok("genv attach --for 10m")
    assert env_of(genv, me)["until"] == pytest.approx(time.time() + 600, abs=60)
    # Renewing (a plain attach, with the policy) is how a present user keeps GPUs.
    shell.ok("export GENV_TEST_CLOCK=500; genv attach")
    assert env_of(genv, me, 500)["until"] == pytest.approx(time.time() + 500 + HOUR - 500, abs=60)
    # genv run too.
    result = genv.cli("run", "--gpus", "1", "--", "genv", "status", "--json", user=capped_user)
    assert json.loads(result.stdout)["until"] == pytest.approx(time.time() + HOUR, abs=60), result
    # root is not capped.
    root = genv.shell("bash")
    root.ok("genv activate --gpus 1")
    assert env_of(genv, eid(root))["until"] is None


def test_a_forged_end_cannot_outlast_max_reservation(genv, world, other_user):
    """The owner removes the end from their own file: root's record says when
    root first saw it, and from then max_reservation applies, for every
    command (the owner's own next command releases the GPUs)."""
    need("root")
    write_policy(genv, {"default": {"max_reservation": "1h"}})
    shell = genv.shell("bash", user=other_user)
    shell.ok("export GENV_TEST_CLOCK=0; genv activate --gpus 1")
    look(genv, 0)
    data = genv.state(other_user.pw_uid)
    for env in data["envs"]:
        env.pop("until")
    path = os.path.join(genv.tmpdir, "user-%d.json" % other_user.pw_uid)
    with open(path + ".new", "w") as handle:
        json.dump(data, handle)
    os.chown(path + ".new", other_user.pw_uid, other_user.pw_gid)
    os.rename(path + ".new", path)
    look(genv, 100)  # root sees the end gone: max_reservation counts from here
    assert env_of(genv, eid(shell), HOUR + 90)["devices"] == [0]
    result = shell.run("export GENV_TEST_CLOCK=%d; genv status" % (HOUR + 110))
    # (root's look at 100 wrote that end back into the owner's file, for the
    # terminals: it is the reservation's end from then on)
    assert told(result.err) == ["genv: GPU 0 was released at the end of its reservation"], result
    assert genv.state(other_user.pw_uid)["envs"][0]["devices"] == []


def test_genv_runs_command_keeps_running_misplaced_after_the_end(genv, world):
    command = subprocess.Popen([os.path.join(genv.root, "bin", "genv"), "run", "--gpus", "1", "--for", "1h", "--",
                                "sleep", "613"], env=genv.environ(GENV_TEST_CLOCK="0"), cwd=genv.work)
    try:
        until(lambda: any(doc["devices"] for doc in docs_of(genv, "envs")), "genv run's environment")
        child = [int(pid) for pid in open("/proc/%d/task/%d/children" % (command.pid, command.pid)).read().split()]
        world.put(child[0], 0)
        listed = docs_of(genv, "ps", HOUR + 10)
        assert [(doc["pid"], doc["misplaced"]) for doc in listed] == [(child[0], True)], listed
        assert command.poll() is None
        rc, docs = enforce(genv, clock=HOUR + 10)
        assert [(doc["rule"], doc["pid"]) for doc in docs] == [("misplaced", child[0])], docs
    finally:
        command.kill()
        command.wait()


def test_the_sdk_holds_gpus_for_a_duration(genv):
    code = ("import json, sys; sys.path.insert(0, %r)\nimport genv.sdk\n"
            "with genv.sdk.environment(gpus=1, for_='90m') as env:\n"
            "    print(json.dumps(genv.sdk.status()['until']))\n" % genv.root)
    result = subprocess.run([genv.environ()["GENV_PYTHON"], "-c", code], env=genv.environ(), cwd=genv.work,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result
    assert json.loads(result.stdout) == pytest.approx(time.time() + 5400, abs=60)


# === 5. caps stop counting at once ====================================================


def test_what_is_reclaimed_or_ended_stops_counting_at_once(genv, world, other_user):
    need("root")
    write_policy(genv, {"default": {"max_gpus": 1, "max_gpu_memory": "40g", "max_idle": "1h"}})
    first = genv.shell("bash", user=other_user)
    first.ok("export GENV_TEST_CLOCK=0; genv activate --gpus 1")
    second = genv.shell("bash", user=other_user)
    second.ok("export GENV_TEST_CLOCK=0; genv activate")
    result = second.run("genv attach --count 1")
    assert result.rc == 1 and "max_gpus = 1" in result.err, result
    look(genv, 0)
    assert enforce(genv, "--reclaim", clock=2 * HOUR)[1][0]["outcome"] == "reclaimed"
    second.ok("export GENV_TEST_CLOCK=%d; genv attach --count 1 --for 1h" % (2 * HOUR))  # at once
    result = first.run("export GENV_TEST_CLOCK=%d; genv attach --count 1" % (2 * HOUR))
    assert result.rc == 1 and "max_gpus = 1" in result.err, result
    # The end: the next command frees the cap.
    first.ok("export GENV_TEST_CLOCK=%d; genv attach --count 1" % (3 * HOUR + 1))
    assert gpus(first) == "0"


def test_a_terminal_follows_the_policys_end_at_its_prompt(genv, other_user):
    """An end that comes from max_reservation and root's record (a policy
    written after the attach), not from the owner's file: a terminal learns
    it at its next genv command, is warned ten minutes before at a prompt,
    and at the first prompt after it points at no GPU, although nobody
    wrote its owner's file (another user's command released the GPU only in
    its own memory)."""
    need("root")
    shell = genv.shell("bash", user=other_user)
    shell.ok("export GENV_TEST_CLOCK=0; genv activate --gpus 1")
    assert env_of(genv, eid(shell))["until"] is None  # no policy: no end
    look(genv, 0)  # root sees it with no end
    path = write_policy(genv, {"default": {"max_reservation": "1h"}})
    shell.ok("export GENV_POLICY=%s GENV_TEST_CLOCK=100; genv status >/dev/null" % path)
    assert shell.var("_GENV_UNTIL") is not None
    result = shell.run("export GENV_TEST_CLOCK=%d; _genv_sync_check" % (HOUR - 300))  # what the prompt runs
    assert result.err.startswith("genv: the reservation of GPU 0 ends in 5m"), result
    assert env_of(genv, eid(shell), HOUR + 10)["devices"] == []  # for everyone else, in memory
    result = shell.run("export GENV_TEST_CLOCK=%d; _genv_sync_check" % (HOUR + 10))
    assert told(result.err) == ["genv: GPU 0 was released at the end of its reservation"], result
    assert gpus(shell) == ""
