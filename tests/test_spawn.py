"""genv.spawn: running nvidia-smi (and genv lock's command) without
``subprocess``; several queries side by side."""

import os

import pytest

from conftest import alive
from genv import gpus, spawn
from genv.errors import GenvError


def test_run_gives_status_stdout_and_stderr():
    status, out, err = spawn.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (status, out, err) == (3, b"out\n", b"err\n")
    status, out, err = spawn.run(["/bin/sh", "-c", "kill -TERM $$"])
    assert status == -15
    status, out, err = spawn.run(["/bin/sh", "-c", "echo quiet >&2"], capture_stderr=False)
    assert (status, out, err) == (0, b"", b"")


def test_which_finds_what_a_shell_would_run(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
    (first / "tool").mkdir()  # a folder of that name: not it
    (first / "plain").write_text("not executable")
    for path in (second / "tool", second / "plain"):
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (first, second))
    assert spawn.which("tool") == str(second / "tool")
    assert spawn.which("plain") == str(second / "plain")
    assert spawn.which("none") is None
    assert spawn.which(str(first / "plain")) is None and spawn.which(str(first / "tool")) is None
    assert spawn.which(str(second / "tool")) == str(second / "tool")  # a path: itself, PATH not searched
    monkeypatch.chdir(str(second))
    monkeypatch.setenv("PATH", ":/nowhere")  # an empty entry is the current folder
    assert spawn.which("tool") == "./tool"
    assert spawn.which("sh") is None


def test_run_all_runs_side_by_side(tmp_path):
    """The first program reads a FIFO that only the second writes: run one
    after the other, the first would wait until the time-out."""
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    reader = ["/bin/sh", "-c", "cat %s" % fifo]
    writer = ["/bin/sh", "-c", "echo hello > %s; echo second" % fifo]
    results = spawn.run_all([reader, writer], timeout=30)
    assert results == [(0, b"hello\n", b""), (0, b"second\n", b"")]


def test_run_all_cleans_up_when_one_cannot_start(tmp_path):
    fds_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError):
        spawn.run_all([["/bin/sh", "-c", "exec sleep 600"], [str(tmp_path / "missing")]])
    # The first was started, then killed and reaped: no child is left.
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)
    assert set(os.listdir("/proc/self/fd")) == fds_before, "pipes left open"


def test_run_all_times_out_and_kills_every_program(tmp_path):
    marks = [str(tmp_path / ("pid%d" % n)) for n in range(2)]
    fds_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(spawn.Timeout):
        spawn.run_all([["/bin/sh", "-c", "echo $$ > %s; exec sleep 600" % mark] for mark in marks], timeout=0.5)
    with pytest.raises(ChildProcessError):  # both killed and reaped
        os.waitpid(-1, os.WNOHANG)
    for mark in marks:
        if os.path.exists(mark):  # (one may be killed before it wrote its PID)
            with open(mark) as handle:
                text = handle.read().strip()
            assert not text or not alive(int(text))
    assert set(os.listdir("/proc/self/fd")) == fds_before, "pipes left open"


def test_nvidia_smi_queries_side_by_side_keep_their_order_and_errors(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\ncase "$1" in\n  a) echo A ;;\n  b) echo B ;;\n'
                    "  *) echo 'bad query' >&2; exit 2 ;;\nesac\n")
    fake.chmod(0o755)
    assert gpus.run_nvidia_smi_all(str(fake), [("a",), ("b",)]) == ["A\n", "B\n"]
    with pytest.raises(GenvError) as raised:
        gpus.run_nvidia_smi_all(str(fake), [("a",), ("c",)])
    assert str(raised.value) == "nvidia-smi failed with exit status 2: bad query"


