"""``genv run`` (issue 12): a command in an environment of its own that lives
exactly as long as the command.

Everything runs real processes: ``genv run`` started by bash and zsh
terminals (with and without ``genv init``), by no shell at all (the test's
``subprocess``), as a cron job would start it (a bare environment, no
terminal, no HOME-side setup), and in interactive bash and zsh on a
pseudo-terminal (pexpect) for the terminal's ^C. The command is usually
``cmd.py`` (below): it logs the signals it gets, waits for a stop file and
exits with a given status, so that a test can look at the state while it
runs and end it when it wants.

The sections:

1. what the command sees, its exit status, from every kind of caller
2. signals: sent to genv run, the terminal's ^C, process groups, kill -9
3. bad input and GPUs that cannot be had: one line, nothing held, nothing run
4. the options: --index, --name, --over-subscribe, --wait, --id, the
   project's configuration, genv ps attribution, concurrent runs
"""

import json
import os
import pwd
import signal
import subprocess
import threading
import time

import pytest

from conftest import (DUMP, SHELLS, UID, VARS, alive, assert_free, envs, holders, kill_quietly, one_line, script,
                      spawn, system_python, until)

# --- helpers ---------------------------------------------------------------------

CMD = r'''
import os, signal, sys, time
log, stop, status = sys.argv[1], sys.argv[2], int(sys.argv[3])
def write(text):
    with open(log, "a") as handle:
        handle.write(text + "\n")
def on(signum, frame):
    write("got %d" % signum)
for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(number, on)
write("ready %d %s" % (os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")))
deadline = time.time() + 120
while not os.path.exists(stop) and time.time() < deadline:
    time.sleep(0.01)
write("bye")
sys.exit(status)
'''


def parent(pid):
    with open("/proc/%d/stat" % pid) as handle:
        data = handle.read()
    return int(data[data.rfind(")") + 2:].split()[1])


class Job:
    """``genv run [OPTIONS] -- python3 cmd.py LOG STOP STATUS``, started by
    the test (no shell) in a session of its own."""

    count = 0

    def __init__(self, genv, *options, status=0, argv=None, session=True, **env):
        Job.count += 1
        self.genv = genv
        self.log = os.path.join(genv.base, "job-%d.log" % Job.count)
        self.stop_file = os.path.join(genv.base, "job-%d.stop" % Job.count)
        self.out = open(os.path.join(genv.base, "job-%d.out" % Job.count), "w+b")
        command = argv or [system_python(), script(genv, "cmd.py", CMD), self.log, self.stop_file, str(status)]
        self.proc = subprocess.Popen(
            [os.path.join(genv.root, "bin", "genv"), "run", *options, "--", *command],
            env=genv.environ(**env), cwd=genv.work, stdin=subprocess.DEVNULL, stdout=self.out,
            stderr=subprocess.STDOUT, start_new_session=session)
        self.pid = self.proc.pid
        self.child = None

    def lines(self):
        try:
            with open(self.log) as handle:
                return handle.read().splitlines()
        except FileNotFoundError:
            return []

    def ready(self, timeout=30):
        """Wait until the command runs; returns its PID and CUDA_VISIBLE_DEVICES."""
        def started():
            if self.proc.poll() is not None:
                raise AssertionError("genv run ended early: %r %r" % (self.proc.returncode, self.output()))
            return next((line for line in self.lines() if line.startswith("ready ")), None)
        line = until(started, "the command to start", timeout)
        _, pid, gpus = line.split(" ", 2)
        self.child = int(pid)
        return self.child, gpus

    def got(self):
        return [int(line.split()[1]) for line in self.lines() if line.startswith("got ")]

    def stop(self):
        open(self.stop_file, "w").close()

    def wait(self, timeout=30):
        return self.proc.wait(timeout)

    def output(self):
        self.out.seek(0)
        return self.out.read().decode("utf-8", "replace")

    def close(self):
        self.stop()
        for pid in (self.child, self.pid):
            if pid:
                kill_quietly(pid)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.out.close()


@pytest.fixture
def jobs(genv):
    started = []

    def start(*options, **kwargs):
        job = Job(genv, *options, **kwargs)
        started.append(job)
        return job

    try:
        yield start
    finally:
        for job in started:
            job.close()


# === 1. what the command sees, its status, from every kind of caller ====================

LAUNCHERS = ["bash", "zsh", "bash-no-init", "zsh-no-init", "no-shell", "cron"]


