"""The admin's policy and ``genv enforce`` (issue 11), tested as a demanding
admin and a hostile user would.

Everything that can be real is real: policy files owned by root and by a
second real account (``genvtest``), terminals of both users attaching under
caps, and ``sleep`` processes (one that ignores SIGTERM among them) put on
the fake GPUs through FAKE_NVIDIA_SMI_APPS (``<pid> <gpu> <MiB> <name>``;
the fake lists live PIDs only) and then stopped by ``genv enforce --kill``.
The pure parts (``policy.check``, ``enforce.decide``, ``enforce.signal``)
are also tested directly, so that a run as an ordinary user covers them.

The sections:

1. the policy file: which files are trusted, which are bad, and what a bad
   or untrusted one does (one line naming the file and the field; no policy)
2. caps at attach: max_gpus (whole GPUs and shares), max_environments,
   per-user caps, the message, --wait / --index / --count / activate --gpus,
   root not capped, a refused attach changing nothing
3. ``genv enforce``: dry run (table, JSON, exit status) and each rule
4. ``genv enforce --kill``: SIGTERM, --grace, SIGKILL; a second user's
   processes; as the second user; exempt users and names; over-cap after
   the policy changed; PID 1 and unknown PIDs never
5. ``enforce.signal``: identity checked before each signal
6. ``--interval`` (a service) and bad options

Every process a test starts is killed and reaped when it ends.
"""

import json
import os
import pwd
import selectors
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import GIB, ME, MIB, UID, Gpus, alive, as_user, gone, kill_quietly, need, until
from genv import enforce, policy, procs
from genv.attribution import Process

ROOT = UID == 0
GPU_MIB = 40960  # the fake's A100-SXM4-40GB
DOC_FIELDS = {"rule", "detail", "gpu", "pid", "uid", "user", "env_id", "memory", "command", "outcome"}
TITLES = ["RULE", "GPU", "PID", "USER", "ENV ID", "MEMORY", "COMMAND", "OUTCOME"]
DEAF = ["bash", "-c", 'trap "" TERM; exec sleep 613']  # ignores SIGTERM (SIG_IGN survives exec)


# --- helpers: processes on the fake GPUs -----------------------------------------


def ignored_signals(pid):
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("SigIgn:"):
                return int(line.split()[1], 16)
    raise AssertionError("no SigIgn for %d" % pid)


def pending_signals(pid):
    """Signals pending for the process (thread or shared)."""
    found = 0
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith(("SigPnd:", "ShdPnd:")):
                found |= int(line.split()[1], 16)
    return found


def bit(signum):
    return 1 << (signum - 1)


class World(Gpus):
    """The fake's process list and the processes a test starts (``Gpus``),
    running ``sleep 613``: every one of them is killed (and reaped, when
    the test's child) at the end."""

    SLEEP = "sleep 613"

    def deaf(self, gpu=None, mib=100, user=None):
        """A process that ignores SIGTERM (checked: SIG_IGN survived the exec)."""
        pid = self.outside(None, user=user, argv=DEAF)
        until(lambda: self.cmdline(pid) == "sleep 613", "the exec of sleep")
        assert ignored_signals(pid) & bit(signal.SIGTERM), "SIGTERM is not ignored after exec"
        if gpu is not None:
            self.put(pid, gpu, mib)
        return pid

    @staticmethod
    def cmdline(pid):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                return handle.read().rstrip(b"\0").replace(b"\0", b" ").decode()
        except OSError:
            return None


@pytest.fixture
def world(genv):
    made = World(genv)
    try:
        yield made
    finally:
        made.close()


# --- helpers: policy files -------------------------------------------------------


def write_policy(genv, data=None, raw=None, folder="etc-genv", name="policy.json", mode=0o644, folder_mode=0o755,
                 owner=0, folder_owner=0):
    """Write a policy file (JSON ``data`` or bytes ``raw``) and point
    GENV_POLICY at it for every later terminal and command. Ownership is
    given only when running as root (otherwise files are the test user's)."""
    where = os.path.join(genv.base, folder)
    os.makedirs(where, exist_ok=True)
    os.chmod(where, folder_mode)
    if ROOT:
        os.chown(where, folder_owner, _gid(folder_owner))
    path = os.path.join(where, name)
    tmp = path + ".new"
    with open(tmp, "wb") as handle:
        handle.write(raw if raw is not None else json.dumps(data).encode())
    os.chmod(tmp, mode)
    if ROOT:
        os.chown(tmp, owner, _gid(owner))
    os.replace(tmp, path)
    genv.extra["GENV_POLICY"] = path
    return path


def _gid(uid):
    return pwd.getpwuid(uid).pw_gid if uid else 0


def warning(err, path):
    """The one warning line of an ignored policy; returns its reason."""
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    prefix = "genv: ignoring the policy %s: " % path
    assert lines[0].startswith(prefix), err
    return lines[0][len(prefix):]


def text(result):
    return result.stdout.decode(), result.stderr.decode()


# --- helpers: genv enforce ------------------------------------------------------


def run_enforce(genv, *args, user=None, **env):
    result = genv.cli("enforce", *args, user=user, **env)
    out, err = text(result)
    assert "Traceback" not in err, err
    return result.returncode, out, err


def enforce_json(genv, *args, user=None, **env):
    rc, out, err = run_enforce(genv, "--format", "json", *args, user=user, **env)
    docs = json.loads(out)
    for doc in docs:
        assert DOC_FIELDS <= set(doc), doc
    return rc, {doc["pid"]: doc for doc in docs}, err


def columns(table):
    lines = table.splitlines()
    starts = [lines[0].index(title) for title in TITLES]
    assert starts == sorted(starts), lines[0]
    rows = []
    for line in lines[1:]:
        cells = [line[start:(starts[n + 1] if n + 1 < len(starts) else None)].strip()
                 for n, start in enumerate(starts)]
        rows.append(dict(zip(TITLES, cells)))
    return rows


def start(shell, command):
    """Send a command to a terminal without waiting for it; ``finish``
    collects its result."""
    marker = "__GENV_TEST_BG_%s__" % uuid.uuid4().hex
    script = "%s\n__rc=$?; printf '\\n%s %%s\\n' \"$__rc\"; printf '\\n%s\\n' >&2\n" % (command, marker, marker)
    shell.proc.stdin.write(script.encode())
    shell.proc.stdin.flush()
    return marker


def finish(shell, marker, timeout=60):
    return shell._collect(marker, timeout)


def gpu_of(shell):
    return shell.var("CUDA_VISIBLE_DEVICES")


def env_state(genv, uid):
    """A user's environments as stored (what a refused attach must not change)."""
    try:
        envs = genv.state(uid)["envs"]
    except FileNotFoundError:
        return []
    return [{key: env[key] for key in ("id", "config", "devices") if key in env} for env in envs]


# === 1. the policy file ==========================================================


BAD_POLICIES = [
    # (data, words the message must hold)
    ([], "not a JSON object"),
    ("max_gpus", "not a JSON object"),
]

BAD_KEYS = [
    # (data, the field left out): the rest of the policy still applies
    ({"defaults": {"max_gpus": 1}}, "defaults"),
    ({"default": {"max_gpu": 1}}, "default.max_gpu"),
    ({"users": {"alice": {"max_gpu": 4}}}, "users.alice.max_gpu"),
    ({"users": {"alice": {"max_gpus": 4, "max_envs": 1}}}, "users.alice.max_envs"),
    ({"default": {"max_gpus": -1}}, "default.max_gpus"),
    ({"default": {"max_environments": 1.5}}, "default.max_environments"),
    ({"default": {"max_gpus": 2.0}}, "default.max_gpus"),
    ({"default": {"max_gpus": True}}, "default.max_gpus"),
    ({"default": {"max_gpus": "2"}}, "default.max_gpus"),
    ({"default": {"max_gpus": None}}, "default.max_gpus"),
    ({"default": {"max_gpu_memory": "1b"}}, "default.max_gpu_memory"),
    ({"default": {"max_gpu_memory": "16 g"}}, "default.max_gpu_memory"),
    ({"default": {"max_gpu_memory": -1}}, "default.max_gpu_memory"),
    ({"default": {"max_gpu_memory": 1.5}}, "default.max_gpu_memory"),
    ({"default": {"max_idle": "soon"}}, "default.max_idle"),
    ({"default": {"max_idle": 0}}, "default.max_idle"),
    ({"default": {"max_idle": True}}, "default.max_idle"),
    ({"default": {"max_idle": "2 h"}}, "default.max_idle"),
    ({"users": {"alice": {"max_reservation": -60}}}, "users.alice.max_reservation"),
    ({"default": {"max_reservation": "1w"}}, "default.max_reservation"),
    ({"default": {"max_reservation": float("inf")}}, "default.max_reservation"),
    ({"users": {"alice": {"max_gpus": -3}}}, "users.alice.max_gpus"),
    ({"users": {"alice": 4}}, "users.alice"),
    ({"users": ["alice"]}, "users"),
    ({"default": [1]}, "default"),
    ({"default": None}, "default"),
    ({"exempt_users": "prometheus"}, "exempt_users"),
    ({"exempt_users": [""]}, "exempt_users"),
    ({"exempt_process_names": [1]}, "exempt_process_names"),
    ({"exempt_process_names": None}, "exempt_process_names"),
    ({"exempt_process_names": ["bin/mps"]}, "exempt_process_names"),
    ({"exempt_process_names": ["/usr/bin/"]}, "exempt_process_names"),
]


@pytest.mark.parametrize("data, field", BAD_POLICIES, ids=[json.dumps(case[0])[:40] for case in BAD_POLICIES])
def test_check_names_the_bad_file(data, field):
    with pytest.raises(policy.Invalid) as caught:
        policy.check(data)
    assert field in str(caught.value), caught.value
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("data, field", BAD_KEYS, ids=[json.dumps(case[0])[:40] for case in BAD_KEYS])
def test_a_bad_key_is_left_out_alone(data, field):
    """Issue 16, item 5: a bad value in one key voids that key alone."""
    good = {"default": {"max_environments": 3}, "users": {"bob": {"max_gpus": 1}}, "exempt_users": ["ops"]}
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in good.items()}
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    kept, problems = policy.check(merged)
    assert len(problems) == 1 and problems[0].startswith(field + ": "), problems
    assert "\n" not in problems[0]
    rules = policy.Policy(kept, "/p")
    # The others still apply.
    if not field.startswith("default"):
        assert rules.cap("carol", "max_environments") == 3
    if not field.startswith("users"):
        assert rules.cap("bob", "max_gpus") == 1
    if not field.startswith("exempt_users"):
        assert rules.exempt("ops", None)
    name = field.split(".")[-1]
    if name in policy.CAPS:
        owner = field.split(".")[1] if field.startswith("users.") else "carol"
        assert rules.cap(owner, name) is None or (owner == "alice" and name == "max_gpus"), kept