def test_a_failure_stops_the_others_and_is_the_answer():
    """One program fails at once while another would run for ten minutes:
    the failure comes back at once (within the 30 s time-out, which would
    otherwise be reached), with all it wrote, and the other is stopped."""
    fds_before = set(os.listdir("/proc/self/fd"))
    noisy = "head -c 200000 /dev/zero | tr '\\\\0' x >&2; echo said; exit 3"
    results = spawn.run_all([["/bin/sh", "-c", "exec sleep 600"], ["/bin/sh", "-c", noisy]], timeout=30)
    assert results[0] is None
    status, out, err = results[1]
    assert (status, out, len(err)) == (3, b"said\n", 200000)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)
    assert set(os.listdir("/proc/self/fd")) == fds_before, "pipes left open"


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs os.pidfd_open (Python >= 3.9 on Linux >= 5.3)")
def test_the_time_out_covers_a_program_that_closed_its_output_but_runs_on():
    with pytest.raises(spawn.Timeout):
        spawn.run_all([["/bin/sh", "-c", "exec >&- 2>&-; exec sleep 600"]], timeout=0.5)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_a_failing_nvidia_smi_query_is_reported_while_the_other_hangs(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\ncase "$1" in\n  slow) exec sleep 600 ;;\nesac\n'
                    "echo 'NVIDIA-SMI has failed' >&2; exit 9\n")
    fake.chmod(0o755)
    with pytest.raises(GenvError) as raised:
        gpus.run_nvidia_smi_all(str(fake), [("slow",), ("fails",)])
    assert str(raised.value) == "nvidia-smi failed with exit status 9: NVIDIA-SMI has failed"
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_a_time_out_signals_no_program_already_reaped(tmp_path, monkeypatch):
    """The first program exits at once and is reaped; then the second runs
    into the time-out. Its PID may by then be another process's (enforce and
    monitor run as root): the clean-up must signal only the program still
    unreaped, through its pidfd where the system has one. Every os.kill is
    recorded (and still done), and the signals sent through pidfds counted."""
    from genv import signals

    mark = str(tmp_path / "quick")
    killed = []
    real_kill = os.kill

    def kill(pid, signum):
        killed.append(pid)
        real_kill(pid, signum)

    monkeypatch.setattr(os, "kill", kill)
    through_pidfd = []
    if hasattr(signals, "pidfd_send_signal"):
        real_send = signals.pidfd_send_signal

        def send(fd, signum, *args):
            through_pidfd.append(fd)
            return real_send(fd, signum, *args)

        monkeypatch.setattr(signals, "pidfd_send_signal", send)
    quick = ["/bin/sh", "-c", "echo $$ > %s" % mark]
    slow = ["/bin/sh", "-c", "exec sleep 600"]
    with pytest.raises(spawn.Timeout):
        spawn.run_all([quick, slow], timeout=1.5)
    with open(mark) as handle:
        quick_pid = int(handle.read())
    if hasattr(os, "pidfd_open"):  # its exit was seen (pidfd) and it was reaped before the time-out
        assert quick_pid not in killed, "signalled PID %d after reaping it" % quick_pid
        assert killed == [] and len(through_pidfd) == 1, (killed, through_pidfd)
    else:  # nothing tells its exit before the time-out: both are reaped only after the kill (a zombie keeps its PID)
        assert len(killed) == 2 and quick_pid in killed, killed
    with pytest.raises(ChildProcessError):  # the slow one was killed and reaped
        os.waitpid(-1, os.WNOHANG)


def test_run_each_keeps_every_program_apart(tmp_path):
    """Issue 18: one program failing, hanging or not starting changes
    nothing for the others (run_all, by design, stops them)."""
    import time

    witness = tmp_path / "grandchild"
    argvs = [
        ["/bin/sh", "-c", "sleep 0.3; echo late; exit 0"],
        ["/bin/sh", "-c", "echo fails >&2; exit 3"],
        ["/bin/sh", "-c", "(sleep 30; touch %s) & sleep 30" % witness],  # hangs, with a child of its own
        ["/no/such/program"],
        ["/bin/sh", "-c", "head -c 5000 /dev/zero"],
    ]
    start = time.monotonic()
    results = spawn.run_each(argvs, timeout=1.5, limit=4096)
    took = time.monotonic() - start
    assert results[0] == (0, b"late\n", b"")
    assert results[1] == (3, b"", b"fails\n")
    assert isinstance(results[2], spawn.Timeout)
    assert isinstance(results[3], OSError) and not isinstance(results[3], spawn.Timeout)
    assert isinstance(results[4], spawn.TooLong)
    assert 1.4 < took < 5, took
    # The hanging one's whole process group was killed: its child never wakes up.
    out = os.popen("ps -eo args").read()
    assert "touch %s" % witness not in out


def test_run_each_reaps_every_program_once():
    """Each program is waited for exactly once: none is left a zombie (in a
    fresh interpreter, whose only children are run_each's)."""
    import subprocess
    import sys

    code = """if True:
        import os, sys
        sys.path.insert(0, %r)
        from genv import spawn
        results = spawn.run_each([["/bin/true"]] * 20 + [["/bin/sleep", "5"]], timeout=0.5)
        assert results[:20] == [(0, b"", b"")] * 20 and isinstance(results[20], spawn.Timeout), results
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            print("none left")
    """ % os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "none left\n", done


def test_a_command_started_with_sigchld_ignored_still_asks_nvidia_smi(genv):
    """A SIGCHLD ignored by whoever started genv (it survives exec) makes the
    kernel reap nvidia-smi unseen: its output is still the answer (its status
    taken as 0, as Python's subprocess takes it), not 'cannot run
    nvidia-smi: No child processes'."""
    import subprocess

    from conftest import system_python

    starter = ("import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
               "os.execv(sys.argv[1], sys.argv[1:])")
    for command in ("devices", "ps"):
        plain = genv.cli(command, "--format", "json")
        assert plain.returncode == 0, plain
        done = subprocess.run([system_python(), "-c", starter, os.path.join(genv.root, "bin", "genv"), command,
                               "--format", "json"], env=genv.environ(), cwd=genv.work, capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=60)
        assert (done.returncode, done.stdout, done.stderr) == (0, plain.stdout, b""), (command, done)
