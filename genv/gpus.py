"""Which GPUs this machine has.

Two sources: ``GENV_DEVICES=N`` (N mock GPUs, for machines without
nvidia-smi) or the real ``nvidia-smi`` found on PATH (genv's own shim is
skipped). Asking nvidia-smi costs tens to hundreds of milliseconds, so its
answer is cached in the user's state file under a key (nvidia-smi's path and
identity, the driver's GPU list in /proc, the boot) and asked again when the
key changes or the answer is older than ``GENV_DEVICES_TTL`` seconds
(default 60). The query runs before the state lock is taken, never under it.
"""

from __future__ import annotations

import os
import time


from .errors import GenvError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Tuple
    Record = Dict[str, Any]


MAX_GPUS = 1024
DEFAULT_TTL = 60.0
QUERY = ("--query-gpu=index,uuid,name", "--format=csv,noheader,nounits")


def parse_count(text: str, what: str) -> int:
    """A GPU count: ASCII digits only, at most MAX_GPUS."""
    if not text or not text.isascii() or not text.isdigit():
        raise GenvError("invalid %s %r: expected a whole number from 0 to %d" % (what, text, MAX_GPUS))
    value = int(text)
    if value > MAX_GPUS:
        raise GenvError("invalid %s %r: more than %d GPUs" % (what, text, MAX_GPUS))
    return value


def _ttl() -> float:
    text = os.environ.get("GENV_DEVICES_TTL")
    if text is None or text == "":
        return DEFAULT_TTL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise GenvError("invalid GENV_DEVICES_TTL %r: expected a number of seconds" % text)
    return value


def find_nvidia_smi() -> Optional[str]:
    """The first nvidia-smi on PATH that is not genv's shim."""
    root = os.environ.get("GENV_ROOT", "")
    shims = os.path.join(root, "shims") if root else None
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        entry = entry or "."
        if shims and os.path.realpath(entry) == os.path.realpath(shims):
            continue
        candidate = os.path.join(entry, "nvidia-smi")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _key(path: str) -> str:
    info = os.stat(path)
    try:
        listing = ",".join(sorted(os.listdir("/proc/driver/nvidia/gpus")))
    except OSError:
        listing = "-"
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as handle:
            boot = handle.read().strip().decode("ascii", "replace")
    except OSError:
        boot = "-"
    return "nvidia-smi:%s:%d:%d:%d:%s:%s" % (
        os.path.realpath(path),
        info.st_ino,
        info.st_mtime_ns,
        info.st_size,
        listing,
        boot,
    )


def _value(text: str) -> Optional[str]:
    text = text.strip()
    if not text or (text.startswith("[") and text.endswith("]")):  # [N/A], [Not Supported]
        return None
    return text


def parse_query(output: str) -> List[Record]:
    """Parse ``--query-gpu=index,uuid,name --format=csv,noheader,nounits``."""
    devices: List[Record] = []
    seen = set()
    for line in output.splitlines():
        if not line.strip():
            continue
        parts = line.split(", ", 2)
        if len(parts) != 3 or not parts[0].strip().isdigit():
            raise GenvError("unexpected output from nvidia-smi: %r" % line[:200])
        index = int(parts[0])
        if index in seen:
            raise GenvError("nvidia-smi listed GPU %d twice" % index)
        seen.add(index)
        devices.append({"index": index, "uuid": _value(parts[1]), "name": _value(parts[2])})
    devices.sort(key=lambda device: device["index"])
    return devices


def _query(path: str) -> List[Record]:
    import subprocess

    try:
        done = subprocess.run(
            [path, *QUERY],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise GenvError("cannot run %s: %s" % (path, error)) from None
    out = done.stdout.decode("utf-8", "replace")
    if done.returncode == 6 and "No devices were found" in out:
        return []
    if done.returncode != 0:
        said = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()
        raise GenvError(
            "nvidia-smi failed with exit status %d%s"
            % (done.returncode, (": " + said[0][:200]) if said else "")
        )
    return parse_query(out)


def discover(cached: Optional[Record], now: Optional[float] = None) -> Tuple[Record, bool]:
    """The current device record, and whether it must be stored (it is new
    or was asked for again).

    May run nvidia-smi: call it before taking the state lock.
    """
    now = time.time() if now is None else now
    mock = os.environ.get("GENV_DEVICES")
    if mock is not None and mock != "":
        count = parse_count(mock, "GENV_DEVICES")
        key = "GENV_DEVICES=%d" % count
        if cached is not None and cached.get("key") == key:
            return cached, False
        devices = [{"index": index, "uuid": None, "name": None} for index in range(count)]
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
    devices = _query(path)
    return {"key": key, "checked": now, "list": devices}, True
