"""What a code review and a hostile user found (issue 8, part A): each test
failed on the code before the fix."""

import json
import os
import stat
import subprocess

import pytest

from conftest import UID, need
from genv.text import printable


def shared_folder(genv, name="shared"):
    """A world-writable sticky folder, like /tmp."""
    path = os.path.join(genv.base, name)
    os.makedirs(path)
    os.chmod(path, 0o1777)
    return path


def write(path, data, mode=0o644):
    with open(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)
    os.chmod(path, mode)


def envs_json(genv, **env):
    result = genv.cli("envs", "--json", **env)
    assert result.returncode == 0, result
    return json.loads(result.stdout)


# --- A1: a project folder is trusted only if it is the user's own -------------


def test_another_users_project_folder_is_skipped(genv, other_user, sh):
    top = shared_folder(genv)
    planted = os.path.join(top, "x", ".genv")
    os.makedirs(planted)
    write(os.path.join(planted, "config.json"), '{"format": 1, "gpus": 2, "name": "\\u001b]0;pwned\\u0007"}')
    for path in (os.path.dirname(planted), planted, os.path.join(planted, "config.json")):
        os.chown(path, other_user.pw_uid, other_user.pw_gid)
    work = os.path.join(top, "x", "work")
    os.makedirs(work)
    shell = genv.shell(sh, cwd=work)
    result = shell.run("genv activate")
    assert result.rc == 0, result
    assert result.err.splitlines() == ["genv: ignoring %s: the folder belongs to uid %d, not to you"
                                       % (planted, other_user.pw_uid)]
    assert shell.var("CUDA_VISIBLE_DEVICES") == ""
    assert shell.ok("genv config") == "gpus: (not set)\nname: (not set)\ngpu-memory: (not set)\n"
    home = shell.run("genv home")
    assert home.rc == 1 and planted in home.err and "no .genv folder of yours" in home.err


@pytest.mark.parametrize("what", ["folder", "config"])
def test_a_project_folder_others_can_write_is_skipped(genv, sh, what):
    project = os.path.join(genv.work, "p")
    folder = os.path.join(project, ".genv")
    os.makedirs(folder)
    write(os.path.join(folder, "config.json"), '{"format": 1, "gpus": 1}')
    os.chmod(folder, 0o755)
    if what == "folder":
        os.chmod(folder, 0o777)
    else:
        os.chmod(os.path.join(folder, "config.json"), 0o664)
    shell = genv.shell(sh, cwd=project)
    result = shell.run("genv activate")
    assert result.rc == 0
    assert "genv: ignoring %s:" % folder in result.err and "writable by others" in result.err
    assert shell.var("CUDA_VISIBLE_DEVICES") == ""
    # --save never writes into a folder it would not read.
    before = open(os.path.join(folder, "config.json")).read()
    result = shell.run("genv config gpus 3 --save")
    assert result.rc == 1 and "no .genv folder of yours" in result.err
    assert open(os.path.join(folder, "config.json")).read() == before
    assert sorted(os.listdir(folder)) == ["config.json"]
    # Fixed by its owner, it is used.
    os.chmod(folder, 0o755)
    os.chmod(os.path.join(folder, "config.json"), 0o644)
    fresh = genv.shell(sh, cwd=project)
    result = fresh.run("genv activate")
    assert result.rc == 0 and result.err == ""
    assert fresh.var("CUDA_VISIBLE_DEVICES") == "0"


