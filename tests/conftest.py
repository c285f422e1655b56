"""Test harness: real bash and zsh processes driving an installed genv.

Every test gets a fresh copy of genv in a world-readable folder (so that a
second user account can run it), a fresh state folder and a fresh HOME. A
``Shell`` is one long-lived shell process (one "terminal"): commands are
written to its stdin and their stdout, stderr and exit status read back up
to a marker, so several terminals can be open at once.

Conventions for every test file (new ones included)
---------------------------------------------------
- **Parallel.** The suite runs in several worker processes at once
  (pytest-xdist: ``-n auto`` in pyproject.toml's addopts;
  ``pytest_xdist_auto_num_workers`` below says how many). Tests share
  nothing through the ``genv`` fixture (own copy, state folder, HOME), so
  they need not know of each other. ``-n 0`` runs in one process (for
  ``--pdb``, or to read a failure's output in order).
- **``@pytest.mark.serial``: runs alone.** A test that cannot share the
  machine says so: one that binds a fixed port, starts a daemon of which
  one may run per machine (sshd, Slurm), changes something machine-wide
  (an account, a file under /etc), or needs the machine quiet. While it
  runs, no other test of the run does (``Turns`` below); the serial tests
  are handed out last, and run one after another. A whole file opts in
  with ``pytestmark = pytest.mark.serial``. (Not xdist's ``--dist
  loadgroup``: pytest 9 ignores the node ids it rewrites.)
- **``@pytest.mark.timing``: asserts a wall-clock bound** (a waiter takes a
  GPU within a second, a scrape within 50 ms): implies ``serial``, so that
  the other tests' load does not break it. Targets that are performance
  goals rather than behaviour belong in bench/ (bench.py's targets,
  docs/performance.md), measured there.
- **``sh``: bash unless the shell matters.** A test that takes the ``sh``
  fixture runs in bash. Where the shell's own behaviour is what is tested
  (``genv init``'s code, quoting of values, the prompt, completion, the
  exact restore of variables, the genv function's paths: subshells, the
  ``--wait`` trap, Ctrl-C), mark it ``@pytest.mark.both_shells``: it then
  runs in bash and in zsh. Tests of Python logic (placement, the line,
  listings, the shim, policies) need one shell, not two.
- **Shared helpers live here**, once: ``alive``, ``gone``, ``until``,
  ``one_line``, ``uuid``, ``wrapper``, the ``gpus`` fixture (processes on
  the fake's GPUs), ``kill_quietly``, the JSON listings (``envs``,
  ``devices``, ``holders``, ``assert_free``), ``script``. A test file keeps
  only what it alone uses.
- **Requirements**: ``need(...)`` (below), never a bare skip for a missing
  tool or privilege.
"""

import fcntl
import json
import os
import pwd
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional
from uuid import uuid4

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)  # the tests import genv's modules
SHELLS = ["bash", "zsh"]
OTHER_USER = "genvtest"
THIRD_USER = "genvtest2"
UID = os.geteuid()
"""The uid the tests run as: genv's state file is ``user-<UID>.json``."""
ME = pwd.getpwuid(UID).pw_name
PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"
MIB = 1 << 20
GIB = 1 << 30

# --- requirements -------------------------------------------------------------
#
# A test that needs a tool or root calls ``need(...)``: without it the test
# skips, with one line saying why. A requirement listed in GENV_TEST_REQUIRE
# (comma-separated, e.g. ``zsh,shellcheck,root``) fails the test instead, so
# that CI cannot pass by skipping.

TOOLS = ("bash", "zsh", "shellcheck")
REQUIREMENTS = TOOLS + ("root", "sshd", "slurm")


def required() -> List[str]:
    return [word.strip() for word in os.environ.get("GENV_TEST_REQUIRE", "").split(",") if word.strip()]


