"""Other machines, over the user's own OpenSSH: the one owner of the transport.

genv asks another machine by running ``ssh DEST <genv there> <words>``
with the user's ssh, config and keys: no daemon, no sudo, no change to
sshd. This module reads the hosts file, checks destinations, builds ssh's
command line (``GENV_SSH_COMMAND``, ``BatchMode``, the time-out, connection
reuse through a private control folder), quotes what the remote shell
parses, runs every host at once, each on its own, and turns each answer
into parsed JSON or a one-line reason.

Nothing here runs on the path of a local command: ``shlex`` and the rest are
imported only when a command is given hosts.
"""

from __future__ import annotations

import os

from .errors import GenvError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Sequence, Tuple

DEFAULT_TIMEOUT = 10.0
PERSIST_SECONDS = 60
SYSTEM_HOSTS = "/etc/genv/hosts"
MAX_ANSWER = 64 << 20
MAX_DEST = 1024
MAX_HOSTS_FILE = 1 << 20
# ssh's control socket is DIR/%C (40 hex digits) and, while a master sets up,
# DIR/%C.<16 random characters>: a Unix socket's path holds at most 107 bytes.
MAX_CONTROL_DIR = 107 - 1 - 40 - 17
HOST_OPTIONS = {"--host": True, "-H": True, "--all-hosts": False}


class Host:
    """A machine to ask: its ssh destination, and the path of genv there
    (None: ``GENV_REMOTE_GENV``, else ``genv`` on the remote PATH)."""

    __slots__ = ("dest", "genv")

    def __init__(self, dest: str, genv: Optional[str] = None) -> None:
        self.dest = dest
        self.genv = genv

    def __repr__(self) -> str:
        return "Host(%r, %r)" % (self.dest, self.genv)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Host) and (self.dest, self.genv) == (other.dest, other.genv)


class Answer:
    """One host's answer: the parsed JSON (``value``) or why there is none
    (``error``), and the remote genv's own messages (warnings) besides."""

    __slots__ = ("host", "value", "error", "messages")

    def __init__(self, host: Host, value: Any = None, error: Optional[str] = None,
                 messages: Sequence[str] = ()) -> None:
        self.host = host
        self.value = value
        self.error = error
        self.messages = list(messages)


# --- which hosts --------------------------------------------------------------


def check_dest(dest: str, where: str = "") -> str:
    """A destination as ssh takes it (``alias``, ``user@host``); one that
    starts with ``-`` would be read by ssh as an option."""
    place = "%s: " % where if where else ""
    if not dest:
        raise UsageError("%san empty host" % place)
    if dest.startswith("-"):
        raise UsageError("%sinvalid host %r: a host cannot start with '-' (ssh would take it for an option)"
                         % (place, dest))
    if len(dest) > MAX_DEST or not dest.isprintable() or any(char.isspace() for char in dest):
        raise UsageError("%sinvalid host %r: expected an ssh destination such as gpu1 or alice@gpu1.example.com"
                         % (place, dest))
    return dest


def parse_hosts(text: str, path: str) -> List[Host]:
    """The hosts file: one ``DEST [PATH-OF-GENV-THERE]`` a line; ``#``
    starts a comment; blank lines are skipped. A host listed twice counts
    once."""
    hosts: List[Host] = []
    seen = set()
    for number, line in enumerate(text.splitlines(), 1):
        words = []
        for word in line.split():
            if word.startswith("#"):
                break
            words.append(word)
        if not words:
            continue
        where = "%s:%d" % (path, number)
        if len(words) > 2:
            raise GenvError("%s: expected a host and, optionally, the path of genv there; found %d words"
                            % (where, len(words)))
        dest = check_dest(words[0], where)
        genv = words[1] if len(words) == 2 else None
        if genv is not None and not genv.isprintable():
            raise GenvError("%s: invalid path of genv %r" % (where, genv))
        if dest not in seen:
            seen.add(dest)
            hosts.append(Host(dest, genv))
    return hosts


def hosts_file() -> Optional[str]:
    """The hosts file that applies: ``$XDG_CONFIG_HOME/genv/hosts`` (default
    ``~/.config/genv/hosts``) if it exists, else ``/etc/genv/hosts`` if it
    does, else None."""
    config = os.environ.get("XDG_CONFIG_HOME") or ""
    if not os.path.isabs(config):  # the XDG rule: a relative value is ignored
        config = os.path.join(os.path.expanduser("~"), ".config")
    for path in (os.path.join(config, "genv", "hosts"), SYSTEM_HOSTS):
        if os.path.exists(path):
            return path
    return None


