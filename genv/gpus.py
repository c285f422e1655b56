"""GPU facts: which GPUs this machine has, and how big they are.

Two sources: ``GENV_DEVICES=N`` (N mock GPUs of ``GENV_DEVICES_MEMORY``
each, default 80g, for machines without nvidia-smi) or the real
``nvidia-smi`` found on PATH (genv's own shim is skipped). All parsing of
nvidia-smi's output lives in this module, behind small functions, so that an
NVML backend could replace it.

Asking nvidia-smi costs tens to hundreds of milliseconds, so the GPU list is
cached in the user's state file under a key (nvidia-smi's path and identity,
the driver's GPU list in /proc, the boot) and asked again when the key
changes or the answer is older than ``GENV_DEVICES_TTL`` seconds (default
60). The query runs before the state lock is taken, never under it.
"""

from __future__ import annotations

import os
import time

from .errors import GenvError
from .limits import MAX_GPUS

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Tuple

    Record = Dict[str, Any]


DEFAULT_TTL = 60.0
DEFAULT_MOCK_MEMORY = "80g"
GPU_FIELDS = "index,uuid,name,memory.total"
QUERY = ("--query-gpu=" + GPU_FIELDS, "--format=csv,noheader,nounits")
# Bumped when the cached record's shape changes, so old caches are not used.
_KEY_VERSION = "2"


def parse_count(text: str, what: str) -> int:
    """A GPU count: ASCII digits only, at most MAX_GPUS. Leading zeros do
    not count (``0001`` is 1); the length is checked before ``int``, which
    refuses more than 4300 digits."""
    if not text or not text.isascii() or not text.isdigit():
        raise GenvError("invalid %s %r: expected a whole number from 0 to %d" % (what, text, MAX_GPUS))
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(MAX_GPUS)) or int(digits) > MAX_GPUS:
        raise GenvError("invalid %s %r: more than %d GPUs" % (what, text, MAX_GPUS))
    return int(digits)


def _ttl() -> float:
    from .sizes import env_seconds

    return env_seconds("GENV_DEVICES_TTL", DEFAULT_TTL)


def find_nvidia_smi() -> Optional[str]:
    """The first nvidia-smi on PATH that is not genv's shim (the shim of the
    genv running, and of the genv this package belongs to: the SDK and
    ``python -m genv`` run without GENV_ROOT)."""
    here = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    shims = {os.path.realpath(os.path.join(root, "shims")) for root in (os.environ.get("GENV_ROOT"), here) if root}
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        entry = entry or "."
        if os.path.realpath(entry) in shims:
            continue
        candidate = os.path.join(entry, "nvidia-smi")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _key(path: str) -> str:
    from .procs import boot_id

    info = os.stat(path)
    try:
        listing = ",".join(sorted(os.listdir("/proc/driver/nvidia/gpus")))
    except OSError:
        listing = "-"
    return "nvidia-smi/%s:%s:%d:%d:%d:%s:%s" % (
        _KEY_VERSION,
        os.path.realpath(path),
        info.st_ino,
        info.st_mtime_ns,
        info.st_size,
        listing,
        boot_id() or "-",
    )


def value(text: str) -> Optional[str]:
    """A CSV cell: None for an empty one and for ``[N/A]``, ``[Not
    Supported]`` and the like."""
    text = text.strip()
    if not text or (text.startswith("[") and text.endswith("]")):
        return None
    return text


def mib_value(text: str) -> Optional[int]:
    """A MiB cell (``nounits``) as bytes; None if unknown."""
    cell = value(text)
    if cell is None or not cell.isascii() or not cell.isdigit() or len(cell) > 12:
        return None
    return int(cell) << 20