def missing(what: str) -> Optional[str]:
    """Why requirement ``what`` is not met here, or None when it is."""
    if what in TOOLS:
        return None if shutil.which(what) else "not installed"
    if what == "root":
        return None if UID == 0 else "running as uid %d, not root" % UID
    if what == "sshd":  # OpenSSH's server and client, for the multi-host tests
        from sshd_hosts import missing as sshd_missing

        return sshd_missing()
    if what == "slurm":  # a real cluster the tests start: tests/slurm_cluster.py
        from slurm_cluster import missing as slurm_missing

        return slurm_missing()
    raise ValueError("unknown requirement %r (known: %s)" % (what, ", ".join(REQUIREMENTS)))


def need(*whats: str) -> None:
    """Skip the calling test (or fail it, see GENV_TEST_REQUIRE) unless every
    requirement is met: a tool on PATH (``bash``, ``zsh``, ``shellcheck``),
    ``root``, ``sshd`` (OpenSSH's server and client) or ``slurm`` (root and
    Slurm's daemons and clients)."""
    for what in whats:
        why = missing(what)
        if why is None:
            continue
        message = "needs %s: %s" % (what, why)
        if what in required():
            pytest.fail("%s (GENV_TEST_REQUIRE=%s)" % (message, os.environ["GENV_TEST_REQUIRE"]), pytrace=False)
        try:  # report the test's location, not this line's
            skip = pytest.skip.Exception(message, _use_item_location=True)
        except TypeError:  # pytest < 7
            skip = pytest.skip.Exception(message)
        raise skip


def pytest_configure(config: pytest.Config) -> None:
    # Tests send SIGINT (Ctrl-C) to genv's processes. A suite started in
    # the background by a non-interactive shell (``.ci/run &``) inherits
    # SIGINT ignored, and an ignored signal stays ignored in every child;
    # a handler here is reset to the default in them instead.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    unknown = [word for word in required() if word not in REQUIREMENTS]
    if unknown:
        raise pytest.UsageError("GENV_TEST_REQUIRE: unknown requirement(s) %s (known: %s)"
                                % (", ".join(unknown), ", ".join(REQUIREMENTS)))
    if os.environ.get("GENV_TEST_PYTHON") and not os.access(os.environ["GENV_TEST_PYTHON"], os.X_OK):
        raise pytest.UsageError("GENV_TEST_PYTHON=%s is not an executable file" % os.environ["GENV_TEST_PYTHON"])


