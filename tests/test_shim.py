"""The nvidia-smi shim: only the environment's GPUs, transparent outside.

Most tests run with four fake GPUs: another terminal holds GPU 0, the
terminal under test holds GPUs 1 and 2, and GPU 3 is free. The fake logs each
call it receives (FAKE_NVIDIA_SMI_LOG), which shows what reached the "real"
nvidia-smi and how often.
"""

import os
import shutil

import pytest

from conftest import uuid

# Every way nvidia-smi takes a selection; {} is the value.
SPELLINGS = ["-i {}", "-i{}", "-i={}", "--id {}", "--id={}"]


def bus(index: int) -> str:
    """The fake's PCI bus id of GPU ``index`` (index < 16)."""
    return "00000000:%02X:00.0" % (0x07 + 0x10 * index)


# A selection -> the GPUs shown to the terminal that holds 1 and 2 (None: none,
# exit 6).
NARROWED = [
    ("2", [2]),
    ("1,2", [1, 2]),
    ("2,0,1", [2, 1]),
    ("0", None),
    ("0,3", None),
    ("7", None),
    (uuid(2), [2]),
    (uuid(0), None),
    ("GPU-3f1e2d01", [1]),  # a unique UUID prefix
    ("GPU-3f1e2d03", None),
    (bus(1), [1]),
    ("27:00.0", [2]),  # the short spelling of 00000000:27:00.0
    (bus(3), None),
    ("07:00.0", None),
    ("%s,1,37:00.0" % uuid(2), [2, 1]),
]

# Selections with an empty GPU id: refused by the shim.
EMPTY = ["-i ''", "-i", "-L -i", "--id ''", "--id", "--id=", "-i=", "-i 1,", "--id=,1", "-i 1,,2",
         "-i 1 -i ''", "dmon -i ''", "pmon --id=", "dmon -c 1 -i", "nvlink -s -i ''"]


@pytest.fixture
def log(genv):
    """The fake's call log, to be passed as FAKE_NVIDIA_SMI_LOG."""
    return os.path.join(genv.base, "nvidia-smi-calls")


def calls(shell, log, command):
    """Run ``command``; return its result and the calls that reached the fake."""
    open(log, "w").close()
    result = shell.run(command)
    with open(log) as handle:
        return result, handle.read().splitlines()


def holding_1_and_2(genv, sh, **env):
    """A terminal that holds GPUs 1 and 2 (another one holds GPU 0)."""
    other = genv.shell(sh)
    other.ok("genv activate --gpus 1")
    shell = genv.shell(sh, **env)
    shell.ok("genv activate --gpus 2")
    assert shell.var("GENV_ATTACHED_GPUS") == "1,2"
    return shell


def shown(shell, selection):
    """The indices ``nvidia-smi <selection> --query-gpu=index`` shows, or None
    when it answers that no device was found."""
    result = shell.run("nvidia-smi %s --query-gpu=index --format=csv,noheader" % selection)
    if result.rc == 6:
        assert result.out == "No devices were found\n", result
        return None
    assert result.rc == 0 and result.err == "", result
    return [int(line) for line in result.out.splitlines()]


def first_column(output):
    """The GPU index of each row of dmon or pmon output (comment lines skipped)."""
    return [int(line.split()[0]) for line in output.splitlines() if not line.startswith("#")]


def test_transparent_outside_an_environment(genv, sh, log):
    shell = genv.shell(sh, FAKE_NVIDIA_SMI_LOG=log)
    shell.ok('PATH="%s/shims:$PATH"' % genv.root)
    assert len(shell.ok("nvidia-smi -L").splitlines()) == 4
    # Nothing is parsed or added: even what the shim would refuse reaches the
    # real one untouched.
    result, seen = calls(shell, log, "nvidia-smi -i 0 -L")
    assert result.out.startswith("GPU 0:") and seen == ["-i 0 -L"]
    result, seen = calls(shell, log, "nvidia-smi -i '' -L")
    assert result.rc == 2 and "Invalid combination" in result.out and "genv" not in result.err
    assert seen == ["-i  -L"]
    result, seen = calls(shell, log, "nvidia-smi dmon -c 1")
    assert first_column(result.out) == [0, 1, 2, 3] and seen == ["dmon -c 1"]