def test_check_accepts_every_documented_shape():
    full = {"default": {"max_gpus": 2, "max_environments": 4, "max_gpu_memory": "80g", "max_idle": "2h",
                        "max_reservation": 86400},
            "users": {"alice": {"max_gpus": 4, "max_gpu_memory": 17179869184, "max_idle": "90m"}},
            "exempt_users": ["prometheus"], "exempt_process_names": ["nvidia-cuda-mps-server"]}
    for data in ({}, full, {"default": {}}, {"users": {}}, {"exempt_users": []},
                 {"default": {"max_gpus": 0, "max_environments": 0, "max_gpu_memory": 0}},
                 {"users": {"bob": {"max_gpus": 10 ** 6}}}):
        assert policy.check(data)[1] == [], data
    rules = policy.Policy(policy.check(full)[0], "/p")
    assert rules.cap("alice", "max_gpus") == 4
    assert rules.cap("alice", "max_environments") == 4  # an own entry replaces only what it names
    assert rules.cap("bob", "max_gpus") == 2
    assert rules.cap("bob", "max_gpu_memory") == 80 * GIB and rules.cap("alice", "max_gpu_memory") == 16 * GIB
    assert rules.cap("bob", "max_idle") == 7200 and rules.cap("alice", "max_idle") == 5400
    assert rules.cap("alice", "max_reservation") == 86400
    assert policy.Policy().cap("bob", "max_gpus") is None
    assert rules.exempt("prometheus", "/bin/sleep") and not rules.exempt("alice", "/bin/sleep")
    # By name: only a system program (root's file in root's folders).
    assert rules.exempt("alice", "/usr/bin/nvidia-cuda-mps-server", True)
    assert rules.exempt("alice", "/opt/a dir/nvidia-cuda-mps-server", True)
    assert not rules.exempt("alice", "/home/alice/nvidia-cuda-mps-server", False)
    assert not rules.exempt("alice", "/usr/bin/python3", True)
    assert not rules.exempt(None, None) and not rules.exempt("alice", "", True)
    # By absolute path: that program, wherever it is.
    by_path = policy.Policy({"exempt_process_names": ["/home/ops/mps", "/bin/sleep"]})
    assert by_path.exempt("alice", "/home/ops/mps", False)
    assert by_path.exempt("alice", os.path.realpath("/bin/sleep"), False)  # as /proc names it
    assert not by_path.exempt("alice", "/home/alice/mps", True) and not by_path.exempt("alice", "/tmp/sleep", True)


def enforce_sees_root_exempt(genv, world):
    """Whether a policy saying ``exempt_users: [root]`` is in force for
    ``genv enforce`` (run as root): root's unmanaged process is then not
    reported. Returns (honoured, stderr)."""
    pid = world.outside(gpu=0)
    rc, docs, err = enforce_json(genv)
    assert (rc == 0) == (pid not in docs), (rc, docs)
    return pid not in docs, err


def test_a_root_owned_policy_is_honoured(genv, world):
    need("root")
    path = write_policy(genv, {"exempt_users": ["root"]})
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o755
    honoured, err = enforce_sees_root_exempt(genv, world)
    assert honoured and err == ""


def test_no_policy_file_is_no_policy_silently(genv, world):
    genv.extra["GENV_POLICY"] = os.path.join(genv.base, "no-such-folder", "policy.json")
    honoured, err = enforce_sees_root_exempt(genv, world)
    assert not honoured and err == ""
    genv.extra["GENV_POLICY"] = "/genv-test-no-such-policy-%d.json" % os.getpid()  # a trusted folder, no file
    assert not os.path.lexists(genv.extra["GENV_POLICY"])
    honoured, err = enforce_sees_root_exempt(genv, world)
    assert not honoured and err == ""


def test_a_policy_owned_by_an_ordinary_user_is_ignored_with_one_line(genv, world, request):
    """As root: the file is genvtest's (in root's folder). As an ordinary
    user: the file is that user's own (a user cannot lift their own caps)."""
    owner = request.getfixturevalue("other_user").pw_uid if ROOT else UID
    path = write_policy(genv, {"exempt_users": ["root", ME]}, owner=owner)
    honoured, err = enforce_sees_root_exempt(genv, world)
    assert not honoured
    reason = warning(err, path)
    assert reason == "the %s belongs to uid %d, not to root" % ("file" if ROOT else "folder", owner), reason


@pytest.mark.parametrize("mode, folder_mode, folder_owner, why", [
    (0o664, 0o755, 0, "the file is writable by others than root"),
    (0o646, 0o755, 0, "the file is writable by others than root"),
    (0o666, 0o755, 0, "the file is writable by others than root"),
    (0o644, 0o775, 0, "the folder is writable by others than root"),
    (0o644, 0o757, 0, "the folder is writable by others than root"),
    (0o644, 0o1777, 0, "the folder is writable by others than root"),  # like /tmp
    (0o644, 0o755, "genvtest", "the folder belongs to uid %d, not to root"),
])
def test_an_untrusted_policy_is_ignored_with_one_line(genv, world, request, mode, folder_mode, folder_owner, why):
    need("root")
    if folder_owner == "genvtest":
        folder_owner = request.getfixturevalue("other_user").pw_uid
        why = why % folder_owner
    path = write_policy(genv, {"exempt_users": ["root"]}, mode=mode, folder_mode=folder_mode,
                        folder_owner=folder_owner)
    honoured, err = enforce_sees_root_exempt(genv, world)
    assert not honoured
    assert warning(err, path) == why


def test_a_symlinked_policy_file_is_ignored(genv, world):
    """A link, even to a trusted file in a trusted folder, is refused
    (O_NOFOLLOW): the link's target could be changed by whoever owns it."""
    need("root")
    target = write_policy(genv, {"exempt_users": ["root"]}, folder="real")
    link = os.path.join(genv.base, "etc-genv", "policy.json")
    os.makedirs(os.path.dirname(link))
    os.chmod(os.path.dirname(link), 0o755)
    os.symlink(target, link)
    genv.extra["GENV_POLICY"] = link
    honoured, err = enforce_sees_root_exempt(genv, world)
    assert not honoured
    assert warning(err, link)  # one line, whatever the system calls ELOOP


@pytest.mark.parametrize("kind", ["folder", "fifo", "huge", "binary"])
def test_a_policy_that_is_not_a_small_regular_file_is_ignored(genv, world, kind):
    need("root")
    path = write_policy(genv, {})
    os.unlink(path)
    if kind == "folder":
        os.mkdir(path)
    elif kind == "fifo":
        os.mkfifo(path, 0o644)  # must not hang
    elif kind == "huge":
        with open(path, "w") as handle:
            handle.write('{"exempt_users": ["root"], "users": {%s}}' % ",".join(
                '"u%d": {}' % n for n in range(200000)))
    else:
        with open(path, "wb") as handle:
            handle.write(b'{"exempt_users": ["r\xffoot"]}')
    honoured, err = enforce_sees_root_exempt(genv, world)
    assert not honoured
    assert warning(err, path)


@pytest.mark.parametrize("raw, field", [
    (b"", "JSON"),
    (b"{", "JSON"),
    (b'{"default": {"max_gpus": 1}} trailing', "JSON"),
    (b'{"exempt_users": ["root"], "default": {"max_gpus": NaN}}', "JSON"),
    (b'{"exempt_users": ["root"], "default": {"max_gpus": 1' + b"0" * 5000 + b"}}", "JSON"),  # too many digits
    (b"[" * 100000, "JSON"),  # too deep
    (b'\xef\xbb\xbf{"exempt_users": ["root"]}', "JSON"),  # a byte order mark
    (b'["exempt_users", "root"]', "not a JSON object"),
])
def test_a_bad_policy_file_is_one_line_naming_it_and_no_policy(genv, world, raw, field):
    need("root")
    path = write_policy(genv, raw=raw)
    honoured, err = enforce_sees_root_exempt(genv, world)
    assert not honoured  # the exempt_users of a bad file are not used either
    assert field in warning(err, path), err


@pytest.mark.parametrize("raw, field", [
    (b'{"exempt_users": ["root"], "users": {"alice": {"max_gpu": 1}}}', "users.alice.max_gpu"),
    (b'{"exempt_users": ["root"], "default": {"max_gpus": -1}}', "default.max_gpus"),
    (b'{"exempt_users": ["root"], "default": {"max_gpus": 1.5}}', "default.max_gpus"),
    (b'{"exempt_users": ["root"], "default": {"max_environments": true}}', "default.max_environments"),
    (b'{"exempt_users": ["root"], "default": {"max_gpu_memory": "lots"}}', "default.max_gpu_memory"),
    (b'{"exempt_users": ["root"], "colour": "blue"}', "colour"),
    (b'{"exempt_users": ["root"], "users": "alice"}', "users"),
])
def test_a_bad_key_is_one_line_naming_it_and_the_rest_applies(genv, world, raw, field):
    """Issue 16, item 5: a typo must not lift every cap. The file's other
    keys (here exempt_users) are honoured; the bad one is named once."""
    need("root")
    path = write_policy(genv, raw=raw)
    honoured, err = enforce_sees_root_exempt(genv, world)
    assert honoured, err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("genv: ignoring %s in the policy %s: " % (field, path)), err


# === 2. caps at attach ===========================================================


@pytest.fixture
def capped(genv, other_user):
    """Write a root-owned policy for genvtest's terminals; returns a
    function (data -> path) that (re)writes it."""

    def write(data):
        return write_policy(genv, data)

    # Every folder on the way must be traversable by genvtest.
    folder = genv.base
    while folder != "/":
        assert os.stat(folder).st_mode & 0o001, folder
        folder = os.path.dirname(folder)
    return write


def refusal(err, path, cap, value, user="genvtest"):
    """The line of a refused attach names the user, the cap, its value and
    the policy."""
    line = err.strip().splitlines()[-1]
    assert "cannot attach" in line, err
    assert "over the cap %s = %d" % (cap, value) in line, err
    assert path in line and user in line, err
    return line


