"""What a user does in a terminal, in bash and in zsh (issues 2 and 4): the
tests of the shell's side (init, exports and their exact restore, quoting,
the prompt, the genv function's paths) in both shells, the others in bash."""

import json
import os
import pwd

import pytest

from conftest import UID
from genv.text import printable

# Values that broke other tools' shell code (see shared notes), plus plain ones.
NASTY = [
    "$(touch PWNED)",
    "`touch PWNED`",
    "it's \"quoted\" 'twice'",
    "trailing\\",
    "bang! 100% ${HOME}",
    "new\nline",
    "tab\there",
    "--leading-dashes",
    "ünïcödé ✓",
    "esc\x1b[31mred",
    "a'b''c",
    "%F{red}zsh%f \\w \\$",
]


@pytest.mark.both_shells
def test_install_lists_commands_and_root(genv, sh):
    shell = genv.shell(sh)
    listing = shell.ok("genv")
    for command in ("activate", "attach", "config", "deactivate", "detach", "devices", "envs", "home", "status"):
        assert "\n   %s " % command in listing
    assert shell.ok("genv root").strip() == genv.root
    result = shell.run("genv frobnicate")
    assert result.rc == 127
    assert result.err.strip() == "genv: no such command 'frobnicate'"


@pytest.mark.both_shells
def test_activate_detaches_and_exports(genv, sh):
    shell = genv.shell(sh)
    shell.ok("genv activate")
    eid = shell.var("GENV_ENVIRONMENT_ID")
    assert eid == str(shell.pid)
    assert shell.var("CUDA_VISIBLE_DEVICES") == ""
    assert shell.var("CUDA_DEVICE_ORDER") == "PCI_BUS_ID"
    result = shell.run("nvidia-smi")
    assert (result.rc, result.out) == (6, "No devices were found\n")
    assert shell.var("PS1").startswith("(genv")
    again = shell.run("genv activate")
    assert again.rc == 1 and "already in environment" in again.err
    assert shell.var("GENV_ENVIRONMENT_ID") == eid
    assert len(genv.state()["envs"]) == 1


@pytest.mark.both_shells
def test_activate_help_outside_an_environment(genv, sh):
    shell = genv.shell(sh)
    for form in ("genv activate --help", "genv help activate", "genv activate -h"):
        result = shell.run(form)
        assert result.rc == 0, result
        assert result.out.startswith("Usage: genv activate")
        assert "--no-attach" in result.out
    assert shell.var("GENV_ENVIRONMENT_ID") is None