def test_a_fifo_or_huge_config_does_not_hang_or_load(genv, sh):
    project = os.path.join(genv.work, "p")
    folder = os.path.join(project, ".genv")
    os.makedirs(folder)
    os.mkfifo(os.path.join(folder, "config.json"))
    shell = genv.shell(sh, cwd=project)
    result = shell.run("genv activate", timeout=30)  # would block forever opening the FIFO
    assert result.rc == 0 and "config.json is not a regular file" in result.err
    shell.ok("genv deactivate")
    os.unlink(os.path.join(folder, "config.json"))
    write(os.path.join(folder, "config.json"), '{"format": 1, "name": "%s"}' % ("x" * (100 << 10)))
    result = shell.run("genv activate")
    assert result.rc == 1 and "larger than 65536 bytes" in result.err and "--no-load" in result.err
    assert shell.var("GENV_ENVIRONMENT_ID") is None
    assert envs_json(genv) == []


# --- A2: names reach terminals escaped everywhere -------------------------------


@pytest.mark.both_shells
def test_names_are_escaped_everywhere(genv, sh):
    name = "a\x1b]0;owned\x07b\x1b[31mc\rd"
    shown = printable(name)
    assert "\x1b" not in shown
    shell = genv.shell(sh)
    shell.ok("PS1='> '")
    shell.ok("genv activate --name %s" % sh_quote(name))
    assert shell.var("_GENV_PROMPT_NAME") == shown
    status = shell.ok("genv status")
    assert "name: %s\n" % shown in status and "\x1b" not in status
    for listing in ("genv envs", "genv devices", "genv config"):
        output = shell.ok(listing)
        assert "\x1b" not in output and "\r" not in output, listing
    # One field's value is exact for scripts, escaped only on a terminal
    # (tests/test_interactive.py shows the terminal).
    assert shell.ok("genv config name") == name + "\n"
    result = shell.run("genv activate --id %s" % sh_quote(name))
    assert result.rc == 1 and "\x1b" not in result.err and "\x07" not in result.err
    result = shell.run("genv deactivate && genv activate --id %s" % sh_quote(name))
    assert result.rc == 1 and shown in result.err and "\x1b" not in result.err


# --- A3: genv touches only its own files -----------------------------------------


def test_only_genv_files_are_touched(genv, sh):
    folder = shared_folder(genv, "tmp")
    others = {
        ".tmp-notes": b"notes",
        ".tmp-%d-1-zzzzzzzz" % UID: b"not genv's pattern",
        ".tmp-%d-1-abcdef0" % UID: b"one digit short",
        "user-%d.json" % UID: b"hello from another program",
        "user-%d.json.bak" % UID: b"backup",
        "user-01.json": b"{}",
    }
    for name, data in others.items():
        write(os.path.join(folder, name), data)
    leftover = ".tmp-%d-4242-abcdef01" % UID  # what a killed genv writer leaves
    write(os.path.join(folder, leftover), b'{"format"')
    shell = genv.shell(sh, GENV_TMPDIR=folder)
    result = shell.run("genv envs")
    assert result.rc == 0
    assert result.err.splitlines() == [
        "genv: ignoring %s/user-%d.json: it is not a genv state file, so genv leaves it alone; move it away to "
        "use genv" % (folder, UID)]
    for name, data in others.items():
        with open(os.path.join(folder, name), "rb") as handle:
            assert handle.read() == data, name
    assert not os.path.exists(os.path.join(folder, leftover))
    # genv never replaces it either: commands that must write fail clearly.
    result = shell.run("genv activate")
    assert result.rc == 1 and "a file that genv did not write is in the way" in result.err
    assert shell.var("GENV_ENVIRONMENT_ID") is None
    with open(os.path.join(folder, "user-%d.json" % UID), "rb") as handle:
        assert handle.read() == others["user-%d.json" % UID]


def test_temporary_files_of_other_users_are_left_to_them(genv, other_user):
    assert genv.cli("envs").returncode == 0  # the folder exists
    theirs = os.path.join(genv.tmpdir, ".tmp-0-4242-abcdef01")
    write(theirs, b"root's write in progress")
    # The other user's command does not remove root's file (nor try).
    result = genv.cli("envs", user=other_user)
    assert result.returncode == 0 and result.stderr == b""
    assert os.path.exists(theirs)
    # Root's own next command does.
    assert genv.cli("envs").returncode == 0
    assert not os.path.exists(theirs)