def pytest_report_header(config: pytest.Config) -> List[str]:
    python = system_python()
    try:
        version = subprocess.run([python, "-I", "-S", "-c", "import sys; print(sys.version.split()[0])"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError as error:
        version = "cannot run: %s" % error
    return [
        "genv runs on: %s (Python %s)" % (python, version or "?"),
        "running as uid %d; GENV_TEST_REQUIRE=%s" % (UID, os.environ.get("GENV_TEST_REQUIRE", "")),
    ]


# --- running side by side ------------------------------------------------------
#
# See the module's docstring: tests run in several xdist workers; the ones
# marked serial (or timing) run alone.


def runs_alone(item: pytest.Item) -> bool:
    """Whether ``item`` must not share the machine with other tests."""
    return item.get_closest_marker("serial") is not None or item.get_closest_marker("timing") is not None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> Optional[int]:
    """How many workers ``-n auto`` starts: most tests wait (for shells,
    daemons, a polling waiter, the fake nvidia-smi) more than they compute,
    so two per CPU, at least 2 and at most 8. PYTEST_XDIST_AUTO_NUM_WORKERS
    overrides it (xdist reads it)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(2, min(8, 2 * cpus))


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    # The serial tests last (the order is otherwise kept): xdist hands out
    # tests in this order, so they run at the end, one at a time, when the
    # other workers have little or nothing left to do (Turns).
    items.sort(key=runs_alone)


class Turns:
    """Whose turn it is, across the workers of one run: ordinary tests run
    side by side, a serial one alone. Two flock()ed files in a folder the
    controller made for the run: a running ordinary test holds ``room``
    shared, a serial one holds it exclusively. Everybody passes through
    ``gate`` (exclusive, held only while waiting for ``room``), so a serial
    test waiting for the room keeps new tests out and is not starved. A
    worker keeps the room while its serial tests follow one another."""

    def __init__(self, folder: str) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        self.gate = os.open(os.path.join(folder, "gate"), flags, 0o600)
        self.room = os.open(os.path.join(folder, "room"), flags, 0o600)
        self.alone: Optional[bool] = None  # what is held: None (nothing), False (shared), True (alone)

    def enter(self, alone: bool) -> None:
        if self.alone is alone:
            return
        self.leave()
        fcntl.flock(self.gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self.room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(self.gate, fcntl.LOCK_UN)
        self.alone = alone

    def leave(self) -> None:
        if self.alone is not None:
            fcntl.flock(self.room, fcntl.LOCK_UN)
            self.alone = None


TURNS = pytest.StashKey[Optional[Turns]]()
TURNS_FOLDER = pytest.StashKey[str]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(xdist, in the controller) Tell each worker the run's lock folder."""
    config = node.config
    if TURNS_FOLDER not in config.stash:
        config.stash[TURNS_FOLDER] = tempfile.mkdtemp(prefix="genv-tests-turns-")
    node.workerinput["genv_turns"] = config.stash[TURNS_FOLDER]


def pytest_unconfigure(config: pytest.Config) -> None:
    turns = config.stash.get(TURNS, None)
    if turns is not None:
        turns.leave()
    if TURNS_FOLDER in config.stash:  # the controller, after its workers
        shutil.rmtree(config.stash[TURNS_FOLDER], ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Optional[pytest.Item]):  # type: ignore[no-untyped-def]
    config = item.config
    if TURNS not in config.stash:
        folder = getattr(config, "workerinput", {}).get("genv_turns")
        config.stash[TURNS] = Turns(folder) if folder else None
    turns = config.stash[TURNS]
    if turns is None:  # not an xdist worker: nobody to take turns with
        yield
        return
    alone = runs_alone(item)
    turns.enter(alone)
    yield
    if not (alone and nextitem is not None and runs_alone(nextitem)):
        turns.leave()


def system_python() -> str:
    """The interpreter genv runs on in the tests (GENV_PYTHON): the one in
    GENV_TEST_PYTHON if set, else one every user can run (a pyenv one under
    /root is not)."""
    chosen = os.environ.get("GENV_TEST_PYTHON")
    if chosen:
        return chosen
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def as_user(user: pwd.struct_passwd) -> Dict[str, Any]:
    """subprocess arguments that run a child as ``user`` (root only)."""
    if sys.version_info >= (3, 9):
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def demote() -> None:  # Python 3.8: no user/group/extra_groups arguments
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return {"preexec_fn": demote}


class Result:
    def __init__(self, out: str, err: str, rc: int) -> None:
        self.out, self.err, self.rc = out, err, rc

    def __repr__(self) -> str:
        return "Result(rc=%r, out=%r, err=%r)" % (self.rc, self.out, self.err)


class Shell:
    """One terminal: a bash or zsh process reading commands from a pipe."""

    def __init__(self, kind: str, env: Dict[str, str], cwd: str, user: Optional[pwd.struct_passwd] = None,
                 init: bool = True) -> None:
        need(kind)
        self.kind = kind
        argv = ["bash", "--norc", "--noprofile"] if kind == "bash" else ["zsh", "-f"]
        extra = as_user(user) if user is not None else {}
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, cwd=cwd, start_new_session=True, **extra,
        )
        self.pid = self.proc.pid
        if init:
            result = self.run('eval "$(genv init -)"')
            assert result.rc == 0, result

    def background(self, command: str) -> int:
        """Start ``command`` in the background (the terminal's child, or an
        orphan when ``command`` is a subshell that starts it); its pid once
        it has run its exec: ``$!`` is known at the fork, while the child
        still runs the shell's own program (a listing that reads its command
        line too soon sees the shell's)."""
        pid = int(self.ok(command).strip())

        def own_program() -> bool:
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as handle:
                    mine = handle.read()
            except OSError:
                return True  # ended already: nothing to wait for
            with open("/proc/%d/cmdline" % self.pid, "rb") as handle:
                return mine != handle.read()

        until(own_program, "the exec of %r" % command)
        return pid

    def run(self, command: str, timeout: float = 60) -> Result:
        marker = "__GENV_TEST_%s__" % uuid4().hex
        script = "%s\n__rc=$?; printf '\\n%s %%s\\n' \"$__rc\"; printf '\\n%s\\n' >&2\n" % (command, marker, marker)
        assert self.proc.stdin is not None
        self.proc.stdin.write(script.encode("utf-8", "surrogateescape"))
        self.proc.stdin.flush()
        return self._collect(marker, timeout)

    def _collect(self, marker: str, timeout: float) -> Result:
        buffers = {"out": b"", "err": b""}
        done = {"out": False, "err": False}
        needle = ("\n" + marker).encode()
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ, "out")  # type: ignore[arg-type]
        selector.register(self.proc.stderr, selectors.EVENT_READ, "err")  # type: ignore[arg-type]
        try:
            while not all(done.values()):
                events = selector.select(timeout)
                if not events:
                    raise TimeoutError("shell did not answer: %r" % buffers)
                for key, _ in events:
                    chunk = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
                    if not chunk:
                        raise EOFError("shell exited: %r" % buffers)
                    buffers[key.data] += chunk
                    if needle in buffers[key.data] and buffers[key.data].endswith(b"\n"):
                        done[key.data] = True
        finally:
            selector.close()
        out, _, tail = buffers["out"].partition(needle)
        err = buffers["err"].partition(needle)[0]
        rc = int(tail.split()[0])
        return Result(out.decode("utf-8", "surrogateescape"), err.decode("utf-8", "surrogateescape"), rc)

    def ok(self, command: str) -> str:
        result = self.run(command)
        assert result.rc == 0, result
        return result.out

    def var(self, name: str) -> Optional[str]:
        """A variable's value, None when unset (unset and empty kept apart)."""
        result = self.run("if [ -n \"${%s+x}\" ]; then printf 'set:%%s' \"$%s\"; else printf unset; fi" % (name, name))
        assert result.rc == 0, result
        return None if result.out == "unset" else result.out[len("set:"):]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


