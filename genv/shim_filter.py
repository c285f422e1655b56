"""The nvidia-smi shim's filter: inside an environment, the modes that print
processes show only the environment's own.

``shims/nvidia-smi`` stays bash builtins only for every mode but these,
which it hands to this program: the default table (also with ``-l``/``-lms``
loops) and ``--query-compute-apps``, and, in an environment that holds a
share of its GPUs' memory (``GENV_GPU_MEMORY``, bytes), ``--query-gpu`` with
memory fields. It runs the real nvidia-smi with the arguments the shim
already narrowed and passes its output through, dropping process rows of
anyone else (other environments on a shared GPU included). A process belongs
to the environment by the rules of ``genv ps``
(``attribution.member_test``). With no process left, the table says ``No
running processes found``, as nvidia-smi does.

With a share, memory is shown as the environment sees it: ``memory.total``
is the share, ``memory.used`` what the environment's own processes use,
``memory.free`` the difference (in the table, each GPU's ``used / total``).
The table is then held back until its process rows are read (they give the
use); ``--query-gpu`` asks nvidia-smi for the processes once more.

A loop (``-l``, ``-lms``) runs for long, and the environment's processes
come and go: membership is decided afresh for each round, from the state
read again and a new mark on the process clock. A round is one table; for
``--query-compute-apps``, which prints its rows without a separator, the
rows nvidia-smi wrote together (a round ends when its output pauses); for
``--query-gpu``, a GPU seen again.

Usage (from the shim): python -I -S shim_filter.py table|apps|gpu REAL [ARGS...]
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import IO, Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

NO_PROCESSES = "  No running processes found"
MIB = 1 << 20


def share() -> Optional[int]:
    """The environment's share of each GPU in MiB, None for whole GPUs."""
    text = os.environ.get("GENV_GPU_MEMORY", "")
    return int(text) // MIB if text.isascii() and text.isdigit() and 0 < len(text) < 20 else None


class Membership:
    """Whether a PID belongs to this terminal's environment, for one round
    of nvidia-smi's output at a time. A round's answers rest on a mark on
    the process clock taken before nvidia-smi could look at the processes
    it shows (a process that starts later, a PID reused, belongs to none)
    and on the state, read at the round's first question (a table without
    processes asks none)."""

    def __init__(self) -> None:
        self._facts: Any = None
        self._mark = 0.0
        self._memo: Dict[int, bool] = {}
        self._test: Optional[Callable[[int], bool]] = None
        self.new_round()

    def new_round(self) -> None:
        """Forget the answers: the next round is judged by the processes and
        the state as they are from now on."""
        from .procs import processes

        if self._facts is not None:
            self._facts.close()
        self._facts = processes()  # (it remembers what it read: a fresh one)
        self._mark = self._facts.clock()
        self._memo = {}
        self._test = None

    def __call__(self, pid: int) -> bool:
        if self._test is None:
            self._test = _test(self._facts, self._mark)
        if pid not in self._memo:
            self._memo[pid] = bool(self._test(pid))
        return self._memo[pid]


def _test(facts: Any, mark: float) -> Callable[[int], bool]:
    from . import attribution
    from .environments import mine
    from .store import StateDir

    eid = os.environ.get("GENV_ENVIRONMENT_ID", "")
    try:
        users = StateDir().read_all()
        found = mine(users, eid, os.geteuid())
    except Exception:  # a broken state folder hides processes; it never shows others'
        found = None
    if found is None:  # another user's id: none of this terminal's
        return lambda pid: False
    return attribution.member_test(users, found[1], facts, mark)  # type: ignore[no-any-return]


def _memory_cell(line: str, used: int, total: int) -> str:
    """The GPU row with its ``used / total`` memory cell rewritten, as wide
    as before."""
    cells = line.split("|")
    for number, cell in enumerate(cells):
        if "MiB /" in cell:
            text = "%dMiB / %dMiB" % (used, total)
            cells[number] = " " * max(1, len(cell) - len(text) - 1) + text + " "
            return "|".join(cells)
    return line


def _mib(word: str) -> int:
    return int(word[:-3]) if word.endswith("MiB") and word[:-3].isdigit() else 0