# --- A4: path checks cannot be spelled around -------------------------------------


def test_state_folder_spellings(genv, tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    link = os.path.join(genv.base, "link")
    os.symlink(str(target), link)
    for spelling in (link, link + "/", link + "//", link + "/."):
        result = genv.cli("envs", GENV_TMPDIR=spelling)
        assert result.returncode == 1 and b"symbolic link" in result.stderr, (spelling, result)
    assert list(target.iterdir()) == []
    for spelling, complaint in (("relative/genv", b"absolute"), ("genv", b"absolute"),
                                (genv.base + "/x/../genv", b"'..'")):
        result = genv.cli("envs", GENV_TMPDIR=spelling)
        assert result.returncode == 1 and complaint in result.stderr, (spelling, result)
        assert len(result.stderr.splitlines()) == 1
    plain = os.path.join(genv.base, "plain")
    assert genv.cli("envs", GENV_TMPDIR=plain + "/").returncode == 0
    assert os.path.isdir(plain) and stat.S_IMODE(os.stat(plain).st_mode) == 0o1777


# --- A5: another user's file never breaks your command --------------------------------


BAD_NUMBERS = [
    ("created", "1e999"), ("created", "-1"), ("created", "1e300"),
    ("pid", "0"), ("pid", "1099511627776"), ("index", "5000"), ("index", "-1"),
    ("attached", "1e999"), ("gpus", "-1"), ("gpus", "99999"), ("checked", "1e999"),
]


def planted_state(uid, field, number, pid=1):
    """A state file whose one environment has a live terminal (``pid``), and
    one number out of range."""
    from genv.procs import processes

    values = {"created": "1.0", "pid": str(pid), "index": "0", "attached": "1.0", "gpus": "1", "checked": "1.0"}
    values[field] = number
    return (
        '{"format": 2, "uid": %d, "devices": {"key": "k", "checked": %s, "list": []}, "envs": [{"id": "e", '
        '"created": %s, "config": {"gpus": %s}, "terminals": [{"pid": %s, "token": "%s"}], '
        '"devices": [{"index": %s, "uuid": null, "attached": %s}], "warnings": []}]}'
        % (uid, values["checked"], values["created"], values["gpus"], values["pid"], processes().token(pid),
           values["index"], values["attached"])
    )


@pytest.mark.parametrize("field,number", BAD_NUMBERS)
def test_numbers_out_of_range_are_damage(genv, field, number):
    assert genv.cli("envs").returncode == 0
    path = os.path.join(genv.tmpdir, "user-%d.json" % UID)
    planted = planted_state(UID, field, number)
    write(path, planted)
    for command in ("envs", "devices", "status"):
        result = genv.cli(command, GENV_DEVICES="4")
        assert result.returncode == 0, (command, result)
        assert b"Traceback" not in result.stderr
    aside = [name for name in os.listdir(genv.tmpdir) if name.startswith("user-%d.json.damaged-" % UID)]
    if field == "checked":  # the device list: the file as a whole is damaged, and moved aside
        assert len(aside) == 1
        assert open(os.path.join(genv.tmpdir, aside[0])).read() == planted
    else:  # an environment's number: that environment is dropped, the file kept (issue 15, B9)
        assert aside == []
    assert genv.state(UID)["envs"] == []


def test_a_peers_infinite_times_break_nobody(genv, other_user):
    assert genv.cli("envs").returncode == 0
    path = os.path.join(genv.tmpdir, "user-%d.json" % other_user.pw_uid)
    terminal = subprocess.Popen(["sleep", "600"])
    write(path, planted_state(other_user.pw_uid, "created", "1e999", terminal.pid))
    os.chown(path, other_user.pw_uid, other_user.pw_gid)
    third = os.path.join(genv.tmpdir, "user-%d.json" % (other_user.pw_uid + 1))
    for user in (other_user, None):
        for command in ("envs", "devices"):
            result = genv.cli(command, user=user, GENV_DEVICES="4")
            assert result.returncode == 0, (command, user, result)
            assert len(result.stderr.splitlines()) <= 1 and b"Traceback" not in result.stderr
    terminal.kill()
    terminal.wait()
    assert not os.path.exists(third)


# --- A6: the lock never hangs silently ----------------------------------------------


class Holder:
    """A process holding the state lock until told to let go."""

    def __init__(self, folder, user=None):
        code = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
                "print('locked', flush=True)\nsys.stdin.readline()\n")
        kwargs = {}
        if user is not None:
            from conftest import as_user
            kwargs = as_user(user)
        from conftest import system_python
        self.proc = subprocess.Popen([system_python(), "-c", code, folder], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, **kwargs)
        assert self.proc.stdout.readline() == "locked\n"

    def release(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)


