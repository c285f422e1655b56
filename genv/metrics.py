"""The Prometheus metrics of ``genv monitor``, built from the listings'
documents (``listing.envs_docs``, ``devices_docs``, ``ps_docs``).

Pure functions: documents in, metric families out, so that the metrics can
be tested without a server. A family here is a plain object (``Family``);
``genv.commands.monitor`` hands them to prometheus_client, which this module
does not import. ``SPECS`` is the reference: every metric's name, type,
labels, unit and meaning, as docs/admin.md lists them.

Conventions (https://prometheus.io/docs/practices/naming/): every name has
the ``genv_`` prefix and is snake_case; base units are in the name (bytes,
seconds; a point in time is ``..._timestamp_seconds``, Unix time); counters
end in ``_total``; an ``_info`` metric has the value 1 and carries
descriptive labels, to be joined on its identifying label. Label values are
text: a GPU is its nvidia-smi index (``gpu="0"``), an unknown value is the
empty string. The documents give memory in MiB (nvidia-smi's unit): it is
exported in bytes.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

    Doc = Dict[str, Any]

MIB = 1 << 20


class Spec:
    """One metric: name, type (``gauge``, ``counter`` or ``info``), label
    names, unit (``bytes``, ``seconds`` or none) and meaning."""

    __slots__ = ("name", "kind", "labels", "unit", "help")

    def __init__(self, name: str, kind: str, labels: Tuple[str, ...], unit: str, help: str) -> None:
        self.name, self.kind, self.labels, self.unit, self.help = name, kind, labels, unit, help


SPECS = (
    # The monitor's own reading.
    Spec("genv_up", "gauge", (), "",
         "1 if the last reading of the state and nvidia-smi succeeded, else 0 (then only the monitor's "
         "own metrics are served)"),
    Spec("genv_last_read_timestamp_seconds", "gauge", (), "seconds",
         "When the values were read (Unix time); earlier than the scrape when --interval reused them"),
    Spec("genv_read_duration_seconds", "gauge", (), "seconds",
         "How long the last reading took, nvidia-smi included"),
    Spec("genv_reads_total", "counter", (), "",
         "Readings of the state and nvidia-smi since the monitor started"),
    Spec("genv_read_errors_total", "counter", (), "",
         "Readings that failed since the monitor started"),
    # Environments and terminals.
    Spec("genv_environments", "gauge", (), "", "Live environments"),
    Spec("genv_terminals", "gauge", (), "", "Terminals of live environments"),
    Spec("genv_waiters", "gauge", (), "", "Environments waiting in line for GPUs (genv attach --wait)"),
    Spec("genv_environment_info", "info", ("env_id", "env_name", "user", "uid"), "",
         "One per live environment: its name (empty if unset) and owner"),
    Spec("genv_environment_created_timestamp_seconds", "gauge", ("env_id",), "seconds",
         "When the environment was created (Unix time)"),
    Spec("genv_environment_terminals", "gauge", ("env_id",), "", "The environment's terminals"),
    Spec("genv_environment_gpus_configured", "gauge", ("env_id",), "",
         "GPUs the environment is configured for (genv config gpus); absent when unset"),
    Spec("genv_environment_gpus_attached", "gauge", ("env_id",), "", "GPUs the environment holds"),
    Spec("genv_environment_waiting_gpus", "gauge", ("env_id",), "",
         "GPUs the environment waits for in line; only environments in line"),
    Spec("genv_environment_waiting_since_timestamp_seconds", "gauge", ("env_id",), "seconds",
         "When the environment joined the line (Unix time); only environments in line"),
    # Users.
    Spec("genv_user_environments", "gauge", ("user",), "",
         "Live environments of a user; only users with one"),
    Spec("genv_user_gpus_attached", "gauge", ("user",), "",
         "GPUs that the user's environments hold, each GPU counted once; only users with an environment"),
    # GPUs.
    Spec("genv_gpu_info", "info", ("gpu", "uuid", "model"), "",
         "One per GPU: its UUID and model name (empty for mock GPUs)"),
    Spec("genv_gpu_memory_total_bytes", "gauge", ("gpu",), "bytes", "The GPU's memory; absent when unknown"),
    Spec("genv_gpu_memory_used_bytes", "gauge", ("gpu",), "bytes",
         "GPU memory in use by every process; absent when unknown (mock GPUs)"),
    Spec("genv_gpu_memory_reservable_bytes", "gauge", ("gpu",), "bytes",
         "GPU memory environments may still reserve: 0 when an environment holds the whole GPU, the "
         "total less the shares when shared; absent when unknown"),
    Spec("genv_gpu_environments", "gauge", ("gpu",), "", "Environments holding the GPU (0: free)"),
    Spec("genv_gpu_attached_timestamp_seconds", "gauge", ("gpu", "env_id"), "seconds",
         "When the environment attached the GPU (Unix time); one per GPU and environment holding it"),
    Spec("genv_gpu_attached_memory_bytes", "gauge", ("gpu", "env_id"), "bytes",
         "The memory share the environment reserved on the GPU; absent for a whole GPU"),
    # Processes.
    Spec("genv_gpu_processes", "gauge", ("gpu",), "",
         "Processes on the GPU (gpu=\"\": on a GPU genv does not know)"),
    Spec("genv_unmanaged_processes", "gauge", ("gpu",), "",
         "Processes on the GPU that run outside every environment"),
    Spec("genv_misplaced_processes", "gauge", ("gpu",), "",
         "Processes on the GPU whose environment does not hold that GPU"),
    Spec("genv_process_gpu_memory_bytes", "gauge", ("gpu", "pid", "user", "env_id"), "bytes",
         "GPU memory a process holds on a GPU, for each process there now; user and env_id are empty "
         "when unknown or outside every environment; absent when nvidia-smi does not say"),
)
"""Every metric the monitor exports (besides prometheus_client's standard
``process_*`` metrics about the monitor itself)."""

BY_NAME = {spec.name: spec for spec in SPECS}


class Family:
    """The samples of one metric: label values -> value."""

    __slots__ = ("spec", "samples")

    def __init__(self, name: str) -> None:
        self.spec = BY_NAME[name]
        self.samples: Dict[Tuple[str, ...], float] = {}

    def set(self, labels: Tuple[str, ...], value: float) -> None:
        self.samples[labels] = value

    def add(self, labels: Tuple[str, ...], value: float) -> None:
        """Add to a sample (two rows with the same labels make one series)."""
        self.samples[labels] = self.samples.get(labels, 0) + value


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _gpu(index: Optional[int]) -> str:
    return "" if index is None else str(index)


def collect(envs: Sequence[Doc], devices: Sequence[Doc], processes: Sequence[Doc]) -> List[Family]:
    """The metrics of one reading: ``envs`` from ``envs_docs``, ``devices``
    from ``devices_docs`` and ``processes`` from ``ps_docs``, all from the
    same session."""
    out: List[Family] = []

    def family(name: str) -> Family:
        made = Family(name)
        out.append(made)
        return made

    # Environments, terminals and the line.
    environments = family("genv_environments")
    terminals = family("genv_terminals")
    waiters = family("genv_waiters")
    info = family("genv_environment_info")
    created = family("genv_environment_created_timestamp_seconds")
    env_terminals = family("genv_environment_terminals")
    configured = family("genv_environment_gpus_configured")
    attached = family("genv_environment_gpus_attached")
    waiting_gpus = family("genv_environment_waiting_gpus")
    waiting_since = family("genv_environment_waiting_since_timestamp_seconds")
    user_envs = family("genv_user_environments")
    user_gpus = family("genv_user_gpus_attached")
    held_by_user: Dict[str, Set[int]] = {}
    in_line = 0
    terminal_count = 0
    for env in envs:
        key = (env["id"],)
        info.set((env["id"], _text(env["name"]), env["user"], str(env["uid"])), 1)
        created.set(key, env["created"])
        env_terminals.set(key, len(env["pids"]))
        terminal_count += len(env["pids"])
        if env["gpus"] is not None:
            configured.set(key, env["gpus"])
        attached.set(key, len(env["devices"]))
        waiting = env.get("waiting")
        if waiting:
            in_line += 1
            waiting_gpus.set(key, waiting["count"])
            waiting_since.set(key, waiting["since"])
        user_envs.add((env["user"],), 1)
        held_by_user.setdefault(env["user"], set()).update(env["devices"])
    for user, held in held_by_user.items():
        user_gpus.set((user,), len(held))
    environments.set((), len(envs))
    terminals.set((), terminal_count)
    waiters.set((), in_line)

    # GPUs and who holds them.
    gpu_info = family("genv_gpu_info")
    total = family("genv_gpu_memory_total_bytes")
    used = family("genv_gpu_memory_used_bytes")
    reservable = family("genv_gpu_memory_reservable_bytes")
    holders = family("genv_gpu_environments")
    attached_at = family("genv_gpu_attached_timestamp_seconds")
    share = family("genv_gpu_attached_memory_bytes")
    counts = family("genv_gpu_processes")
    unmanaged = family("genv_unmanaged_processes")
    misplaced = family("genv_misplaced_processes")
    for device in devices:
        gpu = (str(device["index"]),)
        gpu_info.set(gpu + (_text(device["uuid"]), _text(device["name"])), 1)
        for name, field in ((total, "memory_total"), (used, "memory_used"), (reservable, "memory_available")):
            if device[field] is not None:
                name.set(gpu, device[field] * MIB)
        holders.set(gpu, len(device["environments"]))
        for holder in device["environments"]:
            attached_at.set(gpu + (holder["id"],), holder["attached"])
            if holder["memory"] is not None:
                share.set(gpu + (holder["id"],), holder["memory"] * MIB)
        for counter in (counts, unmanaged, misplaced):
            counter.set(gpu, 0)

    # Processes: one row per process and GPU.
    memory = family("genv_process_gpu_memory_bytes")
    for process in processes:
        gpu = (_gpu(process["gpu"]),)
        counts.add(gpu, 1)
        if process["managed"] is False:
            unmanaged.add(gpu, 1)
        elif process["managed"] and process["misplaced"]:
            misplaced.add(gpu, 1)
        if process["memory"] is not None:
            memory.add(gpu + (str(process["pid"]), _text(process["user"]), _text(process["env_id"])),
                       process["memory"] * MIB)
    return out


def health(up: bool, read_at: Optional[float], duration: Optional[float], reads: int, errors: int) -> List[Family]:
    """The monitor's own metrics: whether the last reading worked, when it
    was taken, how long it took, and how many there were."""
    out = []
    for name, value in (("genv_up", 1 if up else 0), ("genv_last_read_timestamp_seconds", read_at),
                        ("genv_read_duration_seconds", duration), ("genv_reads_total", reads),
                        ("genv_read_errors_total", errors)):
        family = Family(name)
        if value is not None:
            family.set((), value)
        out.append(family)
    return out