GENV_PARTS = ("bin", "libexec", "shims", "genv", "pyproject.toml", "tests/fake")
"""What a test's copy of genv holds (the ``genv`` fixture)."""


def make_template(folder: str) -> str:
    """A copy of genv's files (GENV_PARTS) in ``folder``, its modules byte-
    compiled for the interpreter the tests give genv: each test's copy is
    made of hard links to it (``link_tree``), so that neither the copy nor
    genv's first command in it (which would compile every module it
    imports) costs a test much. Returns the copy's root."""
    root = os.path.join(folder, "genv")
    for part in GENV_PARTS:
        source = os.path.join(REPO, part)
        target = os.path.join(root, part)
        if os.path.isdir(source):
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(source, target)
    # (A failure here only costs time: genv compiles what it imports.)
    subprocess.run([system_python(), "-I", "-m", "compileall", "-q", os.path.join(root, "genv")],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    return root


def link_tree(source: str, target: str) -> None:
    """``target``: the folders of ``source`` (mode 755), each file a hard
    link to its file there (a copy where a link cannot be made). A file
    genv or a test writes is replaced, never written in place, so the
    template stays as it was."""
    for folder, _, files in os.walk(source):
        made = os.path.normpath(os.path.join(target, os.path.relpath(folder, source)))
        os.makedirs(made, exist_ok=True)
        os.chmod(made, 0o755)
        for name in files:
            try:
                os.link(os.path.join(folder, name), os.path.join(made, name))
            except OSError:
                shutil.copy2(os.path.join(folder, name), os.path.join(made, name))


class Genv:
    """An installed genv, its state folder, and the terminals opened on it."""

    def __init__(self, base: str, template: str) -> None:
        self.base = base
        self.root = os.path.join(base, "genv")
        # Like /var/tmp: sticky and writable by all, so any user may create
        # the state folder inside it.
        vartmp = os.path.join(base, "vartmp")
        os.makedirs(vartmp)
        os.chmod(vartmp, 0o1777)
        self.tmpdir = os.path.join(vartmp, "genv")
        self.home = os.path.join(base, "home")
        self.work = os.path.join(base, "work")
        for folder in (self.home, self.work):
            os.makedirs(folder)
            os.chmod(folder, 0o777)
        link_tree(template, self.root)
        self.shells: List[Shell] = []
        self.extra: Dict[str, str] = {}

    def environ(self, **overrides: str) -> Dict[str, str]:
        env = {
            "PATH": "%s/bin:%s/tests/fake:/usr/local/bin:/usr/bin:/bin" % (self.root, self.root),
            "HOME": self.home,
            "GENV_TMPDIR": self.tmpdir,
            "GENV_PYTHON": system_python(),
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "FAKE_NVIDIA_SMI_GPUS": "4",
        }
        env.update(self.extra)
        env.update(overrides)
        return {key: value for key, value in env.items() if value is not None}

    def shell(self, kind: str = "bash", user: Optional[pwd.struct_passwd] = None, init: bool = True,
              cwd: Optional[str] = None, **overrides: str) -> Shell:
        env = self.environ(**overrides)
        if user is not None:
            env["HOME"] = self.home_of(user)
        shell = Shell(kind, env, cwd or self.work, user=user, init=init)
        self.shells.append(shell)
        return shell

    def home_of(self, user: pwd.struct_passwd) -> str:
        """A home folder of ``user``'s own in the test's folder (made)."""
        home = os.path.join(self.base, "home-" + user.pw_name)
        os.makedirs(home, exist_ok=True)
        os.chown(home, user.pw_uid, user.pw_gid)
        return home

    def cli(self, *args: str, user: Optional[pwd.struct_passwd] = None, input: Optional[bytes] = None,
            **overrides: str) -> subprocess.CompletedProcess:
        """Run ``genv ARGS`` as a plain command (not through the function)."""
        env = self.environ(**overrides)
        extra = as_user(user) if user is not None else {}
        return subprocess.run(
            [os.path.join(self.root, "bin", "genv"), *args], env=env, cwd=self.work,
            capture_output=True, input=input, timeout=60, **extra,
        )

    def state(self, uid: Optional[int] = None) -> dict:
        """A user's state file, parsed (by default the user running the tests)."""
        import json

        if uid is None:
            uid = UID
        with open(os.path.join(self.tmpdir, "user-%d.json" % uid)) as handle:
            return json.load(handle)

    def close(self) -> None:
        for shell in self.shells:
            shell.close()


@pytest.fixture(scope="session")
def genv_template():
    """genv's files, byte-compiled, once per test process (``make_template``)."""
    folder = tempfile.mkdtemp(prefix="genv-template-", dir="/tmp")
    os.chmod(folder, 0o755)
    try:
        yield make_template(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def genv(genv_template):
    base = tempfile.mkdtemp(prefix="genv-test-", dir="/tmp")
    os.chmod(base, 0o755)
    installed = Genv(base, genv_template)
    try:
        yield installed
    finally:
        installed.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sleepers():
    """Long-lived processes standing in for terminals (their PIDs are alive)."""
    procs = []

    def make() -> int:
        proc = subprocess.Popen(["sleep", "600"])
        procs.append(proc)
        return proc.pid

    yield make
    for proc in procs:
        proc.kill()
        proc.wait()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # The shell kind (fixture sh): bash, and zsh too where the test is
    # marked both_shells (see the module's docstring).
    if "sh" in metafunc.fixturenames:
        both = metafunc.definition.get_closest_marker("both_shells") is not None
        metafunc.parametrize("sh", SHELLS if both else ["bash"], indirect=True)


@pytest.fixture
def sh(request):
    """The shell kind: "bash", or each of bash and zsh for a test marked
    ``both_shells``."""
    need(request.param)
    return request.param


def account(name: str) -> pwd.struct_passwd:
    """A real account ``name``, created if missing (root only). Several
    workers (or runs) may create it at once: whoever loses the race finds it
    made (useradd exit 9: the name is taken) or waits for the account files'
    lock (exit 10)."""
    need("root")
    deadline = time.monotonic() + 60
    while True:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
        done = subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/bash", name],
                              capture_output=True, text=True)
        if done.returncode == 0:
            return pwd.getpwnam(name)
        if done.returncode not in (1, 9, 10) or time.monotonic() > deadline:
            pytest.fail("useradd %s: exit %d: %s" % (name, done.returncode, done.stderr.strip()), pytrace=False)
        time.sleep(0.1)


@pytest.fixture(scope="session")
def other_user():
    """A second real account (created when the tests run as root)."""
    return account(OTHER_USER)


@pytest.fixture(scope="session")
def third_user():
    """A third real account, for what takes two users besides root (an
    attacker and a victim whose uids are both not 0)."""
    return account(THIRD_USER)



# --- helpers shared by the test files ------------------------------------------


def spawn(genv: "Genv", kind: str, init: bool = True, user: Optional[pwd.struct_passwd] = None, **env: str) -> Any:
    """An interactive shell on a pseudo-terminal (pexpect), prompt ``P> ``
    (as ``user``: root only)."""
    import pexpect

    need(kind)
    argv = [kind, "--norc", "--noprofile", "-i"] if kind == "bash" else [kind, "-f", "-i"]
    environ = genv.environ(**env)
    if user is not None:
        environ["HOME"] = genv.home_of(user)
        argv = ["setpriv", "--reuid=%d" % user.pw_uid, "--regid=%d" % user.pw_gid, "--clear-groups"] + argv
    child = pexpect.spawn(argv[0], argv[1:], env=environ, cwd=genv.work, encoding="utf-8", timeout=30,
                          dimensions=(50, 400))
    child.sendline("PS1='P> '" + ('; eval "$(genv init -)"' if init else ""))
    child.sendline("echo SYNC1")
    child.expect("SYNC1\r\n")
    child.expect_exact("P> ")
    return child


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            data = handle.read()
    except OSError:
        return False
    return data[data.rfind(")") + 2] not in "ZX"


def running(pid: int, program: bytes) -> None:
    """Wait until ``pid`` runs ``program`` (its exec done: ``$!`` names a
    fork that still runs the shell, with the shell's command line and
    environment), or has ended."""

    def done() -> bool:
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                return os.path.basename(handle.read().split(b"\0")[0]) == program
        except OSError:
            return True

    until(done, "pid %d to run %s" % (pid, program.decode()))


def until(condition: Callable[[], Any], what: str = "a condition", timeout: float = 30.0, step: float = 0.02) -> Any:
    """Wait for something the test cannot be told about (a process that
    dies, a file that appears, a state change): call ``condition`` until it
    returns something true, and return that; fail after ``timeout`` seconds
    (which only matters when genv is broken)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail("timed out after %g s waiting for %s" % (timeout, what), pytrace=False)
        time.sleep(step)


def gone(pid: int, timeout: float = 30.0) -> bool:
    """Wait until ``pid`` is no longer a live process (SIGKILL is delivered
    asynchronously); True then."""
    until(lambda: not alive(pid), "pid %d to end" % pid, timeout)
    return True


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def one_line(result: Any, status: Optional[int] = 1) -> str:
    """A refusal: exit ``status`` (None: any but 0), nothing on stdout, one
    ``genv: `` line on stderr, no traceback and no escape character; that
    line, without its newline. ``result`` is a Shell's ``Result`` or a
    ``subprocess.CompletedProcess``."""
    if isinstance(result, Result):
        rc, out, err = result.rc, result.out, result.err
    else:
        rc, out = result.returncode, result.stdout
        err = result.stderr.decode("utf-8", "replace") if isinstance(result.stderr, bytes) else result.stderr
    assert (rc != 0 if status is None else rc == status) and not out, result
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("genv: ") and err.endswith("\n"), result
    assert "Traceback" not in err and "\x1b" not in err, result
    return lines[0]


def uuid(index: int) -> str:
    """The fake nvidia-smi's UUID of GPU ``index``."""
    return "GPU-%08x-5ee0-4c1a-9a3e-%012x" % (0x3f1e2d00 + index, 0xa100 + index)


def script(genv: Genv, name: str, text: str) -> str:
    """An executable file ``name`` in the test's folder (written once)."""
    path = os.path.join(genv.base, name)
    if not os.path.exists(path):
        with open(path, "w") as handle:
            handle.write(text)
        os.chmod(path, 0o755)
    return path


# What a command sees (genv run, genv.sdk): ``python3 DUMP OUT NAME...``
# writes the variables NAME... (None: unset) as JSON to OUT.
DUMP = r'''
import json, os, sys
names = sys.argv[2:]
with open(sys.argv[1], "w") as handle:
    json.dump({name: os.environ.get(name) for name in names}, handle)
'''

VARS = ["CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "GENV_ENVIRONMENT_ID", "GENV_ATTACHED_GPUS", "GENV_GPU_MEMORY",
        "XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION", "TF_FORCE_GPU_ALLOW_GROWTH", "PATH"]


def wrapper(genv: Genv, when: str, body: str, name: str = "wrap") -> str:
    """An nvidia-smi before the fake on PATH: for a call whose arguments
    match the bash pattern ``when`` it runs ``body`` (bash, with ``$real``
    the fake), for any other it runs the fake. Returns the PATH to use."""
    folder = os.path.join(genv.base, name)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "nvidia-smi")
    real = os.path.join(genv.root, "tests", "fake", "nvidia-smi")
    with open(path, "w") as handle:
        handle.write("#!/usr/bin/env bash\nreal=%s\ncase \" $* \" in\n%s)\n%s\n;;\nesac\nexec \"$real\" \"$@\"\n"
                     % (real, when, body))
    os.chmod(path, 0o755)
    os.chmod(folder, 0o755)
    return "%s:%s" % (folder, genv.environ()["PATH"])