def test_a_held_lock_is_reported_and_given_up(genv):
    assert genv.cli("envs").returncode == 0
    holder = Holder(genv.tmpdir)
    try:
        result = genv.cli("envs", GENV_LOCK_TIMEOUT="1.5")
        assert result.returncode == 1
        lines = result.stderr.decode().splitlines()
        user = __import__("pwd").getpwuid(UID).pw_name
        assert lines == [
            "genv: waiting for the state lock on %s, held by pid %d (%s)" % (genv.tmpdir, holder.proc.pid, user),
            "genv: gave up after 1.5 s waiting for the state lock on %s, held by pid %d (%s); try again, or set "
            "GENV_LOCK_TIMEOUT to wait longer" % (genv.tmpdir, holder.proc.pid, user),
        ]
        result = genv.cli("envs", GENV_LOCK_TIMEOUT="0")
        assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
        assert b"gave up after 0 s" in result.stderr
        result = genv.cli("envs", GENV_LOCK_TIMEOUT="soon")
        assert result.returncode == 1 and b"invalid GENV_LOCK_TIMEOUT" in result.stderr
        # Completion gives up at once, silently.
        result = genv.cli("completions", "activate", "--id", GENV_LOCK_TIMEOUT="600")
        assert result.returncode == 0 and result.stdout == b"" and result.stderr == b""
    finally:
        holder.release()
    assert genv.cli("envs").returncode == 0


def test_genv_run_gives_up_on_a_held_lock_too(genv):
    # genv run holds SIGALRM back for its command (the supervisor takes it
    # with sigwaitinfo) from before it takes the lock: the lock wait must not
    # count on a timer's SIGALRM, or it waits forever, silently.
    assert genv.cli("envs").returncode == 0
    holder = Holder(genv.tmpdir)
    marker = os.path.join(genv.work, "ran")
    try:
        result = genv.cli("run", "--", "touch", marker, GENV_LOCK_TIMEOUT="1.5")
        assert result.returncode == 1, result
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 2 and lines[0].startswith("genv: waiting for the state lock on %s, held by pid %d"
                                                       % (genv.tmpdir, holder.proc.pid)), lines
        assert lines[1].startswith("genv: gave up after 1.5 s waiting for the state lock"), lines
    finally:
        holder.release()
    assert not os.path.exists(marker)  # the command never ran
    assert genv.cli("run", "--", "touch", marker).returncode == 0 and os.path.exists(marker)