def test_only_attached_gpus(genv, sh):
    shell = holding_1_and_2(genv, sh)
    assert shell.ok("nvidia-smi --query-gpu=index --format=csv,noheader") == "1\n2\n"
    assert [line.split(":")[0] for line in shell.ok("nvidia-smi -L").splitlines()] == ["GPU 1", "GPU 2"]
    table = shell.ok("nvidia-smi")
    assert "|   2  NVIDIA A100" in table and "|   0  NVIDIA A100" not in table
    assert shell.ok("nvidia-smi -i 2 --query-gpu=index --format=csv,noheader") == "2\n"
    assert shell.ok("nvidia-smi --id=1,2,3 --query-gpu=index --format=csv,noheader") == "1\n2\n"
    result = shell.run("nvidia-smi -i 0 -L")
    assert (result.rc, result.out) == (6, "No devices were found\n")
    shell.ok("genv detach")
    result = shell.run("nvidia-smi -L")
    assert (result.rc, result.out) == (6, "No devices were found\n")


def test_every_selection_spelling_is_narrowed(genv, sh):
    shell = holding_1_and_2(genv, sh)
    for spelling in SPELLINGS:
        for value, expected in NARROWED:
            selection = spelling.format(value)
            assert shown(shell, selection) == expected, selection


def test_the_issue_examples(genv, sh):
    """`nvidia-smi -i=0 -L` and a PCI bus id escaped the narrowing."""
    shell = holding_1_and_2(genv, sh)
    result = shell.run("nvidia-smi -i=0 -L")
    assert (result.rc, result.out) == (6, "No devices were found\n")
    assert shell.ok("nvidia-smi -i=2 -L").startswith("GPU 2:")
    for selection in ("-i %s" % bus(0), "-i 07:00.0", "--id=%s" % bus(0).lower()):
        result = shell.run("nvidia-smi %s -L" % selection)
        assert (result.rc, result.out) == (6, "No devices were found\n"), selection
    lines = shell.ok("nvidia-smi -i %s -L" % bus(1)).splitlines()
    assert len(lines) == 1 and lines[0].startswith("GPU 1:")


def test_repeated_selections_add_up(genv, sh):
    shell = holding_1_and_2(genv, sh)
    assert shown(shell, "-i 1 --id=2") == [1, 2]
    assert shown(shell, "-i 2 -i0 --id 3") == [2]
    assert shown(shell, "-i 2 -i 1,2 --id=2") == [2, 1]  # each GPU once
    assert shown(shell, "-i %s -i1" % uuid(2)) == [2, 1]
    assert shown(shell, "-i 0 --id=3") is None
    # A selection may stand anywhere, also after the query.
    assert shell.ok("nvidia-smi --query-gpu=index --format=csv,noheader -i 2") == "2\n"
    assert shell.ok("nvidia-smi --query-gpu=index -i=1 --format=csv,noheader --id 0") == "1\n"


def test_bus_ids_in_any_case(genv, sh):
    # GPUs 10 and 11 have bus ids with letters: 00000000:A7:00.0, 00000000:B7:00.0.
    genv.extra.update(FAKE_NVIDIA_SMI_GPUS="12")
    shell = genv.shell(sh)
    shell.ok("genv activate --gpus 11")  # 0 to 10
    for selection in ("a7:00.0", "A7:00.0", "00000000:a7:00.0", "0000:A7:00.0"):
        assert shown(shell, "-i " + selection) == [10], selection
    assert shown(shell, "-i b7:00.0") is None
    assert shown(shell, "--id=00000000:B7:00.0,a7:00.0") == [10]


def test_plain_modes_call_nvidia_smi_once(genv, sh, log):
    shell = holding_1_and_2(genv, sh, FAKE_NVIDIA_SMI_LOG=log)
    result, seen = calls(shell, log, "nvidia-smi -L")
    assert result.rc == 0 and seen == ["--id=1,2 -L"]
    result, seen = calls(shell, log, "nvidia-smi")
    assert result.rc == 0 and seen == ["--id=1,2"]
    result, seen = calls(shell, log, "nvidia-smi -i 2 --query-gpu=index --format=csv,noheader")
    assert result.out == "2\n" and seen == ["--id=2 --query-gpu=index --format=csv,noheader"]
    result, seen = calls(shell, log, "nvidia-smi --query-gpu=index --format=csv,noheader -i3,1 --id 2")
    assert result.out == "1\n2\n" and seen == ["--query-gpu=index --format=csv,noheader --id=1,2"]
    # A selection of no attached GPU, by index, is answered without it.
    result, seen = calls(shell, log, "nvidia-smi -i 0 -L")
    assert result.rc == 6 and seen == []


