"""A hostile second user, and a careless one, on a shared machine.

What genv promises (docs/state.md, "Threat model"): a decision against
another user rests only on what the kernel, root or genv's own
lock-protected allocation vouches for; a forged record can at most hurt its
author; no user can make genv hang, crash or misbehave for others. Each
test here is an attack that once worked: the attacker plants names in the
state folder, forges their own state file, or runs programs in namespaces
of their own, and the victim's genv (or root's enforcer) must not care.
"""

import json
import os
import subprocess
import time

import pytest

from conftest import UID, as_user, envs, need, one_line
from test_enforce import copy_program
from genv import procs


def plant(genv, name, data=b"", user=None):
    """A file the attacker makes in the state folder (as ``user``, when given)."""
    assert genv.cli("envs").returncode == 0  # the folder exists
    path = os.path.join(genv.tmpdir, name)
    code = "import sys; open(sys.argv[1], 'wb').write(sys.argv[2].encode('utf-8', 'surrogateescape'))"
    extra = as_user(user) if user is not None else {}
    subprocess.run(["python3", "-c", code, path, data.decode("utf-8", "surrogateescape")], check=True, **extra)
    return path


# --- names in the state folder -------------------------------------------------------


@pytest.mark.parametrize("name", ["user-\u00b2.json", "user-\u0663.json", "user-\U0001d7d9.json",
                                  ".tmp-\u00b2-1-deadbeef", ".tmp-%d-\u00b2-deadbeef" % UID,
                                  ".tmp-\u0660-1-deadbeef"])
def test_a_name_with_other_digits_breaks_nobody(genv, sh, name):
    """``str.isdigit`` says yes to superscripts and other scripts' digits,
    which ``int`` refuses (``²``) or reads (``٣`` is 3): a file so named by
    anyone once made every genv command of every user fail ("internal
    error"). It is not genv's name: left alone, and nobody is bothered."""
    path = plant(genv, name, b'{"format": 4, "uid": 3, "devices": null, "envs": []}')
    shell = genv.shell(sh)
    shell.ok("genv activate --gpus 1")
    for command in ("envs", "devices", "ps", "status"):
        result = genv.cli(command)
        assert result.returncode == 0 and result.stderr == b"", (command, result)
    result = genv.cli("run", "--gpus", "1", "--", "true")
    assert result.returncode == 0 and result.stderr == b"", result
    assert os.path.exists(path)
    shell.ok("genv deactivate")


# --- a forged state file --------------------------------------------------------------


def test_a_newer_format_in_another_users_file_stops_nobody(genv, sh, other_user):
    """A user who writes ``"format": 99`` into their own file once stopped
    every command of every user, root's ``genv enforce`` among them ("state
    was written by a newer genv"). Now only its owner's commands stop; the
    others ignore the file with one line, as a damaged one."""
    path = plant(genv, "user-%d.json" % other_user.pw_uid, b'{"format": 99, "uid": %d}' % other_user.pw_uid,
                 user=other_user)
    warning = ("genv: ignoring %s: it was written by a newer genv (format 99; this genv reads formats up to 4), "
               "so its environments are not seen here; upgrade genv" % path)
    shell = genv.shell(sh)
    result = shell.run("genv activate --gpus 1")
    assert result.rc == 0 and result.err.splitlines() == [warning], result
    for command in ("envs", "devices", "enforce"):
        result = genv.cli(command)
        assert result.returncode == 0 and result.stderr.decode().splitlines() == [warning], (command, result)
    assert envs(genv)[0]["id"] == shell.var("GENV_ENVIRONMENT_ID")
    # Its owner's genv cannot read it: that one stops, the file left alone.
    line = one_line(genv.cli("envs", user=other_user))
    assert line.startswith("genv: state was written by a newer genv")
    with open(path) as handle:
        assert json.load(handle)["format"] == 99


def forged_state(uid, envs):
    return json.dumps({"format": 4, "uid": uid, "devices": None, "envs": envs}).encode()