def test_max_gpus_with_whole_gpus(genv, sh, capped, other_user):
    path = capped({"default": {"max_gpus": 2}})
    first = genv.shell(sh, user=other_user)
    first.ok("genv activate --gpus 1")
    second = genv.shell(sh, user=other_user)
    second.ok("genv activate --gpus 1")
    third = genv.shell(sh, user=other_user)
    before = env_state(genv, other_user.pw_uid)
    result = third.run("genv activate --gpus 1")
    # activate --gpus: the terminal is activated, detached, exit 1.
    assert result.rc == 1, result
    eid = third.var("GENV_ENVIRONMENT_ID")
    assert eid, result
    assert ("activated environment %s, but could not attach GPUs" % eid) in result.err, result
    line = refusal(result.err, path, "max_gpus", 2)
    assert "would hold 3 GPUs" in line, line
    assert len(result.err.splitlines()) == 1, result
    assert gpu_of(third) in (None, ""), gpu_of(third)
    after = env_state(genv, other_user.pw_uid)
    assert after[:len(before)] == before
    assert [env["devices"] for env in after if env["id"] == eid] == [[]]
    # Within the cap: the second terminal may change its GPU for another.
    assert second.run("genv attach --index 3").rc == 0
    assert gpu_of(second) == "3"


def test_max_gpus_counts_every_gpu_held_any_part_of_as_one(genv, capped, other_user):
    """Issue 16, item 5: a share counts as the whole GPU it keeps from those
    who need one whole. (``gpu-memory 1b`` under ``max_gpus: 0`` attached 4
    GPUs before: 1 byte was 0 GPUs.)"""
    path = capped({"default": {"max_gpus": 0}})
    tiny = genv.shell("bash", user=other_user)
    tiny.ok("genv activate")
    result = tiny.run("genv config gpu-memory 1b")
    assert result.rc == 1 and "less than 1 MiB" in result.err, result
    tiny.ok("genv config gpu-memory 1m")
    result = tiny.run("genv attach --count 4")
    assert result.rc == 1 and "would hold 4 GPUs" in refusal(result.err, path, "max_gpus", 0), result
    assert env_state(genv, other_user.pw_uid)[0]["devices"] == []
    root = genv.shell("bash")
    root.ok("genv activate --gpus 4")  # every GPU is still free to attach whole
    root.ok("genv deactivate")

    path = capped({"default": {"max_gpus": 1}})
    shares = genv.shell("bash", user=other_user)
    shares.ok("genv activate && genv config gpu-memory 10g")
    result = shares.run("genv attach --count 2")
    assert result.rc == 1 and "would hold 2 GPUs" in refusal(result.err, path, "max_gpus", 1), result
    shares.ok("genv attach --count 1")
    assert gpu_of(shares) == "0"
    # A second share on the same GPU: still one GPU.
    more = genv.shell("bash", user=other_user)
    more.ok("genv activate && genv config gpu-memory 4g")
    more.ok("genv attach --count 1")
    assert gpu_of(more) == "0"
    before = env_state(genv, other_user.pw_uid)
    result = more.run("genv attach --index 1")
    assert result.rc == 1 and "would hold 2 GPUs" in refusal(result.err, path, "max_gpus", 1), result
    assert env_state(genv, other_user.pw_uid) == before
    whole = genv.shell("bash", user=other_user)
    result = whole.run("genv activate --gpus 1")
    assert result.rc == 1 and "would hold 2 GPUs" in result.err, result


def test_max_gpu_memory(genv, capped, other_user):
    """Issue 16, item 5: memory held over all of a user's environments, a
    whole GPU counting all its memory; a size string or a number of bytes,
    and per user."""
    path = capped({"default": {"max_gpu_memory": "16g"}, "users": {"alice": {"max_gpu_memory": 0}}})
    first = genv.shell("bash", user=other_user)
    first.ok("genv activate && genv config gpu-memory 10g && genv attach --count 1")
    second = genv.shell("bash", user=other_user)
    second.ok("genv activate && genv config gpu-memory 8g")
    before = env_state(genv, other_user.pw_uid)
    result = second.run("genv attach --count 1")
    assert result.rc == 1, result
    line = result.err.strip().splitlines()[-1]
    assert ("genv: cannot attach: genvtest would hold 18g of GPU memory, over the cap max_gpu_memory = 16g for them "
            "in %s" % path) == line, result
    assert env_state(genv, other_user.pw_uid) == before
    second.ok("genv config gpu-memory 6g && genv attach --count 1")  # 16g: at the cap
    whole = genv.shell("bash", user=other_user)
    result = whole.run("genv activate --gpus 1")
    assert result.rc == 1 and "would hold 56g of GPU memory" in result.err, result  # 16g + a 40g GPU
    # A number of bytes, for this user: two whole 40g GPUs fit in 100g.
    capped({"default": {"max_gpu_memory": "16g"}, "users": {"genvtest": {"max_gpu_memory": 100 * GIB}}})
    first.ok("genv detach")
    second.ok("genv detach")
    whole.ok("genv attach --count 2")
    result = whole.run("genv attach --count 3")
    assert result.rc == 1 and "would hold 120g of GPU memory, over the cap max_gpu_memory = 100g" in result.err
    # root is not capped.
    root = genv.shell("bash")
    root.ok("genv activate --gpus 2")


def test_max_gpu_memory_with_mock_gpus_of_a_given_size(genv, capped, other_user):
    path = capped({"default": {"max_gpu_memory": "16g"}})
    shell = genv.shell("bash", user=other_user, GENV_DEVICES="2", GENV_DEVICES_MEMORY="16g")
    shell.ok("genv activate && genv config gpu-memory 8g")
    shell.ok("genv attach --count 2")  # 2 x 8g
    other = genv.shell("bash", user=other_user, GENV_DEVICES="2", GENV_DEVICES_MEMORY="16g")
    other.ok("genv activate && genv config gpu-memory 4g")
    result = other.run("genv attach --count 1")
    assert result.rc == 1 and ("would hold 20g of GPU memory, over the cap max_gpu_memory = 16g for them in %s"
                               % path) in result.err, result


def test_max_environments(genv, sh, capped, other_user):
    path = capped({"default": {"max_environments": 1}})
    one = genv.shell(sh, user=other_user)
    one.ok("genv activate --gpus 2")
    idle = genv.shell(sh, user=other_user)
    idle.ok("genv activate")  # an environment without GPUs does not count
    result = idle.run("genv attach --count 1")
    assert result.rc == 1
    line = refusal(result.err, path, "max_environments", 1)
    assert "would hold 2 environments" in line, line
    # The environment that holds GPUs may attach more.
    one.ok("genv attach --count 3")
    one.ok("genv detach")
    idle.ok("genv attach --count 1")


def test_a_users_own_caps_replace_the_defaults_they_name(genv, capped, other_user):
    path = capped({"default": {"max_gpus": 1, "max_environments": 1},
                   "users": {"genvtest": {"max_gpus": 2}, "alice": {"max_gpus": 0}}})
    shell = genv.shell("bash", user=other_user)
    shell.ok("genv activate --gpus 2")
    result = shell.run("genv attach --count 3")
    assert result.rc == 1 and refusal(result.err, path, "max_gpus", 2), result
    assert gpu_of(shell) == "0,1"
    assert genv.state(other_user.pw_uid)["envs"][0]["config"]["gpus"] == 2  # nothing changed
    shell.ok("genv attach --count 1")
    other = genv.shell("bash", user=other_user)
    result = other.run("genv activate --gpus 1")
    assert result.rc == 1 and refusal(result.err, path, "max_environments", 1), result


def test_a_cap_of_zero_refuses_every_attach(genv, capped, other_user):
    path = capped({"default": {"max_gpus": 0}})
    shell = genv.shell("bash", user=other_user)
    result = shell.run("genv activate --gpus 1")
    assert result.rc == 1 and refusal(result.err, path, "max_gpus", 0), result
    shell.ok("genv config gpu-memory 1g")
    result = shell.run("genv attach --count 1")
    assert result.rc == 1 and refusal(result.err, path, "max_gpus", 0), result
    assert env_state(genv, other_user.pw_uid)[0]["devices"] == []


def test_a_huge_cap_is_just_a_cap(genv, capped, other_user, world):
    """A whole number from 0 up is a valid cap, however big: no internal
    error at attach, nor in genv enforce."""
    capped({"default": {"max_gpus": 10 ** 400, "max_environments": 10 ** 400}})
    shell = genv.shell("bash", user=other_user)
    result = shell.run("genv activate --gpus 1")
    assert (result.rc, result.err) == (0, ""), result


def test_a_huge_cap_does_not_break_enforce(genv, capped, other_user, world):
    capped({})
    shell = genv.shell("bash", user=other_user)
    shell.ok("genv activate --gpus 1")
    world.in_shell(shell, gpu=0)
    capped({"default": {"max_gpus": 10 ** 400}})
    assert run_enforce(genv) == (0, "No process breaks the rules\n", "")


def test_concurrent_attaches_cannot_both_pass_the_cap(genv, capped, other_user):
    """The cap is checked under the state lock: of two attaches at the same
    time that each fit alone, one is refused."""
    path = capped({"default": {"max_gpus": 1}})
    shells = [genv.shell("bash", user=other_user) for _ in range(2)]
    for shell in shells:
        shell.ok("genv activate")
    markers = [start(shell, "genv attach --count 1") for shell in shells]
    results = [finish(shell, marker) for shell, marker in zip(shells, markers)]
    assert sorted(result.rc for result in results) == [0, 1], results
    refusal([r for r in results if r.rc][0].err, path, "max_gpus", 1)
    assert sum(len(env["devices"]) for env in genv.state(other_user.pw_uid)["envs"]) == 1


def test_joining_with_more_gpus_than_the_cap_changes_nothing(genv, capped, other_user):
    """activate --id X --gpus N (joining one's own environment) refused by a
    cap: the environment keeps its GPUs *and* its configuration."""
    path = capped({"default": {"max_gpus": 2}})
    first = genv.shell("bash", user=other_user)
    first.ok("genv activate --gpus 1")
    eid = first.var("GENV_ENVIRONMENT_ID")
    before = env_state(genv, other_user.pw_uid)
    second = genv.shell("bash", user=other_user)
    result = second.run("genv activate --id %s --gpus 3" % eid)
    assert result.rc == 1 and refusal(result.err, path, "max_gpus", 2), result
    assert second.var("GENV_ENVIRONMENT_ID") == eid
    assert env_state(genv, other_user.pw_uid) == before
    first.ok("genv attach")  # the environment's own count still attaches


@pytest.mark.parametrize("args", ["--count 3", "--index 0,1,2", "--index 1,2,3 --count 3", "--count 3 --wait",
                                  "--count 3 --wait 30", "--count 3 -o"])