def test_other_ids_are_resolved_by_one_more_call(genv, sh, log):
    shell = holding_1_and_2(genv, sh, FAKE_NVIDIA_SMI_LOG=log)
    resolve = "--query-gpu=index --format=csv,noheader --id=%s"
    for value in (uuid(2), "GPU-3f1e2d02", bus(2), "27:00.0"):
        result, seen = calls(shell, log, "nvidia-smi -i %s -L" % value)
        assert result.rc == 0 and result.out.startswith("GPU 2:"), value
        assert seen == [resolve % value, "--id=2 -L"], value
    result, seen = calls(shell, log, "nvidia-smi -i 1 --id=%s -L" % bus(0))
    assert result.out.startswith("GPU 1:") and seen == [resolve % ("1," + bus(0)), "--id=1 -L"]
    # Resolved, but not attached: the real one is not run again.
    result, seen = calls(shell, log, "nvidia-smi -i %s -L" % uuid(3))
    assert (result.rc, result.out) == (6, "No devices were found\n") and seen == [resolve % uuid(3)]
    # Matches no GPU at all: what nvidia-smi answers.
    result, seen = calls(shell, log, "nvidia-smi -i GPU-nope -L")
    assert (result.rc, result.out) == (6, "No devices were found\n") and seen == [resolve % "GPU-nope"]


def test_a_failed_resolution_passes_through(genv):
    shell = genv.shell("bash")
    shell.ok("genv activate --gpus 1")
    result = shell.run("FAKE_NVIDIA_SMI_FAIL=driver nvidia-smi -i %s -L" % uuid(0))
    assert result.rc == 9 and "couldn't communicate with the NVIDIA driver" in result.out


def test_an_unexpected_answer_is_refused(genv, tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "nvidia-smi").write_text("#!/bin/sh\necho '[N/A]'\n")
    (odd / "nvidia-smi").chmod(0o755)
    shell = genv.shell("bash", GENV_DEVICES="4")
    shell.ok("genv activate --gpus 1")
    result = shell.run('PATH="%s/shims:%s:$PATH" nvidia-smi -i %s -L' % (genv.root, odd, uuid(0)))
    assert result.rc == 1 and result.out == ""
    assert result.err.startswith("genv: unexpected answer from nvidia-smi") and len(result.err.splitlines()) == 1


def test_empty_selection_is_refused(genv, sh, log):
    shell = holding_1_and_2(genv, sh, FAKE_NVIDIA_SMI_LOG=log)
    for command in EMPTY:
        result, seen = calls(shell, log, "nvidia-smi " + command)
        assert result.rc == 2 and result.out == "" and seen == [], (command, result)
        lines = result.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("genv: ") and "GPU id" in lines[0], (command, result)
    shell.ok("genv detach")
    result, seen = calls(shell, log, "nvidia-smi -i= -L")
    assert result.rc == 2 and seen == []


def test_dmon_and_pmon(genv, sh, log, tmp_path):
    apps = tmp_path / "apps"
    shell = holding_1_and_2(genv, sh, FAKE_NVIDIA_SMI_LOG=log, FAKE_NVIDIA_SMI_APPS=str(apps))
    # The processes appear once the GPUs are attached (one outside genv
    # would have kept attach away from its GPU).
    me = os.getpid()
    apps.write_text("%d 0 100 theirs\n%d 2 200 mine\n" % (me, me))
    result, seen = calls(shell, log, "nvidia-smi dmon -c 1")
    assert first_column(result.out) == [1, 2] and seen == ["dmon -i 1,2 -c 1"]
    result, seen = calls(shell, log, "nvidia-smi dmon -c 2 -s u -i 2")
    assert first_column(result.out) == [2, 2] and seen == ["dmon -c 2 -s u -i 2"]
    for spelling in SPELLINGS:
        for command in ("dmon", "pmon"):
            selection = spelling.format("0,2")
            result = shell.run("nvidia-smi %s %s -c 1" % (command, selection))
            assert result.rc == 0 and first_column(result.out) == [2], (command, selection, result)
    result, seen = calls(shell, log, "nvidia-smi pmon")
    assert seen == ["pmon -i 1,2"]
    rows = [line.split() for line in result.out.splitlines() if not line.startswith("#")]
    assert [(row[0], row[1], row[-1]) for row in rows] == [("1", "-", "-"), ("2", str(me), "mine")]
    result, seen = calls(shell, log, "nvidia-smi pmon -i %s -c 1" % uuid(1))
    assert first_column(result.out) == [1] and seen[-1] == "pmon -i 1 -c 1" and len(seen) == 2
    for command in ("dmon -i 0", "pmon --id=3", "dmon -i %s" % bus(3)):
        result = shell.run("nvidia-smi " + command)
        assert (result.rc, result.out) == (6, "No devices were found\n"), command


