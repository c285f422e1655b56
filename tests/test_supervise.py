"""One supervisor for `genv run` and `genv lock` (issue 15, A3, B2, B13).

The same rules, tested for both front ends (docs/architecture.md, "The
supervisor"): a signal sent to the supervisor alone reaches the command
once; the terminal's signals (Ctrl-C, a hang-up when the terminal goes away)
reach it once, not a second time through the supervisor; Ctrl-Z stops both
and `fg` continues both; signals ignored at the start (nohup) stay ignored;
the supervisor ends as the command ended. `genv lock`'s locks live as long
as its command, and a nested lock never waits for its own parent.
"""

import os
import signal
import subprocess
import time

import pytest

from conftest import alive, kill_quietly, script, spawn, system_python, until

# Counts the signals it gets (all of them: INT, TERM, HUP, QUIT, USR1),
# writes each one as it comes, and ends after ARGV[2] seconds.
COUNTER = r'''
import os, signal, sys, time
log = sys.argv[1]
def write(text):
    with open(log, "a") as handle:
        handle.write(text + "\n")
def on(signum, frame):
    write("got %d" % signum)
for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
    signal.signal(number, on)
write("ready %d %d" % (os.getpid(), os.getppid()))
print("ready", os.getpid(), flush=True)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    time.sleep(0.01)
write("bye")
'''

FRONTS = ["run", "lock"]


def prefix(front):
    """The command line that runs a command under ``front``."""
    return ["genv", "run", "--gpus", "1", "--"] if front == "run" else ["genv", "lock", "--"]


def lines(log):
    try:
        with open(log) as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        return []


def got(log):
    return [int(line.split()[1]) for line in lines(log) if line.startswith("got ")]


class Supervised:
    """``genv run|lock -- COUNTER`` started without a terminal, in a session
    of its own (a service, a kernel); for ``lock``, from a terminal's
    environment with one GPU."""

    def __init__(self, genv, front, seconds=30, new_session=True, name="sup"):
        self.log = os.path.join(genv.base, "%s-%s.log" % (name, front))
        argv = [os.path.join(genv.root, "bin", "genv")] + prefix(front)[1:] + [
            system_python(), script(genv, "counter.py", COUNTER), self.log, str(seconds)]
        env = genv.environ()
        self.holder = None
        if front == "lock":
            self.holder = genv.shell("bash")
            self.holder.ok("genv activate --gpus 1")
            env["GENV_ENVIRONMENT_ID"] = self.holder.var("GENV_ENVIRONMENT_ID")
        self.proc = subprocess.Popen(argv, env=env, cwd=genv.work, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=new_session)
        line = until(lambda: next((x for x in lines(self.log) if x.startswith("ready")), None), "the command", 30)
        self.child = int(line.split()[1])
        assert int(line.split()[2]) == self.proc.pid

    def close(self):
        for pid in (self.child, self.proc.pid):
            kill_quietly(pid)
        self.proc.wait(10)
        self.proc.stderr.close()


@pytest.fixture
def supervised(genv):
    started = []

    def start(front, **kwargs):
        started.append(Supervised(genv, front, **kwargs))
        return started[-1]

    try:
        yield start
    finally:
        for each in started:
            each.close()


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("name", ["INT", "TERM", "HUP", "QUIT", "USR1"])
def test_a_signal_to_the_supervisor_reaches_the_command_once(genv, supervised, front, name):
    job = supervised(front)
    number = getattr(signal, "SIG" + name)
    os.kill(job.proc.pid, number)
    until(lambda: got(job.log) == [number], "SIG%s to reach the command" % name, 10)
    time.sleep(0.2)  # no second copy comes
    assert got(job.log) == [number]
    # The supervisor is still there, as long as the command runs.
    assert alive(job.proc.pid) and alive(job.child)


