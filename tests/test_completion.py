"""Tab completion: every command answers for itself (issue 4)."""

import pexpect
import pytest

from conftest import need


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
    assert set(candidates(genv, "config")) >= {"gpus", "name", "--clear", "--save", "--load"}
    assert "gpus" not in candidates(genv, "config", "gpus")
    assert candidates(genv, "envs") == ["--json"]
    assert candidates(genv, "init") == ["-"]
    assert candidates(genv, "no-such-command") == []


def test_environment_ids_after_id(genv):
    shell = genv.shell("bash")
    shell.ok("genv activate --id 'team job'")
    assert candidates(genv, "activate", "--id") == ["team job"]


def test_bash_completion_function(genv):
    shell = genv.shell("bash")
    shell.ok("genv activate --id 'a b'")
    out = shell.ok("COMP_WORDS=(genv act); COMP_CWORD=1; _genv_complete; printf '%s\\n' \"${COMPREPLY[@]}\"")
    assert out == "activate\n"
    out = shell.ok("COMP_WORDS=(genv activate --id ''); COMP_CWORD=3; _genv_complete; printf '%s\\n' \"${COMPREPLY[@]}\"")
    assert out == "a\\ b\n"
    out = shell.ok("COMP_WORDS=(genv config g); COMP_CWORD=2; _genv_complete; printf '%s\\n' \"${COMPREPLY[@]}\"")
    assert out == "gpus\n"
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