def parse_query(output: str) -> List[Record]:
    """Parse ``--query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits``.
    The name may hold ", " itself: the fields around it are split off first."""
    devices: List[Record] = []
    seen = set()
    for line in output.splitlines():
        if not line.strip():
            continue
        head = line.split(", ", 2)
        if len(head) != 3 or not head[0].strip().isdigit() or ", " not in head[2]:
            raise GenvError("unexpected output from nvidia-smi: %r" % line[:200])
        name, _, total = head[2].rpartition(", ")
        index = int(head[0])
        if index >= MAX_GPUS:
            raise GenvError("unexpected output from nvidia-smi: GPU index %d" % index)
        if index in seen:
            raise GenvError("nvidia-smi listed GPU %d twice" % index)
        seen.add(index)
        devices.append({"index": index, "uuid": value(head[1]), "name": value(name), "total": mib_value(total)})
    devices.sort(key=lambda device: device["index"])
    return devices


def run_nvidia_smi(path: str, args: Tuple[str, ...]) -> str:
    """Run nvidia-smi; its output, or GenvError with its first line. Exit 6
    with 'No devices were found' is an empty answer, not an error."""
    return run_nvidia_smi_all(path, [args])[0]


def run_nvidia_smi_all(path: str, queries: List[Tuple[str, ...]]) -> List[str]:
    """``run_nvidia_smi`` for several queries, run side by side (a real
    nvidia-smi takes tens of milliseconds, mostly waiting on the driver)."""
    from . import spawn

    try:
        results = spawn.run_all([[path, *args] for args in queries], timeout=60)
    except OSError as error:
        raise GenvError("cannot run %s: %s" % (path, error.strerror or error)) from None
    # The first failure in query order is the answer. None: stopped because
    # another query ended with a non-zero status; if that was no failure
    # (exit 6, "No devices were found"), there is nothing to ask about.
    return [_answer(*result) if result is not None else "" for result in results]


def _answer(status: int, stdout: bytes, stderr: bytes) -> str:
    out = stdout.decode("utf-8", "replace")
    if status == 6 and "No devices were found" in out:
        return ""
    if status < 0:
        raise GenvError("nvidia-smi was killed by signal %d" % -status)
    if status != 0:
        said = (stderr or stdout).decode("utf-8", "replace").strip().splitlines()
        raise GenvError(
            "nvidia-smi failed with exit status %d%s"
            % (status, (": " + said[0][:200]) if said else "")
        )
    return out


APPS_QUERY = ("--query-compute-apps=pid,gpu_uuid,used_memory,process_name", "--format=csv,noheader,nounits")
USAGE_QUERY = ("--query-gpu=" + GPU_FIELDS + ",memory.used", "--format=csv,noheader,nounits")


class App:
    """One row of ``--query-compute-apps``: a process with a context on a GPU."""

    __slots__ = ("pid", "uuid", "memory", "name")

    def __init__(self, pid: int, uuid: Optional[str], memory: Optional[int], name: Optional[str]) -> None:
        self.pid, self.uuid, self.memory, self.name = pid, uuid, memory, name


def parse_apps(output: str) -> List[App]:
    """Parse ``--query-compute-apps=pid,gpu_uuid,used_memory,process_name
    --format=csv,noheader,nounits``. Memory is in bytes, None when nvidia-smi
    says ``[N/A]``; the process name (a path) may hold ", " itself."""
    apps = []
    for line in output.splitlines():
        if not line.strip():
            continue
        parts = line.split(", ", 3)
        pid = parts[0].strip()
        if len(parts) != 4 or not pid.isascii() or not pid.isdigit() or not 0 < int(pid) < 1 << 31:
            raise GenvError("unexpected output from nvidia-smi: %r" % line[:200])
        apps.append(App(int(pid), value(parts[1]), mib_value(parts[2]), value(parts[3])))
    return apps


def parse_usage(output: str) -> List[Record]:
    """Parse ``--query-gpu=index,uuid,name,memory.total,memory.used``: the GPU
    list (as ``parse_query``) with ``used`` bytes."""
    lines = [line for line in output.splitlines() if line.strip()]
    used = []
    head = []
    for line in lines:
        rest, sep, last = line.rpartition(", ")
        if not sep:
            raise GenvError("unexpected output from nvidia-smi: %r" % line[:200])
        head.append(rest)
        used.append(mib_value(last))
    devices = parse_query("\n".join(head))
    by_line = {int(line.split(", ", 1)[0]): amount for line, amount in zip(head, used)}
    for device in devices:
        device["used"] = by_line[device["index"]]
    return devices


