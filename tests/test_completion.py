"""Tab completion: every command answers for itself (issue 4)."""

import json
import os

import pexpect
import pytest

from conftest import UID, need


def candidates(genv, *words):
    result = genv.cli("completions", *words)
    assert result.returncode == 0, result
    return result.stdout.decode().split("\n")[:-1]


def test_commands_are_completed(genv):
    names = candidates(genv)
    assert "activate" in names and "envs" in names and "sh-activate" not in names


def test_flags_fields_and_ids(genv):
    assert set(candidates(genv, "activate")) >= {"--id", "--name", "--gpus", "--no-load", "--no-attach", "--no-prompt"}
    assert "--gpus" not in candidates(genv, "activate", "--gpus", "2")
    assert set(candidates(genv, "config")) >= {"gpus", "name", "gpu-memory", "--clear", "--save", "--load"}
    assert "gpus" not in candidates(genv, "config", "gpus")
    for listing in ("envs", "devices", "ps", "status"):
        hosts = ["--host", "-H", "--all-hosts"] if listing != "status" else []  # status stays local
        assert candidates(genv, listing) == ["--format", "--json"] + hosts
        assert candidates(genv, listing, "--format") == ["table", "csv", "json"]
    # Hosts: those of the hosts file.
    os.makedirs(os.path.join(genv.home, ".config", "genv"))
    with open(os.path.join(genv.home, ".config", "genv", "hosts"), "w") as handle:
        handle.write("gpu1\ngpu2 /opt/genv/bin/genv  # comment\n")
    assert candidates(genv, "devices", "--host") == ["gpu1", "gpu2"]
    assert candidates(genv, "ssh", "-H") == ["gpu1", "gpu2"]
    assert set(candidates(genv, "ssh")) >= {"--gpus", "--gpu-memory", "--name", "--host", "--all-hosts"}
    assert set(candidates(genv, "attach")) == {"--count", "--index", "--over-subscribe", "-o", "--wait", "--for"}
    # -o is another spelling of the flag --over-subscribe: it takes no value,
    # and once either is given neither is offered again.
    for flag in ("-o", "--over-subscribe"):
        assert set(candidates(genv, "attach", flag)) == {"--count", "--index", "--wait", "--for"}, flag
    assert set(candidates(genv, "run", "-o")) >= {"--gpus", "--wait", "--"}
    assert candidates(genv, "init") == ["-"]
    assert candidates(genv, "no-such-command") == []


def test_environment_ids_after_id(genv):
    shell = genv.shell("bash")
    shell.ok("genv activate")
    assert candidates(genv, "activate", "--id") == [str(shell.pid)]


def test_gpu_indices_and_counts_after_attach_options(genv):
    shell = genv.shell("bash")
    shell.ok("genv activate --gpus 1")  # the GPU list is known from now on
    assert candidates(genv, "attach", "--index") == ["0", "1", "2", "3"]
    assert candidates(genv, "attach", "--count") == ["1", "2", "3", "4"]


def rename_env(genv, old, new):
    """An id with a space (older genvs let users choose ids)."""
    path = os.path.join(genv.tmpdir, "user-%d.json" % UID)
    with open(path) as handle:
        state = json.load(handle)
    for env in state["envs"]:
        if env["id"] == old:
            env["id"] = new
    with open(path, "w") as handle:
        json.dump(state, handle)


def test_bash_completion_function(genv):
    shell = genv.shell("bash")
    shell.ok("genv activate")
    rename_env(genv, str(shell.pid), "a b")
    out = shell.ok("COMP_WORDS=(genv act); COMP_CWORD=1; _genv_complete; printf '%s\\n' \"${COMPREPLY[@]}\"")
    assert out == "activate\n"
    out = shell.ok("COMP_WORDS=(genv activate --id ''); COMP_CWORD=3; _genv_complete; printf '%s\\n' \"${COMPREPLY[@]}\"")
    assert out == "a\\ b\n"
    out = shell.ok("COMP_WORDS=(genv config g); COMP_CWORD=2; _genv_complete; printf '%s\\n' \"${COMPREPLY[@]}\"")
    assert out == "gpus\ngpu-memory\n"
    assert shell.ok("complete -p genv").strip() == "complete -F _genv_complete genv"


@pytest.mark.parametrize("typed,expected", [("genv acti", "genv activate "), ("genv config na", "genv config name ")])
def test_zsh_completion_in_a_terminal(genv, typed, expected):
    need("zsh")
    child = pexpect.spawn("zsh", ["-f", "-i"], env=genv.environ(), cwd=genv.work, encoding="utf-8",
                          timeout=30, dimensions=(50, 200))
    try:
        child.sendline("PS1='Z> '; autoload -Uz compinit && compinit -u; eval \"$(genv init -)\"; echo SYNC")
        child.expect("SYNC\r\n")
        child.expect_exact("Z> ")
        child.send(typed + "\t")
        child.expect_exact(expected[len(typed):])
        child.sendcontrol("u")
        child.sendline("echo DONE")
        child.expect("DONE\r\n")
    finally:
        child.close(force=True)
