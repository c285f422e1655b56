"""The fake nvidia-smi itself: faithful where genv's tests and tools rely on it."""

import os
import subprocess

import pytest

from conftest import REPO, uuid

FAKE = os.path.join(REPO, "tests", "fake", "nvidia-smi")
SPELLINGS = ["-i {}", "-i{}", "-i={}", "--id {}", "--id={}"]
INVALID = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.\n\n"
NONE = "No devices were found\n"


def fake(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    environ.update(env)
    return subprocess.run([FAKE, *args], env=environ, capture_output=True, text=True, timeout=60)


def ok(*args: str, **env: str) -> str:
    done = fake(*args, **env)
    assert done.returncode == 0 and done.stderr == "", done
    return done.stdout


def listed(*args: str, **env: str):
    """The indices ``-L`` shows, or the exit status when it fails."""
    done = fake("-L", *args, **env)
    if done.returncode:
        return done.returncode
    return [int(line.split(":")[0].split()[1]) for line in done.stdout.splitlines()]


def first_column(output: str):
    return [int(line.split()[0]) for line in output.splitlines() if not line.startswith("#")]


@pytest.fixture
def dead_pid():
    """A PID that no process has: PIDs are below the kernel's pid_max."""
    with open("/proc/sys/kernel/pid_max") as handle:
        pid = int(handle.read())
    assert not os.path.exists("/proc/%d" % pid)
    return pid


def test_every_selection_spelling():
    for spelling in SPELLINGS:
        assert listed(*spelling.format("2").split()) == [2], spelling
        assert listed(*spelling.format("3,1").split()) == [3, 1], spelling
        assert listed(*spelling.format(uuid(1)).split()) == [1], spelling
        assert listed(*spelling.format("GPU-3f1e2d02").split()) == [2], spelling
        assert listed(*spelling.format("00000000:37:00.0").split()) == [3], spelling
        assert listed(*spelling.format("17:00.0").split()) == [1], spelling
        assert listed(*spelling.format("4").split()) == 6, spelling


def test_selections_add_up_and_name_each_gpu_once():
    assert listed("-i", "2", "--id=0", "-i1") == [2, 0, 1]
    assert listed("-i", "2,2", "-i=2") == [2]
    assert listed("-i", uuid(0), "-i", "0") == [0]
    # A selection may stand anywhere.
    assert ok("--query-gpu=index", "--format=csv,noheader", "--id", "3") == "3\n"


def test_uuid_prefixes_must_be_unique():
    assert listed("-i", "GPU-3f1e2d03-5ee0") == [3]
    assert listed("-i", "GPU-3f1e2d0") == 6  # all four
    assert listed("-i", "GPU-") == 6
    assert listed("-i", "GPU-3f1e2d01-nope") == 6


def test_bus_ids_are_hex_in_any_case_and_width():
    twelve = {"FAKE_NVIDIA_SMI_GPUS": "12"}
    assert ok("--query-gpu=pci.bus_id", "--format=csv,noheader", "-i", "10,11", **twelve) == \
        "00000000:A7:00.0\n00000000:B7:00.0\n"
    for spelling in ("00000000:A7:00.0", "00000000:a7:00.0", "0000:A7:00.0", "0:a7:0.0", "a7:00.0", "A7:00.0"):
        assert listed("-i", spelling, **twelve) == [10], spelling
    assert listed("-i", "c7:00.0", **twelve) == 6
    assert listed("-i", "a7:00.1", **twelve) == 6
    # The 17th GPU is in the next PCI domain.
    seventeen = {"FAKE_NVIDIA_SMI_GPUS": "17"}
    assert ok("--query-gpu=pci.bus_id", "--format=csv,noheader", "-i", "16", **seventeen) == "00000001:07:00.0\n"
    assert listed("-i", "1:07:00.0", **seventeen) == [16]
    assert listed("-i", "07:00.0", **seventeen) == [0]


def test_empty_values_are_invalid():
    for args in (["-i", ""], ["-L", "-i"], ["--id", ""], ["--id"], ["--id="], ["-i="], ["-i", "1,"],
                 ["-i", ",1"], ["-i", "1,,2"], ["-i", "1", "-i", ""]):
        done = fake("-L", *args)
        assert (done.returncode, done.stdout) == (2, INVALID), args
    for command in ("dmon", "pmon"):
        done = fake(command, "-i", "")
        assert (done.returncode, done.stdout) == (2, INVALID), command


def test_a_selection_that_matches_nothing():
    for value in ("4", "1,4", "GPU-nope", "47:00.0", "01", "nope"):
        done = fake("-L", "-i", value)
        assert (done.returncode, done.stdout) == (6, NONE), value
    done = fake("-L", FAKE_NVIDIA_SMI_GPUS="0")
    assert (done.returncode, done.stdout) == (6, NONE)


def test_compute_apps_lists_running_processes_only(tmp_path, dead_pid):
    me = os.getpid()
    apps = tmp_path / "apps"
    apps.write_text(
        "# pid gpu MiB name\n"
        "%d %s 1000 python train.py\n"
        "%d 1 500 gone\n"
        "\n"
        "%d 1 24 helper\n"
        "%d 2 [N/A] jax\n"
        "%d 9 10 on-no-such-gpu\n" % (me, uuid(1), dead_pid, me, me, me)
    )
    env = {"FAKE_NVIDIA_SMI_APPS": str(apps)}
    out = ok("--query-compute-apps=pid,gpu_uuid,used_memory,process_name", "--format=csv,noheader,nounits", **env)
    assert out.splitlines() == [
        "%d, %s, 1000, python train.py" % (me, uuid(1)),
        "%d, %s, 24, helper" % (me, uuid(1)),  # an index is the GPU with that index
        "%d, %s, [N/A], jax" % (me, uuid(2)),
    ]
    out = ok("--query-compute-apps=pid,used_gpu_memory,gpu_bus_id,gpu_name", "--format=csv", "-i", "2,1", **env)
    assert out.splitlines() == [
        "pid, used_gpu_memory [MiB], gpu_bus_id, gpu_name",
        "%d, [N/A], 00000000:27:00.0, NVIDIA A100-SXM4-40GB" % me,  # [N/A] even with units
        "%d, 1000 MiB, 00000000:17:00.0, NVIDIA A100-SXM4-40GB" % me,
        "%d, 24 MiB, 00000000:17:00.0, NVIDIA A100-SXM4-40GB" % me,
    ]
    assert ok("--query-compute-apps=pid", "--format=csv,noheader", "-i", "0", **env) == ""
    assert ok("--query-compute-apps=pid", "--format=csv", "-i", "0", **env) == "pid\n"


def test_memory_used_is_the_sum_of_running_processes(tmp_path, dead_pid):
    me = os.getpid()
    apps = tmp_path / "apps"
    apps.write_text("%d 1 1000 a\n%d 1 24 b\n%d 1 500 gone\n%d 2 [N/A] c\n%d 3 7 d\n"
                    % (me, me, dead_pid, me, me))
    env = {"FAKE_NVIDIA_SMI_APPS": str(apps)}
    out = ok("--query-gpu=index,memory.used,memory.free,memory.total", "--format=csv,noheader,nounits", **env)
    assert out.splitlines() == ["0, 0, 40960, 40960", "1, 1024, 39936, 40960", "2, 0, 40960, 40960",
                                "3, 7, 40953, 40960"]
    assert ok("--query-gpu=memory.used", "--format=csv", "-i", "1", **env) == "memory.used [MiB]\n1024 MiB\n"
    table = ok("-i", "1,2", **env)
    assert "1024MiB / 40960MiB" in table and " 0MiB / 40960MiB" in table
    rows = [line for line in table.splitlines() if line.startswith("|  ") and " C " in line]
    assert len(rows) == 3 and rows[-1].split()[-2] == "N/A" and "gone" not in table


def test_missing_apps_file_means_no_processes(tmp_path):
    env = {"FAKE_NVIDIA_SMI_APPS": str(tmp_path / "missing")}
    assert ok("--query-compute-apps=pid,used_memory", "--format=csv", **env) == "pid, used_gpu_memory [MiB]\n"
    assert ok("--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0", **env) == "0\n"
    assert "No running processes found" in ok(**env)


def test_loops_print_round_after_round_and_look_at_processes_afresh(tmp_path):
    """-l / -lms: a round every interval (here bounded by
    FAKE_NVIDIA_SMI_LOOPS); each round reads the process list again; CSV
    has its header once."""
    import time

    apps = tmp_path / "apps"
    me = os.getpid()
    env = {"FAKE_NVIDIA_SMI_APPS": str(apps), "FAKE_NVIDIA_SMI_LOOPS": "3"}
    apps.write_text("%d 1 100 first\n" % me)
    loop = subprocess.Popen([FAKE, "--query-compute-apps=pid,used_memory", "--format=csv", "-lms", "700"],
                            env=dict(env, PATH="/usr/bin:/bin"), stdout=subprocess.PIPE, text=True)
    assert loop.stdout.readline() == "pid, used_gpu_memory [MiB]\n"
    assert loop.stdout.readline() == "%d, 100 MiB\n" % me
    apps.write_text("%d 1 100 first\n%d 2 200 second\n" % (me, me))  # before the second round
    rest, _ = loop.communicate(timeout=30)
    assert rest == ("%d, 100 MiB\n%d, 200 MiB\n" % (me, me)) * 2 and loop.returncode == 0
    started = time.monotonic()
    assert ok("--query-gpu=index,memory.used", "--format=csv,noheader", "-i", "2", "-lms", "200", **env) \
        == "2, 200 MiB\n" * 3
    assert time.monotonic() - started >= 0.4  # two pauses between three rounds
    for spelling in (["-l", "1"], ["--loop=1"], ["-lms", "10"], ["--loop-ms=10"], ["-lms=10"], ["-l=1"]):
        out = ok("-i", "0", *spelling, FAKE_NVIDIA_SMI_LOOPS="2")
        assert out.count("Processes:") == 2 and out.count("NVIDIA-SMI 535") == 2, spelling
    # -l without a number: every 5 s, and the next word is an option again.
    assert ok("-l", "--query-gpu=index", "--format=csv,noheader", "-i", "2", FAKE_NVIDIA_SMI_LOOPS="1") == "2\n"
    for args in (["-lms"], ["-lms", "x"], ["-l", "0"], ["--loop=x"], ["--loop-ms="], ["dmon", "-l", "1"]):
        assert fake(*args).returncode == 2, args
    done = fake("--query-gpu=nope", "--format=csv", "-l", "1")
    assert (done.returncode, done.stdout) == (2, 'Field "nope" is not a valid field to query.\n\n')


def test_dmon():
    out = ok("dmon")
    assert out.startswith("# gpu ") and out.splitlines()[1].startswith("# Idx")
    assert first_column(out) == [0, 1, 2, 3]  # one sample, then it exits
    assert first_column(ok("dmon", "-c", "3", "-i", "1,3")) == [1, 3, 1, 3, 1, 3]
    assert first_column(ok("dmon", "-s", "u", "-d", "1", "-c", "1", "--id=2")) == [2]
    for spelling in SPELLINGS:
        assert first_column(ok("dmon", *spelling.format(uuid(2)).split())) == [2], spelling
    for args in (["-c", "0"], ["-c"], ["-c", "x"], ["-L"], ["--query-gpu=index"]):
        assert fake("dmon", *args).returncode == 2, args
    done = fake("dmon", "-i", "5")
    assert (done.returncode, done.stdout) == (6, NONE)


def test_pmon(tmp_path, dead_pid):
    me = os.getpid()
    apps = tmp_path / "apps"
    apps.write_text("%d 1 1000 python\n%d 1 24 helper\n%d 2 500 gone\n" % (me, me, dead_pid))
    env = {"FAKE_NVIDIA_SMI_APPS": str(apps)}
    out = ok("pmon", **env)
    assert out.startswith("# gpu ") and out.splitlines()[1].startswith("# Idx")
    rows = [line.split() for line in out.splitlines() if not line.startswith("#")]
    assert [(row[0], row[1], row[-1]) for row in rows] == [
        ("0", "-", "-"), ("1", str(me), "python"), ("1", str(me), "helper"), ("2", "-", "-"), ("3", "-", "-")]
    assert first_column(ok("pmon", "-c", "2", "-s", "um", "-i", "2,0", **env)) == [2, 0, 2, 0]
    for spelling in SPELLINGS:
        assert first_column(ok("pmon", *spelling.format("1").split(), **env)) == [1, 1], spelling


def test_log_and_failures(tmp_path):
    log = tmp_path / "log"
    ok("-L", "-i", "1", FAKE_NVIDIA_SMI_LOG=str(log))
    fake("dmon", "-c", "1", FAKE_NVIDIA_SMI_LOG=str(log), FAKE_NVIDIA_SMI_FAIL="driver")
    assert log.read_text() == "-L -i 1\ndmon -c 1\n"
    for failure, status in (("driver", 9), ("nvml", 12), ("mismatch", 18)):
        assert fake("-L", FAKE_NVIDIA_SMI_FAIL=failure).returncode == status


def test_gpus_from_a_file(tmp_path):
    gpus = tmp_path / "gpus"
    gpus.write_text("GPU-aaaa 81920 NVIDIA H100 80GB HBM3\nGPU-bbbb 81920 NVIDIA H100 80GB HBM3\n")
    env = {"FAKE_NVIDIA_SMI_GPUS": str(gpus)}
    assert ok("--query-gpu=index,uuid,name", "--format=csv,noheader", **env) == \
        "0, GPU-aaaa, NVIDIA H100 80GB HBM3\n1, GPU-bbbb, NVIDIA H100 80GB HBM3\n"
    assert listed("-i", "GPU-b", **env) == [1]
    assert listed("-i", "GPU-bbbb", **env) == [1]