class Snapshot:
    """What a listing needs to know about the GPUs, asked at most once per
    kind: the device record (cached list), each GPU's memory in use, and the
    compute processes. ``mark`` is the process clock when the process query
    started: a PID whose process started later was reused meanwhile."""

    def __init__(self, record: Record, used: Dict[int, Optional[int]], apps: List[App], mark: float) -> None:
        self.record, self.used, self.apps, self.mark = record, used, apps, mark

    @property
    def machine(self) -> List[Record]:
        return self.record["list"]  # type: ignore[no-any-return]


def observe(cached: Optional[Record], clock: Any, usage: bool, now: Optional[float] = None) -> Tuple[Snapshot, bool]:
    """The GPUs and their processes now: one ``--query-gpu`` (with memory
    in use, when ``usage``; otherwise the cached list) and one
    ``--query-compute-apps``. Mock GPUs (GENV_DEVICES) have no processes and
    unknown usage. Returns the snapshot and whether the device record is new.
    May run nvidia-smi: call it before taking the state lock."""
    now = time.time() if now is None else now
    if os.environ.get("GENV_DEVICES"):
        record, fresh = discover(cached, now)
        return Snapshot(record, {d["index"]: None for d in record["list"]}, [], clock()), fresh
    path = find_nvidia_smi()
    if path is None:
        discover(cached, now)  # raises the usual message
        raise AssertionError("unreachable")
    if usage:
        # Both queries at once; the mark is taken before either starts.
        mark = clock()
        usage_out, apps_out = run_nvidia_smi_all(path, [USAGE_QUERY, APPS_QUERY])
        devices = parse_usage(usage_out)
        used = {device["index"]: device.pop("used") for device in devices}
        record = {"key": _key(path), "checked": now, "list": devices}
        fresh = cached is None or cached.get("list") != devices or cached.get("key") != record["key"]
        if not fresh and cached is not None:
            record = cached
    else:
        record, fresh = discover(cached, now)
        used = {device["index"]: None for device in record["list"]}
        mark = clock()
        apps_out = run_nvidia_smi(path, APPS_QUERY)
    return Snapshot(record, used, parse_apps(apps_out), mark), fresh


def mock_memory() -> int:
    from .sizes import parse_size

    return parse_size(os.environ.get("GENV_DEVICES_MEMORY") or DEFAULT_MOCK_MEMORY, "GENV_DEVICES_MEMORY")


def discover(cached: Optional[Record], now: Optional[float] = None) -> Tuple[Record, bool]:
    """The current device record, and whether it must be stored (it is new
    or was asked for again).

    May run nvidia-smi: call it before taking the state lock.
    """
    now = time.time() if now is None else now
    mock = os.environ.get("GENV_DEVICES")
    if mock is not None and mock != "":
        count = parse_count(mock, "GENV_DEVICES")
        total = mock_memory()
        key = "GENV_DEVICES=%d:%d" % (count, total)
        if cached is not None and cached.get("key") == key:
            return cached, False
        devices = [{"index": index, "uuid": None, "name": None, "total": total} for index in range(count)]
        return {"key": key, "checked": now, "list": devices}, True
    path = find_nvidia_smi()
    if path is None:
        raise GenvError(
            "cannot find your GPUs: nvidia-smi is not on PATH; "
            "set GENV_DEVICES=N to let genv manage N GPUs without it"
        )
    key = _key(path)
    if cached is not None and cached.get("key") == key and 0 <= now - cached.get("checked", 0) < _ttl():
        return cached, False
    devices = parse_query(run_nvidia_smi(path, QUERY))
    return {"key": key, "checked": now, "list": devices}, True