def test_other_subcommands(genv, sh, log):
    shell = holding_1_and_2(genv, sh, FAKE_NVIDIA_SMI_LOG=log)
    # Without a selection of the user's own: unchanged.
    _, seen = calls(shell, log, "nvidia-smi topo -m")
    assert seen == ["topo -m"]
    # With one: narrowed, in the subcommand's -i form, where it stood.
    _, seen = calls(shell, log, "nvidia-smi nvlink -s -i 2")
    assert seen == ["nvlink -s -i 2"]
    _, seen = calls(shell, log, "nvidia-smi nvlink --id=0,2 -s -i3")
    assert seen == ["nvlink -i 2 -s"]
    _, seen = calls(shell, log, "nvidia-smi nvlink -s -i %s" % uuid(1))
    assert seen[-1] == "nvlink -s -i 1" and len(seen) == 2
    result, seen = calls(shell, log, "nvidia-smi mig -i 0 -lgi")
    assert (result.rc, result.out, seen) == (6, "No devices were found\n", [])


def test_bypass(genv, sh, log):
    shell = holding_1_and_2(genv, sh, FAKE_NVIDIA_SMI_LOG=log)
    result, seen = calls(shell, log, "GENV_SHIM_BYPASS=1 nvidia-smi -L")
    assert len(result.out.splitlines()) == 4 and seen == ["-L"]
    result, seen = calls(shell, log, "GENV_SHIM_BYPASS=1 nvidia-smi -i 0 -L")
    assert result.out.startswith("GPU 0:") and seen == ["-i 0 -L"]
    result, seen = calls(shell, log, "GENV_SHIM_BYPASS=1 nvidia-smi -i '' -L")
    assert result.rc == 2 and "genv" not in result.err and seen == ["-i  -L"]
    result, seen = calls(shell, log, "GENV_SHIM_BYPASS=1 nvidia-smi dmon -c 1")
    assert first_column(result.out) == [0, 1, 2, 3] and seen == ["dmon -c 1"]
    result, seen = calls(shell, log, "GENV_SHIM_BYPASS=0 nvidia-smi -L")
    assert len(result.out.splitlines()) == 2 and seen == ["--id=1,2 -L"]


def test_exit_status_and_errors_pass_through(genv):
    shell = genv.shell("bash", FAKE_NVIDIA_SMI_FAIL="driver")
    shell.ok("export GENV_DEVICES=4; genv activate --gpus 1")
    result = shell.run("nvidia-smi -L")
    assert result.rc == 9 and "couldn't communicate with the NVIDIA driver" in result.out


def test_finds_the_real_one_past_itself(genv, tmp_path):
    shell = genv.shell("bash")
    shell.ok("genv activate --gpus 1")
    # The shims folder twice on PATH, once through another spelling.
    shell.ok('PATH="%s/shims:%s/bin/../shims:$PATH"' % (genv.root, genv.root))
    assert shell.ok("nvidia-smi -L").startswith("GPU 0:")
    assert shell.ok("nvidia-smi -i %s -L" % uuid(0)).startswith("GPU 0:")
    result = shell.run('PATH="%s/shims:/usr/bin:/bin" nvidia-smi -L' % genv.root)
    assert result.rc == 127 and "nvidia-smi was not found" in result.err


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs a real nvidia-smi (a GPU machine)")
def test_real_nvidia_smi(genv):
    real_dir = os.path.dirname(shutil.which("nvidia-smi"))
    shell = genv.shell("bash", PATH="%s/bin:%s:/usr/bin:/bin" % (genv.root, real_dir), FAKE_NVIDIA_SMI_GPUS="")
    count = len(shell.ok("nvidia-smi -L").splitlines())
    shell.ok("genv activate --gpus 1")
    lines = shell.ok("nvidia-smi -L").splitlines()
    assert len(lines) == 1 and lines[0].startswith("GPU 0:")
    # The real one resolves UUIDs and bus ids (NVML reads them as hex, with or
    # without the domain).
    uuid0, bus0 = shell.ok("nvidia-smi --query-gpu=uuid,pci.bus_id --format=csv,noheader").strip().split(", ")
    short = bus0.split(":", 1)[1]
    for selection in ("-i=0", "-i0", "--id 0", "-i " + uuid0, "--id=" + bus0, "-i " + short, "-i " + bus0.lower()):
        lines = shell.ok("nvidia-smi %s -L" % selection).splitlines()
        assert len(lines) == 1 and lines[0].startswith("GPU 0:"), selection
    assert shell.ok("nvidia-smi dmon -c 1").splitlines()[-1].split()[0] == "0"
    if count > 1:
        assert shell.run("nvidia-smi -i 1 -L").rc == 6
    shell.ok("genv detach")
    assert shell.run("nvidia-smi -L").rc == 6
    assert count >= 1