def read_hosts(path: str) -> List[Host]:
    import stat

    try:
        # A link is fine (dotfiles managers make them); a FIFO or a device
        # is not: it could block every listing, and completion, forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise GenvError("the hosts file %s is not a regular file" % path)
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read(MAX_HOSTS_FILE + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_HOSTS_FILE:
            raise GenvError("the hosts file %s is larger than %d bytes" % (path, MAX_HOSTS_FILE))
        text = data.decode("utf-8", "surrogateescape")
    except OSError as error:
        raise GenvError("cannot read the hosts file %s: %s" % (path, error.strerror or error)) from None
    return parse_hosts(text, path)


def all_hosts(why: str = "--all-hosts") -> List[Host]:
    """The hosts of the hosts file; ``why``: what asked for them (for the
    message when there are none)."""
    path = hosts_file()
    if path is None:
        config = os.environ.get("XDG_CONFIG_HOME") or ""
        raise GenvError("%s: there is no hosts file (%s or %s); write one host a line" % (
            why, os.path.join(config if os.path.isabs(config) else "~/.config", "genv", "hosts"), SYSTEM_HOSTS))
    hosts = read_hosts(path)
    if not hosts:
        raise GenvError("%s: %s lists no host" % (why, path))
    return hosts


def named_hosts(dests: Sequence[str]) -> List[Host]:
    """Hosts given by name (``--host``), with the path of genv there from
    the hosts file where it lists them."""
    known: Dict[str, Host] = {}
    path = hosts_file()
    if path is not None:
        known = {host.dest: host for host in read_hosts(path)}
    hosts: List[Host] = []
    for dest in dests:
        check_dest(dest)
        if all(host.dest != dest for host in hosts):
            hosts.append(Host(dest, known[dest].genv if dest in known else None))
    return hosts


def split_options(argv: Sequence[str]) -> Tuple[Optional[List[Host]], List[str]]:
    """Take ``--host DEST[,DEST...]`` (repeatable; ``-H``, ``-HDEST``,
    ``--host=DEST``) and ``--all-hosts`` out of ``argv`` (up to ``--``):
    the hosts they name (None: neither was given) and the other arguments."""
    dests: List[str] = []
    every = False
    given = False
    rest: List[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "--":
            rest.extend(argv[index - 1:])
            break
        if arg == "--all-hosts":
            every = True
            continue
        value: Optional[str] = None
        if arg in ("--host", "-H"):
            if index >= len(argv):
                raise UsageError("option %s needs a value" % arg)
            value = argv[index]
            index += 1
        elif arg.startswith("--host="):
            value = arg[len("--host="):]
        elif arg.startswith("-H") and len(arg) > 2:
            value = arg[2:]
        if value is None:
            rest.append(arg)
            continue
        given = True
        dests.extend(value.split(","))
    if every and given:
        raise UsageError("give --host or --all-hosts, not both")
    if every:
        return all_hosts(), rest
    if given:
        return named_hosts(dests), rest
    return None, rest


def wants_hosts(argv: Sequence[str]) -> bool:
    """Whether ``argv`` names hosts (a cheap look, before ``--``)."""
    for arg in argv:
        if arg == "--":
            return False
        if arg in ("--all-hosts", "--host") or arg.startswith(("--host=", "-H")):
            return True
    return False


# --- how to reach them ----------------------------------------------------------


def timeout() -> float:
    """``GENV_SSH_TIMEOUT``: seconds for a host to connect and answer."""
    from .sizes import env_seconds

    return env_seconds("GENV_SSH_TIMEOUT", DEFAULT_TIMEOUT, least=0.1)


def ssh_command() -> List[str]:
    """The ssh that genv runs: ``GENV_SSH_COMMAND`` split as a POSIX shell
    would (``ssh -F FILE``), else ``ssh``; its program found on PATH."""
    text = os.environ.get("GENV_SSH_COMMAND") or "ssh"
    import shlex

    try:
        words = shlex.split(text)
    except ValueError as error:
        raise GenvError("invalid GENV_SSH_COMMAND %r: %s" % (text, error)) from None
    if not words:
        raise GenvError("invalid GENV_SSH_COMMAND %r: no command in it" % text)
    from .spawn import which

    program = which(words[0])
    if program is None:
        raise GenvError("cannot run %s: command not found%s" % (
            words[0], " (GENV_SSH_COMMAND)" if os.environ.get("GENV_SSH_COMMAND") else "; install OpenSSH's client"))
    return [program] + words[1:]


def private_folder(path: str) -> bool:
    """Whether ``path`` is (or has now been made) a folder that only this
    user can reach: a real folder (not a link), owned by the user, mode
    0700, in a parent that no other user can rename it in."""
    import stat

    euid = os.geteuid()
    try:
        parent = os.stat(os.path.dirname(path))
    except OSError:
        return False
    # The parent's owner may rename what is in it (another user's
    # XDG_RUNTIME_DIR, kept by su): it must be this user or root; others who
    # may write to it may too, unless it is sticky (/tmp).
    if parent.st_uid not in (euid, 0) or (parent.st_mode & 0o022 and not parent.st_mode & stat.S_ISVTX):
        return False
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == euid and not info.st_mode & 0o077


def control_folder() -> Optional[str]:
    """Where ssh's control sockets go: ``$XDG_RUNTIME_DIR/genv-ssh``, else
    ``/tmp/genv-ssh-<uid>``: a short path (ssh's limit), private to the
    user. None when neither is (then connections are not reused)."""
    candidates = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        candidates.append(os.path.join(runtime, "genv-ssh"))
    candidates.append("/tmp/genv-ssh-%d" % os.geteuid())
    for folder in candidates:
        if len(os.fsencode(folder)) <= MAX_CONTROL_DIR and private_folder(folder):
            return folder
    return None


class Transport:
    """How to run ssh to the hosts: the command, its options, the time-out."""

    def __init__(self) -> None:
        import math

        self.timeout = timeout()
        self.command = ssh_command()
        self.folder = control_folder()
        seconds = max(1, math.ceil(self.timeout))
        # ServerAliveInterval: a reused connection whose host went away ends
        # within a few time-outs, instead of holding up every later listing.
        self.options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=%d" % seconds,
                        "-o", "ServerAliveInterval=%d" % seconds]
        if self.folder is not None:
            self.options += ["-o", "ControlMaster=auto", "-o", "ControlPath=%s/%%C" % self.folder,
                             "-o", "ControlPersist=%d" % PERSIST_SECONDS]
        self.remote_genv = os.environ.get("GENV_REMOTE_GENV") or None

    def warning(self) -> Optional[str]:
        if self.folder is not None:
            return None
        return ("connections are not reused: /tmp/genv-ssh-%d is not a folder that only you can reach "
                "(remove it, or set XDG_RUNTIME_DIR to a private folder)" % os.geteuid())

    def genv(self, host: Host) -> str:
        return host.genv or self.remote_genv or "genv"

    def argv(self, host: Host, words: Sequence[str], tty: bool = False) -> List[str]:
        """ssh's command line that runs genv's ``words`` on ``host``."""
        return (self.command + self.options + ["-t" if tty else "-T", "--", host.dest,
                                               remote_line([self.genv(host)] + list(words))])


def quote(word: str) -> str:
    """One word for the remote POSIX shell, as data; a leading ``~/`` (a
    path of genv in the user's home there) is left for the shell to expand."""
    import shlex

    if word.startswith("~/") and len(word) > 2:
        return "~/" + shlex.quote(word[2:])
    return shlex.quote(word)


def remote_line(words: Sequence[str]) -> str:
    """The command line ssh sends (the remote shell parses it again)."""
    return " ".join(quote(word) for word in words)


# --- asking them --------------------------------------------------------------


def _lines(data: bytes) -> List[str]:
    text = data.decode("utf-8", "replace")
    return [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]


def reason(status: int, stderr: bytes, genv: str) -> str:
    """Why a host gave no answer, in one line, from ssh's exit status and
    what it (or the remote side) wrote on stderr."""
    lines = _lines(stderr)
    own = [line[len("genv: "):] for line in lines if line.startswith("genv: ")]
    if status == 255:  # ssh's own failure
        found = [line for line in lines if not line.startswith("Warning: Permanently added")]
        text = found[-1] if found else "ssh failed (exit status 255)"
        return text[len("ssh: "):] if text.startswith("ssh: ") else text
    if status == 127:
        return ("%s: command not found there (install genv there, or give its path in GENV_REMOTE_GENV or "
                "after the host in the hosts file: non-interactive ssh sessions do not read ~/.bashrc's PATH)"
                % genv)
    if status == 126:
        return "%s: cannot be run there (permission denied)" % genv
    if own:
        return own[-1]
    if status < 0:
        return "genv there was killed by signal %d" % -status
    return lines[-1] if lines else "genv there failed (exit status %d)" % status


def ask(transport: Transport, hosts: Sequence[Host], words: Sequence[str]) -> List[Answer]:
    """Run genv's ``words`` (which must print JSON) on every host at once;
    their answers, in the order of ``hosts``. A host that fails or hangs
    (``GENV_SSH_TIMEOUT``) gets a reason and never holds up the others
    longer than the time-out."""
    from . import jsonio
    from .spawn import Timeout, TooLong, run_each

    results = run_each([transport.argv(host, words) for host in hosts], transport.timeout, MAX_ANSWER)
    answers = []
    for host, result in zip(hosts, results):
        genv = transport.genv(host)
        if isinstance(result, Timeout):
            answers.append(Answer(host, error="no answer within %g s (GENV_SSH_TIMEOUT)" % transport.timeout))
            continue
        if isinstance(result, TooLong):
            answers.append(Answer(host, error="the answer is too long (over %d MiB)" % (MAX_ANSWER >> 20)))
            continue
        if isinstance(result, OSError):
            answers.append(Answer(host, error="cannot run %s: %s" % (transport.command[0], result.strerror or result)))
            continue
        status, out, err = result
        if status != 0:
            answers.append(Answer(host, error=reason(status, err, genv)))
            continue
        messages = [line[len("genv: "):] for line in _lines(err) if line.startswith("genv: ")]
        try:
            value = jsonio.loads(out.decode("utf-8", "surrogateescape"))
        except (jsonio.JSONError, UnicodeDecodeError):
            head = out[:60].decode("utf-8", "replace").strip()
            answers.append(Answer(host, error="the answer is not genv's JSON%s" % (
                ": %r..." % head if head else " (it printed nothing)"), messages=messages))
            continue
        answers.append(Answer(host, value=value, messages=messages))
    return answers