def test_a_copied_environment_id_takes_nothing_from_its_owner(genv, sh, other_user, third_user):
    """Environment ids are unique as genv makes them, but anyone can write
    another user's id into their own file. genv looked an id up in the
    files in uid order, so a user with a lower uid who copied the id of a
    victim's environment made the victim's attach, detach and joins fail
    ("environment X belongs to ...") and made the victim's terminal follow
    the copy (its GPUs, its notes, its marker). A terminal now finds its
    own user's environment; root, who may join anyone's, is refused an id
    two users claim instead of joining a guess."""
    attacker, victim = sorted((other_user, third_user), key=lambda user: user.pw_uid)
    shell = genv.shell(sh, user=victim)
    shell.ok("genv activate --gpus 1")
    eid = shell.var("GENV_ENVIRONMENT_ID")
    sleeper = subprocess.Popen(["sleep", "600"], **as_user(attacker))
    try:
        now = time.time()
        copy = {"id": eid, "created": now, "config": {"gpus": 2},
                "terminals": [{"pid": sleeper.pid, "token": procs.ProcFS().token(sleeper.pid)}],
                "devices": [{"index": 2, "uuid": None, "attached": now}, {"index": 3, "uuid": None, "attached": now}],
                "warnings": ["a warning of the attacker"], "notes": [{"id": 7, "text": "a note of the attacker"}]}
        plant(genv, "user-%d.json" % attacker.pw_uid, forged_state(attacker.pw_uid, [copy]), user=attacker)
        assert sorted(env["uid"] for env in envs(genv)) == sorted([attacker.pw_uid, victim.pw_uid])
        said = []
        for command in ("genv attach --count 2", "genv status", "genv sync", "nvidia-smi -L"):
            result = shell.run(command)
            assert result.rc == 0, (command, result)
            said.append(result.out + result.err)
        assert shell.var("CUDA_VISIBLE_DEVICES") == "0,1"
        assert "GPU 2" not in said[-1] and len(said[-1].splitlines()) == 2, said[-1]
        assert not any("attacker" in text for text in said), said
        second = genv.shell(sh, user=victim)
        second.ok("genv activate --id %s" % eid)
        assert second.var("CUDA_VISIBLE_DEVICES") == "0,1"
        line = one_line(genv.shell(sh).run("genv activate --id %s" % eid))
        assert line.startswith("genv: there are environments %s of several users" % eid), line
        for terminal in (second, shell):
            terminal.ok("genv detach")
            terminal.ok("genv deactivate")
        assert [env["uid"] for env in envs(genv)] == [attacker.pw_uid]
    finally:
        sleeper.kill()
        sleeper.wait()


# --- programs in a mount namespace of the user's own -------------------------------------


