"""Machines for the multi-host tests and benchmark: OpenSSH's own sshd on
127.0.0.1, one instance per "host".

Each instance listens on a port of its own and gives every session it runs
the settings of its host with ``SetEnv`` (its own HOME, state folder, GPU
count, PATH with the installed genv and the fake nvidia-smi). The host and
user keys are made here; a client config gives each instance an alias, and
``GENV_SSH_COMMAND='ssh -F FILE'`` makes genv use it. Besides the real
hosts: a port where nothing listens (refused), a listener that accepts and
never answers (hangs), and an alias whose key sshd does not accept (denied).
Nothing leaves loopback. ``stop()`` ends every sshd started here, the
sessions they serve, and the client's background connections (ssh's
ControlPersist masters, found by their control folder).

As root, the sessions log in as root; otherwise sshd runs unprivileged
(OpenSSH supports this for logins as the same user), as the user running it.
"""

import os
import pwd
import signal
import socket
import subprocess
import threading
import time
from typing import Dict, List, Optional

SSHD = "/usr/sbin/sshd"


def missing() -> Optional[str]:
    """Why these hosts cannot run here, or None."""
    for program in (SSHD, "/usr/bin/ssh", "/usr/bin/ssh-keygen"):
        if not os.access(program, os.X_OK):
            return "%s is not installed (Debian: openssh-server, openssh-client)" % program
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children() -> Dict[int, List[int]]:
    found: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as handle:
                parent = int(handle.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        found.setdefault(parent, []).append(int(name))
    return found


def _descendants(pid: int) -> List[int]:
    tree = _children()
    result: List[int] = []
    stack = [pid]
    while stack:
        for child in tree.get(stack.pop(), []):
            result.append(child)
            stack.append(child)
    return result


def _with_cmdline(text: str) -> List[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as handle:
                if text.encode() in handle.read():
                    found.append(int(name))
        except OSError:
            continue
    return found


def _kill(pids: List[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class Hanging:
    """A TCP listener that accepts connections and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: List[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def stop(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)
        for conn in self.held:
            conn.close()


class Hosts:
    """Test sshd instances and the client side to reach them."""

    def __init__(self, base: str, genv_root: str, python: str) -> None:
        self.base = base
        self.genv_root = genv_root
        self.python = python
        os.makedirs(base, exist_ok=True)
        os.chmod(base, 0o755)
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.keys = os.path.join(base, "keys")
        os.makedirs(self.keys, mode=0o700)
        for name in ("host", "user"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "genv-test-" + name, "-f",
                            os.path.join(self.keys, name)], check=True, timeout=60)
        with open(os.path.join(self.keys, "user.pub")) as source:
            with open(os.path.join(self.keys, "authorized_keys"), "w") as target:
                target.write(source.read())
        with open(os.path.join(self.keys, "host.pub")) as handle:
            self.host_key = handle.read().split()[:2]
        self.run = os.path.join(base, "run")  # XDG_RUNTIME_DIR: the control folder's parent
        os.makedirs(self.run, mode=0o700)
        self.config_home = os.path.join(base, "config")  # XDG_CONFIG_HOME: genv/hosts
        os.makedirs(os.path.join(self.config_home, "genv"))
        self.config = os.path.join(base, "ssh_config")
        self.known_hosts = os.path.join(base, "known_hosts")
        self.aliases: Dict[str, str] = {}  # alias -> its Host block
        self.procs: Dict[str, "subprocess.Popen[bytes]"] = {}
        self.homes: Dict[str, str] = {}
        self.states: Dict[str, str] = {}
        self.ports: Dict[str, int] = {}
        self.hanging: List[Hanging] = []
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder

    # --- the hosts ---------------------------------------------------------------

    def add(self, name: str, gpus: int = 4, keys: bool = True, **settings: str) -> str:
        """Start a host ``name`` (its alias) with ``gpus`` fake GPUs and
        ``settings`` as further variables of its sessions; without ``keys``,
        it accepts no key (every login is denied)."""
        folder = os.path.join(self.base, "host-" + name)
        home = os.path.join(folder, "home")
        vartmp = os.path.join(folder, "vartmp")
        for path in (home, vartmp):
            os.makedirs(path)
        os.chmod(vartmp, 0o1777)
        state = os.path.join(vartmp, "genv")
        variables = {
            "HOME": home,
            "GENV_TMPDIR": state,
            "GENV_PYTHON": self.python,
            "FAKE_NVIDIA_SMI_GPUS": str(gpus),
            "PATH": "%s/bin:%s/tests/fake:/usr/local/bin:/usr/bin:/bin" % (self.genv_root, self.genv_root),
            "LANG": "C.UTF-8",
        }
        variables.update(settings)
        for key, value in variables.items():
            assert '"' not in value and " " not in value, (key, value)
        # A login shell's /etc/profile resets PATH: the home's profile sets the host's again.
        with open(os.path.join(home, ".profile"), "w") as handle:
            handle.write("PATH='%s'\nexport PATH\n" % variables["PATH"])
        port = free_port()
        config = os.path.join(folder, "sshd_config")
        with open(config, "w") as handle:
            handle.write("\n".join([
                "ListenAddress 127.0.0.1:%d" % port,
                "HostKey %s" % os.path.join(self.keys, "host"),
                "AuthorizedKeysFile %s" % (os.path.join(self.keys, "authorized_keys") if keys else "none"),
                "PidFile none",
                "StrictModes no",  # the keys live under /tmp, whose mode sshd would refuse
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "AllowUsers %s" % self.user,
                "MaxStartups 100",
                "MaxSessions 100",
                "LogLevel ERROR",
                "SetEnv %s" % " ".join("%s=%s" % item for item in variables.items()),
                "",
            ]))
        log = open(os.path.join(folder, "sshd.log"), "wb")
        self.procs[name] = subprocess.Popen([SSHD, "-D", "-e", "-f", config], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, start_new_session=True)
        log.close()
        self.homes[name] = home
        self.states[name] = state
        self.ports[name] = port
        self._alias(name, port)
        with open(self.known_hosts, "a") as handle:
            handle.write("[127.0.0.1]:%d %s %s\n" % (port, self.host_key[0], self.host_key[1]))
        self._wait_listening(name, port)
        return name

    def refusing(self, name: str) -> str:
        """An alias whose port has nothing listening: connection refused."""
        self._alias(name, free_port())
        return name

    def hangs(self, name: str) -> str:
        """An alias whose port accepts and never answers."""
        listener = Hanging()
        self.hanging.append(listener)
        self._alias(name, listener.port)
        return name

    def alias(self, name: str, of: str) -> str:
        """Another name for host ``of`` (to give it another path of genv)."""
        self._alias(name, self.ports[of])
        return name

    def denied(self, name: str) -> str:
        """A host whose sshd accepts no key of ours: authentication fails.
        (An alias of another host would not do: ssh reuses that host's
        connection, made with the right key, for the same address.)"""
        return self.add(name, keys=False)

    def _alias(self, name: str, port: int) -> None:
        self.aliases[name] = "\n".join([
            "Host %s" % name,
            "  HostName 127.0.0.1",
            "  Port %d" % port,
            "  User %s" % self.user,
            "  IdentityFile %s" % os.path.join(self.keys, "user"),
            "  IdentitiesOnly yes",
            "  IdentityAgent none",
            "  UserKnownHostsFile %s" % self.known_hosts,
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
            "",
        ])
        with open(self.config, "w") as handle:
            handle.write("\n".join(self.aliases.values()))

    def _wait_listening(self, name: str, port: int) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                with open(os.path.join(self.base, "host-" + name, "sshd.log")) as handle:
                    raise RuntimeError("sshd for %s exited: %s" % (name, handle.read()))
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("sshd for %s does not listen on port %d" % (name, port))

    # --- the client side -----------------------------------------------------------

    def environ(self) -> Dict[str, str]:
        """What genv needs to reach the hosts (the test's ssh config, a
        private control folder, the hosts file's folder)."""
        return {
            "GENV_SSH_COMMAND": "ssh -F %s" % self.config,
            "XDG_RUNTIME_DIR": self.run,
            "XDG_CONFIG_HOME": self.config_home,
        }

    def write_hosts(self, text: str) -> str:
        path = os.path.join(self.config_home, "genv", "hosts")
        with open(path, "w") as handle:
            handle.write(text)
        return path

    def ssh(self, name: str, command: str, timeout: float = 30) -> "subprocess.CompletedProcess[str]":
        """Run a command on a host directly (to look at or change its state)."""
        return subprocess.run(["ssh", "-F", self.config, "-o", "BatchMode=yes", name, command],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def forget_connections(self) -> None:
        """End the client's reused connections (the next listing connects afresh)."""
        _kill(_with_cmdline(self.run + "/"))
        deadline = time.monotonic() + 5
        while _with_cmdline(self.run + "/") and time.monotonic() < deadline:
            time.sleep(0.01)
        folder = os.path.join(self.run, "genv-ssh")
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                os.unlink(os.path.join(folder, name))

    def stop(self) -> None:
        """End every sshd started here, the sessions they serve, and the
        client's background masters."""
        for proc in self.procs.values():
            if proc.poll() is None:
                _kill(_descendants(proc.pid))  # sessions: what they run, then their sshd processes
                proc.kill()
            proc.wait()
        _kill(_with_cmdline(self.run + "/"))  # ssh's ControlPersist masters (named after their socket)
        for listener in self.hanging:
            listener.stop()
