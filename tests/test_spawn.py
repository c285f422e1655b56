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
