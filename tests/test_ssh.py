"""Many machines over OpenSSH (issue 18), against real sshd on loopback.

1. listings across hosts: --host/-H (repeatable, commas), --all-hosts and
   the hosts file, the HOST column, the host field, the JSON document;
   single-host output unchanged; genv status stays local
2. the transport: the user's ssh through GENV_SSH_COMMAND, BatchMode, the
   time-out, connection reuse in a private control folder, the remote
   genv's path (GENV_REMOTE_GENV, the hosts file), quoting, DEST checks
3. a host that fails (refused, denied, hangs, no genv, not genv's JSON, a
   format this genv cannot read) never hides the others
4. genv ssh: the host where the request fits, best fit; a lost race goes to
   the next host and the command runs once; none fits; the exit status is
   the command's; the GPUs are freed when it ends; a login shell with a
   terminal
8. the README's "Several machines" examples

tests/sshd_hosts.py starts the sshd instances; their sessions run the genv
installed for the test (conftest's ``genv`` fixture).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import REPO, need, system_python
from sshd_hosts import Hosts

sys.path.insert(0, REPO)
from genv import remote  # noqa: E402
from genv.commands import _hosts, ssh as ssh_command  # noqa: E402
from genv.errors import GenvError, UsageError  # noqa: E402


@pytest.fixture
def hosts(genv):
    need("sshd")
    base = tempfile.mkdtemp(prefix="genv-ssh-", dir="/tmp")
    made = Hosts(base, genv.root, system_python())
    genv.extra.update(made.environ())
    try:
        yield made
    finally:
        made.stop()
        shutil.rmtree(base, ignore_errors=True)


def run(genv, *args, **overrides):
    done = genv.cli(*args, **overrides)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


class Holder:
    """An environment held on a host for as long as the test wants (an ssh
    session running genv run around a process that waits for its stdin)."""

    def __init__(self, hosts, name, *options):
        line = " ".join(["genv", "run", "--no-load", *options, "--", "sh", "-c",
                         "'echo \"$GENV_ENVIRONMENT_ID\"; exec cat >/dev/null'"])
        self.proc = subprocess.Popen(["ssh", "-F", hosts.config, "-o", "BatchMode=yes", name, line],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.eid = self.proc.stdout.readline().decode().strip()
        assert self.eid.isdigit(), self.proc.stderr.read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(30)


def remote_devices(hosts, name, genv="genv"):
    done = hosts.ssh(name, "%s devices --format json" % genv)
    assert done.returncode == 0, done
    return json.loads(done.stdout)


def script(path, text):
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o755)
    return path


# === 1. listings across hosts ===============================================================


def test_listings_across_hosts(genv, hosts):
    hosts.add("gpu1", gpus=4)
    apps = os.path.join(hosts.base, "apps")
    with open(apps, "w") as handle:  # a live process (this test's) on GPU 1 of gpu2, outside genv
        handle.write("%d 1 1024 python\n" % os.getpid())
    hosts.add("gpu2", gpus=2, FAKE_NVIDIA_SMI_APPS=apps)
    holder = Holder(hosts, "gpu1", "--gpus", "1", "--name", "train")
    try:
        rc, out, err = run(genv, "devices", "--host", "gpu1,gpu2")
        assert (rc, err) == (0, ""), err
        lines = out.splitlines()
        assert lines[0].split()[:3] == ["HOST", "ID", "ENV"]
        assert [line.split()[:2] for line in lines[1:]] == [
            ["gpu1", "0"], ["gpu1", "1"], ["gpu1", "2"], ["gpu1", "3"], ["gpu2", "0"], ["gpu2", "1"]]
        assert "train" in lines[1] and holder.eid in lines[1]

        # -H, repeated, --host=, -HDEST: the same hosts, in the order given (CSV: no "1 second ago").
        csv = run(genv, "devices", "--host", "gpu1,gpu2", "--format", "csv")[1]
        for args in (["-H", "gpu1", "-H", "gpu2"], ["--host=gpu1", "-Hgpu2"], ["-H", "gpu1,gpu2,gpu1"]):
            assert run(genv, "devices", "--format", "csv", *args)[1] == csv, args

        rc, out, err = run(genv, "devices", "-H", "gpu2,gpu1", "--format", "csv")
        rows = out.split("\r\n")
        assert rows[0].startswith("host,index,uuid,name,")
        assert [row.split(",")[:2] for row in rows[1:-1]] == [
            ["gpu2", "0"], ["gpu2", "1"], ["gpu1", "0"], ["gpu1", "1"], ["gpu1", "2"], ["gpu1", "3"]]

        rc, out, err = run(genv, "devices", "-H", "gpu1,gpu2", "--json")
        document = json.loads(out)
        assert document["format"] == 1 and document["listing"] == "devices"
        assert [entry["host"] for entry in document["hosts"]] == ["gpu1", "gpu2"]
        for entry in document["hosts"]:
            assert entry["error"] is None
            for row in entry["rows"]:
                assert list(row)[0] == "host" and row["host"] == entry["host"]
            # The rows are the host's own listing, with the host added.
            assert [{k: v for k, v in row.items() if k != "host"} for row in entry["rows"]] == \
                remote_devices(hosts, entry["host"])

        rc, out, err = run(genv, "envs", "-H", "gpu1,gpu2")
        assert rc == 0 and out.splitlines()[0].split()[:3] == ["HOST", "ID", "USER"]
        assert len(out.splitlines()) == 2 and out.splitlines()[1].split()[:2] == ["gpu1", holder.eid]
        rc, out, err = run(genv, "envs", "-H", "gpu1,gpu2", "--format", "csv")
        assert out.split("\r\n")[0].startswith("host,id,uid,") and out.split("\r\n")[1].startswith("gpu1,")
        rc, out, err = run(genv, "envs", "-H", "gpu1", "--format", "json")
        (entry,) = json.loads(out)["hosts"]
        assert entry["rows"][0]["host"] == "gpu1" and entry["rows"][0]["name"] == "train"

        rc, out, err = run(genv, "ps", "-H", "gpu1,gpu2")
        assert rc == 0, err
        header, row = out.splitlines()
        assert header.split()[:3] == ["HOST", "GPU", "PID"]
        assert row.split()[:3] == ["gpu2", "1", str(os.getpid())] and "UNMANAGED" in row
        rc, out, err = run(genv, "ps", "-H", "gpu1")
        assert out == "No GPU processes found\n"
        rc, out, err = run(genv, "ps", "-H", "gpu2", "--format", "csv")
        assert out.split("\r\n")[0] == "host,gpu,pid,uid,user,env_id,env_name,memory,command,managed,misplaced"
    finally:
        holder.close()
    # Without the options: this machine's listing, exactly as before (no HOST column).
    rc, out, err = run(genv, "devices")
    assert rc == 0 and out.startswith("ID  ENV ID")
    rc, out, err = run(genv, "devices", "--format", "json")
    assert isinstance(json.loads(out), list)
    # genv status stays local.
    rc, out, err = run(genv, "status", "-H", "gpu1")
    assert rc == 1 and "unknown option" in err


def test_all_hosts_reads_the_hosts_file(genv, hosts):
    hosts.add("gpu1", gpus=1)
    # A host where genv is not on the PATH of ssh sessions: its path follows it in the file.
    hosts.add("bare", gpus=2, PATH="%s/tests/fake:/usr/bin:/bin" % genv.root)
    rc, out, err = run(genv, "devices", "--all-hosts")
    assert rc == 1 and "there is no hosts file" in err
    hosts.write_hosts("# our machines\n\ngpu1   # the small one\n  bare  %s/bin/genv\ngpu1\n" % genv.root)
    rc, out, err = run(genv, "devices", "--all-hosts", "--format", "csv")
    assert (rc, err) == (0, "")
    assert [row.split(",")[:2] for row in out.split("\r\n")[1:-1]] == [["gpu1", "0"], ["bare", "0"], ["bare", "1"]]
    # --host takes the path of genv from the hosts file too.
    rc, out, err = run(genv, "envs", "-H", "bare", "--format", "csv")
    assert (rc, err) == (0, "")
    # Both at once is a usage error; so is a bad line in the file.
    rc, out, err = run(genv, "devices", "--all-hosts", "-H", "gpu1")
    assert rc == 1 and "not both" in err
    hosts.write_hosts("gpu1 /path/of/genv extra\n")
    rc, out, err = run(genv, "devices", "--all-hosts")
    assert rc == 1 and "hosts:1: expected a host and, optionally, the path of genv there" in err
    hosts.write_hosts("# nothing yet\n")
    rc, out, err = run(genv, "devices", "--all-hosts")
    assert rc == 1 and "lists no host" in err


def test_the_path_of_genv_there(genv, hosts):
    hosts.add("gpu1", gpus=1)
    hosts.add("bare", gpus=2, PATH="%s/tests/fake:/usr/bin:/bin" % genv.root)
    rc, out, err = run(genv, "devices", "-H", "bare,gpu1")
    assert rc == 1
    assert err == ("genv: bare: genv: command not found there (install genv there, or give its path in "
                   "GENV_REMOTE_GENV or after the host in the hosts file: non-interactive ssh sessions do not "
                   "read ~/.bashrc's PATH)\n")
    assert [line.split()[0] for line in out.splitlines()] == ["HOST", "gpu1"]  # the others are listed
    rc, out, err = run(genv, "devices", "-H", "bare,gpu1", GENV_REMOTE_GENV=os.path.join(genv.root, "bin", "genv"))
    assert (rc, err) == (0, "") and len(out.splitlines()) == 4
    # A path in the home folder there: ~/ is expanded there, the rest quoted.
    os.symlink(genv.root, os.path.join(hosts.homes["bare"], "my genv"))
    rc, out, err = run(genv, "devices", "-H", "bare", GENV_REMOTE_GENV="~/my genv/bin/genv")
    assert (rc, err) == (0, ""), err
    # Every word reaches the remote shell as data: quotes, spaces, $(...).
    odd = os.path.join(hosts.base, "it's $(touch %s) here" % os.path.join(hosts.base, "pwned"))
    os.makedirs(odd)
    script(os.path.join(odd, "genv"), '#!/bin/sh\nexec %s/bin/genv "$@"\n' % genv.root)
    rc, out, err = run(genv, "devices", "-H", "bare", GENV_REMOTE_GENV=os.path.join(odd, "genv"))
    assert (rc, err) == (0, ""), err
    assert not os.path.exists(os.path.join(hosts.base, "pwned"))


@pytest.mark.serial
def test_a_host_that_fails_never_hides_the_others(genv, hosts):
    hosts.add("gpu1", gpus=2)
    hosts.refusing("down")
    hosts.hangs("hang")
    hosts.denied("denied")
    tools = os.path.join(hosts.base, "tools")
    os.makedirs(tools)
    junk = script(os.path.join(tools, "junk"), "#!/bin/sh\necho 'Welcome to gpu1!'\n")
    newer = script(os.path.join(tools, "newer"), '#!/bin/sh\necho \'{"format": 2, "hosts": []}\'\n')
    older = script(os.path.join(tools, "older"), "#!/bin/sh\necho '[{\"index\": 0}]'\n")
    failing = script(os.path.join(tools, "failing"), "#!/bin/sh\necho 'genv: the state folder is damaged' >&2\n"
                                                     "exit 1\n")
    for alias in ("junk", "newer", "older", "failing"):
        hosts.alias(alias, of="gpu1")
    hosts.write_hosts("gpu1\ndown\nhang\ndenied\njunk %s\nnewer %s\nolder %s\nfailing %s\n"
                      % (junk, newer, older, failing))
    start = time.monotonic()
    rc, out, err = run(genv, "devices", "--all-hosts", GENV_SSH_TIMEOUT="2")
    took = time.monotonic() - start
    assert rc == 1
    assert [line.split()[0] for line in out.splitlines()] == ["HOST", "gpu1", "gpu1"]
    lines = err.splitlines()
    assert len(lines) == 7, err
    reasons = dict(line[len("genv: "):].split(": ", 1) for line in lines)
    assert "Connection refused" in reasons["down"]
    assert reasons["hang"] in ("no answer within 2 s (GENV_SSH_TIMEOUT)",
                               "Connection timed out during banner exchange") or "timed out" in reasons["hang"]
    assert "Permission denied" in reasons["denied"]
    assert reasons["junk"] == "the answer is not genv's JSON: 'Welcome to gpu1!'..."
    assert reasons["newer"] == "genv there answers in format 2, which this genv cannot read: update genv here"
    assert reasons["older"].startswith("the answer is not a genv devices listing this genv can read (row[0] has no "
                                       "field 'uuid')")
    assert reasons["failing"] == "the state folder is damaged"
    assert took < 2 + 2.5, took  # the hanging host costs the time-out, once
    rc, out, err = run(genv, "devices", "--all-hosts", "--format", "json", GENV_SSH_TIMEOUT="2")
    entries = {entry["host"]: entry for entry in json.loads(out)["hosts"]}
    assert list(entries) == ["gpu1", "down", "hang", "denied", "junk", "newer", "older", "failing"]
    assert entries["gpu1"]["error"] is None and len(entries["gpu1"]["rows"]) == 2
    for name in list(entries)[1:]:
        assert entries[name]["rows"] is None and entries[name]["error"], entries[name]
    # Every host failing: no table, the reasons, exit 1.
    rc, out, err = run(genv, "ps", "-H", "down")
    assert (rc, out) == (1, "") and err.startswith("genv: down: ")


@pytest.mark.serial
def test_a_hanging_host_costs_at_most_the_time_out(genv, hosts):
    hosts.add("gpu1", gpus=1)
    hosts.hangs("hang")
    hosts.hangs("hang2")
    start = time.monotonic()
    rc, out, err = run(genv, "envs", "-H", "hang,gpu1,hang2", GENV_SSH_TIMEOUT="1.5")
    took = time.monotonic() - start
    assert rc == 1 and out.splitlines()[0].startswith("HOST")
    assert err.count("genv: hang") == 2
    assert 1.4 < took < 1.5 + 1.5, took


def test_destinations_are_checked(genv, hosts, tmp_path):
    witness = tmp_path / "witness"
    for args in (["-H", "-oProxyCommand=touch %s" % witness], ["--host=-x"], ["-H", "gpu1,-v"], ["-H", "a b"],
                 ["-H", ""]):
        rc, out, err = run(genv, "devices", *args)
        assert rc == 1 and out == "" and "host" in err, (args, err)
    assert not witness.exists()
    hosts.write_hosts("-oProxyCommand=x\n")
    rc, out, err = run(genv, "envs", "--all-hosts")
    assert rc == 1 and "hosts:1: invalid host '-oProxyCommand=x': a host cannot start with '-'" in err
    rc, out, err = run(genv, "devices", "-H")
    assert rc == 1 and "option -H needs a value" in err
    rc, out, err = run(genv, "devices", "--hosts", "gpu1")
    assert rc == 1 and "unknown option '--hosts'" in err


def test_connections_are_reused_from_a_private_folder(genv, hosts):
    hosts.add("gpu1", gpus=1)
    rc, out, err = run(genv, "envs", "-H", "gpu1")
    assert (rc, err) == (0, "")
    folder = os.path.join(hosts.run, "genv-ssh")
    info = os.lstat(folder)
    assert info.st_mode & 0o777 == 0o700 and info.st_uid == os.geteuid()
    (socket_name,) = os.listdir(folder)
    assert len(os.path.join(folder, socket_name)) < 100
    check = subprocess.run(["ssh", "-F", hosts.config, "-o", "ControlPath=%s/%%C" % folder, "-O", "check", "gpu1"],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and "Master running" in check.stderr
    # A control folder that is not private (here a link) is not used: the
    # one in /tmp is.
    hosts.forget_connections()
    shutil.rmtree(folder)
    os.symlink(hosts.base, folder)
    fallback = "/tmp/genv-ssh-%d" % os.geteuid()
    existed = os.path.lexists(fallback)
    try:
        rc, out, err = run(genv, "envs", "-H", "gpu1")
        assert rc == 0
        assert os.listdir(hosts.base).count("genv-ssh") == 0  # nothing made through the link
        assert os.path.isdir(fallback) and not os.path.islink(fallback)
    finally:
        subprocess.run(["ssh", "-F", hosts.config, "-o", "ControlPath=%s/%%C" % fallback, "-O", "exit", "gpu1"],
                       capture_output=True, timeout=30)
        if not existed:
            shutil.rmtree(fallback, ignore_errors=True)


def test_ssh_runs_in_batch_mode_with_the_users_command(genv, hosts):
    hosts.add("gpu1", gpus=1)
    # GENV_SSH_COMMAND is split as a shell would; its options come first (so they win).
    log = os.path.join(hosts.base, "ssh.log")
    wrapper = script(os.path.join(hosts.base, "my ssh"),
                     '#!/bin/sh\nprintf "%%s\\n" "$@" > %s\nexec ssh "$@"\n' % log)
    rc, out, err = run(genv, "envs", "-H", "gpu1",
                       GENV_SSH_COMMAND="'%s' -F %s -o ServerAliveInterval=5" % (wrapper, hosts.config))
    assert (rc, err) == (0, "")
    with open(log) as handle:
        words = handle.read().splitlines()
    assert words[:4] == ["-F", hosts.config, "-o", "ServerAliveInterval=5"]
    assert "BatchMode=yes" in words and "ConnectTimeout=10" in words and "ControlMaster=auto" in words
    assert "ControlPersist=60" in words and "-T" in words
    assert words[-3:-1] == ["--", "gpu1"] and words[-1] == "genv envs --format json"
    for bad, message in (("", None), ("'unclosed", "invalid GENV_SSH_COMMAND"),
                         ("no-such-ssh -F x", "cannot run no-such-ssh: command not found")):
        rc, out, err = run(genv, "envs", "-H", "gpu1", GENV_SSH_COMMAND=bad)
        if message is None:
            continue  # empty: plain ssh (without the test's config: it fails, but as a host)
        assert rc == 1 and message in err, (bad, err)
    rc, out, err = run(genv, "envs", "-H", "gpu1", GENV_SSH_TIMEOUT="soon")
    assert rc == 1 and "invalid GENV_SSH_TIMEOUT 'soon'" in err


# === 4. genv ssh ==========================================================================


def test_genv_ssh_lands_where_the_gpus_are_free_and_frees_them(genv, hosts):
    hosts.add("gpu1", gpus=4)
    hosts.add("gpu2", gpus=2)
    holder = Holder(hosts, "gpu1", "--gpus", "3")
    marks = os.path.join(hosts.base, "marks")
    record = "echo \"$GENV_ENVIRONMENT_ID $CUDA_VISIBLE_DEVICES $HOME\" >> %s" % marks
    try:
        # 2 GPUs: only gpu2 has them.
        rc, out, err = run(genv, "ssh", "-H", "gpu1,gpu2", "--gpus", "2", "--name", "job", "--", "sh", "-c",
                           record + "; genv envs --format csv; exit 3")
        assert rc == 3, err
        match = re.match(r"genv: gpu2: environment (\d+) with GPUs 0,1\n$", err)
        assert match, err
        assert out.splitlines()[1].split(",")[3] == "job"  # its name
        with open(marks) as handle:
            assert handle.read() == "%s 0,1 %s\n" % (match.group(1), hosts.homes["gpu2"])
        # Freed when the command ended.
        assert all(not gpu["environments"] for gpu in remote_devices(hosts, "gpu2"))
        # 1 GPU: both fit; gpu1 is left with no whole GPU free after it, gpu2 with one: gpu1.
        rc, out, err = run(genv, "ssh", "-H", "gpu2,gpu1", "--", "sh", "-c", "exit 1")
        assert rc == 1, (rc, out, err)
        assert err.startswith("genv: gpu1: environment ") and err.endswith(" with GPU 3\n"), err
        # Too many: nothing runs; each host's free GPUs are said.
        os.unlink(marks)
        rc, out, err = run(genv, "ssh", "-H", "gpu1,gpu2", "--gpus", "3", "--", "sh", "-c", record)
        assert rc == 1 and not os.path.exists(marks)
        assert err == ("genv: gpu1: 1 of 4 GPUs free (3)\ngenv: gpu2: 2 of 2 GPUs free (0,1)\n"
                       "genv: no host can take 3 GPUs now\n"), err
        rc, out, err = run(genv, "ssh", "-H", "gpu1", "--gpu-memory", "50g", "--", "true")
        assert rc == 1 and "genv: gpu1: 0 of 4 GPUs free\n" in err and "3 GPUs" not in err
        assert err.endswith("no host can take 1 GPU with 50g each now\n"), err
        # A share goes where it fits, the command sees it.
        rc, out, err = run(genv, "ssh", "-H", "gpu1", "--gpu-memory", "4g", "--", "sh", "-c",
                           'echo "$GENV_GPU_MEMORY"')
        assert (rc, out) == (0, "%d\n" % (4 << 30)), err
    finally:
        holder.close()
    assert all(not gpu["environments"] for gpu in remote_devices(hosts, "gpu1"))
    # Usage errors.
    for args, message in ((["--gpus", "x"], "invalid GPU count"), (["--gpu-memory", "lots"], "invalid GPU memory"),
                          (["--", ], "no command given after --"), (["--bogus"], "unknown option")):
        rc, out, err = run(genv, "ssh", "-H", "gpu1", *args)
        assert rc == 1 and message in err, (args, err)


def test_genv_ssh_tries_the_next_host_when_it_loses_the_race(genv, hosts):
    """gpu1 is the better fit, but another user takes its GPUs between the
    listing and the attach: genv ssh goes on to gpu2, and the command runs
    once."""
    hosts.add("gpu1", gpus=1)
    hosts.add("gpu2", gpus=2)
    pidfile = os.path.join(hosts.base, "thief.pid")
    ready = os.path.join(hosts.base, "thief.ready")
    thief = script(os.path.join(hosts.base, "racing-genv"), """#!/bin/sh