def filter_table(lines: Iterable[bytes], out: IO[bytes], member: Membership,
                 total: Optional[int] = None) -> None:
    """Pass the table through, keeping only the environment's process rows.
    The process section starts after a line with ``Processes:``; its header
    names the PID column (its position among the row's words); rows end at
    the next ``+---`` border. Loops (``-l``) print table after table: each
    is a round of its own. With a share (``total`` MiB), each table is held
    back until its end, and GPU memory is shown as the environment's."""
    state = "gpus"
    pid_column = -1
    kept = 0
    width = 0
    held: List[str] = []  # a table held back (with a share)
    gpu_lines: Dict[int, int] = {}  # GPU index -> its memory line in ``held``
    gpu = -1
    used: Dict[int, int] = {}

    def emit(text: str) -> None:
        if total is None:
            out.write(text.encode("utf-8", "surrogateescape"))
            out.flush()
        else:
            held.append(text)

    def flush() -> None:
        if total is None:
            return
        for index, at in gpu_lines.items():
            held[at] = _memory_cell(held[at], used.get(index, 0), total)
        out.write("".join(held).encode("utf-8", "surrogateescape"))
        out.flush()
        del held[:]
        gpu_lines.clear()
        used.clear()

    for raw in lines:
        line = raw.decode("utf-8", "surrogateescape")
        stripped = line.rstrip("\r\n")
        if state == "gpus":
            if "Processes:" in stripped:
                state, pid_column, kept = "header", -1, 0
            elif total is not None:
                words = stripped.strip("|").split()
                if stripped.startswith("|") and words and words[0].isdigit():
                    gpu = int(words[0])
                if "MiB /" in stripped and gpu >= 0:
                    gpu_lines[gpu] = len(held)
        elif state == "header":
            words = stripped.strip("|").split()
            if "PID" in words:
                pid_column = words.index("PID")
            if stripped.startswith("|="):
                state, width = "rows", len(stripped)
        elif state == "rows":
            if stripped.startswith("+"):
                if not kept:
                    emit("|" + NO_PROCESSES.ljust(width - 2) + "|\n")
                emit(line)
                flush()
                state, gpu = "gpus", -1
                member.new_round()  # (the next table's processes are listed after this one is read)
                continue
            else:
                if NO_PROCESSES.strip() in stripped:
                    continue
                words = stripped.strip("|").split()
                if pid_column < 0 or len(words) <= pid_column or not words[pid_column].isdigit():
                    continue  # a row we cannot read could be anybody's
                if not member(int(words[pid_column])):
                    continue
                kept += 1
                if words[0].isdigit():
                    used[int(words[0])] = used.get(int(words[0]), 0) + _mib(words[-1])
        emit(line)
    flush()


def filter_apps(lines: Iterable[Optional[bytes]], out: IO[bytes], member: Membership) -> None:
    """``--query-compute-apps`` with ``pid`` put first by ``apps_args``: keep
    the environment's rows, and drop that first column again. ``lines``
    yields None where nvidia-smi's output paused (a loop's round ended)."""
    for raw in lines:
        if raw is None:
            member.new_round()
            continue
        line = raw.decode("utf-8", "surrogateescape")
        first, sep, rest = line.partition(", ")
        if not sep:
            first, rest = line.rstrip("\r\n"), "\n"
        value = first.strip()
        if value.isdigit():
            if member(int(value)):
                out.write(rest.encode("utf-8", "surrogateescape"))
        elif value == "pid":
            out.write(rest.encode("utf-8", "surrogateescape"))  # the header line
        elif not sep:
            out.write(raw)  # an error message: pass it on
        # else: a row without a readable pid could be anybody's: dropped
        out.flush()