def launch(genv, launcher, argv, cwd=None):
    """Run ``genv run ARGV...`` from ``launcher``; returns (status, stdout, stderr)."""
    genv_bin = os.path.join(genv.root, "bin", "genv")
    if launcher == "no-shell":
        done = subprocess.run([genv_bin, "run", *argv], env=genv.environ(), cwd=cwd or genv.work,
                              capture_output=True, timeout=60)
        return done.returncode, done.stdout.decode(), done.stderr.decode()
    if launcher == "cron":
        # What cron gives a job: a bare environment, /bin/sh, no terminal,
        # no stdin, the job's own session; genv called by its full path.
        env = {"PATH": "/usr/bin:/bin:%s/tests/fake" % genv.root, "HOME": genv.home, "SHELL": "/bin/sh",
               "LOGNAME": "root", "GENV_TMPDIR": genv.tmpdir, "FAKE_NVIDIA_SMI_GPUS": "4"}
        for name in ("FAKE_NVIDIA_SMI_APPS",):
            if name in genv.extra:
                env[name] = genv.extra[name]
        line = " ".join(_quote(word) for word in [genv_bin, "run", *argv])
        done = subprocess.run(["/bin/sh", "-c", line], env=env, cwd=cwd or genv.home, capture_output=True,
                              stdin=subprocess.DEVNULL, start_new_session=True, timeout=60)
        return done.returncode, done.stdout.decode(), done.stderr.decode()
    kind, _, rest = launcher.partition("-")
    shell = genv.shell(kind, init=not rest, cwd=cwd)
    result = shell.run(" ".join(_quote(word) for word in ["genv", "run", *argv]))
    return result.rc, result.out, result.err


def _quote(word):
    return "'" + word.replace("'", "'\\''") + "'"


def dump(genv, *options, launcher="no-shell", name="vars.json"):
    """The variables a command run with ``options`` sees."""
    out = os.path.join(genv.base, name)
    rc, stdout, stderr = launch(genv, launcher, [*options, "--", system_python(), script(genv, "dump.py", DUMP),
                                                 out, *VARS])
    assert rc == 0 and stderr == "", (rc, stdout, stderr)
    with open(out) as handle:
        return json.load(handle)


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_the_command_sees_its_environment_and_frees_it(genv, launcher):
    out = os.path.join(genv.base, "inside.json")
    probe = script(genv, "probe.sh", """#!/bin/sh
# What a command learns from inside: its variables and genv's own view.
{
  printf '{"cuda": "%%s", "order": "%%s", "id": "%%s", "path": "%%s", "envs": ' \
    "$CUDA_VISIBLE_DEVICES" "$CUDA_DEVICE_ORDER" "$GENV_ENVIRONMENT_ID" "$PATH"
  %s envs --format json | tr -d '\\n'
  printf ', "pid": %%d, "smi": "%%s"}\\n' "$$" "$(nvidia-smi -L | wc -l)"
} > %s
exit 3
""" % (os.path.join(genv.root, "bin", "genv"), out))
    rc, stdout, stderr = launch(genv, launcher, ["--gpus", "2", "--name", "job", "--", probe])
    assert rc == 3, (rc, stdout, stderr)
    assert stdout == "" and stderr == ""
    with open(out) as handle:
        seen = json.load(handle)
    assert seen["cuda"] == "0,1"
    assert seen["order"] == "PCI_BUS_ID"
    assert seen["path"].split(":")[0] == os.path.join(genv.root, "shims")
    assert seen["smi"] == "2", "nvidia-smi in the command is the shim: it shows the environment's 2 GPUs"
    [env] = seen["envs"]
    assert env["id"] == seen["id"] and env["name"] == "job" and env["devices"] == [0, 1]
    assert seen["pid"] in env["pids"], "the command is a terminal of its environment"
    # When the command ends, everything is free at the very next command.
    assert_free(genv)


@pytest.mark.parametrize("status", [0, 1, 42, 255])
def test_the_exit_status_is_the_commands(genv, status):
    done = genv.cli("run", "--gpus", "1", "--", "sh", "-c", "exit %d" % status)
    assert done.returncode == status and done.stderr == b""
    assert_free(genv)


@pytest.mark.parametrize("kind", SHELLS)
def test_a_command_killed_by_a_signal_gives_128_plus_n(genv, kind):
    shell = genv.shell(kind)
    for number in (signal.SIGTERM, signal.SIGKILL, signal.SIGUSR1):
        out = shell.ok("genv run --gpus 1 -- sh -c 'kill -%d $$'; echo status=$?" % number)
        assert out.strip() == "status=%d" % (128 + number)
    assert_free(genv)


def test_genv_run_dies_of_the_signal_that_killed_the_command_sigkill_too(genv):
    # A program (not a shell) tells "killed by SIGKILL" from "exit 137".
    for number in (signal.SIGTERM, signal.SIGKILL):
        done = genv.cli("run", "--gpus", "1", "--", "sh", "-c", "kill -%d $$" % number)
        assert done.returncode == -number and done.stderr == b"", (number, done)
    assert_free(genv)


def test_stdin_stdout_and_arguments_pass_through(genv):
    weird = ["a b", "", "--gpus", "$(touch PWNED)", "é\u00a0", "-"]
    done = subprocess.run(
        [os.path.join(genv.root, "bin", "genv"), "run", "--gpus", "1", "--", system_python(), "-c",
         "import sys, json; print(json.dumps(sys.argv[1:])); print(sys.stdin.read().upper(), end='')", *weird],
        env=genv.environ(), cwd=genv.work, input=b"hello\n", capture_output=True, timeout=60)
    assert done.returncode == 0, done
    lines = done.stdout.decode().splitlines()
    assert json.loads(lines[0]) == weird and lines[1] == "HELLO"
    assert not os.path.exists(os.path.join(genv.work, "PWNED"))