real=%(root)s/bin/genv
if [ "$1" = run ]; then
  "$real" run --no-load --gpus 1 -- sh -c 'touch %(ready)s; exec sleep 120' >/dev/null 2>&1 </dev/null &
  echo $! > %(pidfile)s
  while [ ! -e %(ready)s ]; do sleep 0.02; done
fi
exec "$real" "$@"
""" % {"root": genv.root, "ready": ready, "pidfile": pidfile})
    hosts.write_hosts("gpu1 %s\ngpu2\n" % thief)
    marks = os.path.join(hosts.base, "marks")
    try:
        rc, out, err = run(genv, "ssh", "--", "sh", "-c", "echo \"$HOME\" >> %s; exit 1" % marks)
    finally:
        if os.path.exists(pidfile):  # the thief's genv run: it passes SIGTERM on to its command, and ends
            with open(pidfile) as handle:
                pid = int(handle.read())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while os.path.exists("/proc/%d" % pid) and time.monotonic() < deadline:
                time.sleep(0.02)
    assert rc == 1
    lines = err.splitlines()
    assert lines[0].startswith("genv: gpu1: cannot attach 1 GPU"), err
    assert re.match(r"genv: gpu2: environment \d+ with GPU 0$", lines[1]), err
    with open(marks) as handle:
        assert handle.read() == hosts.homes["gpu2"] + "\n"


def test_genv_ssh_takes_any_environment_id_genv_makes(genv, hosts):
    """An environment's id is its creator's PID, with a suffix where an
    environment of that id still lives (``4242-2``): the holder's line is
    read as such, not taken for a failure."""
    hosts.add("gpu1", gpus=2)
    # genv there: for the hold, an environment with the id of the PID that
    # genv run is about to have (the script's own: exec keeps it) lives on.
    taken = script(os.path.join(hosts.base, "taken-genv"), """#!/bin/bash