def gpu_query(real: str, args: List[str], member: Membership, total: int, out: IO[bytes]) -> int:
    """``--query-gpu`` in an environment with a share: ``uuid`` is put
    first (to know each row's GPU) and dropped again; memory fields show the
    environment's view (the share even where nvidia-smi does not know the
    GPU's size). The environment's own use comes from one more nvidia-smi
    call, again for each round of a loop (``-l``); rows pass as they come."""
    from . import spawn

    def own_use() -> Dict[str, int]:
        member.new_round()  # before nvidia-smi looks at the processes
        used: Dict[str, int] = {}
        _, apps, _ = spawn.run([real, "--query-compute-apps=pid,gpu_uuid,used_memory",
                                "--format=csv,noheader,nounits"])
        for line in apps.decode("utf-8", "replace").splitlines():
            parts = [part.strip() for part in line.split(",")]
            if len(parts) == 3 and parts[0].isdigit() and member(int(parts[0])):
                used[parts[1]] = used.get(parts[1], 0) + (int(parts[2]) if parts[2].isdigit() else 0)
        return used

    units = not any(arg.startswith("--format") and "nounits" in arg for arg in args)
    fields: List[str] = []
    query = []
    for arg in args:
        if arg.startswith("--query-gpu="):
            fields = [field.strip() for field in arg[len("--query-gpu="):].split(",")]
            arg = "--query-gpu=uuid," + arg[len("--query-gpu="):]
        query.append(arg)
    own = own_use()
    seen: Set[str] = set()
    pid, fd = spawn.stream([real] + query)
    try:
        for raw in spawn.lines(fd):
            line = raw.decode("utf-8", "surrogateescape")
            cells = line.rstrip("\r\n").split(", ")
            if len(cells) != len(fields) + 1:
                out.write(raw)  # an error, or a row we cannot read
                out.flush()
                continue
            uuid, cells = cells[0].strip(), cells[1:]
            if uuid != "uuid":
                if uuid in seen:  # the next round of a loop
                    own, seen = own_use(), set()
                seen.add(uuid)
                used = own.get(uuid, 0)
                for number, field in enumerate(fields):
                    value = {"memory.total": total, "memory.used": used,
                             "memory.free": max(0, total - used)}.get(field)
                    if value is not None:
                        cells[number] = "%d%s" % (value, " MiB" if units else "")
            out.write((", ".join(cells) + "\n").encode("utf-8", "surrogateescape"))
            out.flush()
    finally:
        os.close(fd)
    return spawn.wait(pid)


def apps_args(args: List[str]) -> List[str]:
    """Put ``pid`` first in the user's ``--query-compute-apps`` fields."""
    result = []
    for arg in args:
        if arg.startswith("--query-compute-apps="):
            arg = "--query-compute-apps=pid," + arg[len("--query-compute-apps="):]
        result.append(arg)
    return result


def output_file(args: List[str]) -> Tuple[List[str], Optional[str]]:
    """Take ``-f FILE`` / ``--filename=FILE`` out of the arguments: the
    filtered output goes there, not nvidia-smi's own."""
    rest: List[str] = []
    target = None
    words = iter(args)
    for arg in words:
        if arg in ("-f", "--filename"):
            target = next(words, None)
            if target is None:
                rest.append(arg)  # let nvidia-smi complain
        elif arg.startswith(("-f=", "--filename=")):
            target = arg.partition("=")[2]
        else:
            rest.append(arg)
    return rest, target


def main(argv: List[str]) -> int:
    mode, real, args = argv[0], argv[1], argv[2:]
    args, target = output_file(args)
    if target is not None:
        try:
            with open(target, "wb") as handle:
                return _main(mode, real, args, handle)
        except OSError as error:
            sys.stderr.write("genv: cannot write %s: %s\n" % (target, error.strerror))
            return 1
    return _main(mode, real, args, sys.stdout.buffer)


def _main(mode: str, real: str, args: List[str], out: IO[bytes]) -> int:
    from . import spawn

    member = Membership()
    total = share()
    if mode == "gpu":
        if total is None:
            os.execv(real, [real] + args)
        return gpu_query(real, args, member, total, out)
    if mode == "apps":
        args = apps_args(args)
    try:
        pid, fd = spawn.stream([real] + args)
    except OSError as error:
        sys.stderr.write("genv: cannot run %s: %s\n" % (real, error.strerror))
        return 127
    try:
        if mode == "apps":
            filter_apps(spawn.rounds(fd), out, member)
        else:
            filter_table(spawn.lines(fd), out, member, total)
    except BrokenPipeError:
        os.kill(pid, 9)
    except KeyboardInterrupt:
        spawn.wait(pid)
        return 130
    finally:
        os.close(fd)
    return spawn.wait(pid)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    from genv.shim_filter import main as run

    try:
        status = run(sys.argv[1:])
        sys.stdout.flush()
    except BrokenPipeError:
        status = 141
    except KeyboardInterrupt:  # ^C of a loop (-l): nvidia-smi got it too
        status = 130
    os._exit(status)