@pytest.mark.parametrize("front", FRONTS)
def test_the_supervisor_ends_as_the_command_ended(genv, front):
    shell = genv.shell("bash")
    shell.ok("genv activate --gpus 1")
    base = " ".join(prefix(front))
    assert shell.run(base + " sh -c 'exit 3'").rc == 3
    # Killed by a signal: the supervisor dies of it too (a shell says 128+N).
    for number in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        assert shell.run(base + " sh -c 'kill -%d $$'" % number).rc == 128 + number
    env = genv.environ(GENV_ENVIRONMENT_ID=shell.var("GENV_ENVIRONMENT_ID"))
    done = subprocess.run([os.path.join(genv.root, "bin", "genv")] + prefix(front)[1:] + ["sh", "-c", "kill -TERM $$"],
                          env=env, cwd=genv.work, capture_output=True, start_new_session=True)
    assert done.returncode == -signal.SIGTERM, done
    assert b"core" not in done.stderr


@pytest.mark.parametrize("front", FRONTS)
def test_an_ignored_signal_stays_ignored(genv, front):
    """nohup: SIGHUP is ignored by the command, and one sent to the
    supervisor reaches nobody."""
    shell = genv.shell("bash")
    shell.ok("genv activate --gpus 1")
    env = genv.environ(GENV_ENVIRONMENT_ID=shell.var("GENV_ENVIRONMENT_ID"))
    probe = "grep SigIgn /proc/self/status; kill -HUP $PPID; sleep 0.3; echo survived"
    done = subprocess.run(["nohup", os.path.join(genv.root, "bin", "genv")] + prefix(front)[1:] + ["sh", "-c", probe],
                          env=env, cwd=genv.work, capture_output=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done
    ignored = int(done.stdout.split()[1], 16)
    assert ignored & (1 << (signal.SIGHUP - 1)), done.stdout
    assert not ignored & (1 << (signal.SIGPIPE - 1)), "SIGPIPE must be the default in the command, as in a shell"
    assert done.stdout.endswith(b"survived\n")


@pytest.mark.parametrize("front", FRONTS)
def test_started_with_sigchld_ignored_it_still_waits_for_its_command(genv, front):
    """A parent that ignores SIGCHLD passes that on through exec: the kernel
    then reaps children at once and sends no SIGCHLD. The supervisor must
    still see its command end (it hung forever, and its environment with
    it), and the command still starts with SIGCHLD ignored, as it would
    have without genv."""
    shell = genv.shell("bash")
    shell.ok("genv activate --gpus 1")
    env = genv.environ(GENV_ENVIRONMENT_ID=shell.var("GENV_ENVIRONMENT_ID"))
    starter = ("import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
               "os.execv(sys.argv[1], sys.argv[1:])")

    def started(*command):
        return subprocess.run([system_python(), "-c", starter, os.path.join(genv.root, "bin", "genv")]
                              + prefix(front)[1:] + list(command),
                              env=env, cwd=genv.work, capture_output=True, stdin=subprocess.DEVNULL, timeout=30)

    done = started("sh", "-c", "exit 3")
    assert (done.returncode, done.stderr) == (3, b""), done
    done = started("grep", "SigIgn", "/proc/self/status")  # (not through sh, which resets SIGCHLD)
    assert (done.returncode, done.stderr) == (0, b""), done
    assert int(done.stdout.split()[1], 16) & (1 << (signal.SIGCHLD - 1)), done.stdout


def _interactive(genv, kind="bash"):
    child = spawn(genv, kind)
    child.sendline("genv activate --gpus 1")
    child.expect_exact("P> ")
    return child


@pytest.mark.parametrize("front", FRONTS)
def test_the_terminals_ctrl_c_and_ctrl_backslash_reach_the_command_once(genv, front):
    child = _interactive(genv)
    log = os.path.join(genv.base, "tty-%s.log" % front)
    try:
        child.sendline(" ".join(prefix(front) + [system_python(), script(genv, "counter.py", COUNTER), log, "2"])
                       + "; echo status=$?")
        child.expect(r"ready (\d+)")
        time.sleep(0.3)
        child.sendintr()
        time.sleep(0.3)
        child.sendcontrol("\\")
        child.expect(r"status=(\d+)")
        assert child.match.group(1) == "0"
        assert got(log) == [signal.SIGINT, signal.SIGQUIT]
    finally:
        child.close(force=True)


@pytest.mark.parametrize("front", FRONTS)
def test_a_terminal_that_goes_away_hangs_up_the_command_once(genv, front):
    """A tmux pane killed, an ssh session dropped: the terminal hangs up,
    the shell passes the hang-up on to its jobs and exits. The command gets
    it once, as without genv (issue 15, B13: twice in 3 runs of 8)."""
    counts = []
    for attempt in range(8):
        child = _interactive(genv)
        log = os.path.join(genv.base, "hup-%s-%d.log" % (front, attempt))
        try:
            child.sendline(" ".join(prefix(front) + [system_python(), script(genv, "counter.py", COUNTER), log, "1.5"]))
            child.expect(r"ready (\d+)")
            command = int(child.match.group(1))
        finally:
            child.close(force=False)  # the terminal goes away (its master side closes)
        until(lambda: not alive(command), "the command to end", 30)
        counts.append(got(log).count(signal.SIGHUP))
    assert counts == [1] * 8, counts


@pytest.mark.parametrize("front", FRONTS)
def test_ctrl_z_stops_both_and_fg_continues_both(genv, front):
    child = _interactive(genv)
    log = os.path.join(genv.base, "tstp-%s.log" % front)
    try:
        child.sendline(" ".join(prefix(front) + [system_python(), script(genv, "counter.py", COUNTER), log, "3"]))
        child.expect(r"ready (\d+)")
        command = int(child.match.group(1))
        time.sleep(0.3)
        child.sendcontrol("z")
        child.expect("Stopped")
        child.expect_exact("P> ")
        state = open("/proc/%d/stat" % command).read().rsplit(")", 1)[1].split()[0]
        assert state == "T", "the command must be stopped"
        supervisor = int(open("/proc/%d/stat" % command).read().rsplit(")", 1)[1].split()[1])
        assert open("/proc/%d/stat" % supervisor).read().rsplit(")", 1)[1].split()[0] == "T"
        child.sendline("fg; echo status=$?")  # (as for any job: what followed it in its line is dropped)
        child.expect(r"status=(\d+)", timeout=30)
        assert child.match.group(1) == "0"
        assert lines(log)[-1] == "bye" and got(log) == []
    finally:
        child.close(force=True)


# --- genv lock: the locks live as long as the command ------------------------------------


def _lock_is_free(genv, shell):
    return shell.run("GENV_LOCK_TIMEOUT=0 timeout 2 genv lock -- true").rc == 0


@pytest.mark.parametrize("name", ["QUIT", "USR1", "KILL"])
def test_the_command_never_runs_without_its_locks(genv, supervised, name):
    job = supervised("lock")
    eid = job.holder.var("GENV_ENVIRONMENT_ID")
    other = genv.shell("bash")
    other.ok("genv activate --id %s" % eid)
    assert other.run("timeout 1 genv lock -- true").rc == 124  # held: waits
    os.kill(job.proc.pid, getattr(signal, "SIG" + name))
    time.sleep(0.5)
    assert alive(job.child), "the command runs on"
    assert other.run("timeout 1 genv lock -- true").rc == 124, "and keeps the locks"
    kill_quietly(job.child)
    until(lambda: other.run("timeout 5 genv lock -- true").rc == 0, "the locks to be free", 15)


def test_a_nested_lock_passes_and_never_waits_for_its_parent(genv):
    shell = genv.shell("bash")
    shell.ok("genv activate --gpus 2")
    result = shell.run("timeout 20 genv lock -- genv lock -- echo inner")
    assert (result.rc, result.out) == (0, "inner\n"), result
    sdk = "import sys; sys.path.insert(0, %r); import genv.sdk\nwith genv.sdk.lock(): print('sdk inner')" % genv.root
    result = shell.run("timeout 20 genv lock -- %s -c %s" % (system_python(), "'" + sdk.replace("'", "'\\''") + "'"))
    assert (result.rc, result.out) == (0, "sdk inner\n"), result
    # Outside any lock, another holder still makes it wait.
    other = genv.shell("bash")
    other.ok("genv activate --id %s" % shell.var("GENV_ENVIRONMENT_ID"))
    holding = subprocess.Popen(["bash", "-c", 'eval "$(genv init -)"; genv lock -- sleep 3'],
                               env=genv.environ(GENV_ENVIRONMENT_ID=shell.var("GENV_ENVIRONMENT_ID")), cwd=genv.work)
    try:
        time.sleep(1)
        assert other.run("timeout 1 genv lock -- true").rc == 124
    finally:
        holding.wait(30)