def test_an_exemption_cannot_be_borrowed_through_a_mount_namespace(genv, gpus, other_user):
    """/proc/<pid>/exe names a program by its path in the process's own
    mount namespace, and a user can make one (``unshare -Urm``, where
    unprivileged user namespaces are allowed) in which their own copy of a
    program is mounted at the exempt path, or a system program at a path
    ending in an exempt name. Either once made the copy exempt from
    ``genv enforce``. A path counts only where it names, here, the very
    file the process runs. (Root makes the namespace here, so that the test
    does not depend on user namespaces; what runs in it is the user's.)"""
    need("root")
    exempt = copy_program(os.path.join(genv.base, "sbin"), "nvidia-cuda-mps-server")
    policy_folder = os.path.join(genv.base, "etc-genv")
    os.makedirs(policy_folder)
    policy_path = os.path.join(policy_folder, "policy.json")
    with open(policy_path, "w") as handle:
        json.dump({"exempt_process_names": [exempt, "nvidia-cuda-mps-server"]}, handle)
    genv.extra["GENV_POLICY"] = policy_path
    theirs = copy_program(os.path.join(genv.base, "home-genvtest"), "mine", owner=other_user)
    as_them = "setpriv --reuid=%d --regid=%d --clear-groups" % (other_user.pw_uid, other_user.pw_gid)
    # Their copy at the exempt path; /usr/bin/sleep at a path named as exempt.
    by_path = gpus.outside(gpu=0, argv=["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                        'mount --bind "$1" "$2" && exec %s "$2" 613' % as_them, "sh", theirs, exempt])
    by_name = gpus.outside(gpu=1, argv=["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                        "mount -t tmpfs none /usr/local/sbin && touch \"$1\" && "
                                        "mount --bind /usr/bin/sleep \"$1\" && exec %s \"$1\" 613" % as_them,
                                        "sh", "/usr/local/sbin/nvidia-cuda-mps-server"])
    genuine = gpus.outside(gpu=2, argv=[exempt, "613"])
    for pid, path in ((by_path, exempt), (by_name, "/usr/local/sbin/nvidia-cuda-mps-server")):
        until_exec = time.monotonic() + 30
        while os.readlink("/proc/%d/exe" % pid) != path and time.monotonic() < until_exec:
            time.sleep(0.02)
        assert os.readlink("/proc/%d/exe" % pid) == path
        assert os.stat("/proc/%d/status" % pid).st_uid == other_user.pw_uid
    result = genv.cli("enforce", "--format", "json")
    assert result.stderr == b"", result
    found = {doc["pid"]: doc["rule"] for doc in json.loads(result.stdout)}
    assert found == {by_path: "unmanaged", by_name: "unmanaged"}, (found, genuine)


# --- the prompt of root in a user's environment -----------------------------------------

SWAPPER = r'''
import os, sys
folder, name = sys.argv[1], sys.argv[2]
os.chdir(folder)
with open(name) as handle:
    token = handle.read()
print("ready", flush=True)
n = 0
while True:
    n += 1
    fifo, regular = ".swap-fifo-%d" % n, ".swap-file-%d" % n
    os.mkfifo(fifo, 0o644)
    os.rename(fifo, name)
    with open(regular, "w") as handle:
        handle.write(token)
    os.rename(regular, name)
'''


@pytest.mark.both_shells
def test_a_users_marker_cannot_hold_roots_prompt(genv, sh, other_user):
    """At each prompt the shell reads the marker of its environment's owner
    (``user-<uid>.sync``), after checking that it is a regular file. Root
    may sit in another user's environment, and that user owns the marker's
    name: swapping a FIFO and a regular file in a loop, they won the race
    between root's check and its read, and root's prompt hung on the FIFO.
    Root now reads another user's marker without blocking."""
    theirs = genv.shell(sh, user=other_user)
    theirs.ok("genv activate")
    eid = theirs.var("GENV_ENVIRONMENT_ID")
    root = genv.shell(sh)
    root.ok("genv activate --id %s" % eid)
    theirs.ok("genv attach --count 1")  # the marker is written
    root.ok("genv envs")  # and root's terminal follows
    assert root.var("CUDA_VISIBLE_DEVICES") == "0"
    marker = root.var("_GENV_SYNC_FILE")
    assert marker == os.path.join(genv.tmpdir, "user-%d.sync" % other_user.pw_uid) and os.path.exists(marker)
    swapper = subprocess.Popen(["python3", "-c", SWAPPER, genv.tmpdir, os.path.basename(marker)],
                               stdout=subprocess.PIPE, text=True, **as_user(other_user))
    try:
        assert swapper.stdout.readline() == "ready\n"
        # What the prompt runs, for three seconds (but for genv sync itself,
        # which a marker that reads as changed starts, and which reads it safely).
        result = root.run("_genv_eval() { :; }; end=$((SECONDS + 3)); n=0; "
                          "while [ \"$SECONDS\" -lt \"$end\" ]; do _genv_sync_check; n=$((n + 1)); done; echo \"$n\"",
                          timeout=30)
        assert result.rc == 0 and int(result.out) > 100, result
    finally:
        swapper.kill()
        swapper.wait()


def test_a_note_number_at_its_limit_breaks_no_write_of_root(genv, other_user):
    """Root's commands write every user's file whose reservation ended
    (the GPUs released, a note for its terminals). A user whose file held
    the largest note number allowed made that note's number one too many:
    root refused to write the file ("internal error"), so every root-run
    command that changes state failed (genv run, activate, the enforcer's
    reclaims) and the user kept the GPU. Numbers now start again."""
    sleeper = subprocess.Popen(["sleep", "600"], **as_user(other_user))
    try:
        env = {"id": "x1", "created": time.time(), "config": {"gpus": 1},
               "terminals": [{"pid": sleeper.pid, "token": procs.ProcFS().token(sleeper.pid)}],
               "devices": [{"index": 3, "uuid": None, "attached": time.time()}], "warnings": [],
               "until": 1.0, "notes": [{"id": (1 << 62) - 1, "text": "the last number"}]}
        path = plant(genv, "user-%d.json" % other_user.pw_uid, forged_state(other_user.pw_uid, [env]), user=other_user)
        result = genv.cli("run", "--gpus", "1", "--", "true")
        assert result.returncode == 0 and result.stderr == b"", result
        with open(path) as handle:
            (written,) = json.load(handle)["envs"]
        assert written["devices"] == [] and written["notes"] == [
            {"id": 1, "text": "GPU 3 was released at the end of its reservation"}], written
    finally:
        sleeper.kill()
        sleeper.wait()


DIRSWAP = r'''
import os, sys, time
os.chdir(sys.argv[1])
name, content = sys.argv[2], sys.argv[3]
print("ready", flush=True)
while True:
    with open(".swap", "w") as handle:
        handle.write(content)
    os.rename(".swap", name)
    time.sleep(0.005)
    os.unlink(name)
    os.mkdir(name)
    time.sleep(0.005)
    os.rmdir(name)
'''


def test_a_file_swapped_under_the_lock_fails_no_command_of_root(genv, other_user):
    """The state lock binds genv's writers only: a user may replace their
    own file at any time, even by a folder, between root's read and root's
    write. Root writes every file whose reservation ended, so a user who
    swapped their file (an ended reservation in it) and a folder in a loop
    made root's commands fail ("cannot write ...: Is a directory") about
    one time in five. Root now leaves such a file as it was, with a line
    saying so: every reader works the end out for itself anyway."""
    sleeper = subprocess.Popen(["sleep", "600"], **as_user(other_user))
    swapper = None
    try:
        env = {"id": "x1", "created": time.time(), "config": {"gpus": 1},
               "terminals": [{"pid": sleeper.pid, "token": procs.ProcFS().token(sleeper.pid)}],
               "devices": [{"index": 3, "uuid": None, "attached": time.time()}], "warnings": [], "until": 1.0}
        assert genv.cli("envs").returncode == 0
        swapper = subprocess.Popen(["python3", "-c", DIRSWAP, genv.tmpdir, "user-%d.json" % other_user.pw_uid,
                                    forged_state(other_user.pw_uid, [env]).decode()],
                                   stdout=subprocess.PIPE, text=True, **as_user(other_user))
        assert swapper.stdout.readline() == "ready\n"
        hits, deadline = 0, time.monotonic() + 60
        while hits < 3 and time.monotonic() < deadline:
            result = genv.cli("run", "--gpus", "1", "--", "true")
            err = result.stderr.decode()
            assert result.returncode == 0 and "Traceback" not in err, result
            hits += "Is a directory; it is left as it was" in err
        assert hits, "the swap never came between root's read and its write"
    finally:
        if swapper is not None:
            swapper.kill()
            swapper.wait()
        sleeper.kill()
        sleeper.wait()


def test_an_id_another_user_wrote_is_never_left_or_followed(genv, other_user, third_user):
    """Once a user's own environment is gone (its file rewritten, a
    damaged record dropped), another user who wrote an environment of the
    same id into their own file, naming the victim's shell as its
    terminal, made the victim's deactivate fail ("environment X belongs to
    ..."): leaving, like following, looks only at what the caller may
    change."""
    attacker, victim = other_user, third_user
    shell = genv.shell("bash", user=victim)
    shell.ok("genv activate --gpus 1")
    eid = shell.var("GENV_ENVIRONMENT_ID")
    now = time.time()
    copy = {"id": eid, "created": now, "config": {},
            "terminals": [{"pid": shell.pid, "token": procs.ProcFS().token(shell.pid)}], "devices": [],
            "warnings": [], "notes": []}
    plant(genv, "user-%d.json" % attacker.pw_uid, forged_state(attacker.pw_uid, [copy]), user=attacker)
    write_own_file(genv, victim, {"format": 4, "uid": victim.pw_uid, "devices": None, "envs": []})
    result = shell.run("genv deactivate")
    assert (result.rc, result.err) == (0, ""), result
    assert shell.var("GENV_ENVIRONMENT_ID") is None and shell.var("CUDA_VISIBLE_DEVICES") is None
    assert [env["uid"] for env in envs(genv)] == [attacker.pw_uid]  # the attacker's file is theirs


def write_own_file(genv, owner, data):
    """``data`` as ``owner``'s state file (theirs, as if they wrote it)."""
    tmp = os.path.join(genv.base, "forged.json")
    with open(tmp, "w") as handle:
        json.dump(data, handle)
    os.chmod(tmp, 0o644)
    os.chown(tmp, owner.pw_uid, owner.pw_gid)
    path = os.path.join(genv.tmpdir, "user-%d.json" % owner.pw_uid)
    os.rename(tmp, path)
    return path


def test_a_users_forged_environments_cannot_grow_roots_record_past_reading(genv, other_user):
    """Root's record (``seen``, in root's own file) took one entry per
    environment holding GPUs, of every user, one claim per reservation: a
    user who wrote some 40 MiB of environments into their own file (GPUs
    the machine has not, the same GPU again and again) made root's file
    larger than a reader accepts (64 MiB), and the next command moved it
    aside as damaged: root's environments, joins and record were lost. Each
    user now takes a bounded share of the record (MAX_RECORD); environments
    root recorded before keep their place; root's genv enforce says, once,
    that the user's other environments are not judged."""
    need("root")
    from genv.limits import MAX_RECORD

    root = genv.shell("bash")
    root.ok("genv activate --gpus 1 --name mine")
    theirs = genv.shell("bash", user=other_user)
    theirs.ok("genv activate --gpus 1 --name real")
    assert genv.cli("devices").returncode == 0  # root looks: both recorded
    real_id = theirs.var("GENV_ENVIRONMENT_ID")
    before = [record for record in genv.state(0)["seen"]["envs"] if record["env"] == real_id]
    assert len(before) == 1
    data = genv.state(other_user.pw_uid)
    (real,) = data["envs"]
    forged = [dict(real, id="f%d" % n, config={"gpus": 8},
                   devices=[{"index": index, "uuid": None, "attached": 1.0} for index in range(8)])
              for n in range(4500)]
    data["envs"] = forged + [real]  # in front of the real one
    path = write_own_file(genv, other_user, data)
    assert os.path.getsize(path) > 2 << 20
    roots_file = os.path.join(genv.tmpdir, "user-0.json")
    for command in ("envs", "devices"):
        result = genv.cli(command)
        assert (result.returncode, result.stderr) == (0, b""), (command, result.stderr[-500:])
        assert os.path.getsize(roots_file) < MAX_RECORD + (64 << 10), command
    warning = ("genv: user %s(%d) claims more GPUs than root's record keeps (512k per user): the rest are not "
               "judged; an admin must look" % (other_user.pw_name, other_user.pw_uid))
    started = time.monotonic()
    result = genv.cli("enforce")
    took = time.monotonic() - started
    assert result.returncode == 1 and result.stderr.decode().splitlines() == [warning], result.stderr[-500:]
    assert "Traceback" not in result.stdout.decode()
    assert os.path.getsize(roots_file) < MAX_RECORD + (64 << 10)
    state = genv.state(0)
    assert [env["config"].get("name") for env in state["envs"]] == ["mine"]
    assert [record for record in state["seen"]["envs"] if record["env"] == real_id] == before
    assert os.path.getsize(path) > 2 << 20  # the user's file is theirs: left as they wrote it
    # As a service, the line comes once, not at every round.
    service = subprocess.Popen([os.path.join(genv.root, "bin", "genv"), "enforce", "--interval", "0.2"],
                               env=genv.environ(), cwd=genv.work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(3 * took + 1)  # a few rounds
    finally:
        service.terminate()
        _, err = service.communicate(timeout=30)
    assert err.decode().splitlines() == [warning], err[-500:]
    root.ok("genv deactivate")


# --- the state lock ------------------------------------------------------------------------

HOLD = "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\nfcntl.flock(fd, fcntl.LOCK_EX)\n" \
       "print('locked', flush=True)\nsys.stdin.readline()\n"


def test_holding_the_state_lock_does_not_switch_enforcement_off(genv, gpus, other_user):
    """Anyone can flock the state folder and keep it; genv waits at most
    GENV_LOCK_TIMEOUT, then fails. For ``genv enforce`` that meant a user
    who kept the lock had their processes on others' GPUs never stopped:
    every round failed. Enforcement now goes on without the lock, on each
    file's last state, with the rules that need no record of root's
    (conflicts and idle time wait for a round that gets it), and says so."""
    need("root")
    assert genv.cli("envs").returncode == 0
    theirs = gpus.outside(gpu=0, user=other_user)
    holder = subprocess.Popen(["python3", "-c", HOLD, genv.tmpdir], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, **as_user(other_user))
    try:
        assert holder.stdout.readline() == "locked\n"
        result = genv.cli("enforce", "--kill", "--grace", "1", "--format", "json", GENV_LOCK_TIMEOUT="1")
        err = result.stderr.decode()
        assert "Traceback" not in err, result
        assert err.splitlines()[-1] == (
            "genv: the state lock on %s is held by pid %d (%s): judging without it, and leaving conflicts "
            "and idle environments to a round that gets it" % (genv.tmpdir, holder.pid, other_user.pw_name)), err
        assert [(doc["pid"], doc["rule"], doc["outcome"]) for doc in json.loads(result.stdout)] == [
            (theirs, "unmanaged", "terminated (SIGTERM)")], result
        assert result.returncode == 0
    finally:
        holder.kill()
        holder.wait()


def test_holding_the_state_lock_does_not_hold_others_prompts(genv, other_user):
    """The prompt runs genv sync when something changed (an end within ten
    minutes, or past). A user who kept the state lock made each such prompt
    of everyone else wait GENV_LOCK_TIMEOUT (10 s) and fail, again at every
    prompt, the terminal still pointing at GPUs whose reservation ended.
    The prompt's sync waits a moment, then follows the state as its files
    say, writing nothing; the terminal is told once."""
    need("root")
    shell = genv.shell("bash")
    shell.ok("export GENV_TEST_CLOCK=0; genv activate --gpus 1 && genv attach --for 1h")
    holder = subprocess.Popen(["python3", "-c", HOLD, genv.tmpdir], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, **as_user(other_user))
    try:
        assert holder.stdout.readline() == "locked\n"
        started = time.monotonic()
        result = shell.run("export GENV_TEST_CLOCK=3300; _genv_sync_check")  # what the prompt runs
        assert result.err == "genv: the reservation of GPU 0 ends in 5m ('genv attach --for DURATION' renews it)\n", \
            result
        assert shell.run("_genv_sync_check").err == ""
        result = shell.run("export GENV_TEST_CLOCK=3610; _genv_sync_check")
        assert result.err == "genv: GPU 0 was released at the end of its reservation\n", result
        assert shell.var("CUDA_VISIBLE_DEVICES") == ""
        assert shell.run("_genv_sync_check").err == ""
        assert time.monotonic() - started < 8, "the prompts waited for the lock"
    finally:
        holder.kill()
        holder.wait()
    # Once the lock is free, the next command writes the release, told once.
    result = shell.run("genv status >/dev/null")
    assert result.rc == 0 and result.err == "", result
    assert [env["devices"] for env in genv.state()["envs"]] == [[]]


def test_a_null_byte_in_a_users_marker_is_no_warning_at_roots_prompts(genv, other_user, sh):
    """root in a user's environment reads the owner's marker at each prompt
    (dd, in $(...)). A NUL written into it made bash print 'ignored null
    byte in input' at every one of root's prompts; now root's prompt runs
    genv sync (the token differs) and says nothing."""
    need("root")
    user = genv.shell("bash", user=other_user)
    user.ok("genv activate --gpus 1")
    root = genv.shell(sh)
    root.ok("genv activate --id %s" % user.var("GENV_ENVIRONMENT_ID"))
    marker = root.var("_GENV_SYNC_FILE")
    assert marker == os.path.join(genv.tmpdir, "user-%d.sync" % other_user.pw_uid)
    subprocess.run(["python3", "-c", "import sys; open(sys.argv[1], 'wb').write(b'ab\\0cd\\n')", marker],
                   check=True, **as_user(other_user))
    for _ in range(2):
        result = root.run("_genv_sync_check")  # what the prompt runs
        assert (result.rc, result.err) == (0, ""), result
    assert root.var("CUDA_VISIBLE_DEVICES") == "0"