def test_every_kind_of_attach_is_capped(genv, capped, other_user, args):
    path = capped({"default": {"max_gpus": 2}})
    shell = genv.shell("bash", user=other_user)
    shell.ok("genv activate --gpus 1")
    before = env_state(genv, other_user.pw_uid)
    started = time.monotonic()
    result = shell.run("genv attach %s" % args, timeout=20)
    assert result.rc == 1, result
    assert time.monotonic() - started < 15, "it waited for a refusal waiting cannot help"
    assert "waiting for" not in result.err, result
    refusal(result.err, path, "max_gpus", 2)
    assert len(result.err.splitlines()) == 1, result
    assert env_state(genv, other_user.pw_uid) == before  # config gpus included
    assert gpu_of(shell) == "0"
    assert not genv.state(other_user.pw_uid)["envs"][0].get("waiting")


def test_wait_is_refused_at_once_by_a_cap_even_when_no_gpu_is_free(genv, capped, other_user):
    """The cap is what refuses, not the busy GPUs: waiting in line for a
    GPU the cap will never allow would only hold up the line (and then fail
    when a GPU frees up)."""
    path = capped({"default": {"max_gpus": 1}})
    holder = genv.shell("bash", user=other_user)
    holder.ok("genv activate --gpus 1")
    root = genv.shell("bash")
    root.ok("genv activate --gpus 3")  # every other GPU is taken
    shell = genv.shell("bash", user=other_user)
    shell.ok("genv activate")
    result = shell.run("genv attach --count 1 --wait 3", timeout=20)
    assert result.rc == 1, result
    assert "waiting for" not in result.err, result
    refusal(result.err, path, "max_gpus", 1)


def test_a_waiting_attach_that_the_cap_refuses_later(genv, capped, other_user):
    """Waiting in line for a GPU (within the caps then); meanwhile the admin
    lowers the cap. When a GPU frees up the cap refuses: one line naming
    the cap, exit 1, nothing attached, no place in line left behind."""
    path = capped({"default": {"max_gpus": 4}})
    root = genv.shell("bash")
    root.ok("genv activate --gpus 4")
    waiter = genv.shell("bash", user=other_user)
    waiter.ok("genv activate")
    marker = start(waiter, "genv attach --count 1 --wait 60")
    until(lambda: any(env.get("waiting") for env in genv.state(other_user.pw_uid)["envs"]), "the attach to wait")
    capped({"default": {"max_gpus": 0}})
    root.ok("genv detach")
    result = finish(waiter, marker)
    assert result.rc == 1, result
    assert "Traceback" not in result.err, result
    refusal(result.err, path, "max_gpus", 0)
    assert gpu_of(waiter) in (None, "")
    assert [env["devices"] for env in genv.state(other_user.pw_uid)["envs"]] == [[]]
    # The place in line went with the waiter: the next attach is not "already waiting".
    capped({"default": {"max_gpus": 1}})
    waiter.ok("genv attach --count 1")
    assert gpu_of(waiter) == "0"
    assert not any(env.get("waiting") for env in genv.state(other_user.pw_uid)["envs"])


def test_root_is_not_capped(genv, capped, other_user):
    capped({"default": {"max_gpus": 0, "max_environments": 0}, "users": {"root": {"max_gpus": 0}}})
    root = genv.shell("bash")
    root.ok("genv activate --gpus 2")
    root.ok("genv attach --count 3")
    again = genv.shell("bash")
    again.ok("genv activate --gpus 1")
    assert gpu_of(again) == "3"


def test_a_typo_in_the_policy_does_not_lift_the_other_caps(genv, capped, other_user):
    """Issue 16, item 5: before, any bad key voided the whole file (here the
    typo max_gpu lifted max_gpus: 0)."""
    path = write_policy(genv, raw=b'{"default": {"max_gpus": 0, "max_gpu": 0}}')
    shell = genv.shell("bash", user=other_user)
    result = shell.run("genv activate --gpus 1")
    assert result.rc == 1, result
    lines = result.err.strip().splitlines()
    assert lines[0] == "genv: ignoring default.max_gpu in the policy %s: unknown field" % path, result
    refusal(result.err, path, "max_gpus", 0)
    assert gpu_of(shell) in (None, "")


def test_a_policy_the_user_owns_does_not_cap(genv, other_user):
    """genvtest writes a policy of their own (in their own folder): it is
    ignored, with one line."""
    path = write_policy(genv, {"default": {"max_gpus": 0}}, folder="mine", owner=other_user.pw_uid,
                        folder_owner=other_user.pw_uid)
    shell = genv.shell("bash", user=other_user)
    result = shell.run("genv activate --gpus 1")
    assert result.rc == 0, result
    assert warning(result.err, path) == "the folder belongs to uid %d, not to root" % other_user.pw_uid
    assert gpu_of(shell) == "0"


# === 3. genv enforce: dry run ====================================================


def test_nothing_to_report(genv, world):
    rc, out, err = run_enforce(genv)
    assert (rc, out, err) == (0, "No process breaks the rules\n", "")
    rc, out, err = run_enforce(genv, "--format", "json")
    assert (rc, json.loads(out), err) == (0, [], "")
    rc, out, err = run_enforce(genv, "--json")
    assert (rc, json.loads(out), err) == (0, [], "")
    rc, out, err = run_enforce(genv, "--kill")
    assert (rc, err) == (0, "") and out == "No process breaks the rules\n"


def test_dry_run_reports_every_rule_and_touches_nothing(genv, sh, world):
    alpha = genv.shell(sh)
    alpha.ok("genv activate --name alpha --gpus 1 && genv config gpu-memory 1g && genv attach")
    aid = alpha.var("GENV_ENVIRONMENT_ID")
    fine = world.in_shell(alpha, gpu=0, mib=500)
    assert gpu_of(alpha) == "0"
    beta = genv.shell(sh)
    beta.ok("genv activate --name beta --gpus 1")
    bid = beta.var("GENV_ENVIRONMENT_ID")
    assert gpu_of(beta) == "1"
    fits = world.in_shell(beta, gpu=1, mib=30000)  # a whole GPU: no share to exceed
    misplaced = world.in_shell(beta, gpu=2, mib=200)
    stranger = world.outside(gpu=3, mib=300)
    greedy = world.in_shell(alpha, gpu=0, mib=2000)  # 500 + 2000 MiB of a 1024 MiB share

    rc, docs, err = enforce_json(genv)
    assert rc == 1 and err == ""
    assert sorted(docs) == sorted([misplaced, stranger, greedy]), docs
    assert (docs[stranger]["rule"], docs[stranger]["gpu"], docs[stranger]["env_id"]) == ("unmanaged", 3, None)
    assert (docs[misplaced]["rule"], docs[misplaced]["gpu"], docs[misplaced]["env_id"]) == ("misplaced", 2, bid)
    assert (docs[greedy]["rule"], docs[greedy]["gpu"], docs[greedy]["env_id"]) == ("over-share", 0, aid)
    assert "2500 MiB of a 1024 MiB share" in docs[greedy]["detail"], docs[greedy]
    for pid, doc in docs.items():
        assert (doc["uid"], doc["user"], doc["outcome"], doc["command"]) == (UID, ME, "would stop", "sleep 613")
    assert docs[stranger]["memory"] == 300
    # The order: by rule, then GPU, then PID.
    rc, out, err = run_enforce(genv, "--format", "json")
    assert [doc["pid"] for doc in json.loads(out)] == [stranger, misplaced, greedy]

    rc, out, err = run_enforce(genv)
    assert rc == 1 and err == ""
    rows = columns(out)
    assert [row["RULE"] for row in rows] == ["unmanaged", "misplaced", "over-share"]
    assert rows[0] == {"RULE": "unmanaged", "GPU": "3", "PID": str(stranger), "USER": ME, "ENV ID": "-",
                       "MEMORY": "300MiB", "COMMAND": "sleep 613", "OUTCOME": "would stop"}
    assert rows[1]["ENV ID"] == bid and rows[2]["ENV ID"] == aid
    for pid in (fine, fits, misplaced, stranger, greedy):
        assert alive(pid), pid


def test_hostile_command_lines_and_unknown_sizes(genv, world):
    """A command line cannot forge table rows, log lines or terminal escapes;
    a size nvidia-smi does not know is "-" (table) and null (JSON)."""
    evil = world.outside(gpu=0, argv=["bash", "-c", "exec -a $'evil\\n2026-01-01T00:00:00Z rule=x pid=1 \\x1b[31m' "
                                      "sleep 613"])
    unknown = world.outside(gpu=1, mib="[N/A]")
    until(lambda: (World.cmdline(evil) or "").startswith("evil"), "exec -a")
    rc, out, err = run_enforce(genv)
    assert rc == 1 and err == "" and "\x1b" not in out and len(out.splitlines()) == 3, out
    rows = {int(row["PID"]): row for row in columns(out)}
    assert rows[evil]["COMMAND"].startswith("evil\\n2026"), rows
    assert rows[unknown]["MEMORY"] == "-"
    rc, docs, err = enforce_json(genv)
    assert docs[evil]["command"].startswith("evil\n2026") and docs[unknown]["memory"] is None
    service = Service(genv, "--interval", "60")
    try:
        lines = [service.line(), service.line()]
    finally:
        service.stop()
    assert all("\x1b" not in line for line in lines) and {int(fields(line)["pid"]) for line in lines} == {
        evil, unknown}


def test_a_process_of_a_uid_without_an_account(genv, world):
    need("root")
    uid = 54321
    while True:
        try:
            pwd.getpwuid(uid)
            uid += 1
        except KeyError:
            break
    pid = world.outside(gpu=0, argv=["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups",
                                     "sleep", "613"])
    until(lambda: World.cmdline(pid) == "sleep 613", "setpriv's exec")
    rc, docs, err = enforce_json(genv, "--kill", "--grace", "5")
    assert (rc, err) == (0, "") and (docs[pid]["uid"], docs[pid]["user"]) == (uid, str(uid)), docs
    assert docs[pid]["outcome"] == "terminated (SIGTERM)"
    assert gone(pid)


def test_over_share_stops_the_biggest_until_the_rest_fits(genv, world):
    shell = genv.shell("bash")
    shell.ok("genv activate && genv config gpu-memory 4g && genv attach --count 1")
    small = [world.in_shell(shell, gpu=0, mib=1000) for _ in range(3)]
    big = world.in_shell(shell, gpu=0, mib=2500)
    rc, docs, _ = enforce_json(genv)
    # 5500 MiB of 4096: stopping the biggest (2500) leaves 3000, which fits.
    assert rc == 1 and list(docs) == [big], docs
    assert all(pid not in docs for pid in small)


def named_waiter(world, user):
    """A process of ``user`` that names itself as genv's waiter does (any
    user can run genv's own code, or set that name)."""
    from conftest import system_python

    pid = world.outside(user=user, argv=[system_python(), "-I", "-S", "-c",
                                         "open('/proc/self/comm', 'w').write('genv-waiting')\n"
                                         "import time\ntime.sleep(613)"])
    until(lambda: procs.processes().name(pid) == "genv-waiting", "the name")
    return pid