# The JSON listings, as lists of documents.


def envs(genv: Genv, **env: str) -> List[Dict[str, Any]]:
    result = genv.cli("envs", "--format", "json", **env)
    assert result.returncode == 0, result
    return json.loads(result.stdout)


def devices(genv: Genv, **env: str) -> List[Dict[str, Any]]:
    result = genv.cli("devices", "--format", "json", **env)
    assert result.returncode == 0, result
    return json.loads(result.stdout)


def holders(genv: Genv, **env: str) -> Dict[int, List[str]]:
    """GPU index -> the ids of the environments holding it."""
    return {d["index"]: [e["id"] for e in d["environments"]] for d in devices(genv, **env)}


def assert_free(genv: Genv) -> None:
    """Nothing held: no environment, no GPU attached, nobody in line."""
    assert envs(genv) == []
    assert all(not ids for ids in holders(genv).values()), holders(genv)


class Gpus:
    """The fake nvidia-smi's process list (FAKE_NVIDIA_SMI_APPS) and the
    processes a test starts; every one of them is killed when the test
    ends."""

    def __init__(self, genv: Genv) -> None:
        self.genv = genv
        self.path = os.path.join(genv.base, "apps")
        open(self.path, "w").close()
        os.chmod(self.path, 0o644)
        genv.extra["FAKE_NVIDIA_SMI_APPS"] = self.path
        self.children: Dict[int, subprocess.Popen] = {}  # pid -> Popen
        self.pids: List[int] = []  # started by shells
        self.fifos = 0

    def put(self, pid: int, gpu: Any, mib: int = 100, name: str = "python") -> int:
        """List ``pid`` as a compute process on ``gpu`` (index or UUID)."""
        with open(self.path, "a") as handle:
            handle.write("%d %s %s %s\n" % (pid, gpu, mib, name))
        return pid

    SLEEP = "sleep 600"
    """What the processes the test starts run, unless it says otherwise."""

    def outside(self, gpu: Any = None, mib: int = 100, name: str = "python", user: Optional[pwd.struct_passwd] = None,
                env_id: Optional[str] = None, argv: Optional[List[str]] = None,
                env: Optional[Dict[str, str]] = None) -> int:
        """A process started outside every terminal (by the test), with
        GENV_ENVIRONMENT_ID=env_id in its environment when given, and ``env``."""
        environ = {"PATH": PLAIN_PATH, "LANG": "C.UTF-8", **(env or {})}
        if env_id is not None:
            environ["GENV_ENVIRONMENT_ID"] = env_id
        child = subprocess.Popen(argv or self.SLEEP.split(), env=environ, cwd="/", stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                 **(as_user(user) if user is not None else {}))
        self.children[child.pid] = child
        if gpu is not None:
            self.put(child.pid, gpu, mib, name)
        return child.pid

    def in_shell(self, shell: Shell, gpu: Any = None, mib: int = 100, name: str = "python",
                 command: Optional[str] = None) -> int:
        """A process started by a terminal (its child)."""
        pid = shell.background("%s </dev/null >/dev/null 2>&1 & echo $!" % (command or self.SLEEP))
        self.pids.append(pid)
        if gpu is not None:
            self.put(pid, gpu, mib, name)
        return pid

    def orphan(self, shell: Shell, gpu: Any = None, mib: int = 100, name: str = "python") -> int:
        """A process a terminal started in a subshell that exited at once: its
        parent is no longer the terminal (only its environment tells)."""
        pid = shell.background("(sleep 600 </dev/null >/dev/null 2>&1 & echo $!)")
        self.pids.append(pid)
        if gpu is not None:
            self.put(pid, gpu, mib, name)
        return pid

    def grandchild(self, shell: Shell, gpu: Any = None, mib: int = 100, name: str = "python") -> int:
        """A grandchild of a terminal, without GENV_ENVIRONMENT_ID in its
        environment: only its ancestry puts it in the environment."""
        self.fifos += 1
        fifo = os.path.join(self.genv.base, "fifo-%d" % self.fifos)
        os.mkfifo(fifo)
        os.chmod(fifo, 0o666)
        out = shell.ok(
            "bash -c 'env -u GENV_ENVIRONMENT_ID sleep 600 </dev/null >/dev/null 2>&1 & echo $! >%s; wait' "
            "</dev/null >/dev/null 2>&1 & read -r p <%s; echo \"$p $!\"" % (fifo, fifo))
        pid, parent = map(int, out.split())
        self.pids += [pid, parent]
        running(pid, b"sleep")
        if gpu is not None:
            self.put(pid, gpu, mib, name)
        return pid

    def outside_grandchild(self, gpu: Any = None, mib: int = 100, name: str = "python") -> "tuple[int, int]":
        """A child of a process started outside every terminal: (parent, child)."""
        self.fifos += 1
        fifo = os.path.join(self.genv.base, "fifo-%d" % self.fifos)
        os.mkfifo(fifo)
        parent = self.outside(argv=["bash", "-c", "sleep 600 </dev/null >/dev/null 2>&1 & echo $! >%s; wait" % fifo])
        with open(fifo) as handle:
            child = int(handle.read())
        self.pids.append(child)
        running(child, b"sleep")
        if gpu is not None:
            self.put(child, gpu, mib, name)
        return parent, child

    def drop(self, pid: int) -> None:
        """Take ``pid`` off the fake's list (as if it left the GPU), at once:
        a reader sees the list before or after, never half of it."""
        with open(self.path) as handle:
            lines = [line for line in handle if line.split()[0] != str(pid)]
        with open(self.path + ".new", "w") as handle:
            handle.writelines(lines)
        os.chmod(self.path + ".new", 0o644)
        os.rename(self.path + ".new", self.path)

    def stop(self, pid: int) -> None:
        """Kill a process now (and reap it, if it is the test's child)."""
        kill_quietly(pid)
        if pid in self.children:
            self.children.pop(pid).wait()

    def close(self) -> None:
        for pid in self.pids:
            kill_quietly(pid)
        for pid in list(self.children):
            self.stop(pid)
        extra = os.path.join(self.genv.base, "spawned")
        if os.path.exists(extra):
            for line in open(extra).read().split():
                kill_quietly(int(line))


@pytest.fixture
def gpus(genv):
    """Processes on the fake's GPUs (``Gpus``), all killed at the end."""
    world = Gpus(genv)
    try:
        yield world
    finally:
        world.close()