@pytest.mark.parametrize("start", [None, "", "3,1"])
@pytest.mark.both_shells
def test_deactivate_restores_exactly(genv, sh, start):
    shell = genv.shell(sh)
    if start is None:
        shell.ok("unset CUDA_VISIBLE_DEVICES")
    else:
        shell.ok("export CUDA_VISIBLE_DEVICES='%s'" % start)
    shell.ok("export CUDA_DEVICE_ORDER=FASTEST_FIRST")
    shell.ok("PS1='prompt> '")
    before = {name: shell.var(name) for name in ("PATH", "PS1", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    shell.ok("genv activate --name test --gpus 2")
    assert shell.var("CUDA_VISIBLE_DEVICES") == "0,1"
    shell.ok("PATH=$PATH:/opt/added-meanwhile")
    shell.ok("genv config gpus 1 && genv attach && genv detach")
    shell.ok("genv deactivate")
    after = {name: shell.var(name) for name in ("PATH", "PS1", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    assert after["PATH"] == before["PATH"] + ":/opt/added-meanwhile"
    after["PATH"] = before["PATH"]
    assert after == before
    leftovers = shell.ok("set | grep -a -E '^_?GENV_' | grep -v -E '^(GENV_TMPDIR|GENV_PYTHON)=' || true")
    assert leftovers == ""
    assert genv.state()["envs"] == []


@pytest.mark.both_shells
def test_deactivate_keeps_unset_variables_unset_under_nounset(genv, sh):
    shell = genv.shell(sh)
    shell.ok("unset CUDA_VISIBLE_DEVICES CUDA_DEVICE_ORDER PS1")
    shell.ok("set -u" if sh == "bash" else "setopt nounset")
    shell.ok("genv activate --gpus 1")
    assert shell.var("CUDA_VISIBLE_DEVICES") == "0"
    shell.ok("genv deactivate")
    assert shell.var("CUDA_VISIBLE_DEVICES") is None
    assert shell.var("CUDA_DEVICE_ORDER") is None
    assert shell.var("PS1") is None


def test_deactivate_outside_fails(genv, sh):
    shell = genv.shell(sh)
    result = shell.run("genv deactivate")
    assert result.rc == 1 and result.out == ""
    assert result.err.strip() == "genv: this terminal is not in an environment; run 'genv activate' first"


@pytest.mark.both_shells
def test_config_set_print_clear(genv, sh):
    shell = genv.shell(sh)
    shell.ok("genv activate")
    assert shell.ok("genv config gpus") == ""
    shell.ok("genv config gpus 3")
    shell.ok("genv config name alpha")
    assert shell.ok("genv config gpus") == "3\n"
    assert shell.ok("genv config") == "gpus: 3\nname: alpha\ngpu-memory: (not set)\n"
    shell.ok("genv config name --clear")
    assert shell.ok("genv config name") == ""
    assert shell.var("_GENV_PROMPT_NAME") is None
    shell.ok("genv config --clear")
    assert shell.ok("genv config") == "gpus: (not set)\nname: (not set)\ngpu-memory: (not set)\n"


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "", "99999999999999999999", " 2", "+2", "٣"])
def test_config_rejects_invalid_counts(genv, sh, bad):
    shell = genv.shell(sh)
    shell.ok("genv activate && genv config gpus 2")
    before = genv.state()
    result = shell.run("genv config gpus '%s'" % bad)
    assert result.rc != 0
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genv: "), result
    assert genv.state() == before
    assert shell.ok("genv config gpus") == "2\n"


@pytest.mark.parametrize("value", NASTY)
@pytest.mark.both_shells
def test_values_are_data(genv, sh, value):
    shell = genv.shell(sh)
    shell.ok("export NASTY=%s" % _quote(value))
    shell.ok('genv activate --name "$NASTY"')
    # For scripts (not a terminal): exact; in the prompt: escaped; in JSON: exact.
    assert shell.ok("genv config name") == value + "\n"
    shell.ok('name=$(genv config name)')
    assert shell.var("name") == value.rstrip("\n")  # $(...) drops trailing newlines, as for any command
    assert shell.var("_GENV_PROMPT_NAME") == printable(value)
    shell.ok('genv config name -- "$NASTY"')
    rows = json.loads(shell.ok("genv envs --json"))
    assert rows[0]["name"] == value
    eid = shell.var("GENV_ENVIRONMENT_ID")
    other = genv.shell(sh)
    other.ok("export NASTY=%s" % _quote(value))
    other.ok('genv activate --id %s' % eid)
    rows = json.loads(other.ok("genv envs --json"))
    assert [(row["id"], row["name"]) for row in rows] == [(eid, value)]
    assert sorted(rows[0]["pids"]) == sorted([shell.pid, other.pid])
    # An id is data too, even one that names no environment.
    result = other.run('genv deactivate; genv activate --id "$NASTY-id"')
    assert result.rc == 1 and printable(value) in result.err
    assert not os.path.exists(os.path.join(genv.work, "PWNED"))


@pytest.mark.both_shells
def test_exit_codes_are_true(genv, sh):
    shell = genv.shell(sh)
    assert shell.run("genv activate --bogus").rc == 1
    assert shell.var("GENV_ENVIRONMENT_ID") is None
    shell.ok("genv activate")
    assert shell.run("genv attach").rc == 1  # no count configured
    assert shell.run("genv config gpus nope").rc == 1
    assert shell.run("genv config colour red").rc == 1
    shell.ok("genv config gpus 9")
    result = shell.run("genv attach")
    assert result.rc == 1 and "this machine has 4" in result.err
    assert shell.run("genv attach || echo failed").out == "failed\n"


def test_failed_command_prints_no_script(genv):
    result = genv.cli("sh-config", "gpus", "x", GENV_ENVIRONMENT_ID="1")
    assert result.returncode == 1 and result.stdout == b""
    result = genv.cli("sh-activate", "--gpus", "-3")
    assert result.returncode == 1 and result.stdout == b""


def test_attach_reattach_detach(genv, sh):
    shell = genv.shell(sh)
    shell.ok("genv activate && genv config gpus 2 && genv attach")
    assert shell.var("CUDA_VISIBLE_DEVICES") == "0,1"
    assert shell.var("CUDA_DEVICE_ORDER") == "PCI_BUS_ID"
    listed = shell.ok("nvidia-smi -L").splitlines()
    assert [line.split(":")[0] for line in listed] == ["GPU 0", "GPU 1"]
    other = genv.shell(sh)
    other.ok("genv activate && genv config gpus 2 && genv attach")
    assert other.var("CUDA_VISIBLE_DEVICES") == "2,3"
    third = genv.shell(sh)
    third.ok("genv activate && genv config gpus 1")
    result = third.run("genv attach")
    assert result.rc == 1 and "only 0 of this machine's 4 are free" in result.err
    assert third.var("CUDA_VISIBLE_DEVICES") == ""
    shell.ok("genv config gpus 3")
    result = shell.run("genv attach")
    assert result.rc == 1 and shell.var("CUDA_VISIBLE_DEVICES") == ""  # left detached
    shell.ok("genv config gpus 1 && genv attach")
    assert shell.var("CUDA_VISIBLE_DEVICES") == "0"
    third.ok("genv attach")
    assert third.var("CUDA_VISIBLE_DEVICES") == "1"
    other.ok("genv detach")
    assert other.run("nvidia-smi").out == "No devices were found\n"
    assert other.var("CUDA_VISIBLE_DEVICES") == ""


def test_envs_and_devices_tables(genv, sh):
    shell = genv.shell(sh)
    shell.ok("genv activate --name 'Norwegian Wood' --gpus 1")
    lines = shell.ok("genv envs").splitlines()
    assert lines[0].split() == ["ID", "USER", "NAME", "CREATED", "PID(S)"]
    assert lines[1].split("  ")[0] == str(shell.pid)
    assert "%s(%d)" % (pwd.getpwuid(UID).pw_name, UID) in lines[1]
    assert "Norwegian Wood" in lines[1] and ("ago" in lines[1] or "just now" in lines[1])
    lines = shell.ok("genv devices").splitlines()
    # The seed's columns first, then the share, the GPU and its memory.
    assert lines[0].split() == ["ID", "ENV", "ID", "ENV", "NAME", "ATTACHED", "SHARE", "FREE", "GPU", "MEMORY"]
    assert len(lines) == 5
    assert lines[1].startswith("0 ") and "Norwegian Wood" in lines[1] and "whole" in lines[1]
    assert lines[1].endswith("NVIDIA A100-SXM4-40GB  0MiB / 40960MiB")
    assert lines[2].split() == ["1", "40g", "NVIDIA", "A100-SXM4-40GB", "0MiB", "/", "40960MiB"]
    for command in ("envs", "devices"):
        assert shell.run("genv %s --help" % command).out.startswith("Usage: genv %s" % command)


def test_multiple_terminals_and_kill(genv, sh):
    first = genv.shell(sh)
    first.ok("genv activate --gpus 2")
    eid = first.var("GENV_ENVIRONMENT_ID")
    second = genv.shell("zsh" if sh == "bash" else "bash")  # mixed shells join
    second.ok("genv activate --id '%s'" % eid)
    assert second.var("CUDA_VISIBLE_DEVICES") == "0,1"
    assert second.ok("genv config gpus") == "2\n"
    pids = json.loads(second.ok("genv envs --json"))[0]["pids"]
    assert sorted(pids) == sorted([first.pid, second.pid])
    first.kill()
    pids = json.loads(second.ok("genv envs --json"))[0]["pids"]
    assert pids == [second.pid]
    observer = genv.shell(sh)
    second.kill()
    assert observer.ok("genv envs --json") == "[]\n"
    # Every GPU is free again (the table strips trailing spaces, so ask for JSON).
    rows = json.loads(observer.ok("genv devices --json"))
    assert [(row["index"], row["environments"]) for row in rows] == [(0, []), (1, []), (2, []), (3, [])]
    observer.ok("genv activate --gpus 4")
    assert observer.var("CUDA_VISIBLE_DEVICES") == "0,1,2,3"


def test_terminals_stay_in_step(genv, sh):
    first = genv.shell(sh)
    first.ok("genv activate --gpus 1 --name shared")
    eid = first.var("GENV_ENVIRONMENT_ID")
    second = genv.shell(sh)
    second.ok("genv activate --id %s" % eid)
    first.ok("genv config gpus 2 && genv attach")
    assert first.var("CUDA_VISIBLE_DEVICES") == "0,1"
    second.ok("genv attach")
    assert second.var("CUDA_VISIBLE_DEVICES") == "0,1"
    status = second.ok("genv status")
    assert "environment: %s" % eid in status and "name: shared" in status and "attached: 0,1" in status
    assert genv.shell(sh).ok("genv status") == "not active\n"


def test_infrastructure_as_code(genv, sh):
    shell = genv.shell(sh)
    result = shell.run("genv home")
    assert result.rc == 1 and "mkdir .genv" in result.err
    project = os.path.join(genv.work, "project")
    os.makedirs(os.path.join(project, ".genv"))
    os.makedirs(os.path.join(project, "src", "deep"))
    shell.ok("cd %s/src/deep" % project)
    assert shell.ok("genv home") == os.path.join(project, ".genv") + "\n"
    shell.ok("genv activate && genv config gpus 2 --save && genv config name proj --save")
    shell.ok("genv config gpus 1")
    shell.ok("genv config --load")
    assert shell.ok("genv config") == "gpus: 2\nname: proj\ngpu-memory: (not set)\n"
    shell.ok("genv deactivate")
    fresh = genv.shell(sh, cwd=project)
    fresh.ok("genv activate")
    assert fresh.var("CUDA_VISIBLE_DEVICES") == "0,1"
    assert fresh.ok("genv config name") == "proj\n"
    again = genv.shell(sh, cwd=project)
    again.ok("genv activate --no-attach")
    assert again.var("CUDA_VISIBLE_DEVICES") == ""
    assert again.ok("genv config gpus") == "2\n"
    plain = genv.shell(sh, cwd=project)
    plain.ok("genv activate --no-load")
    assert plain.ok("genv config gpus") == ""
    os.makedirs(os.path.join(genv.home, ".genv"))
    assert genv.shell(sh).ok("genv home") == os.path.join(genv.home, ".genv") + "\n"


@pytest.mark.both_shells
def test_no_prompt_leaves_prompt_alone(genv, sh):
    shell = genv.shell(sh)
    shell.ok("PS1='mine> '")
    shell.ok("genv activate --no-prompt --name x")
    assert shell.var("PS1") == "mine> "
    shell.ok("genv config name y")
    assert shell.var("PS1") == "mine> "
    shell.ok("genv deactivate")
    assert shell.var("PS1") == "mine> "


@pytest.mark.both_shells
def test_prompt_follows_name_and_user_edits(genv, sh):
    shell = genv.shell(sh)
    shell.ok("PS1='p> '")
    shell.ok("genv activate --name one")
    prefix = shell.var("_GENV_PS1_PREFIX")
    assert shell.var("PS1") == prefix + "p> "
    shell.ok("PS1=\"(venv) $PS1\"")
    shell.ok("genv config name two")
    assert shell.var("_GENV_PROMPT_NAME") == "two"
    shell.ok("genv deactivate")
    assert shell.var("PS1") == "(venv) p> "


@pytest.mark.both_shells
def test_python_switching_does_not_break_genv(genv, sh, tmp_path):
    venv = os.path.join(genv.base, "venv")
    __import__("subprocess").run(["/usr/bin/env", "python3", "-m", "venv", "--without-pip", venv], check=True)
    shell = genv.shell(sh, GENV_PYTHON=None)
    pinned = shell.var("GENV_PYTHON")
    assert pinned and os.path.isabs(pinned)
    shell.ok(". %s/bin/activate" % venv)
    assert shell.ok("command -v python3").strip() == venv + "/bin/python3"
    shell.ok("genv activate --gpus 1 && genv config name v && genv envs >/dev/null && genv deactivate")
    # Without a pinned interpreter genv falls back to python3 on PATH, here
    # the venv's: genv needs only the standard library on Linux.
    shell.ok("unset GENV_PYTHON")
    shell.ok("genv activate --gpus 1 && genv deactivate")


def test_genv_devices_without_nvidia_smi(genv):
    result = genv.cli("devices", PATH="%s/bin:/usr/bin:/bin" % genv.root)
    assert result.returncode == 1
    assert b"GENV_DEVICES" in result.stderr and b"Traceback" not in result.stderr
    result = genv.cli("devices", PATH="%s/bin:/usr/bin:/bin" % genv.root, GENV_DEVICES="3")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 4


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


@pytest.mark.both_shells
def test_a_broken_python_first_on_path_does_not_matter(genv, sh):
    """Like `conda activate` or any environment switch: whatever python3 is
    first on PATH later, genv runs on the interpreter pinned at init."""
    broken = os.path.join(genv.base, "broken-env", "bin")
    os.makedirs(broken)
    with open(os.path.join(broken, "python3"), "w") as handle:
        handle.write("#!/bin/sh\necho 'this python must not run genv' >&2\nexit 3\n")
    os.chmod(os.path.join(broken, "python3"), 0o755)
    shell = genv.shell(sh, GENV_PYTHON=None)
    shell.ok('PATH="%s:$PATH"' % broken)
    shell.ok("genv activate --gpus 2 && genv config name c && genv envs >/dev/null && genv status >/dev/null")
    assert shell.var("CUDA_VISIBLE_DEVICES") == "0,1"
    shell.ok("genv deactivate")


def test_genv_python_is_the_interpreter_used(genv, sh):
    log = os.path.join(genv.base, "python.log")
    wrapper = os.path.join(genv.base, "logging-python")
    with open(wrapper, "w") as handle:
        handle.write('#!/bin/sh\necho "$@" >> "%s"\nexec "%s" "$@"\n' % (log, __import__("conftest").system_python()))
    os.chmod(wrapper, 0o755)
    shell = genv.shell(sh, GENV_PYTHON=wrapper)
    shell.ok("genv activate && genv envs >/dev/null")
    calls = open(log).read().splitlines()
    assert len(calls) == 2 and all(call.startswith("-I -S ") for call in calls)