def test_the_command_inherits_only_the_callers_descriptors(genv):
    """genv's own files (the state lock, the go-ahead pipe) do not leak into
    the command."""
    done = genv.cli("run", "--gpus", "1", "--", system_python(), "-c",
                    "import os; print(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))")
    assert done.returncode == 0, done
    plain = subprocess.run([system_python(), "-c",
                            "import os; print(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))"],
                           capture_output=True)
    assert done.stdout == plain.stdout


def test_what_the_command_sees_is_what_a_terminal_sees(genv, sh):
    """A share of a GPU: the same CUDA variables, memory and framework hints
    as a terminal holding the same share (only the id differs)."""
    shell = genv.shell(sh)
    shell.ok("genv activate --no-prompt && genv config gpu-memory 8g && genv attach --index 0")
    terminal = {name: shell.var(name) for name in VARS}
    seen = dump(genv, "--index", "0", "--gpu-memory", "8g")
    assert terminal["XLA_PYTHON_CLIENT_MEM_FRACTION"] is not None, terminal
    for name in VARS:
        if name == "GENV_ENVIRONMENT_ID":
            assert seen[name] != terminal[name] and seen[name]
        elif name == "PATH":
            assert seen[name].split(":")[0] == terminal[name].split(":")[0]
        else:
            assert seen[name] == terminal[name], name


