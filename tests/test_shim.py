"""The nvidia-smi shim: only the environment's GPUs, transparent outside."""

import os
import shutil

import pytest


def test_transparent_outside_an_environment(genv, sh):
    shell = genv.shell(sh)
    shell.ok('PATH="%s/shims:$PATH"' % genv.root)
    assert len(shell.ok("nvidia-smi -L").splitlines()) == 4


def test_only_attached_gpus(genv, sh):
    shell = genv.shell(sh)
    other = genv.shell(sh)
    other.ok("genv activate --gpus 1")  # takes GPU 0
    shell.ok("genv activate --gpus 2")  # gets 1 and 2
    assert shell.ok("nvidia-smi --query-gpu=index --format=csv,noheader") == "1\n2\n"
    assert [line.split(":")[0] for line in shell.ok("nvidia-smi -L").splitlines()] == ["GPU 1", "GPU 2"]
    assert "|   2  NVIDIA A100" in shell.ok("nvidia-smi")
    assert shell.ok("nvidia-smi -i 2 --query-gpu=index --format=csv,noheader") == "2\n"
    assert shell.ok("nvidia-smi --id=1,2,3 --query-gpu=index --format=csv,noheader") == "1\n2\n"
    result = shell.run("nvidia-smi -i 0 -L")
    assert (result.rc, result.out) == (6, "No devices were found\n")
    result = shell.run("nvidia-smi -i GPU-3f1e2d00-5ee0-4c1a-9a3e-00000000a100 -L")
    assert result.rc == 2 and "select GPUs by index" in result.err
    shell.ok("genv detach")
    result = shell.run("nvidia-smi -L")
    assert (result.rc, result.out) == (6, "No devices were found\n")


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
    shell.ok("genv detach")
    assert shell.run("nvidia-smi -L").rc == 6
    assert count >= 1
