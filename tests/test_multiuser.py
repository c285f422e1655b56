"""Several users on one machine, with a second real account (issue 3).

They need root (``need("root")`` in the ``other_user`` fixture): the tests
create the account ``genvtest`` and run shells as it. Run as anyone else, they
skip with that reason (or fail, with GENV_TEST_REQUIRE=root).
"""

import json
import os
import stat



def test_first_user_creates_a_folder_everyone_can_use(genv, other_user):
    # The other user runs genv first and creates the state folder.
    result = genv.cli("devices", user=other_user)
    assert result.returncode == 0, result
    info = os.stat(genv.tmpdir)
    assert info.st_uid == other_user.pw_uid and stat.S_IMODE(info.st_mode) == 0o1777
    mine = genv.shell("bash")
    mine.ok("genv activate --name root-job --gpus 2")
    theirs = genv.shell("zsh", user=other_user)
    theirs.ok("genv activate --name their-job --gpus 2")
    assert mine.var("CUDA_VISIBLE_DEVICES") == "0,1"
    assert theirs.var("CUDA_VISIBLE_DEVICES") == "2,3"
    for shell in (mine, theirs):
        rows = json.loads(shell.ok("genv envs --json"))
        assert sorted((row["user"], row["name"]) for row in rows) == [
            ("genvtest", "their-job"), ("root", "root-job")]
    table = theirs.ok("genv envs")
    assert "root(0)" in table and "genvtest(%d)" % other_user.pw_uid in table
    # Each file belongs to its user, readable by all, writable by its owner only.
    for uid in (0, other_user.pw_uid):
        info = os.stat(os.path.join(genv.tmpdir, "user-%d.json" % uid))
        assert info.st_uid == uid and stat.S_IMODE(info.st_mode) == 0o644
    mine.ok("genv deactivate")
    theirs.ok("genv config gpus 4 && genv attach")
    assert theirs.var("CUDA_VISIBLE_DEVICES") == "0,1,2,3"


def test_nobody_gets_into_what_is_not_theirs(genv, other_user):
    mine = genv.shell("bash")
    mine.ok("genv activate --name mine --gpus 1")
    private = mine.var("GENV_ENVIRONMENT_ID")
    before = genv.state(0)
    theirs = genv.shell("bash", user=other_user)
    result = theirs.run("genv activate --id %s" % private)
    assert result.rc == 1 and "belongs to root(0)" in result.err and result.out == ""
    assert theirs.var("GENV_ENVIRONMENT_ID") is None
    # Even with the variable forged, changes are refused.
    for command in ("genv config gpus 3", "genv config name stolen", "genv attach", "genv detach"):
        result = theirs.run("GENV_ENVIRONMENT_ID=%s GENV_SHELL_PID=$$ command genv sh-%s" % (private, command[5:]))
        assert result.rc == 1 and "belongs to root(0)" in result.err, (command, result)
    assert genv.state(0) == before
    # The sticky bit stops them from replacing root's file by other means.
    result = theirs.run("mv -f %s/user-0.json %s/x 2>/dev/null; echo $?" % (genv.tmpdir, genv.tmpdir))
    assert result.out.strip() != "0"


def test_root_may_join_and_change_a_users_environment(genv, other_user):
    theirs = genv.shell("bash", user=other_user)
    theirs.ok("genv activate --gpus 1")
    root = genv.shell("bash")
    root.ok("genv activate --id %s" % theirs.var("GENV_ENVIRONMENT_ID"))
    assert root.var("CUDA_VISIBLE_DEVICES") == "0"
    root.ok("genv config name fixed-by-root")
    path = os.path.join(genv.tmpdir, "user-%d.json" % other_user.pw_uid)
    assert os.stat(path).st_uid == other_user.pw_uid  # root kept the owner
    assert theirs.ok("genv config name") == "fixed-by-root\n"
    root.ok("genv deactivate")
    assert json.loads(theirs.ok("genv envs --json"))[0]["pids"] == [theirs.pid]


def test_planted_symlinks_are_never_followed(genv, other_user):
    secret = os.path.join(genv.base, "root-owned")
    with open(secret, "w") as handle:
        handle.write("precious\n")
    os.chmod(secret, 0o600)
    # The other user creates the folder and plants links where root's files go.
    assert genv.cli("envs", user=other_user).returncode == 0
    planter = genv.shell("bash", user=other_user, init=False)
    planter.ok("ln -s %s %s/user-0.json" % (secret, genv.tmpdir))
    planter.ok("mkfifo %s/user-1.json" % genv.tmpdir)
    root = genv.shell("bash")
    result = root.run("genv activate --gpus 1")
    assert result.rc == 0, result
    assert "user-0.json" in result.err and "symbolic link" in result.err
    with open(secret) as handle:
        assert handle.read() == "precious\n"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    info = os.lstat(os.path.join(genv.tmpdir, "user-0.json"))
    assert stat.S_ISREG(info.st_mode) and info.st_uid == 0
    assert genv.state(0)["envs"][0]["config"] == {"gpus": 1}


def test_a_users_planted_file_blocks_only_with_a_clear_error(genv, other_user):
    assert genv.cli("envs", user=other_user).returncode == 0
    # The other user squats on a third user's file name.
    victim_uid = other_user.pw_uid + 1
    planter = genv.shell("bash", user=other_user, init=False)
    planter.ok("echo '{}' > %s/user-%d.json" % (genv.tmpdir, victim_uid))
    result = genv.cli("envs", "--json")
    assert result.returncode == 0
    assert b"owned by uid %d" % other_user.pw_uid in result.stderr


def test_damaged_file_of_another_user(genv, other_user):
    theirs = genv.shell("bash", user=other_user)
    theirs.ok("genv activate --gpus 1")
    path = os.path.join(genv.tmpdir, "user-%d.json" % other_user.pw_uid)
    with open(path, "w") as handle:
        handle.write('{"format": 3, "uid": 1, "trunc')
    # The other user's own next command moves it aside and carries on.
    result = theirs.run("genv envs")
    assert result.rc == 0 and "damaged" in result.err
    assert any(name.startswith("user-%d.json.damaged-" % other_user.pw_uid) for name in os.listdir(genv.tmpdir))
