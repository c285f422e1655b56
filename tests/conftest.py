"""Test harness: real bash and zsh processes driving an installed genv.

Every test gets a fresh copy of genv in a world-readable folder (so that a
second user account can run it), a fresh state folder and a fresh HOME. A
``Shell`` is one long-lived shell process (one "terminal"): commands are
written to its stdin and their stdout, stderr and exit status read back up
to a marker, so several terminals can be open at once.
"""

import os
import pwd
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from typing import Any, Dict, List, Optional

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHELLS = ["bash", "zsh"]
OTHER_USER = "genvtest"
UID = os.geteuid()
"""The uid the tests run as: genv's state file is ``user-<UID>.json``."""

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

    def run(self, command: str, timeout: float = 60) -> Result:
        marker = "__GENV_TEST_%s__" % uuid.uuid4().hex
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


class Genv:
    """An installed genv, its state folder, and the terminals opened on it."""

    def __init__(self, base: str) -> None:
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
        for part in ("bin", "libexec", "shims", "genv", "pyproject.toml", "tests/fake"):
            source = os.path.join(REPO, part)
            target = os.path.join(self.root, part)
            if os.path.isdir(source):
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy2(source, target)
        for folder, dirs, files in os.walk(self.root):
            os.chmod(folder, 0o755)
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
            env["HOME"] = os.path.join(self.base, "home-" + user.pw_name)
            os.makedirs(env["HOME"], exist_ok=True)
            os.chown(env["HOME"], user.pw_uid, user.pw_gid)
        shell = Shell(kind, env, cwd or self.work, user=user, init=init)
        self.shells.append(shell)
        return shell

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


@pytest.fixture
def genv():
    base = tempfile.mkdtemp(prefix="genv-test-", dir="/tmp")
    os.chmod(base, 0o755)
    installed = Genv(base)
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


@pytest.fixture(params=SHELLS)
def sh(request):
    """The shell kind; tests that take it run in bash and in zsh."""
    need(request.param)
    return request.param


@pytest.fixture(scope="session")
def other_user():
    """A second real account (created when the tests run as root)."""
    need("root")
    try:
        return pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/bash", OTHER_USER], check=True)
        return pwd.getpwnam(OTHER_USER)


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