def test_a_forged_place_counts_only_as_a_real_waiter_would(genv, world, capped, other_user):
    """Issue 16, item 3: a place whose process waits in genv (named so in
    the kernel) counts, but only as a real ``attach --wait`` of its owner
    would: within the owner's caps and what the machine has. One beyond
    them holds up nobody, and enforce reports it (rule ``line``)."""
    from test_sharing import rewrite_as

    capped({"default": {"max_gpus": 2}})
    waiters = [named_waiter(world, other_user) for _ in range(3)]
    shells = [genv.shell("bash", user=other_user) for _ in range(3)]
    for shell in shells:
        shell.ok("genv activate --no-attach")
    ids = [shell.var("GENV_ENVIRONMENT_ID") for shell in shells]

    def places(*counts):
        def change(data):
            for env in data["envs"]:
                if env["id"] in ids:
                    n = ids.index(env["id"])
                    pid = waiters[n]
                    env["waiting"] = None if counts[n] is None else {
                        "pid": pid, "token": procs.processes().token(pid), "since": time.time() - 60,
                        "arrived": time.clock_gettime(time.CLOCK_BOOTTIME) - 60, "count": counts[n],
                        "memory": None, "indices": None, "over_subscribe": False}
        rewrite_as(genv, other_user.pw_uid, change)

    root = genv.shell("bash")
    root.ok("genv activate --no-attach")
    # Within the cap: it counts, as a real waiter for 2 GPUs would.
    places(2, None, None)
    result = root.run("genv attach --count 3")
    assert result.rc == 1 and "2 GPUs are kept for 1 request waiting ahead in line" in result.err, result
    root.ok("genv attach --count 2")
    assert gpu_of(root) == "2,3"
    rc, out, _ = run_enforce(genv, "--format", "json")
    assert (rc, json.loads(out)) == (0, []), out
    root.ok("genv detach")
    # A process that does not wait in genv (the user's shell), over the cap,
    # more than the machine has: nothing.
    waiters[0] = shells[0].pid
    places(1, 4, 5)
    root.ok("genv attach --count 4")
    assert gpu_of(root) == "0,1,2,3"
    rc, out, _ = run_enforce(genv, "--format", "json")
    found = {doc["env_id"]: doc for doc in json.loads(out)}
    assert rc == 1 and sorted(found) == sorted(ids), out
    for doc in found.values():
        assert (doc["rule"], doc["pid"], doc["gpu"], doc["user"], doc["outcome"]) == (
            "line", None, None, "genvtest", "no process to stop"), doc
    assert "over the cap max_gpus = 2" in found[ids[1]]["detail"], found
    assert "this machine has 4" in found[ids[2]]["detail"], found
    assert "its process (pid %d) is not waiting in genv" % shells[0].pid in found[ids[0]]["detail"], found
    rc, out, _ = run_enforce(genv)
    assert [row["RULE"] for row in columns(out)] == ["line"] * 3 and rc == 1, out


# === 4. genv enforce --kill ======================================================


def test_kill_stops_what_breaks_the_rules_and_nothing_else(genv, sh, world):
    alpha = genv.shell(sh)
    alpha.ok("genv activate --gpus 1 && genv config gpu-memory 1g && genv attach")
    fine = world.in_shell(alpha, gpu=0, mib=500)
    greedy = world.in_shell(alpha, gpu=0, mib=2000)
    misplaced = world.in_shell(alpha, gpu=2, mib=10)
    stranger = world.outside(gpu=3, mib=300)

    rc, docs, err = enforce_json(genv, "--kill", "--grace", "5")
    assert (rc, err) == (0, "")
    assert {pid: (doc["rule"], doc["outcome"]) for pid, doc in docs.items()} == {
        stranger: ("unmanaged", "terminated (SIGTERM)"),
        misplaced: ("misplaced", "terminated (SIGTERM)"),
        greedy: ("over-share", "terminated (SIGTERM)"),
    }
    for pid in (greedy, misplaced, stranger):
        assert not alive(pid), pid
    assert alive(fine) and alive(alpha.pid)
    assert run_enforce(genv) == (0, "No process breaks the rules\n", "")


def test_kill_table_reports_each_outcome(genv, world):
    stranger = world.outside(gpu=1, mib=300)
    rc, out, err = run_enforce(genv, "--kill", "--grace", "5")
    assert (rc, err) == (0, "")
    [row] = columns(out)
    assert (row["RULE"], row["PID"], row["OUTCOME"]) == ("unmanaged", str(stranger), "terminated (SIGTERM)")
    assert not alive(stranger)


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace(genv, world):
    deaf = world.deaf(gpu=0, mib=100)
    polite = world.outside(gpu=1, mib=100)
    started = time.monotonic()
    rc, docs, err = enforce_json(genv, "--kill", "--grace", "1")
    took = time.monotonic() - started
    assert (rc, err) == (0, "")
    assert docs[deaf]["outcome"] == "killed (SIGKILL after 1s)", docs[deaf]
    assert docs[polite]["outcome"] == "terminated (SIGTERM)", docs[polite]
    assert gone(deaf) and not alive(polite)
    assert took >= 1.0, "SIGKILL came before the grace ended"