def test_a_waiting_command_goes_on_when_the_lock_is_released(genv, other_user):
    assert genv.cli("envs").returncode == 0
    holder = Holder(genv.tmpdir, user=other_user)
    waiting = subprocess.Popen([os.path.join(genv.root, "bin", "genv"), "envs", "--json"],
                               env=genv.environ(GENV_LOCK_TIMEOUT="300"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    line = waiting.stderr.readline().decode()
    assert line == "genv: waiting for the state lock on %s, held by pid %d (%s)\n" % (
        genv.tmpdir, holder.proc.pid, other_user.pw_name)
    holder.release()
    out, _ = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and out == b"[]\n"


# --- A7: state and shell never disagree ---------------------------------------------


@pytest.mark.parametrize("command", [
    "genv deactivate | cat", "(genv deactivate)", "x=$(genv deactivate)", "(genv attach)", "genv detach | cat",
    "genv config gpus 2 | cat", "(genv config name other)", "genv attach & wait",
])
@pytest.mark.both_shells
def test_shell_changing_commands_refuse_where_they_cannot_change_the_shell(genv, sh, command):
    shell = genv.shell(sh)
    shell.ok("genv activate --gpus 1 --name mine")
    before = genv.state(UID)
    result = shell.run(command)
    assert "must run in the shell itself" in result.err, result
    assert genv.state(UID) == before
    assert shell.var("CUDA_VISIBLE_DEVICES") == "0"
    assert shell.var("GENV_ENVIRONMENT_ID") == before["envs"][0]["id"]
    # Printing works anywhere.
    assert shell.ok("x=$(genv config gpus); echo \"[$x]\"") == "[1]\n"
    assert shell.ok("genv config name | cat") == "mine\n"


@pytest.mark.both_shells
def test_activate_in_a_command_substitution_changes_nothing(genv, sh):
    shell = genv.shell(sh)
    result = shell.run('x=$(genv activate --gpus 1); echo "rc=$?"')
    assert result.out == "rc=1\n" and "must run in the shell itself" in result.err
    assert envs_json(genv) == []
    assert shell.var("GENV_ENVIRONMENT_ID") is None


def test_a_name_that_cannot_be_written_commits_nothing(genv, sh):
    project = os.path.join(genv.work, "p")
    os.makedirs(os.path.join(project, ".genv"))
    write(os.path.join(project, ".genv", "config.json"), '{"format": 1, "gpus": 1, "name": "bad\\ud800"}')
    shell = genv.shell(sh, cwd=project)
    result = shell.run("genv activate")
    assert result.rc == 1 and result.out == ""
    assert "cannot be written out" in result.err and len(result.err.splitlines()) == 1
    assert shell.var("GENV_ENVIRONMENT_ID") is None
    assert envs_json(genv) == []  # no orphan reservation
    other = genv.shell(sh)
    other.ok("genv activate --gpus 4")


BASH_OPTIONS = ["set -k", "set -euo pipefail", "set -a", "set -f", "shopt -s failglob nullglob extglob",
                "set -o posix", "set -u; shopt -s expand_aliases; alias cat=false"]
ZSH_OPTIONS = ["setopt nounset errexit pipefail", "setopt rcquotes kshArrays shWordSplit globSubst",
               "setopt noClobber posixBuiltins kshTypeset noGlob", "setopt noMultiFuncDef warnCreateGlobal",
               "setopt promptSubst cshNullGlob noEqualS allExport"]


@pytest.mark.parametrize("options", BASH_OPTIONS + ZSH_OPTIONS)
def test_emitted_code_works_under_any_shell_option(genv, options):
    kind = "zsh" if options.startswith("setopt") else "bash"
    shell = genv.shell(kind)
    shell.ok("unset CUDA_VISIBLE_DEVICES; PS1='p> '")
    shell.ok(options)
    result = shell.run("genv activate --gpus 2 --name 'o p'")
    assert result.rc == 0 and result.out == "", result
    assert shell.var("CUDA_VISIBLE_DEVICES") == "0,1"
    assert shell.var("GENV_ENVIRONMENT_ID")
    shell.ok("genv config gpus 1")
    shell.ok("genv attach")
    assert shell.var("CUDA_VISIBLE_DEVICES") == "0"
    assert shell.ok("genv config name") == "o p\n"
    shell.ok("genv detach")
    shell.ok("genv deactivate")
    assert shell.var("CUDA_VISIBLE_DEVICES") is None
    assert shell.var("PS1") == "p> "
    assert shell.var("GENV_ENVIRONMENT_ID") is None
    assert envs_json(genv) == []


# --- A8: activate --id means join ------------------------------------------------------


def test_activate_id_joins_only_a_live_environment(genv, sh):
    shell = genv.shell(sh)
    result = shell.run("genv activate --id nosuch")
    assert result.rc == 1 and result.out == ""
    assert "there is no environment nosuch" in result.err
    assert shell.var("GENV_ENVIRONMENT_ID") is None and envs_json(genv) == []
    gone = genv.shell(sh)
    gone.ok("genv activate")
    eid = gone.var("GENV_ENVIRONMENT_ID")
    gone.kill()
    result = shell.run("genv activate --id %s" % eid)
    assert result.rc == 1 and "there is no environment %s" % eid in result.err
    assert envs_json(genv) == []


def test_joining_with_a_count_attaches(genv, sh):
    first = genv.shell(sh)
    first.ok("genv activate --gpus 1")
    eid = first.var("GENV_ENVIRONMENT_ID")
    second = genv.shell(sh)
    second.ok("genv activate --id %s --gpus 2" % eid)
    assert second.var("CUDA_VISIBLE_DEVICES") == "0,1"
    assert [row["devices"] for row in envs_json(genv)] == [[0, 1]]
    first.ok("genv attach")  # the first terminal picks them up
    assert first.var("CUDA_VISIBLE_DEVICES") == "0,1"
    result = genv.shell(sh).run("genv activate --id %s --gpus 9" % eid)
    assert result.rc == 1 and "this machine has 4" in result.err


# --- A9: a read-only or full state folder still lists ------------------------------------


def test_listings_work_on_a_state_folder_they_cannot_write(genv, sh, request):
    # root writes anywhere: then the listing runs as the second account.
    user = request.getfixturevalue("other_user") if UID == 0 else None
    live = genv.shell(sh, user=user)
    live.ok("genv activate --name live --gpus 1")
    dead = genv.shell(sh, user=user)
    dead.ok("genv activate --name dead --gpus 1")
    dead.kill()
    path = os.path.join(genv.tmpdir, "user-%d.json" % (user.pw_uid if user else UID))
    before = open(path).read()
    os.chmod(genv.tmpdir, 0o555)
    try:
        result = live.run("genv envs")
        assert result.rc == 0, result
        assert "live" in result.out and "dead" not in result.out
        assert len(result.err.splitlines()) == 1 and "was not updated" in result.err
        result = live.run("genv devices")
        assert result.rc == 0 and "live" in result.out and "dead" not in result.out, result
        assert live.run("genv status").rc == 0
    finally:
        os.chmod(genv.tmpdir, 0o1777)
    assert open(path).read() == before


# --- A11: the README's configuration-as-code steps work as written ----------------------


def test_config_save_and_show_outside_an_environment(genv, sh):
    project = os.path.join(genv.work, "p")
    os.makedirs(project)
    shell = genv.shell(sh, cwd=project)
    shell.ok("mkdir -p .genv && genv home")
    shell.ok("genv config gpus 2 --save")
    shell.ok("genv config name proj --save")
    with open(os.path.join(project, ".genv", "config.json")) as handle:
        assert json.load(handle) == {"format": 1, "gpus": 2, "name": "proj"}
    assert shell.ok("genv config") == "gpus: 2\nname: proj\ngpu-memory: (not set)\n"
    assert shell.ok("genv config gpus") == "2\n"
    for command, complaint in (("genv config gpus 3", "add --save"), ("genv config --load", "nothing to load"),
                               ("genv config --save", "nothing to save")):
        result = shell.run(command)
        assert result.rc == 1 and complaint in result.err and result.out == "", (command, result)
    shell.ok("genv config name --clear --save")
    assert shell.ok("genv config name") == ""
    shell.ok("genv activate")
    assert shell.var("CUDA_VISIBLE_DEVICES") == "0,1"


# --- A12: prompts stay data when the prompt option is switched on later ------------------


@pytest.mark.parametrize("kind", ["bash", "zsh"])
def test_prompt_stays_data_when_the_option_is_switched_later(genv, kind):
    pexpect = pytest.importorskip("pexpect")
    need(kind)
    argv = ["bash", "--norc", "--noprofile", "-i"] if kind == "bash" else ["zsh", "-f", "-i"]
    off, on = (("shopt -u promptvars", "shopt -s promptvars") if kind == "bash"
               else ("unsetopt promptsubst", "setopt promptsubst"))
    child = pexpect.spawn(argv[0], argv[1:], env=genv.environ(), cwd=genv.work, encoding="utf-8", timeout=30,
                          dimensions=(50, 400))
    try:
        child.sendline("PS1='R> '; eval \"$(genv init -)\"; %s; echo SYNC" % off)
        child.expect("SYNC\r\n")
        child.expect_exact("R> ")

        def prompt_after(line):
            child.sendline(line + "; echo DONE")
            child.expect("DONE\r\n")
            child.expect(r"[^\r\n]*R> ")
            return child.after

        assert prompt_after("genv activate --name '$(touch PWNED)'") == "(genv:$(touch PWNED)) R> "
        assert prompt_after(on) == "(genv:$(touch PWNED)) R> "
        assert prompt_after("true") == "(genv:$(touch PWNED)) R> "
        assert prompt_after(off) == "(genv:$(touch PWNED)) R> "
        assert prompt_after("genv deactivate") == "R> "
        assert not os.path.exists(os.path.join(genv.work, "PWNED"))
    finally:
        child.close(force=True)


def sh_quote(value):
    return "'" + value.replace("'", "'\\''") + "'"


# --- numbers of any length (issue 15, B11) -------------------------------------------

# Each command that reads a number, {} standing for it; ``g`` after {} for a size.
NUMBER_COMMANDS = [
    "genv config gpus {}",
    "genv config gpu-memory {}g",
    "genv attach --count {}",
    "genv attach --index {}",
    "genv attach --index 0,{}",
    "genv run --gpus {} -- true",
    "genv run --index {} -- true",
    "genv run --gpu-memory {}g --gpus 1 -- true",
    "genv activate --gpus {}",
    "GENV_DEVICES={} genv devices",
]
LONG = 5000  # Python 3.11 refuses int() of a string of more than 4300 digits


@pytest.mark.parametrize("command", NUMBER_COMMANDS)
def test_numbers_of_any_length_are_one_line_errors_or_their_value(genv, command):
    """A number of thousands of digits was an internal error (exit 70).
    Too big, it is refused as a shorter number too big is; with leading
    zeros, it is its value, as ``0001`` is 1."""
    def run(number):
        shell = genv.shell("bash", GENV_DEVICES="4")  # a terminal of its own: no state carried over
        if not command.startswith("genv activate"):
            shell.ok("genv activate")
        result = shell.run(command.format(number))
        shell.close()  # (its environment goes with it, and the GPUs it held)
        return result

    short = run("9" * 25)
    assert short.rc == 1 and short.out == "" and short.err.startswith("genv: "), short
    for number in ("9" * LONG, "1" + "0" * LONG):
        result = run(number)
        assert (result.rc, result.out) == (1, ""), (command, result.rc, result.err[:300])
        assert result.err == short.err.replace("9" * 25, number), (command, result.err[:300])
    one = run("1")
    assert one.rc == 0, (command, one)
    zeros = run("0" * LONG + "1")
    assert (zeros.rc, zeros.out, zeros.err) == (one.rc, one.out, one.err), (command, zeros.rc, zeros.err[:300])
