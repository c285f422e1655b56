"""The dispatcher and the bash commands (issue 2)."""

import os
import subprocess

from conftest import need


def run(genv, argv, cwd=None):
    return subprocess.run(argv, env=genv.environ(), cwd=cwd or genv.work, capture_output=True, text=True,
                          timeout=60)


def test_root_through_symlinks_and_relative_paths(genv, tmp_path):
    link_dir = os.path.join(genv.base, "links")
    os.makedirs(link_dir)
    os.symlink(os.path.join(genv.root, "bin", "genv"), os.path.join(link_dir, "absolute"))
    os.symlink(os.path.relpath(os.path.join(genv.root, "bin", "genv"), link_dir), os.path.join(link_dir, "relative"))
    os.symlink(os.path.join(link_dir, "relative"), os.path.join(link_dir, "chained"))
    for argv, cwd in [
        ([os.path.join(link_dir, "absolute"), "root"], None),
        ([os.path.join(link_dir, "relative"), "root"], None),
        ([os.path.join(link_dir, "chained"), "root"], None),
        (["./genv", "root"], os.path.join(genv.root, "bin")),
        (["bash", "genv", "root"], os.path.join(genv.root, "bin")),
        (["bin/../bin/genv", "root"], genv.root),
    ]:
        result = run(genv, argv, cwd)
        assert result.returncode == 0, (argv, result)
        assert os.path.realpath(result.stdout.strip()) == os.path.realpath(genv.root), argv


def test_help_and_usage(genv):
    genv_bin = os.path.join(genv.root, "bin", "genv")
    listing = run(genv, [genv_bin]).stdout
    assert listing.startswith("Usage: genv <command>")
    assert run(genv, [genv_bin, "help"]).stdout == listing
    for command in ("activate", "attach", "config", "deactivate", "detach", "devices", "envs", "home", "status",
                    "init", "root", "help", "commands", "completions", "version"):
        for argv in ([genv_bin, "help", command], [genv_bin, command, "--help"]):
            result = run(genv, argv)
            assert result.returncode == 0 and result.stdout.startswith("Usage: genv %s" % command), (argv, result)
    result = run(genv, [genv_bin, "help", "nope"])
    assert result.returncode == 127 and result.stderr == "genv: no such command 'nope'\n"
    result = run(genv, [genv_bin, "../bin/genv"])
    assert result.returncode == 127


def test_shell_commands_need_the_function(genv):
    result = run(genv, [os.path.join(genv.root, "bin", "genv"), "activate"])
    assert result.returncode == 1 and "genv init -" in result.stderr and result.stdout == ""


def test_version_and_commands(genv):
    genv_bin = os.path.join(genv.root, "bin", "genv")
    assert run(genv, [genv_bin, "--version"]).stdout.startswith("genv 0.")
    names = run(genv, [genv_bin, "commands"]).stdout.split()
    assert names == sorted(names) and "activate" in names and "sh-activate" not in names


def test_init_prints_setup_or_code(genv):
    genv_bin = os.path.join(genv.root, "bin", "genv")
    assert 'eval "$(genv init -)"' in run(genv, [genv_bin, "init"]).stdout
    for shell in ("bash", "zsh"):
        need(shell)
        code = run(genv, [genv_bin, "init", "-", shell]).stdout
        assert "genv() {" in code
        check = subprocess.run([shell, "-n"], input=code, capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    bad = run(genv, [genv_bin, "init", "-", "fish"])
    assert bad.returncode == 1 and "unsupported shell 'fish'" in bad.stderr


def test_debug_traces(genv):
    result = subprocess.run([os.path.join(genv.root, "bin", "genv"), "root"], env=genv.environ(GENV_DEBUG="1"),
                            capture_output=True, text=True)
    assert result.returncode == 0 and "+ " in result.stderr