def test_the_state_is_not_locked_during_the_grace(genv, sh, world):
    """While --kill waits out the grace, other genv commands go on (the
    state lock is not held): an admin's long grace must not freeze every
    terminal on the machine."""
    stubborn = world.outside(gpu=0, argv=[sys.executable, "-c", "import signal, sys, time\n"
                                          "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
                                          "time.sleep(613)\n"])
    until(lambda: _blocked(stubborn) & bit(signal.SIGTERM), "SIGTERM to be blocked")
    killer = subprocess.Popen([os.path.join(genv.root, "bin", "genv"), "enforce", "--kill", "--grace", "60"],
                              env=genv.environ(), cwd=genv.work, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        until(lambda: pending_signals(stubborn) & bit(signal.SIGTERM) or killer.poll() is not None,
              "enforce to send SIGTERM", timeout=30)
        assert killer.poll() is None, killer.communicate()
        shell = genv.shell(sh, GENV_LOCK_TIMEOUT="5")
        result = shell.run("genv activate --gpus 1")
        assert result.rc == 0, result
        assert killer.poll() is None  # still in its grace
    finally:
        killer.kill()
        killer.communicate()


def _blocked(pid):
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    return 0


def test_grace_zero_kills_at_once(genv, world):
    deaf = world.deaf(gpu=0)
    rc, docs, _ = enforce_json(genv, "--kill", "--grace", "0")
    assert rc == 0 and docs[deaf]["outcome"].startswith("killed (SIGKILL"), docs
    assert gone(deaf)


def test_root_stops_a_second_users_processes(genv, sh, world, other_user):
    theirs = genv.shell(sh, user=other_user)
    theirs.ok("genv activate --gpus 1")
    assert gpu_of(theirs) == "0"
    own = world.in_shell(theirs, gpu=0, mib=100)
    misplaced = world.in_shell(theirs, gpu=1, mib=100)
    stranger = world.outside(gpu=2, user=other_user)
    deaf = world.deaf(gpu=3, user=other_user)
    rc, docs, err = enforce_json(genv, "--kill", "--grace", "1")
    assert (rc, err) == (0, "")
    assert {pid: (doc["rule"], doc["user"], doc["uid"]) for pid, doc in docs.items()} == {
        misplaced: ("misplaced", "genvtest", other_user.pw_uid),
        stranger: ("unmanaged", "genvtest", other_user.pw_uid),
        deaf: ("unmanaged", "genvtest", other_user.pw_uid),
    }
    assert docs[deaf]["outcome"] == "killed (SIGKILL after 1s)"
    assert gone(misplaced) and gone(stranger) and gone(deaf)
    assert alive(own)


def test_a_slurm_key_in_a_users_own_file_is_no_slurm_job(genv, world, other_user):
    """On a Slurm node (a configuration, and an scontrol that says no job
    runs: no daemons), another user writes ``"slurm"`` into one of their
    own environments. It stays theirs: root's enforce stops its misplaced
    process instead of leaving it to Slurm."""
    from test_sharing import rewrite_as

    folder = os.path.join(genv.base, "slurm-bin")
    os.makedirs(folder)
    log = os.path.join(genv.base, "scontrol.log")
    with open(os.path.join(folder, "scontrol"), "w") as handle:
        handle.write('#!/bin/sh\necho "$*" >> %s\necho "No jobs in the system"\n' % log)
    os.chmod(os.path.join(folder, "scontrol"), 0o755)
    conf = os.path.join(genv.base, "slurm.conf")
    with open(conf, "w") as handle:
        handle.write("ClusterName=genvtest\n")
    genv.extra.update({"SLURM_CONF": conf, "PATH": folder + ":" + genv.environ()["PATH"]})
    theirs = genv.shell("bash", user=other_user)
    theirs.ok("genv activate --gpus 1")
    assert gpu_of(theirs) == "0"
    eid = theirs.var("GENV_ENVIRONMENT_ID")

    def claim(data):
        for env in data["envs"]:
            if env["id"] == eid:
                env["slurm"] = "12"
    rewrite_as(genv, other_user.pw_uid, claim)
    assert [env.get("slurm") for env in genv.state(other_user.pw_uid)["envs"] if env["id"] == eid] == ["12"]
    misplaced = world.in_shell(theirs, gpu=1, mib=100)
    rc, docs, err = enforce_json(genv, "--kill", "--grace", "1")
    assert (rc, err) == (0, "")
    assert {pid: (doc["rule"], doc["env_id"], doc["outcome"]) for pid, doc in docs.items()} == {
        misplaced: ("misplaced", eid, "terminated (SIGTERM)")}
    assert gone(misplaced)
    with open(log) as handle:
        assert "show job" in handle.read()  # Slurm was asked: this is a Slurm node to genv


def test_a_user_stops_only_their_own(genv, world, other_user):
    root = genv.shell("bash")
    root.ok("genv activate --gpus 1")
    roots_misplaced = world.in_shell(root, gpu=1)
    roots_stranger = world.outside(gpu=2)
    theirs = world.outside(gpu=3, user=other_user)
    theirs_deaf = world.deaf(gpu=3, user=other_user)

    rc, docs, err = enforce_json(genv, user=other_user)  # a dry run first: all four reported
    assert rc == 1 and err == ""
    assert sorted(docs) == sorted([roots_misplaced, roots_stranger, theirs, theirs_deaf])
    assert {docs[pid]["outcome"] for pid in (roots_misplaced, roots_stranger)} == {"not permitted"}
    assert {docs[pid]["outcome"] for pid in (theirs, theirs_deaf)} == {"would stop"}

    rc, docs, err = enforce_json(genv, "--kill", "--grace", "1", user=other_user)
    assert rc == 1 and err == "", "a user cannot stop root's processes: that failed"
    assert docs[roots_misplaced]["outcome"] == docs[roots_stranger]["outcome"] == "not permitted"
    assert docs[theirs]["outcome"] == "terminated (SIGTERM)"
    assert docs[theirs_deaf]["outcome"] == "killed (SIGKILL after 1s)"
    assert alive(roots_misplaced) and alive(roots_stranger) and alive(root.pid)
    assert gone(theirs) and gone(theirs_deaf)

    rc, out, err = run_enforce(genv, "--kill", "--grace", "1", user=other_user)
    assert rc == 1 and err == ""
    assert sorted(row["OUTCOME"] for row in columns(out)) == ["not permitted", "not permitted"]


def copy_program(folder, name, owner=None):
    """A copy of /bin/sleep under another name (owned by ``owner``)."""
    os.makedirs(folder, exist_ok=True)
    program = os.path.join(folder, name)
    with open("/bin/sleep", "rb") as source, open(program, "wb") as target:
        target.write(source.read())
    os.chmod(program, 0o755)
    if owner is not None:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        os.chown(program, owner.pw_uid, owner.pw_gid)
    return program


def test_exempt_users_and_process_names_are_never_touched(genv, world, other_user):
    """Exempt by user, or by the program a process runs (its executable,
    named by its absolute path); the name a process gives itself (exec -a)
    does not make it exempt."""
    program = copy_program(os.path.join(genv.base, "sbin"), "nvidia-cuda-mps-server")
    write_policy(genv, {"exempt_users": ["genvtest"], "exempt_process_names": [program, "dcgm"]})
    theirs = world.outside(gpu=0, user=other_user)
    mps = world.outside(gpu=1, argv=[program, "613"])
    faked = world.outside(gpu=1, argv=["bash", "-c", "exec -a nvidia-cuda-mps-server sleep 613"])
    stranger = world.outside(gpu=2)
    until(lambda: World.cmdline(faked) == "nvidia-cuda-mps-server 613", "exec -a")
    rc, docs, err = enforce_json(genv)
    assert rc == 1 and err == "" and sorted(docs) == sorted([faked, stranger]), docs
    rc, docs, err = enforce_json(genv, "--kill", "--grace", "1")
    assert rc == 0 and sorted(docs) == sorted([faked, stranger])
    assert alive(theirs) and alive(mps) and not alive(faked) and not alive(stranger)
    assert run_enforce(genv) == (0, "No process breaks the rules\n", "")


def test_an_exempt_program_in_a_folder_with_a_space_is_exempt(genv, world):
    """A program named by its absolute path is exempt, whatever folder it is
    in (a space in it included)."""
    need("root")
    program = copy_program(os.path.join(genv.base, "opt dir"), "nvidia-cuda-mps-server")
    write_policy(genv, {"exempt_process_names": [program]})
    mps = world.outside(gpu=0, argv=[program, "613"])
    rc, docs, err = enforce_json(genv)
    assert (rc, docs, err) == (0, {}, ""), "the exempt daemon %r is reported" % World.cmdline(mps)


def test_an_exemption_by_name_cannot_be_borrowed(genv, world, other_user):
    """Issue 16, item 2: ``cp /bin/sleep ~/nvidia-cuda-mps-server`` is not
    exempt. By name, only a system program is: its file and every folder
    above it root's and writable by root only. The real /usr/bin/sleep is,
    under the name "sleep"; a user's copy named sleep is not, nor is root's
    own copy in a folder under the world-writable /tmp."""
    home = os.path.join(genv.base, "home-genvtest")
    borrowed = copy_program(home, "nvidia-cuda-mps-server", owner=other_user)
    users_sleep = copy_program(os.path.join(home, "bin"), "sleep", owner=other_user)
    roots_copy = copy_program(os.path.join(genv.base, "root-only"), "sleep")
    os.chmod(os.path.dirname(roots_copy), 0o755)
    write_policy(genv, {"exempt_process_names": ["nvidia-cuda-mps-server", "sleep"]})
    system = world.outside(gpu=0)  # sleep 613, from /usr/bin/sleep
    theirs = world.outside(gpu=1, user=other_user, argv=[borrowed, "613"])
    theirs_sleep = world.outside(gpu=2, user=other_user, argv=[users_sleep, "613"])
    roots = world.outside(gpu=3, argv=[roots_copy, "613"])
    rc, docs, err = enforce_json(genv)
    assert rc == 1 and err == "", (rc, err)
    assert sorted(docs) == sorted([theirs, theirs_sleep, roots]), docs
    assert all(doc["rule"] == "unmanaged" for doc in docs.values())
    rc, docs, err = enforce_json(genv, "--kill", "--grace", "1")
    assert gone(theirs) and gone(theirs_sleep) and gone(roots)
    assert alive(system)


# --- conflicts: only what root saw decides (issue 16, item 1) ----------------------


def forge(genv, owner, eid, devices):
    """The owner of ``eid`` writes ``devices`` into their own state file by
    hand (the file stays theirs, as if they had written it)."""
    data = genv.state(owner.pw_uid)
    for env in data["envs"]:
        if env["id"] == eid:
            env["devices"] = devices
    tmp = os.path.join(genv.base, "forged.json")
    with open(tmp, "w") as handle:
        json.dump(data, handle)
    os.chmod(tmp, 0o644)
    os.chown(tmp, owner.pw_uid, owner.pw_gid)
    os.rename(tmp, os.path.join(genv.tmpdir, "user-%d.json" % owner.pw_uid))


def uuid_of(genv, index, owner):
    """A GPU's UUID, from the device list in ``owner``'s state (not by
    asking genv as root, which would record what it saw)."""
    listed = genv.state(owner.pw_uid)["devices"] or genv.state(UID)["devices"]
    return [d for d in listed["list"] if d["index"] == index][0]["uuid"]


def child_of(pid, argv="sleep 613"):
    """The child of ``pid`` running ``argv`` (a held command of genv run, once released)."""
    found = []

    def look():
        try:
            with open("/proc/%d/task/%d/children" % (pid, pid)) as handle:
                children = [int(word) for word in handle.read().split()]
        except OSError:
            return False
        found[:] = [child for child in children if World.cmdline(child) == argv]
        return bool(found)

    until(look, "the command of pid %d" % pid)
    return found[0]


def conflict_docs(genv, *args):
    rc, out, err = run_enforce(genv, "--format", "json", *args)
    assert err == "", err
    return rc, [doc for doc in json.loads(out) if doc["rule"] == "conflict"]


def test_a_forged_attach_time_never_wins_a_conflict(genv, world, other_user):
    """The issue's repro: root runs a job with genv run; another user writes
    GPU 0 into their own file with an attach time of 1.0. Before, enforce
    --kill stopped the victim (the earlier attach time won); now root's own
    record says the victim's claim came first, and the forger's process is
    the one stopped."""
    need("root")
    root = genv.shell("bash")
    supervisor = world.in_shell(root, command="command genv run --gpus 1 --name victim -- sleep 613")
    victim = child_of(supervisor)
    world.put(victim, 0)
    assert [env["devices"][0]["index"] for env in genv.state(0)["envs"] if env["config"].get("name") == "victim"] \
        == [0]
    forger = genv.shell("bash", user=other_user)
    forger.ok("genv activate")
    forge(genv, other_user, forger.var("GENV_ENVIRONMENT_ID"), [{"index": 0, "uuid": uuid_of(genv, 0, other_user),
                                                                    "attached": 1.0}])
    theirs = world.in_shell(forger, gpu=0)
    rc, docs, err = enforce_json(genv, "--kill", "--grace", "1")
    assert (rc, err) == (0, ""), (rc, err, docs)
    assert list(docs) == [theirs], docs
    assert docs[theirs]["rule"] == "conflict" and docs[theirs]["outcome"] == "terminated (SIGTERM)", docs
    assert "saw hold it first" in docs[theirs]["detail"]
    assert gone(theirs) and alive(victim)


def test_a_conflict_no_root_run_genv_can_order_stops_neither(genv, world, other_user):
    """Two claims that no root-run genv saw come one after the other: both
    environments are reported, nothing is stopped, an admin must decide;
    still so at the next look (root first saw both at the same one)."""
    need("root")
    first = genv.shell("bash", user=other_user)
    first.ok("genv activate --gpus 1")
    second = genv.shell("bash", user=other_user)
    second.ok("genv activate")
    ids = sorted([first.var("GENV_ENVIRONMENT_ID"), second.var("GENV_ENVIRONMENT_ID")])
    forge(genv, other_user, second.var("GENV_ENVIRONMENT_ID"), [{"index": 0, "uuid": uuid_of(genv, 0, other_user),
                                                                   "attached": 1.0}])
    pids = [world.in_shell(first, gpu=0), world.in_shell(second, gpu=0)]
    for _ in range(2):
        rc, docs = conflict_docs(genv, "--kill", "--grace", "1")
        assert rc == 1 and sorted(doc["env_id"] for doc in docs) == ids, docs
        for doc in docs:
            assert (doc["pid"], doc["gpu"], doc["outcome"]) == (None, 0, "admin must decide"), doc
            assert "an admin must decide" in doc["detail"], doc
        assert all(alive(pid) for pid in pids)
    rc, out, err = run_enforce(genv)
    assert rc == 1 and [(row["RULE"], row["OUTCOME"]) for row in columns(out)] == [
        ("conflict", "admin must decide")] * 2, out


@pytest.mark.parametrize("first_share, second_share", [(None, None), (GIB, None), (None, GIB)],
                         ids=["whole-whole", "share-whole", "whole-share"])
def test_root_run_listings_record_who_held_a_gpu_first(genv, world, other_user, first_share, second_share):
    """A root-run listing (here genv devices) records the claims it sees; a
    claim written later loses to it, whatever its attach time says, be it a
    whole GPU or a share that a whole GPU cannot go with."""
    need("root")
    first = genv.shell("bash", user=other_user)
    first.ok("genv activate --gpus 1" if first_share is None
             else "genv activate && genv config gpu-memory 1g && genv attach --count 1")
    assert gpu_of(first) == "0"
    assert genv.cli("devices").returncode == 0  # root looks
    second = genv.shell("bash", user=other_user)
    second.ok("genv activate")
    claim = {"index": 0, "uuid": uuid_of(genv, 0, other_user), "attached": 1.0}
    if second_share is not None:
        claim.update(memory=second_share, total=GPU_MIB * MIB)
    forge(genv, other_user, second.var("GENV_ENVIRONMENT_ID"), [claim])
    keep = world.in_shell(first, gpu=0)
    lose = world.in_shell(second, gpu=0)
    rc, docs, err = enforce_json(genv, "--kill", "--grace", "1")
    assert (rc, err) == (0, "") and list(docs) == [lose], docs
    assert docs[lose]["rule"] == "conflict" and docs[lose]["env_id"] == second.var("GENV_ENVIRONMENT_ID")
    assert gone(lose) and alive(keep)
    # Root's record is root's own: it names what it saw, and users cannot write it.
    seen = genv.state(0)["seen"]
    assert {record["env"] for record in seen["envs"]} == {first.var("GENV_ENVIRONMENT_ID"),
                                                          second.var("GENV_ENVIRONMENT_ID")}
    assert os.stat(os.path.join(genv.tmpdir, "user-0.json")).st_uid == 0


def test_a_share_beside_a_share_is_no_conflict(genv, world, other_user):
    need("root")
    first = genv.shell("bash", user=other_user)
    first.ok("genv activate && genv config gpu-memory 1g && genv attach --count 1")
    second = genv.shell("bash", user=other_user)
    second.ok("genv activate")
    forge(genv, other_user, second.var("GENV_ENVIRONMENT_ID"), [{"index": 0, "uuid": uuid_of(genv, 0, other_user),
                                                                   "attached": 1.0, "memory": GIB}])
    world.in_shell(first, gpu=0)
    world.in_shell(second, gpu=0)
    assert run_enforce(genv) == (0, "No process breaks the rules\n", "")


def _holder(uid, eid, memory=None):
    return (uid, {"id": eid}, {"index": 0, "uuid": "GPU-0", "attached": 1.0,
                               **({"memory": memory} if memory else {})})


def _seen(*records):
    return {"boot": "b", "envs": [{"uid": uid, "env": eid, "claims": [{"gpu": "GPU-0", "whole": whole,
                                                                          "first": first}],
                                   "since": 0.0, "active": None, "busy": False, "until": {"value": None, "first": 0}}
                                  for uid, eid, whole, first in records]}


def test_sightings_order_the_claims_of_one_gpu():
    from genv.sightings import conflicts

    a, b, c, d = _holder(1, "a"), _holder(2, "b"), _holder(3, "c", GIB), _holder(4, "d", GIB)
    names_of = lambda holders: sorted(h[1]["id"] for h in holders)  # noqa: E731
    # Seen first wins; never seen loses to seen.
    kept, lost, undecided = conflicts([a, b], _seen((1, "a", True, 5.0)), "b")
    assert (names_of(kept), names_of(lost), undecided) == (["a"], ["b"], [])
    kept, lost, undecided = conflicts([a, b], _seen((1, "a", True, 9.0), (2, "b", True, 5.0)), "b")
    assert (names_of(kept), names_of(lost)) == (["b"], ["a"])
    # The same look, or never: undecided. Another boot's record is no record.
    for seen, boot in ((_seen((1, "a", True, 5.0), (2, "b", True, 5.0)), "b"), (None, "b"),
                       (_seen((1, "a", True, 5.0)), "another boot")):
        kept, lost, undecided = conflicts([a, b], seen, boot)
        assert (kept, lost, names_of(undecided)) == ([], [], ["a", "b"])
    # Shares go together; a whole GPU first seen after them loses.
    kept, lost, undecided = conflicts([c, d, a], _seen((3, "c", False, 1.0), (4, "d", False, 2.0),
                                                       (1, "a", True, 3.0)), "b")
    assert (names_of(kept), names_of(lost), undecided) == (["c", "d"], ["a"], [])
    # A share seen with a whole GPU at one look: undecided; a later share
    # that would not fit with one of them: undecided too.
    kept, lost, undecided = conflicts([a, c, d], _seen((1, "a", True, 1.0), (3, "c", False, 1.0),
                                                       (4, "d", False, 2.0)), "b")
    assert (kept, lost, names_of(undecided)) == ([], [], ["a", "c", "d"])
    # A whole claim seen as a share before is a new claim.
    kept, lost, undecided = conflicts([a, c], _seen((1, "a", False, 1.0), (3, "c", False, 2.0)), "b")
    assert (names_of(kept), names_of(lost)) == (["c"], ["a"])


def test_over_cap_after_the_policy_changed_stops_the_newest_environment(genv, world, other_user):
    need("root")
    path = write_policy(genv, {"default": {"max_gpus": 2}})
    older = genv.shell("bash", user=other_user)
    older.ok("genv activate --name older --gpus 1")
    newer = genv.shell("bash", user=other_user)
    newer.ok("genv activate --name newer --gpus 1")
    old_pid = world.in_shell(older, gpu=int(gpu_of(older)))
    new_pid = world.in_shell(newer, gpu=int(gpu_of(newer)))
    new_id = newer.var("GENV_ENVIRONMENT_ID")
    assert run_enforce(genv) == (0, "No process breaks the rules\n", "")

    write_policy(genv, {"default": {"max_gpus": 1}})
    rc, docs, err = enforce_json(genv)
    assert rc == 1 and err == "" and list(docs) == [new_pid], docs
    doc = docs[new_pid]
    assert (doc["rule"], doc["env_id"], doc["user"]) == ("over-cap", new_id, "genvtest"), doc
    assert "max_gpus = 1" in doc["detail"], doc

    rc, docs, err = enforce_json(genv, "--kill", "--grace", "1")
    assert rc == 0 and docs[new_pid]["outcome"] == "terminated (SIGTERM)", docs
    assert not alive(new_pid) and alive(old_pid)
    assert path


def test_over_cap_counts_environments_and_per_user_caps(genv, world, other_user):
    need("root")
    write_policy(genv, {})
    envs = []
    for name in ("a", "b", "c"):
        shell = genv.shell("bash", user=other_user)
        shell.ok("genv activate --name %s --gpus 1" % name)
        envs.append((shell, world.in_shell(shell, gpu=int(gpu_of(shell)))))
    root = genv.shell("bash")
    root.ok("genv activate --gpus 1")
    roots = world.in_shell(root, gpu=int(gpu_of(root)))
    write_policy(genv, {"default": {"max_gpus": 0, "max_environments": 0},
                        "users": {"genvtest": {"max_environments": 1, "max_gpus": 5}}})
    rc, docs, err = enforce_json(genv)
    assert rc == 1 and err == ""
    assert sorted(docs) == sorted([envs[1][1], envs[2][1]]), docs  # root is not capped; the oldest stays
    assert all("max_environments = 1" in doc["detail"] for doc in docs.values()), docs
    assert roots not in docs


def test_pid_1_and_unknown_pids_are_never_chosen(genv, world):
    """PID 1 (root's, unmanaged, on a GPU) is never reported, so never
    signalled (only a dry run here: signalling this machine's init is not a
    test to risk). A PID that does not exist is not listed at all."""
    world.put(1, 0, 100, "init")
    world.put(4194303 if os.path.exists("/proc/sys/kernel/pid_max") else 99999, 1, 100, "ghost")
    stranger = world.outside(gpu=2)
    rc, docs, err = enforce_json(genv)
    assert rc == 1 and err == "" and list(docs) == [stranger], docs
    # genv ps does list PID 1: it is on a GPU, only enforcement leaves it alone.
    listed = json.loads(genv.cli("ps", "--json").stdout)
    assert 1 in [doc["pid"] for doc in listed]


# --- decide(), pure -------------------------------------------------------------------


def _process(pid, gpu=0, uid=1000, env=None, memory=100 * MIB, command="python train.py", known=True,
             token="linux:x:1", misplaced=False, system=False):
    p = Process(gpu, pid, memory, command)
    p.program = command.split()[0]  # the executable
    p.system = system  # root's file in root's folders
    p.known = known
    if known:
        p.uid, p.token, p.env, p.misplaced = uid, token, env, misplaced
        p.owner = uid if env is not None else None
    return p


def _env(eid, devices, attached=1.0):
    return {"id": eid, "devices": [{"index": i, "attached": attached, **({"memory": m} if m else {})}
                                   for i, m in devices], "terminals": [], "config": {}}


MACHINE = [{"index": i, "uuid": "GPU-%d" % i, "total": GPU_MIB * MIB} for i in range(4)]


def names(uid):
    return {0: "root", 1000: "alice", 1001: "bob", 1002: "prometheus"}.get(uid, str(uid))


def test_decide_never_chooses_pid_1_unknown_or_exempt_processes():
    rules = policy.Policy({"exempt_users": ["prometheus"], "exempt_process_names": ["dcgm"]})
    processes = [
        _process(1, uid=0),
        _process(2, known=False),
        _process(3, token=None),
        _process(4, uid=None),
        _process(5, uid=1002),
        _process(6, command="/usr/sbin/dcgm --flag", system=True),
        _process(7),
        _process(8, command="/home/alice/dcgm --flag"),  # a user's copy: not exempt
    ]
    found = enforce.decide(processes, {}, MACHINE, rules, names)
    assert [(v.rule, v.process.pid) for v in found] == [("unmanaged", 7), ("unmanaged", 8)]


def test_decide_over_cap_and_over_share_choose_the_right_processes():
    old = _env("old", [(0, None)], attached=10.0)
    new = _env("new", [(1, None)], attached=20.0)
    shared = _env("shared", [(2, 1 * GIB)], attached=5.0)
    users = {1000: {"envs": [new, old]}, 0: {"envs": [_env("r", [(3, None)])]}, 1001: {"envs": [shared]}}
    processes = [
        _process(10, gpu=0, env=old), _process(11, gpu=1, env=new), _process(12, gpu=1, env=new),
        _process(13, gpu=3, uid=0, env=users[0]["envs"][0]),
        _process(20, gpu=2, uid=1001, env=shared, memory=800 * MIB),
        _process(21, gpu=2, uid=1001, env=shared, memory=300 * MIB),
        _process(22, gpu=2, uid=1001, env=shared, memory=None),
    ]
    rules = policy.Policy({"default": {"max_gpus": 1}})
    found = enforce.decide(processes, users, MACHINE, rules, names)
    assert [(v.rule, v.process.pid) for v in found] == [("over-cap", 11), ("over-cap", 12), ("over-share", 20)]
    # one violation per process, even when several rules apply
    misplaced = _process(14, gpu=3, env=new, misplaced=True)
    found = enforce.decide(processes + [misplaced], users, MACHINE, rules, names)
    assert [(v.rule, v.process.pid) for v in found].count(("misplaced", 14)) == 1
    assert len([v for v in found if v.process.pid == 14]) == 1


def test_decide_over_cap_by_memory_and_by_gpus_any_part_of():
    """Issue 16, item 5: enforce counts caps as attach does: a GPU held any
    part of is one GPU; memory adds the shares and every GPU held whole."""
    old = _env("old", [(0, None)], attached=10.0)  # 40g whole
    new = _env("new", [(1, 1 * GIB), (2, 1 * GIB)], attached=20.0)
    users = {1000: {"envs": [old, new]}}
    processes = [_process(10, gpu=0, env=old), _process(11, gpu=1, env=new), _process(12, gpu=2, env=new)]
    by_memory = policy.Policy(policy.check({"default": {"max_gpu_memory": "41g"}})[0])
    found = enforce.decide(processes, users, MACHINE, by_memory, names)
    assert [(v.rule, v.process.pid) for v in found] == [("over-cap", 11), ("over-cap", 12)]
    assert "max_gpu_memory = 41g" in found[0].detail
    by_gpus = policy.Policy({"default": {"max_gpus": 2}})
    found = enforce.decide(processes, users, MACHINE, by_gpus, names)
    assert [(v.rule, v.process.pid) for v in found] == [("over-cap", 11), ("over-cap", 12)]
    assert enforce.decide(processes, users, MACHINE, policy.Policy({"default": {"max_gpus": 3}}), names) == []


# === 5. signal(): the identity is checked before each signal ================================


@pytest.fixture
def blocker():
    """A process that blocks SIGTERM (so that a signal sent stays pending
    and can be seen in /proc, without waiting for anything)."""
    child = subprocess.Popen([sys.executable, "-c", "import signal, sys\n"
                              "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
                              "print('ready', flush=True)\nsys.stdin.read()\n"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        yield child
    finally:
        child.kill()
        child.wait()


def test_signal_refuses_a_process_whose_identity_changed(blocker):
    pid = blocker.pid
    token = procs.processes().token(pid)
    assert token
    boot, ticks = token.rsplit(":", 1)
    for wrong in ("%s:%d" % (boot, int(ticks) + 1), "%s:%d" % (boot, int(ticks) - 1), "linux:00000000:%s" % ticks):
        assert enforce.signal(pid, wrong, signal.SIGTERM, procs.processes) == "gone"
        assert not pending_signals(pid) & bit(signal.SIGTERM), "signalled a process of another identity"
    assert enforce.signal(pid, token, signal.SIGTERM, procs.processes) == "sent"
    assert pending_signals(pid) & bit(signal.SIGTERM)  # the check above could see a signal


def test_signal_with_a_wrong_token_leaves_a_sleep_running():
    child = subprocess.Popen(["sleep", "613"])
    try:
        token = procs.processes().token(child.pid)
        assert enforce.signal(child.pid, "linux:00000000:1", signal.SIGKILL, procs.processes) == "gone"
        assert enforce.signal(child.pid, token + "0", signal.SIGKILL, procs.processes) == "gone"
        assert enforce.alive(child.pid, token, procs.processes)
        assert child.poll() is None and alive(child.pid)
        assert enforce.signal(child.pid, token, signal.SIGKILL, procs.processes) == "sent"
        assert child.wait(timeout=10) == -signal.SIGKILL
        # Exited and reaped: gone, for any token.
        assert enforce.signal(child.pid, token, signal.SIGKILL, procs.processes) == "gone"
        assert not enforce.alive(child.pid, token, procs.processes)
    finally:
        kill_quietly(child.pid)
        child.wait()


def test_signal_does_not_touch_a_zombie():
    child = subprocess.Popen(["sleep", "613"])
    token = procs.processes().token(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    until(lambda: not alive(child.pid), "the zombie")
    try:
        assert enforce.signal(child.pid, token, signal.SIGTERM, procs.processes) == "gone"
    finally:
        child.wait()


def test_signal_to_another_users_process_is_not_permitted(genv, other_user):
    """Run as genvtest: signal() on root's process says "not permitted"."""
    target = subprocess.Popen(["sleep", "613"])
    try:
        token = procs.processes().token(target.pid)
        script = ("import signal, sys; sys.path.insert(0, %r)\n"
                  "from genv import enforce, procs\n"
                  "print(enforce.signal(%d, %r, signal.SIGTERM, procs.processes))\n"
                  "print(enforce.signal(%d, 'linux:0:0', signal.SIGTERM, procs.processes))\n"
                  % (genv.root, target.pid, token, target.pid))
        result = subprocess.run([genv.environ()["GENV_PYTHON"], "-c", script], capture_output=True, cwd="/",
                                env=genv.environ(), timeout=30, **as_user(other_user))
        assert result.stdout.decode().split() == ["not", "permitted", "gone"], result
        assert target.poll() is None
    finally:
        target.kill()
        target.wait()


# === 6. --interval and bad options ==================================================


class Service:
    """``genv enforce --interval ...`` running; its log lines read as they come."""

    def __init__(self, genv, *args, user=None):
        env = genv.environ()
        self.proc = subprocess.Popen([os.path.join(genv.root, "bin", "genv"), "enforce", *args], env=env,
                                     cwd=genv.work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True, **(as_user(user) if user else {}))
        self.buffer = b""

    def line(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while b"\n" not in self.buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    pytest.fail("no log line in %gs (exit %r, stderr %r)" % (timeout, self.proc.poll(),
                                                                            self.proc.stderr.read1(65536)
                                                                            if self.proc.poll() is not None
                                                                            else b"?"))
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    pytest.fail("the service exited %r: %r" % (self.proc.wait(), self.proc.stderr.read()))
                self.buffer += chunk
        finally:
            selector.close()
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        err = self.proc.stderr.read().decode()
        self.proc.stderr.close()
        return err


def fields(line):
    """A log line: time first, then key=value pairs."""
    stamp, *pairs = line.split(" ")
    assert time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"), line
    found = dict(pair.split("=", 1) for pair in pairs)
    assert {"rule", "pid", "user", "gpu"} <= set(found), line
    return found


def test_interval_kills_and_logs_one_line_per_action(genv, world):
    first = world.outside(gpu=0)
    deaf = world.deaf(gpu=1)
    service = Service(genv, "--kill", "--grace", "1", "--interval", "0.2")
    try:
        seen = {}
        while len(seen) < 2:
            found = fields(service.line())
            seen[int(found["pid"])] = found
        assert seen[first]["rule"] == "unmanaged" and seen[first]["gpu"] == "0" and seen[first]["user"] == ME
        assert seen[first]["outcome"] == "terminated_(SIGTERM)", seen
        assert seen[deaf]["outcome"].startswith("killed_(SIGKILL"), seen
        assert gone(first) and gone(deaf)
        # It goes on: a process that turns up later is found in a later round.
        later = world.outside(gpu=3)
        found = fields(service.line())
        assert (int(found["pid"]), found["gpu"], found["rule"]) == (later, "3", "unmanaged"), found
        assert gone(later)
        assert service.proc.poll() is None
    finally:
        err = service.stop()
    assert "Traceback" not in err, err


def test_interval_dry_run_logs_each_finding_once(genv, world):
    first = world.outside(gpu=2)
    service = Service(genv, "--interval", "0.1")
    try:
        found = fields(service.line())
        assert (int(found["pid"]), found["rule"], found["outcome"]) == (first, "unmanaged", "would_stop")
        second = world.outside(gpu=3)
        found = fields(service.line())  # the next line is the new finding, not the first again
        assert int(found["pid"]) == second, found
        assert alive(first) and alive(second)
    finally:
        err = service.stop()
    assert "Traceback" not in err, err


def test_interval_survives_a_failed_round(genv, world):
    """A service must not end because nvidia-smi failed once (a driver
    reload, a timeout): it says so and tries again in the next round."""
    flag = os.path.join(genv.base, "fail-now")
    calls = os.path.join(genv.base, "failed-calls")
    folder = os.path.join(genv.base, "wrap")
    os.makedirs(folder)
    wrapper = os.path.join(folder, "nvidia-smi")
    with open(wrapper, "w") as handle:
        handle.write("#!/usr/bin/env bash\nif [ -e %s ]; then echo x >>%s; echo 'NVIDIA-SMI has failed'; exit 9; fi\n"
                     "exec %s/tests/fake/nvidia-smi \"$@\"\n" % (flag, calls, genv.root))
    os.chmod(wrapper, 0o755)
    os.chmod(folder, 0o755)
    genv.extra["PATH"] = "%s:%s" % (folder, genv.environ()["PATH"])
    first = world.outside(gpu=0)
    service = Service(genv, "--kill", "--grace", "1", "--interval", "0.1")
    try:
        assert int(fields(service.line())["pid"]) == first
        open(flag, "w").close()
        until(lambda: service.proc.poll() is not None
              or (os.path.exists(calls) and len(open(calls).read().split()) >= 3), "three failed rounds")
        os.unlink(flag)
        assert service.proc.poll() is None, "the service ended after one failed round: %r" % (
            service.proc.stderr.read().decode())
        later = world.outside(gpu=1)
        assert int(fields(service.line())["pid"]) == later
    finally:
        err = service.stop()
    assert "Traceback" not in err, err


@pytest.mark.parametrize("args", [
    ["--grace", "-1"], ["--grace=-1"], ["--grace", "abc"], ["--grace", "nan"], ["--grace", "inf"], ["--grace", ""],
    ["--interval", "0"], ["--interval", "-5"], ["--interval=0"], ["--interval", "nan"],
    ["--format", "csv"], ["--format=csv"], ["--format", "xml"], ["--json", "--format", "table"],
    ["--kill=yes"], ["--grace"], ["now"], ["--force"],
])
def test_bad_options_are_one_line(genv, world, args):
    stranger = world.outside(gpu=0)
    result = genv.cli("enforce", *args)
    out, err = text(result)
    assert result.returncode == 1 and out == "", result
    assert len(err.splitlines()) == 1 and err.startswith("genv: ") and "Traceback" not in err, err
    assert alive(stranger)


def test_interval_message_names_the_real_limit(genv):
    """--interval 0.05 is above 0, yet refused: the message must say what
    is allowed."""
    result = genv.cli("enforce", "--interval", "0.05")
    err = result.stderr.decode()
    assert result.returncode == 1
    assert "above 0" not in err or "0.1" in err, err


def test_help_describes_enforce(genv):
    result = genv.cli("help", "enforce")
    out = result.stdout.decode()
    assert result.returncode == 0, result
    for word in ("--kill", "--grace", "--interval", "--format", "unmanaged", "misplaced", "over-share", "over-cap",
                 "line", "Exit status"):
        assert word in out, word