def test_a_whole_gpu_from_a_terminal_with_a_share_has_no_share_hints(genv, sh):
    """Run from a terminal whose environment has a share: the command's own
    environment decides the framework hints, not the ones genv exported in
    that terminal (_GENV_HINTS says which those are)."""
    shell = genv.shell(sh)
    shell.ok("genv activate --no-prompt && genv config gpu-memory 8g && genv attach --index 0")
    assert shell.var("XLA_PYTHON_CLIENT_MEM_FRACTION") == "0.20"
    out = os.path.join(genv.base, "seen.json")
    shell.ok("genv run --index 1 -- %s %s %s %s" % (system_python(), script(genv, "dump.py", DUMP), out,
                                                    " ".join(VARS)))
    with open(out) as handle:
        whole = json.load(handle)
    assert whole["CUDA_VISIBLE_DEVICES"] == "1" and whole["GENV_GPU_MEMORY"] is None
    assert whole["XLA_PYTHON_CLIENT_MEM_FRACTION"] is None, "a whole GPU, yet the terminal's 0.20 share"
    assert whole["TF_FORCE_GPU_ALLOW_GROWTH"] is None
    shell.ok("genv run --index 1 --gpu-memory 20g -- %s %s %s %s" % (
        system_python(), script(genv, "dump.py", DUMP), out, " ".join(VARS)))
    with open(out) as handle:
        half = json.load(handle)
    assert half["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.50", "20g of 40g, yet the terminal's 0.20 share"


def test_a_users_own_hint_wins(genv):
    out = os.path.join(genv.base, "own.json")
    done = genv.cli("run", "--gpus", "1", "--gpu-memory", "8g", "--", system_python(),
                    script(genv, "dump.py", DUMP), out, *VARS, XLA_PYTHON_CLIENT_MEM_FRACTION="0.9",
                    TF_FORCE_GPU_ALLOW_GROWTH="false")
    assert done.returncode == 0, done
    with open(out) as handle:
        seen = json.load(handle)
    assert seen["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9" and seen["TF_FORCE_GPU_ALLOW_GROWTH"] == "false"
    assert seen["XLA_CLIENT_MEM_FRACTION"] == "0.20" and seen["GENV_GPU_MEMORY"] == str(8 << 30)


def test_nvidia_smi_as_the_command_is_the_shim(genv):
    """`genv run -- nvidia-smi` runs what `nvidia-smi` runs in a terminal of
    the environment: the shim, first on the command's PATH."""
    inside = genv.cli("run", "--gpus", "1", "--", "sh", "-c", "nvidia-smi -L")
    direct = genv.cli("run", "--gpus", "1", "--", "nvidia-smi", "-L")
    assert inside.returncode == direct.returncode == 0
    assert len(inside.stdout.splitlines()) == 1
    assert direct.stdout == inside.stdout, "the command resolved on the caller's PATH, not the command's"


def test_zero_gpus_and_the_projects_configuration(genv):
    """Without options the project's saved configuration applies, as on
    activate (options add to it; --no-load skips it)."""
    assert dump(genv)["CUDA_VISIBLE_DEVICES"] == ""
    project = os.path.join(genv.work, "proj")
    os.makedirs(os.path.join(project, ".genv"))
    os.makedirs(os.path.join(project, "deep", "er"))
    with open(os.path.join(project, ".genv", "config.json"), "w") as handle:
        json.dump({"format": 1, "gpus": 2, "name": "proj"}, handle)
    os.chmod(os.path.join(project, ".genv"), 0o755)
    os.chmod(os.path.join(project, ".genv", "config.json"), 0o644)
    where = os.path.join(project, "deep", "er")
    names = os.path.join(genv.base, "names")
    probe = script(genv, "names.sh", "#!/bin/sh\necho \"$CUDA_VISIBLE_DEVICES\" >>%s\n"
                   "genv envs --format json >>%s\n" % (names, names))
    for launcher in ("no-shell", "bash"):
        for options, cuda, name in [([], "0,1", "proj"), (["--no-load"], "", None), (["--gpus", "1"], "0", "proj"),
                                    (["--name", "x"], "0,1", "x")]:
            if os.path.exists(names):
                os.unlink(names)
            rc, stdout, stderr = launch(genv, launcher, [*options, "--", probe], cwd=where)
            assert rc == 0, (rc, stdout, stderr)
            with open(names) as handle:
                lines = handle.read().splitlines()
            assert lines[0] == cuda, (options, lines)
            assert json.loads(lines[1])[0]["name"] == name
    assert_free(genv)


# === 2. signals ==============================================================================


@pytest.mark.parametrize("order", [("TERM", "HUP", "INT"), ("INT", "INT", "TERM")])
def test_signals_to_genv_run_reach_the_command_once_each(genv, jobs, order):
    job = jobs("--gpus", "1", status=7)
    child, _ = job.ready()
    assert parent(child) == job.pid
    sent = []
    for name in order:
        number = getattr(signal, "SIG" + name)
        os.kill(job.pid, number)
        sent.append(number)
        until(lambda: len(job.got()) == len(sent), "SIG%s to reach the command" % name, 10)
        time.sleep(0.1)  # no second copy arrives
        assert job.got() == sent
    assert holders(genv)[0], "still held while the command runs"
    job.stop()
    assert job.wait() == 7
    assert not alive(job.pid) and not alive(child)
    assert_free(genv)


@pytest.mark.parametrize("kind", SHELLS)
def test_signals_from_a_shell_reach_the_command(genv, kind):
    """genv run started by a (non-interactive) bash or zsh, in the foreground."""
    shell = genv.shell(kind)
    log = os.path.join(genv.base, "shell.log")
    stop = os.path.join(genv.base, "shell.stop")
    results = []
    runner = threading.Thread(target=lambda: results.append(shell.run(
        "genv run --gpus 1 -- %s %s %s %s 5; echo status=$?" % (system_python(), script(genv, "cmd.py", CMD),
                                                                log, stop))))
    runner.start()
    try:
        line = until(lambda: [x for x in open(log).read().splitlines() if x.startswith("ready")]
                        if os.path.exists(log) else None, "the command", 30)[0]
        child = int(line.split()[1])
        run_pid = parent(child)
        for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            os.kill(run_pid, number)
            until(lambda: "got %d" % number in open(log).read().splitlines(), "the signal", 10)
        time.sleep(0.1)
        got = [x for x in open(log).read().splitlines() if x.startswith("got")]
        assert got == ["got 15", "got 1", "got 2"]
    finally:
        open(stop, "w").close()
        runner.join(60)
    assert results and results[0].out.strip() == "status=5", results
    assert_free(genv)


COUNT = r'''
import os, signal, sys, time
got = []
def on(signum, frame):
    got.append(signum)
signal.signal(signal.SIGINT, on)
signal.signal(signal.SIGTERM, on)
print("ready", os.getpid(), flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    time.sleep(0.01)
print("count", len(got), flush=True)
'''


@pytest.mark.parametrize("kind", SHELLS)
def test_the_terminals_ctrl_c_reaches_the_command_exactly_once(genv, kind):
    child = spawn(genv, kind)
    try:
        child.sendline("genv run --gpus 1 -- %s %s 3; echo status=$?" % (system_python(),
                                                                          script(genv, "count.py", COUNT)))
        child.expect(r"ready (\d+)")
        time.sleep(0.3)
        child.sendintr()
        child.expect(r"count (\d+)")
        assert child.match.group(1) == "1"
        child.expect(r"status=(\d+)")
        assert child.match.group(1) == "0"
        child.expect_exact("P> ")
    finally:
        child.close(force=True)
    assert_free(genv)


def test_ctrl_c_stops_a_script_that_runs_genv_run(genv):
    """A command ended by the terminal's ^C ends genv run *by SIGINT* too, so
    that the calling script stops (bash's wait-and-cooperative-exit): a loop
    of `genv run` commands stops at ^C as a loop of the commands does."""
    loop = script(genv, "loop.sh", "#!/bin/bash\nfor i in 1 2; do %s; echo iteration $i; done; echo END\n")
    results = {}
    for name, command in (("plain", "sleep 3"), ("genv", "genv run --gpus 1 -- sleep 3")):
        path = script(genv, "loop-%s.sh" % name, open(loop).read() % command)
        child = spawn(genv, "bash")
        try:
            child.sendline(path)
            time.sleep(1.5)
            child.sendintr()
            child.expect_exact("P> ")
            results[name] = "iteration" in child.before
        finally:
            child.close(force=True)
    assert results["plain"] is False
    assert results["genv"] is False, "the script went on after ^C: genv run exited 130 instead of dying of SIGINT"


def test_a_signal_to_the_whole_process_group_reaches_the_command_once(genv):
    """`kill -TERM -PGID` (a shell's `kill %1`, systemd, jupyter's interrupt)
    reaches genv run and the command alike: the command must not get it
    twice (genv run passes on only what the command did not get itself).
    Repeated: the second copy depends on timing."""
    counts = []
    for _ in range(5):
        out = open(os.path.join(genv.base, "group.out"), "w+")
        proc = subprocess.Popen([os.path.join(genv.root, "bin", "genv"), "run", "--gpus", "1", "--", system_python(),
                                 script(genv, "count.py", COUNT), "1"], env=genv.environ(), cwd=genv.work,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            until(lambda: "ready" in open(out.name).read(), "the command", 30)
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            kill_quietly(proc.pid)
        text = open(out.name).read()
        counts.append(int(text.split("count ")[1].split()[0]))
        out.close()
    assert counts == [1] * 5, counts
    assert_free(genv)


def test_an_ignored_sighup_stays_ignored_nohup(genv):
    """`nohup genv run -- COMMAND`: COMMAND ignores SIGHUP, as under plain
    nohup (genv run must not reset what it was given to SIG_DFL)."""
    line = "kill -HUP $$; echo survived"
    plain = subprocess.run(["nohup", "sh", "-c", line], env=genv.environ(), cwd=genv.work, capture_output=True,
                           stdin=subprocess.DEVNULL)
    assert plain.stdout == b"survived\n"
    wrapped = subprocess.run(["nohup", os.path.join(genv.root, "bin", "genv"), "run", "--gpus", "1", "--", "sh", "-c",
                              line], env=genv.environ(), cwd=genv.work, capture_output=True, stdin=subprocess.DEVNULL)
    assert (wrapped.returncode, wrapped.stdout) == (0, b"survived\n"), wrapped
    assert_free(genv)


def test_kill_9_of_genv_run_the_command_keeps_its_gpus_until_it_ends(genv, jobs):
    job = jobs("--gpus", "2")
    child, gpus = job.ready()
    assert gpus == "0,1"
    [env] = envs(genv)
    os.kill(job.pid, signal.SIGKILL)
    assert job.wait() == -signal.SIGKILL
    # The command runs on, and keeps the environment and its GPUs.
    assert alive(child)
    [still] = envs(genv)
    assert still["id"] == env["id"] and still["devices"] == [0, 1] and child in still["pids"]
    refused = genv.cli("run", "--index", "0", "--", "true")
    assert "held by environment %s" % env["id"] in one_line(refused, None)
    job.stop()
    until(lambda: not alive(child), "the command to end", 30)
    # Free for the very next genv command.
    assert genv.cli("run", "--gpus", "4", "--", "true").returncode == 0
    assert_free(genv)


def test_kill_9_of_the_command_kills_genv_run_with_sigkill_and_frees(genv, jobs):
    job = jobs("--gpus", "1")
    child, _ = job.ready()
    os.kill(child, signal.SIGKILL)
    assert job.wait() == -signal.SIGKILL  # (a shell shows 137)
    assert not alive(job.pid)
    assert_free(genv)


def test_kill_9_of_both_frees_at_the_next_command(genv, jobs):
    job = jobs("--gpus", "3")
    child, _ = job.ready()
    os.kill(job.pid, signal.SIGKILL)
    os.kill(child, signal.SIGKILL)
    job.wait()
    until(lambda: not alive(child), "the command to die", 10)
    assert genv.cli("run", "--gpus", "4", "--", "true").returncode == 0
    assert_free(genv)


def test_genv_run_leaves_no_process_behind(genv, jobs):
    job = jobs("--gpus", "1", argv=["sh", "-c", "echo $$ >%s/pid; sleep 0.2" % genv.base])
    assert job.wait() == 0
    child = int(open(os.path.join(genv.base, "pid")).read())
    assert not alive(job.pid) and not alive(child)
    # Nothing of genv's runs with the test's genv copy any more.
    leftovers = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as handle:
                    if genv.root.encode() in handle.read():
                        leftovers.append(int(entry))
            except OSError:
                pass
    assert [pid for pid in leftovers if alive(pid)] == []


# === 3. bad input, and GPUs that cannot be had =================================================

BAD = [
    ([], "put the command after --"),
    (["touch", "MARK"], "put the command after --"),
    (["--gpus", "1", "touch", "MARK"], "put the command after --"),
    (["--gpus", "1", "--"], "no command given after --"),
    (["--bogus", "--", "touch", "MARK"], "unknown option"),
    (["-x", "--", "touch", "MARK"], "unknown option"),
    (["--gpus", "--", "touch", "MARK"], "needs a value"),
    (["--gpus", "x", "--", "touch", "MARK"], "GPU count"),
    (["--gpus", "-1", "--", "touch", "MARK"], None),
    (["--gpus", "1", "--gpus", "2", "--", "touch", "MARK"], "twice"),
    (["--gpu-memory", "3q", "--", "touch", "MARK"], "invalid GPU memory '3q'"),
    (["--gpu-memory", "0", "--", "touch", "MARK"], "invalid GPU memory '0'"),
    (["--gpu-memory", "2p", "--", "touch", "MARK"], "invalid GPU memory"),
    (["--gpu-memory", "", "--", "touch", "MARK"], "invalid GPU memory"),
    (["--index", "a", "--", "touch", "MARK"], "invalid --index"),
    (["--index", "0,,1", "--", "touch", "MARK"], "invalid --index"),
    (["--wait", "-3", "--", "touch", "MARK"], None),
    (["--wait=x", "--", "touch", "MARK"], "invalid --wait"),
    (["--name", "", "--", "touch", "MARK"], "invalid name"),
    (["--name", "x" * 5000, "--", "touch", "MARK"], "invalid name"),
    (["--id", "", "--", "touch", "MARK"], "invalid environment id"),
    (["--over-subscribe=1", "--", "touch", "MARK"], "takes no value"),
    (["--", "no-such-command-genv"], "no-such-command-genv"),
    (["--", "./MARK-not-here"], None),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a)[:40] or "(none)" for a, _ in BAD])
def test_bad_input_is_one_line_and_holds_nothing(genv, argv, message):
    done = genv.cli("run", *argv)
    text = one_line(done, None)
    if message:
        assert message in text
    assert "\\n" in text or "\n" not in text
    assert not os.path.exists(os.path.join(genv.work, "MARK")), "the command ran"
    assert_free(genv)
    assert not os.path.exists(os.path.join(genv.tmpdir, "user-%d.json" % UID)) or envs(genv) == []


def test_a_command_that_does_not_exist_is_127_as_in_a_shell(genv):
    done = genv.cli("run", "--gpus", "1", "--", "no-such-command-genv", "x")
    assert one_line(done, 127) == "genv: cannot run no-such-command-genv: command not found"
    assert_free(genv)


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_command_that_cannot_run_is_126_as_in_a_shell(genv, what):
    """A file that is not executable, or a folder: 126 (as bash says
    'Permission denied' / 'Is a directory'), not 'command not found'."""
    target = os.path.join(genv.base, "plain.txt") if what == "file" else genv.base
    if what == "file":
        open(target, "w").close()
    done = genv.cli("run", "--gpus", "1", "--", target)
    text = one_line(done, None)
    assert done.returncode == 126, text
    assert "not found" not in text
    assert_free(genv)


def test_a_script_whose_interpreter_is_missing(genv):
    bad = script(genv, "bad-shebang", "#!/no/such/interpreter\necho hi\n")
    done = genv.cli("run", "--gpus", "1", "--", bad)
    assert done.returncode == 127 and done.stdout == b""
    err = done.stderr.decode()
    assert len(err.splitlines()) == 1 and err.startswith("genv: ") and "bad-shebang" in err, err
    assert_free(genv)


def test_gpus_that_cannot_be_had_fail_before_the_command_with_attachs_message(genv, sh, jobs):
    holder = jobs("--gpus", "3")
    holder.ready()
    [held] = envs(genv)
    shell = genv.shell(sh)
    shell.ok("genv activate --no-prompt")
    attach = shell.run("genv attach --count 2")
    assert attach.rc != 0
    expected = attach.err.strip().replace("; the environment is now detached", "")
    done = genv.cli("run", "--gpus", "2", "--", "touch", "MARK")
    assert one_line(done, None) == expected
    assert not os.path.exists(os.path.join(genv.work, "MARK"))
    done = genv.cli("run", "--gpus", "5", "--", "touch", "MARK")
    assert one_line(done, None) == "genv: cannot attach 5 GPUs: this machine has 4"
    done = genv.cli("run", "--index", "1", "--", "touch", "MARK")
    me = "%s(%d)" % (pwd.getpwuid(os.getuid()).pw_name, os.getuid())
    assert one_line(done, None) == "genv: cannot attach GPU 1: it is held by environment %s of %s" % (held["id"], me)
    assert not os.path.exists(os.path.join(genv.work, "MARK"))
    assert [env["id"] for env in envs(genv) if env["id"] != shell.var("GENV_ENVIRONMENT_ID")] == [held["id"]]


def test_count_and_index_that_disagree_are_refused_as_attach_does(genv):
    done = genv.cli("run", "--gpus", "2", "--index", "0", "--", "touch", "MARK")
    assert "disagree" in one_line(done, None), "attach refuses --count 2 --index 0; run silently took 1 GPU"
    assert not os.path.exists(os.path.join(genv.work, "MARK"))
    assert_free(genv)


def test_joining_an_environment_that_does_not_exist(genv):
    done = genv.cli("run", "--id", "99999", "--", "touch", "MARK")
    text = one_line(done, None)
    assert "99999" in text
    assert "shell" not in text and "deactivate" not in text, "a message for a terminal, not for genv run: " + text
    assert_free(genv)


# === 4. the options ===============================================================================


def test_index_name_and_gpu_memory(genv, jobs):
    job = jobs("--index", "3,1", "--name", "indexed", "--gpu-memory", "10g")
    _, gpus = job.ready()
    assert gpus == "1,3"
    [env] = envs(genv)
    assert env["name"] == "indexed" and env["devices"] == [1, 3] and env["gpu_memory"] == 10240
    job.stop()
    assert job.wait() == 0
    assert_free(genv)


def test_over_subscribe(genv, jobs):
    first = jobs("--index", "0", "--gpu-memory", "30g")
    first.ready()
    done = genv.cli("run", "--index", "0", "--gpu-memory", "30g", "--", "true")
    assert "GPU 0" in one_line(done, None)
    for flag in ("--over-subscribe", "-o"):
        done = genv.cli("run", "--index", "0", "--gpu-memory", "30g", flag, "--", "sh", "-c",
                        "echo $CUDA_VISIBLE_DEVICES")
        assert (done.returncode, done.stdout) == (0, b"0\n"), done


def test_wait_gets_the_gpus_when_they_are_freed(genv, jobs):
    genv.extra["FAKE_NVIDIA_SMI_GPUS"] = "1"
    holder = jobs("--gpus", "1")
    holder.ready()
    waiter = jobs("--gpus", "1", "--wait", "30")
    until(lambda: "waiting for 1 GPU" in waiter.output(), "the waiter to say it waits", 30)
    assert not waiter.lines(), "the command started before it had the GPU"
    assert len(envs(genv)) == 2
    holder.stop()
    _, gpus = waiter.ready()
    assert gpus == "0"
    waiter.stop()
    assert waiter.wait() == 0
    assert_free(genv)


@pytest.mark.parametrize("form", [["--wait"], ["--wait", "600"], ["--wait=600"]])
def test_a_waiter_killed_holds_nothing(genv, jobs, form):
    genv.extra["FAKE_NVIDIA_SMI_GPUS"] = "1"
    holder = jobs("--gpus", "1")
    holder.ready()
    waiter = jobs("--gpus", "1", *form)
    until(lambda: "waiting for 1 GPU" in waiter.output(), "the waiter", 30)
    os.kill(waiter.pid, signal.SIGTERM)
    waiter.wait()
    assert not waiter.lines()
    [env] = envs(genv)
    assert env["waiting"] is None and env["pids"][0] == holder.pid
    holder.stop()
    holder.wait()
    assert_free(genv)


def test_wait_times_out_with_attachs_message(genv, jobs):
    genv.extra["FAKE_NVIDIA_SMI_GPUS"] = "1"
    holder = jobs("--gpus", "1")
    holder.ready()
    start = time.monotonic()
    done = genv.cli("run", "--gpus", "1", "--wait", "1", "--", "touch", "MARK")
    assert time.monotonic() - start >= 1
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 1 and done.stdout == b""
    assert lines[0].startswith("genv: waiting for 1 GPU")
    assert not os.path.exists(os.path.join(genv.work, "MARK"))
    [env] = envs(genv)
    assert env["pids"][0] == holder.pid
    # attach's message, as without --wait: no environment is left to be
    # "now detached".
    assert lines[-1] == "genv: cannot attach 1 GPU: only 0 of this machine's 1 are free", lines


@pytest.mark.parametrize("kind", SHELLS)
def test_ctrl_c_while_waiting_leaves_the_line(genv, jobs, kind):
    genv.extra["FAKE_NVIDIA_SMI_GPUS"] = "1"
    holder = jobs("--gpus", "1")
    holder.ready()
    child = spawn(genv, kind)
    try:
        child.sendline("genv run --gpus 1 --wait -- touch MARK; echo status=$?")
        child.expect("waiting for 1 GPU")
        time.sleep(0.3)
        child.sendintr()
        child.expect(r"status=(\d+)")
        assert child.match.group(1) == "130"
    finally:
        child.close(force=True)
    assert not os.path.exists(os.path.join(genv.work, "MARK"))
    [env] = envs(genv)
    assert env["pids"][0] == holder.pid and env["waiting"] is None


def test_id_joins_a_terminals_environment_and_leaves_it_to_the_terminal(genv, sh):
    shell = genv.shell(sh)
    shell.ok("genv activate --gpus 1 --name mine --no-prompt")
    eid = shell.var("GENV_ENVIRONMENT_ID")
    out = os.path.join(genv.base, "joined")
    shell.ok("genv run --id %s -- sh -c 'echo \"$CUDA_VISIBLE_DEVICES $GENV_ENVIRONMENT_ID $$\" >%s; "
             "genv envs --format json >>%s'" % (eid, out, out))
    first, listing = open(out).read().split("\n", 1)
    cuda, seen_id, pid = first.split()
    assert (cuda, seen_id) == ("0", eid)
    [env] = json.loads(listing)
    assert env["id"] == eid and int(pid) in env["pids"] and shell.pid in env["pids"]
    # The command ended: the terminal's environment lives on, with its GPU.
    [env] = envs(genv)
    assert env["pids"] == [shell.pid] and env["devices"] == [0]
    # No command: nothing joined.
    done = genv.cli("run", "--id", eid, "--", "no-such-command-genv")
    assert done.returncode == 127
    assert envs(genv)[0]["pids"] == [shell.pid]


@pytest.mark.parametrize("before", [0, 1])
def test_id_with_more_gpus_gives_the_environment_back_as_it_was(genv, before):
    """Issue 15, B10: `genv run --id ENV --gpus N` attaches what the command
    needs; when it ends, ENV has its configuration and GPUs as before, and
    its terminal's CUDA_VISIBLE_DEVICES is true again."""
    shell = genv.shell("bash")
    shell.ok("genv activate --gpus %d --no-prompt" % before)
    eid = shell.var("GENV_ENVIRONMENT_ID")
    out = os.path.join(genv.base, "joined")
    shell.ok("genv run --id %s --gpus 2 -- sh -c 'echo $CUDA_VISIBLE_DEVICES > %s'" % (eid, out))
    assert open(out).read().split() == ["0,1"]
    [env] = envs(genv)
    assert (env["pids"], env["gpus"], env["devices"]) == ([shell.pid], before, list(range(before)))
    shell.ok("genv attach")
    assert shell.var("CUDA_VISIBLE_DEVICES") == ",".join(map(str, range(before)))
    assert holders(genv)[1] == []


def test_id_of_another_users_environment_is_refused(genv, other_user):
    shell = genv.shell("bash")
    shell.ok("genv activate --gpus 1 --no-prompt")
    eid = shell.var("GENV_ENVIRONMENT_ID")
    done = genv.cli("run", "--id", eid, "--", "touch", "/tmp/genv-should-not-exist", user=other_user,
                    HOME=genv.base)
    assert eid in one_line(done, None)
    assert not os.path.exists("/tmp/genv-should-not-exist")
    [env] = envs(genv)
    assert env["pids"] == [shell.pid]


def test_another_user_runs_in_an_environment_of_their_own(genv, other_user):
    out = os.path.join(genv.base, "theirs")
    os.chmod(genv.base, 0o777)
    done = genv.cli("run", "--gpus", "1", "--", "sh", "-c", "echo $CUDA_VISIBLE_DEVICES >%s; genv envs --format json"
                    " >>%s" % (out, out), user=other_user, HOME=genv.base)
    assert done.returncode == 0, done
    cuda, listing = open(out).read().split("\n", 1)
    [env] = json.loads(listing)
    assert cuda == "0" and env["uid"] == other_user.pw_uid
    assert_free(genv)


def test_genv_ps_attributes_the_commands_processes(genv, jobs):
    apps = os.path.join(genv.base, "apps")
    open(apps, "w").close()
    genv.extra["FAKE_NVIDIA_SMI_APPS"] = apps
    pidfile = os.path.join(genv.base, "deep.pid")
    job = jobs("--gpus", "2", "--name", "psjob", argv=[
        "bash", "-c", "env -u GENV_ENVIRONMENT_ID sleep 600 & echo $! >%s; wait" % pidfile])
    deep = until(lambda: os.path.exists(pidfile) and open(pidfile).read().strip(), "the grandchild", 30)
    deep = int(deep)
    middle = parent(deep)
    with open(apps, "w") as handle:
        handle.write("%d 0 100 python\n%d 1 200 python\n" % (middle, deep))
    [env] = envs(genv)
    done = genv.cli("ps", "--format", "json")
    rows = {row["pid"]: row for row in json.loads(done.stdout)}
    assert rows[middle]["env_id"] == rows[deep]["env_id"] == env["id"]
    assert rows[middle]["env_name"] == "psjob" and rows[deep]["managed"] is True
    kill_quietly(deep)
    job.wait()
    assert_free(genv)


def test_concurrent_runs_never_share_a_whole_gpu(genv):
    seen = os.path.join(genv.base, "seen")
    procs = [subprocess.Popen([os.path.join(genv.root, "bin", "genv"), "run", "--gpus", "1", "--", "sh", "-c",
                               "echo $CUDA_VISIBLE_DEVICES >>%s; sleep 2" % seen],
                              env=genv.environ(), cwd=genv.work, stderr=subprocess.PIPE) for _ in range(6)]
    statuses = [proc.wait(60) for proc in procs]
    errors = [proc.stderr.read().decode() for proc in procs]
    won = open(seen).read().split()
    assert sorted(won) == sorted(set(won)), "a GPU given twice: %r" % won
    assert len(won) == statuses.count(0) == 4, (won, statuses, errors)
    assert all(e.startswith("genv: cannot attach 1 GPU") for e, s in zip(errors, statuses) if s), errors
    assert_free(genv)


def test_help(genv):
    for argv in (["run", "--help"], ["help", "run"]):
        done = genv.cli(*argv)
        assert done.returncode == 0 and b"genv run" in done.stdout and b"-- <command>" in done.stdout, done