real=%(root)s/bin/genv
if [ "$1 $2" = "run --no-load" ]; then
  eval "$("$real" init -)"
  genv activate --name taken >/dev/null || exit 1
  unset GENV_ENVIRONMENT_ID
fi
exec "$real" "$@"
""" % {"root": genv.root})
    hosts.write_hosts("gpu1 %s\n" % taken)
    rc, out, err = run(genv, "ssh", "-H", "gpu1", "--", "sh", "-c", 'echo "$GENV_ENVIRONMENT_ID"; exit 4')
    assert rc == 4, err
    match = re.match(r"genv: gpu1: environment (\d+-2) with GPU 0\n$", err)
    assert match, err
    assert out == match.group(1) + "\n"


def test_genv_ssh_gives_a_login_shell_with_a_terminal(genv, hosts):
    # sshd gives a session a terminal only as root: unprivileged, it cannot
    # hand the pty to the tty group ("chown(/dev/pts/N, UID, 5) failed").
    need("root")
    import pexpect
    hosts.add("gpu1", gpus=2)
    env = genv.environ(GENV_REMOTE_GENV=os.path.join(genv.root, "bin", "genv"))
    child = pexpect.spawn(os.path.join(genv.root, "bin", "genv"), ["ssh", "-H", "gpu1", "--name", "shell"],
                          env=env, timeout=30, encoding="utf-8")
    try:
        child.expect(r"genv: gpu1: environment (\d+) with GPU 0")
        eid = child.match.group(1)
        child.sendline('echo "MARK-$CUDA_VISIBLE_DEVICES-$GENV_ENVIRONMENT_ID-$(command -v nvidia-smi)-END"')
        child.expect(r"MARK-0-(\d+)-(\S*)-END")
        assert child.match.group(1) == eid
        assert child.match.group(2) == os.path.join(genv.root, "shims", "nvidia-smi")  # the shim, after the profile
        assert [env["name"] for env in json.loads(hosts.ssh("gpu1", "genv envs --format json").stdout)] == ["shell"]
        child.sendline("exit 7")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 7
    assert json.loads(hosts.ssh("gpu1", "genv envs --format json").stdout) == []


# === pure parts ==============================================================================


def devices_rows(*gpus):
    """Rows of a devices listing: (total MiB, [shares MiB or None], busy)."""
    rows = []
    for index, (total, shares, busy) in enumerate(gpus):
        rows.append({"index": index, "uuid": None, "name": None, "memory_total": total, "memory_used": None,
                     "memory_available": None,
                     "environments": [{"id": "1", "name": None, "uid": 0, "user": "root", "memory": share,
                                       "attached": 0.0} for share in shares],
                     "processes": [{"gpu": index, "pid": 1, "uid": 0, "user": "root", "env_id": None,
                                    "env_name": None, "memory": 10, "command": "x", "managed": False,
                                    "misplaced": False}] if busy else []})
    return rows


def answer(dest, value=None, error=None):
    return remote.Answer(remote.Host(dest), value, error)


def test_the_host_choice():
    empty = (81920, [], False)
    half = (81920, [40960], False)
    whole = (81920, [None], False)
    busy = (81920, [], True)
    answers = [answer("a", devices_rows(empty, empty, empty)), answer("b", devices_rows(whole, empty)),
               answer("c", error="down"), answer("d", devices_rows(half, busy, empty))]
    # Whole GPUs: the host left with the fewest whole GPUs free after it first; ties in the order given.
    assert [(fit.dest, fit.indices, fit.whole_after) for fit in ssh_command.fits(answers, 1, None)] == [
        ("b", [1], 0), ("d", [2], 0), ("a", [0], 2)]
    assert [fit.dest for fit in ssh_command.fits(answers, 2, None)] == ["a"]
    assert ssh_command.fits(answers, 4, None) == []
    # A share goes onto a GPU already shared: no whole GPU used up on d.
    assert [(fit.dest, fit.indices, fit.whole_after) for fit in ssh_command.fits(answers, 1, 8 << 30)] == [
        ("b", [1], 0), ("d", [0], 1), ("a", [0], 2)]
    assert [fit.dest for fit in ssh_command.fits(answers, 1, 50 << 30)] == ["b", "d", "a"]
    assert ssh_command.free_for(devices_rows(half, busy, whole, empty), None) == [3]
    assert ssh_command.free_for(devices_rows(half, busy, whole, empty), 8 << 30) == [0, 3]
    # No GPU at all: every host that answered fits, the fullest first.
    assert [fit.dest for fit in ssh_command.fits(answers, 0, None)] == ["b", "d", "a"]


def test_the_merge_and_the_document():
    answers = [answer("a", [{"index": 0}, {"index": 1, "host": "spoof"}]), answer("b", error="down"),
               answer("c", [{"index": 0}])]
    assert _hosts.merge(answers) == [("a", {"index": 0}), ("a", {"index": 1, "host": "spoof"}), ("c", {"index": 0})]
    assert _hosts.document("devices", answers) == {"format": 1, "listing": "devices", "hosts": [
        {"host": "a", "rows": [{"host": "a", "index": 0}, {"host": "a", "index": 1}], "error": None},
        {"host": "b", "rows": None, "error": "down"},
        {"host": "c", "rows": [{"host": "c", "index": 0}], "error": None}]}


def test_answers_are_checked():
    good = devices_rows((81920, [None], True))
    assert _hosts.check("devices", good) is None
    assert _hosts.check("devices", []) is None
    assert _hosts.check("envs", {"format": 7}).startswith("genv there answers in format 7")
    assert _hosts.check("ps", "text") == "the answer is not a genv ps listing (a JSON array)"
    bad = devices_rows((81920, ["4g"], False))
    assert "row[0].environments[0].memory is not an integer" in _hosts.check("devices", bad)
    bad = devices_rows((True, [], False))
    assert "row[0].memory_total is not an integer" in _hosts.check("devices", bad)
    process = dict(good[0]["processes"][0], managed="yes")
    assert "row[0].managed is not true or false" in _hosts.check("ps", [process])


def test_the_hosts_file_and_destinations(tmp_path, monkeypatch):
    assert remote.parse_hosts("a\n b  /opt/genv/bin/genv # x\n#c\n\na\n", "f") == [
        remote.Host("a"), remote.Host("b", "/opt/genv/bin/genv")]
    with pytest.raises(GenvError, match="f:1: expected a host"):
        remote.parse_hosts("a b c\n", "f")
    for bad in ("-oProxyCommand=x", "", "a b", "a\x1b", "x" * 2000):
        with pytest.raises(UsageError):
            remote.check_dest(bad)
    assert remote.check_dest("alice@gpu1.example.com") == "alice@gpu1.example.com"
    # The user's file, else the system's.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setattr(remote, "SYSTEM_HOSTS", str(tmp_path / "etc-hosts"))
    assert remote.hosts_file() is None
    (tmp_path / "etc-hosts").write_text("gpu9\n")
    assert remote.hosts_file() == str(tmp_path / "etc-hosts") and remote.all_hosts() == [remote.Host("gpu9")]
    (tmp_path / "config" / "genv").mkdir(parents=True)
    (tmp_path / "config" / "genv" / "hosts").write_text("gpu1\n")
    assert remote.all_hosts() == [remote.Host("gpu1")]
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative")  # ignored, as XDG says
    monkeypatch.setenv("HOME", str(tmp_path))
    assert remote.hosts_file() == str(tmp_path / "etc-hosts")


def test_option_splitting():
    split = remote.split_options
    assert split(["--format", "csv"]) == (None, ["--format", "csv"])
    hosts, rest = split(["-H", "a,b", "--json", "--host=c", "-Ha", "--", "-H", "x"])
    assert [host.dest for host in hosts] == ["a", "b", "c"] and rest == ["--json", "--", "-H", "x"]
    assert remote.wants_hosts(["--json", "-Hx"]) and not remote.wants_hosts(["--", "-H", "x"])
    assert not remote.wants_hosts(["--hosts", "x"])
    with pytest.raises(UsageError, match="needs a value"):
        split(["--host"])


def test_the_remote_line_is_quoted_for_a_posix_shell():
    assert remote.remote_line(["genv", "devices", "--format", "json"]) == "genv devices --format json"
    assert remote.remote_line(["/opt/my genv/bin/genv", "it's", "$(x)"]) == \
        "'/opt/my genv/bin/genv' 'it'\"'\"'s' '$(x)'"
    assert remote.remote_line(["~/genv/bin/genv", "~x"]) == "~/genv/bin/genv '~x'"
    assert ssh_command.login_shell("genv run --id 42 --") == '"$SHELL" -l -c \'genv run --id 42 -- "$SHELL"\''


def test_the_control_folder_is_private(monkeypatch):
    import pathlib

    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="genv-", dir="/tmp"))
    os.chmod(str(tmp_path), 0o700)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    folder = remote.control_folder()
    assert folder == str(runtime / "genv-ssh") and os.stat(folder).st_mode & 0o777 == 0o700
    os.chmod(folder, 0o755)
    assert not remote.private_folder(folder)
    os.rmdir(folder)
    os.symlink(str(tmp_path), folder)
    assert not remote.private_folder(folder)
    # Too long for ssh's socket names: the short folder in /tmp instead.
    deep = tmp_path / ("x" * 60)
    deep.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    fallback = "/tmp/genv-ssh-%d" % os.geteuid()
    existed = os.path.lexists(fallback)
    try:
        assert remote.control_folder() in (fallback, None)
    finally:
        if not existed and os.path.isdir(fallback) and not os.path.islink(fallback):
            os.rmdir(fallback)
        shutil.rmtree(str(tmp_path))


def test_the_control_folder_is_never_in_a_folder_another_user_owns(other_user, tmp_path):
    """root with another user's XDG_RUNTIME_DIR (kept by su or sudo -E): that
    user could rename root's control folder and put their own socket in its
    place, and root's ssh would hand its session (its terminal) to their
    master. A folder others may write to without the sticky bit is no
    better, whoever owns it."""
    need("root")
    runtime = tmp_path / "run-theirs"
    runtime.mkdir(mode=0o700)
    os.chown(str(runtime), other_user.pw_uid, other_user.pw_gid)
    folder = str(runtime / "genv-ssh")
    assert not remote.private_folder(folder) and not os.path.lexists(folder)  # (nothing made there either)
    mine = tmp_path / "run-open"
    mine.mkdir()
    os.chmod(str(mine), 0o777)  # root's own, but anyone may rename in it
    assert not remote.private_folder(str(mine / "genv-ssh"))
    os.chmod(str(mine), 0o700)
    assert remote.private_folder(str(mine / "genv-ssh"))


# === 8. the README's "Several machines" ==========================================================


def test_the_readme_examples_of_several_machines(genv, hosts):
    """The ``console ssh`` blocks of the README (tests/test_readme.py runs
    the others, without daemons), as a session in one bash terminal, stderr
    shown where it comes, compared as test_readme compares."""
    from test_readme import README, normalise, session

    with open(README, encoding="utf-8") as handle:
        blocks = re.findall(r"^```console ssh\n(.*?)^```$", handle.read(), flags=re.S | re.M)
    assert blocks
    hosts.add("gpu1", gpus=2)
    hosts.add("gpu2", gpus=2, PATH="%s/tests/fake:/usr/bin:/bin" % genv.root)  # genv is not on the PATH there
    os.symlink(genv.root, os.path.join(hosts.homes["gpu2"], "genv"))  # ~/genv/bin/genv
    holder = Holder(hosts, "gpu1", "--gpus", "1", "--name", "train")
    config = os.path.join(genv.home, ".config")
    shell = genv.shell("bash", GENV_DEVICES=None, XDG_CONFIG_HOME=None)
    try:
        shell.ok("PS1='$ '")
        for block in blocks:
            steps = session(block)
            # The hosts file is what the example shows.
            (command, shown), = [(command, expected) for _, command, expected in steps if command.startswith("cat ")]
            assert command == "cat ~/.config/genv/hosts"
            os.makedirs(os.path.join(config, "genv"), exist_ok=True)
            with open(os.path.join(config, "genv", "hosts"), "w") as handle:
                handle.write("\n".join(shown) + "\n")
            for prefix, command, expected in steps:
                # (stdin from /dev/null: ssh, like genv ssh, reads its stdin, which is here the test's pipe)
                result = shell.run("%s </dev/null 2>&1" % command)
                assert result.rc == 0, (command, result)
                assert normalise(result.out) == normalise("\n".join(expected)), (command, result)
    finally:
        holder.close()
    # genv ssh's environment is gone with its command.
    assert all(not gpu["environments"] for gpu in remote_devices(hosts, "gpu2", "~/genv/bin/genv"))


def test_genv_ssh_without_gpus_and_without_hosts(genv, hosts):
    hosts.add("gpu1", gpus=1)
    rc, out, err = run(genv, "ssh", "--", "true")
    assert rc == 1 and err.startswith("genv: no --host given: there is no hosts file ("), err
    hosts.write_hosts("gpu1\n")
    rc, out, err = run(genv, "ssh", "--gpus", "0", "--", "sh", "-c", 'echo "[$CUDA_VISIBLE_DEVICES]"')
    assert (rc, out) == (0, "[]\n") and re.match(r"genv: gpu1: environment \d+, without GPUs\n$", err), err


def test_a_hosts_file_that_is_not_a_file_is_refused_at_once(genv, tmp_path):
    """A FIFO (or a device) where the hosts file should be blocked every
    listing across hosts, and completion, forever; a link to a file (as
    dotfiles managers make) is read."""
    config = tmp_path / "config"
    (config / "genv").mkdir(parents=True)
    os.mkfifo(config / "genv" / "hosts")
    started = time.monotonic()
    rc, out, err = run(genv, "devices", "--all-hosts", XDG_CONFIG_HOME=str(config))
    assert (rc, out) == (1, "") and err == "genv: the hosts file %s is not a regular file\n" % (
        config / "genv" / "hosts"), err
    assert time.monotonic() - started < 10
    (config / "genv" / "hosts").unlink()
    (tmp_path / "dotfiles").write_text("gpu1 /opt/genv/bin/genv\n")
    (config / "genv" / "hosts").symlink_to(tmp_path / "dotfiles")
    assert [host.dest for host in remote.read_hosts(str(config / "genv" / "hosts"))] == ["gpu1"]
