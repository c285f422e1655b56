"""Slurm facts and what they mean for one command: see genv/slurm/__init__.py
and docs/slurm.md. Imported only on a Slurm node (or in a job)."""

from __future__ import annotations

import os
import time

from ..errors import GenvError
from .node import PREFIX, in_job, job_id

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

    from ..gpus import App

    Env = Dict[str, Any]
    Users = Dict[int, Dict[str, Any]]

DEFAULT_TIMEOUT = 10.0
DEFAULT_JOBS_DIR = "/var/tmp/genv-slurm"
JOB_FOLDER = "job-"
# Job states in which the job's resources are allocated on its nodes
# (STOPPED: its processes got SIGSTOP, e.g. from scancel --signal=STOP).
HOLDING = frozenset(("RUNNING", "SUSPENDED", "STOPPED", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT",
                     "RESIZING"))
MAX_NAMES = 1 << 16  # the most host names one hostlist expression may expand to


class SlurmError(GenvError):
    """Slurm could not answer (missing, failing, hanging, or saying something
    unexpected)."""


class UnknownJob(SlurmError):
    """Slurm answered that the job asked about does not exist (any more):
    an answer, not a failure."""


INVALID_JOB = "Invalid job id specified"  # Slurm's own message (ESLURM_INVALID_JOB_ID)


# --- this node's names, and asking Slurm --------------------------------------------


def node_names(in_a_job: bool) -> Set[str]:
    """The names this node may have in Slurm: its host name (short and full)
    and, in a job, the name its slurmd gave it (``SLURMD_NODENAME``). Beside
    jobs no variable counts: who holds a GPU must not depend on one."""
    host = os.uname().nodename
    names = {host, host.split(".")[0]}
    if in_a_job and os.environ.get("SLURMD_NODENAME"):
        names.add(os.environ["SLURMD_NODENAME"])
    return names


def _timeout() -> float:
    from ..sizes import env_seconds

    return env_seconds("GENV_SLURM_TIMEOUT", DEFAULT_TIMEOUT, 0.01)


def ask(args: Sequence[str]) -> str:
    """Run ``scontrol ARGS``; its output, or SlurmError saying why not."""
    from .. import spawn

    path = spawn.which("scontrol")
    if path is None:
        raise SlurmError("scontrol is not on PATH")
    timeout = _timeout()
    try:
        status, out, err = spawn.run([path, *args], timeout=timeout)
    except spawn.Timeout:
        raise SlurmError("scontrol did not answer within %g s" % timeout) from None
    except OSError as error:
        raise SlurmError("cannot run %s: %s" % (path, error.strerror or error)) from None
    if status != 0:
        said = (err or out).decode("utf-8", "replace").strip().splitlines()
        if said and said[0].endswith(INVALID_JOB):
            raise UnknownJob(said[0])
        raise SlurmError("scontrol %s failed with exit status %d%s" % (
            " ".join(args), status, (": " + said[0][:200]) if said else ""))
    return out.decode("utf-8", "replace")


# --- parsing (pure) --------------------------------------------------------------------


def split_top(text: str, sep: str = ",") -> List[str]:
    """Split at ``sep`` outside brackets and parentheses."""
    parts, depth, start = [], 0, 0
    for at, char in enumerate(text):
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == sep and depth == 0:
            parts.append(text[start:at])
            start = at + 1
    parts.append(text[start:])
    return parts


def indices(text: str) -> Set[int]:
    """Slurm's index list: ``0-1,3`` (ValueError if it is not one)."""
    from ..limits import MAX_GPUS

    found: Set[int] = set()
    for part in text.split(","):
        bounds = _range(part)
        if bounds is None or bounds[1] >= MAX_GPUS:
            raise ValueError("not an index list: %r" % text)
        found.update(range(bounds[0], bounds[1] + 1))
    return found


def _range(part: str) -> Optional[Tuple[int, int, int]]:
    """``3`` or ``1-4`` (ASCII digits, not backwards) as first, last and the
    width the first is written in (``01-03``: 2); None for anything else."""
    low, sep, high = part.partition("-")
    if not low.isascii() or not low.isdigit() or (sep and (not high.isascii() or not high.isdigit())):
        return None
    first, last = int(low), int(high) if sep else int(low)
    return (first, last, len(low)) if last >= first else None


def hostlist(expression: str) -> List[str]:
    """The host names of a Slurm hostlist expression (``gpu[01-03,07],login``);
    ValueError for one that is not, or that names more than MAX_NAMES."""
    names: List[str] = []
    for item in split_top(expression):
        if not item:
            raise ValueError("empty host name in %r" % expression)
        names.extend(_expand(item))
        if len(names) > MAX_NAMES:
            raise ValueError("too many host names in %r" % expression[:100])
    return names


def _expand(item: str) -> List[str]:
    at = item.find("[")
    if at < 0:
        if "]" in item:
            raise ValueError("unbalanced brackets in %r" % item)
        return [item]
    end = item.find("]", at)
    if end < 0 or "]" in item[:at]:
        raise ValueError("unbalanced brackets in %r" % item)
    prefix, body, tails = item[:at], item[at + 1 : end], _expand(item[end + 1 :])
    names = []
    for part in body.split(","):
        bounds = _range(part)
        if bounds is None or (bounds[1] - bounds[0] + 1) * len(tails) > MAX_NAMES:
            raise ValueError("not a host range: %r" % part)
        first, last, width = bounds
        for number in range(first, last + 1):
            for tail in tails:
                names.append(prefix + str(number).zfill(width) + tail)
    return names


def gres_gpus(text: str) -> Set[int]:
    """The GPU indices in a job's per-node GRES field: ``gpu:2(IDX:0-1)``,
    ``gpu:a100:1(IDX:3),gpu:v100:1(IDX:5)`` (other kinds of GRES ignored);
    ValueError if an index list is not one."""
    found: Set[int] = set()
    for item in split_top(text):
        if item.split(":", 1)[0].split("(", 1)[0] != "gpu":
            continue
        at = item.find("(IDX:")
        if at < 0:
            continue  # gpu:0, or no indices given
        end = item.find(")", at)
        body = item[at + 5 : end if end >= 0 else len(item)]
        if body and body != "N/A":
            found |= indices(body)
    return found


class Job:
    """What Slurm says of one job, as far as this node is concerned."""

    __slots__ = ("id", "users", "states", "here", "gpus", "start")

    def __init__(self, jid: str) -> None:
        self.id = jid
        self.users: Set[Tuple[str, int]] = set()  # every UserId=name(uid) read (one, unless forged)
        self.states: Set[str] = set()
        self.here = False  # allocated on this node
        self.gpus: Set[int] = set()  # Slurm's GPU indices on this node
        self.start: Optional[float] = None

    @property
    def uid(self) -> int:
        """The owner's uid; -1 when Slurm's text does not say unambiguously."""
        return next(iter(self.users))[1] if len(self.users) == 1 else -1

    @property
    def holding(self) -> bool:
        """Whether its resources are allocated now (any state read says so)."""
        return bool(self.states & HOLDING)


def _user(value: str) -> Optional[Tuple[str, int]]:
    name, sep, rest = value.partition("(")
    uid = rest[:-1] if rest.endswith(")") else ""
    return (name, int(uid)) if sep and uid.isascii() and uid.isdigit() else None


def _time(value: str) -> Optional[float]:
    """``2026-12-07T19:12:04`` (local time) as Unix time; None otherwise."""
    date, sep, clock = value.partition("T")
    parts = date.split("-") + clock.split(":")
    if not sep or len(parts) != 6 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    try:
        y, mo, d, h, mi, s = (int(p) for p in parts)
        return time.mktime((y, mo, d, h, mi, s, 0, 0, -1))
    except (OverflowError, ValueError):
        return None


def _on_node(expression: str, names: Set[str]) -> bool:
    try:
        return any(name in names for name in hostlist(expression))
    except ValueError:
        # Not a hostlist (text a user typed, or a form this parser does not
        # know): it counts if it names this node at all (more holds, never fewer).
        return any(name in expression for name in names if name)


def parse_jobs(text: str, names: Set[str]) -> Dict[str, Job]:
    """``scontrol -d -o show job [ID]``'s answer (or the same without ``-o``):
    the jobs by id, with their GPUs on the node called ``names``. A record
    begins at a line starting with ``JobId=``; every other line continues the
    record before it. Each per-node part (``Nodes=… CPU_IDs=… Mem=…
    GRES=…``) that names this node adds its GPUs. Raises SlurmError for an
    answer that is not a list of jobs."""
    stripped = text.strip()
    if not stripped or stripped.startswith("No jobs in the system"):
        return {}
    records: List[str] = []
    for line in text.splitlines():
        if line.startswith("JobId="):
            records.append(line)
        elif records:
            records[-1] += " " + line
        elif line.strip():
            raise SlurmError("unexpected answer from scontrol: %r" % line[:200])
    jobs: Dict[str, Job] = {}
    for record in records:
        tokens = record.split()
        jid = tokens[0][len("JobId="):]
        if not jid.isascii() or not jid.isdigit():
            raise SlurmError("unexpected answer from scontrol: %r" % record[:200])
        job = jobs.setdefault(jid, Job(jid))
        for at, token in enumerate(tokens):
            key, _, value = token.partition("=")
            if key == "UserId":
                user = _user(value)
                if user is not None:
                    job.users.add(user)
            elif key == "JobState":
                job.states.add(value)
            elif key == "StartTime" and job.start is None:
                job.start = _time(value)
            elif key == "Nodes" and value:
                # Nodes=vm CPU_IDs=1 Mem=0 GRES=gpu:2(IDX:1-2)
                gres = next((t for t in tokens[at + 1 : at + 5] if t.startswith("GRES=")), None)
                if gres is None or not _on_node(value, names):
                    continue
                job.here = True
                try:
                    job.gpus |= gres_gpus(gres[len("GRES="):])
                except ValueError:
                    pass  # not Slurm's own text
    return jobs


def parse_listpids(text: str) -> Dict[int, str]:
    """``scontrol listpids``: PID -> job id (the header and 'No job steps
    exist on this node.' give nothing)."""
    found: Dict[int, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isascii() and fields[0].isdigit() and fields[1].isascii() \
                and fields[1].isdigit():
            found[int(fields[0])] = fields[1]
    return found


def cgroup_job(text: str) -> Optional[Tuple[str, Optional[int]]]:
    """The job (and, on cgroup v1, its owner's uid) that ``/proc/PID/cgroup``
    places the process in, or None. Only paths that only Slurm (root) can
    make count: on cgroup v1 ``/slurm[_NODE]/uid_U/job_N/...`` at the root of a
    hierarchy; on cgroup v2 ``/system.slice/slurmstepd.scope/job_N/...``."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        parts = path.split("/")[1:]
        if len(parts) >= 3 and (parts[0] == "slurm" or parts[0].startswith("slurm_")) \
                and parts[1].startswith("uid_") and parts[2].startswith("job_"):
            uid, jid = parts[1][4:], parts[2][4:]
            if uid.isascii() and uid.isdigit() and jid.isascii() and jid.isdigit():
                return jid, int(uid)
        if len(parts) >= 3 and parts[0] == "system.slice" and parts[1] == "slurmstepd.scope" \
                and parts[2].startswith("job_"):
            jid = parts[2][4:]
            if jid.isascii() and jid.isdigit():
                return jid, None
    return None


def cgroup_jobs(root: str = "/sys/fs/cgroup") -> Optional[Set[str]]:
    """The jobs that have a cgroup on this node now (kernel facts: only
    slurmstepd makes them), or None where Slurm keeps no cgroups here."""
    tops: List[Tuple[str, bool]] = []  # (folder, whether a uid_U level comes first)
    v2 = os.path.join(root, "system.slice", "slurmstepd.scope")
    if os.path.isdir(v2):
        tops.append((v2, False))
    try:
        controllers = os.listdir(root)
    except OSError:
        controllers = []
    for controller in controllers:
        folder = os.path.join(root, controller)
        try:
            entries = os.listdir(folder)
        except OSError:
            continue  # a file of cgroup v2's root
        tops += [(os.path.join(folder, entry), True) for entry in entries
                 if entry == "slurm" or entry.startswith("slurm_")]
    if not tops:
        return None
    found: Set[str] = set()
    for top, by_uid in tops:
        try:
            folders = [os.path.join(top, entry) for entry in os.listdir(top) if entry.startswith("uid_")] \
                if by_uid else [top]
        except OSError:
            continue
        for folder in folders:
            try:
                found.update(entry[4:] for entry in os.listdir(folder)
                             if entry.startswith("job_") and entry[4:].isdigit())
            except OSError:
                continue
    return found


# --- the job's own state folder ------------------------------------------------------


def jobs_dir() -> str:
    from ..folders import normalise

    return normalise(os.environ.get("GENV_SLURM_TMPDIR") or DEFAULT_JOBS_DIR, "GENV_SLURM_TMPDIR")


def job_state_dir() -> Optional[str]:
    """In a job, the state folder of the job: ``job-<id>`` in the jobs'
    folder (``GENV_SLURM_TMPDIR``, default /var/tmp/genv-slurm), made on
    first use, mode 0700 and owned by the job's user, so that no other job
    and no other user sees its environments. None outside jobs."""
    import stat

    jid = job_id()
    if jid is None or not in_job():
        return None
    from ..folders import ensure_shared

    base = jobs_dir()
    ensure_shared(base)  # sticky and writable by all, like the state folder
    path = os.path.join(base, JOB_FOLDER + jid)
    euid = os.geteuid()
    owner = os.environ.get("SLURM_JOB_UID", "")
    try:
        os.mkdir(path, 0o700)
        if euid == 0 and owner.isascii() and owner.isdigit() and int(owner) != 0:
            os.chown(path, int(owner), -1, follow_symlinks=False)  # root came first into a user's job
    except FileExistsError:
        pass
    except OSError as error:
        raise GenvError("cannot create the state folder of Slurm job %s, %s: %s" % (jid, path, error.strerror)) \
            from None
    try:
        info = os.lstat(path)
    except OSError as error:
        raise GenvError("cannot use the state folder of Slurm job %s, %s: %s" % (jid, path, error.strerror)) \
            from None
    if not stat.S_ISDIR(info.st_mode):
        raise GenvError("refusing to use the state folder of Slurm job %s, %s: it is not a folder" % (jid, path))
    allowed = {euid} if euid != 0 else {0} | ({int(owner)} if owner.isascii() and owner.isdigit() else set())
    if info.st_uid not in allowed:
        raise GenvError("refusing to use the state folder of Slurm job %s, %s: it belongs to uid %d, not to %s "
                        "(ask an administrator to remove it)" % (jid, path, info.st_uid,
                                                                 "you" if euid != 0 else "the job's user"))
    if info.st_mode & 0o022:
        raise GenvError("refusing to use the state folder of Slurm job %s, %s: others may write to it" % (jid, path))
    return path


def sweep(alive: Callable[[str], bool], since: float) -> None:
    """Remove the state folders of jobs that ended (``alive(jobid)`` is
    False), that the caller may remove (its own; all for root), and that
    existed before ``since`` (a job that started after Slurm was asked may
    have just made its folder). Only genv's own files are removed; a folder
    in use (its lock held) is left for later."""
    import fcntl
    import stat

    from ..state_names import is_own_name

    try:
        base = jobs_dir()
        entries = os.listdir(base)
    except (OSError, GenvError):
        return
    euid = os.geteuid()
    for entry in entries:
        jid = entry[len(JOB_FOLDER):]
        if not entry.startswith(JOB_FOLDER) or not jid.isdigit() or alive(jid):
            continue
        path = os.path.join(base, entry)
        try:
            info = os.lstat(path)
            if not stat.S_ISDIR(info.st_mode) or (euid != 0 and info.st_uid != euid) or info.st_mtime >= since:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            for name in os.listdir(fd):
                if is_own_name(name):
                    os.unlink(name, dir_fd=fd)
            os.rmdir(path)
        except OSError:
            pass
        finally:
            os.close(fd)


# --- what Slurm means for one command ----------------------------------------------


def map_job_gpus(slurm: Set[int], machine: Sequence[Dict[str, Any]]) -> Optional[List[int]]:
    """The machine indices (as nvidia-smi numbers the GPUs here) of the GPUs
    Slurm numbers ``slurm`` on this node; None if they cannot be matched.

    Slurm's index is the GPU's position in the node's gres.conf, which on a
    usual node is /dev/nvidiaN in order, nvidia-smi's order. nvidia-smi lists
    either every GPU of the node (then Slurm's index is nvidia-smi's) or,
    under a device cgroup, only the GPUs the process may open (then, if it
    lists as many as or fewer than the job has, they are the job's)."""
    indices_here = sorted(device["index"] for device in machine)
    if not slurm:
        return []
    if len(indices_here) <= len(slurm):
        return indices_here  # the view is the job's GPUs (or all of the node's)
    if slurm <= set(indices_here):
        return sorted(slurm)
    return None


class View:
    """What Slurm means for one command: in a job, its pool; beside jobs,
    the GPUs jobs hold and whose each GPU process is."""

    def __init__(self, machine: Sequence[Dict[str, Any]]) -> None:
        self.full = list(machine)
        self.job: Optional[str] = None  # in a job: its id
        self.pool: Optional[List[int]] = None  # in a job: the machine indices of its GPUs
        self.jobs: Dict[str, Job] = {}  # beside jobs: the jobs on this node
        self.held: Dict[int, List[str]] = {}  # beside jobs: machine index -> jobs holding it
        self.by_pid: Dict[int, str] = {}  # GPU process -> its job
        self.unsure: Set[int] = set()  # GPU processes that may be a job's (Slurm did not say)
        self.answered = False  # Slurm answered
        self._machine: Optional[List[Dict[str, Any]]] = None
        # The environments this view made for jobs, by identity (kept, so
        # that no id is reused): a key in an environment read from a state
        # file is its user's claim, never a job's mark.
        self._made: Dict[int, Tuple[Env, str]] = {}
        self.now = time.time()

    # -- in a job --

    def machine(self) -> List[Dict[str, Any]]:
        """The GPUs genv manages in this command."""
        if self.pool is None:
            return self.full
        if self._machine is None:
            self._machine = [device for device in self.full if device["index"] in self.pool]
        return self._machine

    def visible_apps(self, apps: Sequence[App]) -> List[App]:
        """In a job, the GPU processes on the job's GPUs only."""
        if self.pool is None:
            return list(apps)
        uuids = {d.get("uuid") for d in self.full if d["index"] in self.pool and d.get("uuid")}
        return [app for app in apps if app.uuid in uuids]

    def may_store(self, cached: Optional[Dict[str, Any]], record: Dict[str, Any]) -> bool:
        """In a job, a device list that lacks GPUs the stored one has (a step
        that may open fewer GPUs than another terminal of the job) is used
        for this command only: storing it would detach them elsewhere."""
        if self.job is None or not cached or cached.get("list") is None:
            return True
        have = {d.get("uuid") for d in record["list"]}
        return all(d.get("uuid") in have for d in cached["list"] if d.get("uuid"))

    # -- beside jobs --

    def _job_env(self, jid: str) -> Tuple[int, Env]:
        job = self.jobs.get(jid)
        uid = job.uid if job is not None else -1
        devices: List[Dict[str, Any]] = []
        by_index = {d["index"]: d for d in self.full}
        for index, holders in self.held.items():
            if jid in holders:
                devices.append({"index": index, "uuid": by_index[index].get("uuid"),
                                "attached": (job.start if job and job.start else self.now)})
        env = {"id": PREFIX + jid, "created": job.start if job and job.start else self.now, "config": {},
               "terminals": [], "devices": sorted(devices, key=lambda d: d["index"]), "warnings": []}
        self._made[id(env)] = (env, jid)
        return uid, env

    def job_of(self, env: Optional[Env]) -> Optional[str]:
        """The job whose environment ``env`` is, if this view made it for
        the job (None for every other, whatever its keys say)."""
        made = self._made.get(id(env)) if env is not None else None
        return made[1] if made is not None and made[0] is env else None

    def attribute(self, processes: Sequence[Any]) -> None:
        """Beside jobs, a GPU process that is not in an environment and that
        its cgroup (or Slurm) places in a job is that job's: its environment
        is ``slurm:<jobid>``, misplaced if it is on a GPU the job does not
        hold."""
        if self.pool is not None:
            return
        envs: Dict[str, Tuple[int, Env]] = {}
        for process in processes:
            jid = self.by_pid.get(process.pid)
            if jid is None or not process.known or process.env is not None:
                continue
            if jid not in envs:
                envs[jid] = self._job_env(jid)
            owner, env = envs[jid]
            if owner < 0 and process.uid is not None:
                owner = process.uid
            process.owner, process.env = owner, env
            process.misplaced = process.gpu is None or all(d["index"] != process.gpu for d in env["devices"])

    def spare(self, process: Any) -> Optional[str]:
        """Why ``genv enforce`` must not stop this process (a Slurm job's, or
        one that may be a job's), or None."""
        jid = self.job_of(process.env)
        if jid is not None:
            return "left to Slurm (job %s)" % jid
        if process.env is None and process.pid in self.unsure:
            return "not stopped: it may be a Slurm job's"
        return None

    def busy(self, processes: Sequence[Any], describe: Callable[[int], str]) -> Dict[int, List[str]]:
        """GPUs genv must not hand out, beyond those that processes outside
        genv keep busy: beside jobs, those jobs hold and those a job's
        process uses off its own GPUs; in a job, the node's other GPUs."""
        found: Dict[int, List[str]] = {}
        if self.pool is not None:
            for device in self.full:
                if device["index"] not in self.pool:
                    found[device["index"]] = ["not a GPU of Slurm job %s" % self.job]
            return found
        for index, jids in self.held.items():
            for jid in jids:
                job = self.jobs.get(jid)
                who = describe(job.uid) if job is not None and job.uid >= 0 else "an unknown user"
                found.setdefault(index, []).append("Slurm job %s of %s" % (jid, who))
        for process in processes:
            owner_job = self.job_of(process.env)
            if owner_job is not None and process.misplaced and process.gpu is not None and process.memory != 0:
                found.setdefault(process.gpu, []).append("pid %d of Slurm job %s" % (process.pid, owner_job))
        return found

    def holders(self, users: Users) -> Users:
        """``users`` with each job holding GPUs as one more environment of its
        owner (``slurm:<jobid>``): what a listing of GPUs shows. A view
        only: never to be stored."""
        if not self.held:
            return users
        view: Users = {uid: {**state, "envs": list(state["envs"])} for uid, state in users.items()}
        for jid in sorted({jid for jids in self.held.values() for jid in jids}, key=int):
            uid, env = self._job_env(jid)
            view.setdefault(uid, {"uid": uid, "devices": None, "envs": []})["envs"].append(env)
        return view

    def conflicts(self, users: Users) -> List[Tuple[int, Env, str]]:
        """Environments outside jobs that hold a GPU Slurm gave a job since
        (Slurm is the authority): each with what to tell it."""
        from ..environments import holdings

        found = []
        for index, holders in holdings(users, self.full).items():
            for jid in self.held.get(index, ()):
                for uid, env, _ in holders:
                    found.append((uid, env, "GPU %d is now held by Slurm job %s, which Slurm gave it to; "
                                            "stop using it and run 'genv detach'" % (index, jid)))
        return found


def look_here(machine: Sequence[Dict[str, Any]], apps: Sequence[App], facts: Any,
              say: Callable[[str], None]) -> View:
    """``look`` on a Slurm node (genv.slurm checked that it is one)."""
    view = View(machine)
    jid = job_id()
    started = time.time()
    if jid is not None:
        # Other jobs' folders are left to commands beside jobs: only Slurm's
        # full answer says a job ended (a job between steps has no cgroup).
        _in_job(view, jid, say)
        return view
    _beside_jobs(view, apps, facts, say)
    if view.answered:  # the state folders of jobs that ended go (a folder here is of a job that ran here:
        # whether Slurm's answer names this node does not matter, its node name may not be the host name)
        sweep(lambda other: other in view.jobs and view.jobs[other].holding, started)
    return view


def _variables_gpus() -> Optional[Set[int]]:
    """The job's GPUs on this node as the variables Slurm set here say:
    ``SLURM_STEP_GPUS`` (set for the step on each of its nodes), else
    ``SLURM_JOB_GPUS`` (set in the batch script)."""
    for name in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        text = os.environ.get(name)
        if text is not None:
            try:
                return indices(text) if text else set()
            except ValueError:
                return None
    return None


def _not_ours(job: Job) -> str:
    """Why this process may not manage ``job``'s GPUs ('' if it may): the
    job is not running, or it is another user's (root may join any job)."""
    if not job.holding:
        return "is not running"
    euid = os.geteuid()
    if euid == 0 or any(uid == euid for _, uid in job.users):
        return ""
    return "is not yours (it is %s's)" % next(iter(job.users))[0] if len(job.users) == 1 else "is not yours"


def _in_job(view: View, jid: str, say: Callable[[str], None]) -> None:
    view.job = jid
    names = node_names(True)
    gpus: Optional[Set[int]] = None
    why = ""
    try:
        try:
            jobs = parse_jobs(ask(["-d", "-o", "show", "job", jid]), names)
        except UnknownJob:
            jobs = {jid: Job(jid)}  # Slurm knows no such job: it runs no more (or never ran)
        job = jobs.get(jid)
        if job is None:
            raise SlurmError("scontrol did not list job %s" % jid)
        view.answered = True
        # SLURM_JOB_ID is only a variable: a shell kept from a job that
        # ended, or one that names a job by hand, gets no GPU; Slurm says
        # whose the job is and whether it runs.
        refused = _not_ours(job)
        if refused:
            say("Slurm job %s %s; genv manages no GPU in it" % (jid, refused))
            view.pool = []
            return
        gpus = job.gpus if job.here else set()
    except SlurmError as error:
        gpus = _variables_gpus()
        why = str(error)
    mapped = map_job_gpus(gpus, view.full) if gpus is not None else []
    if mapped is None:
        say("cannot match the GPUs of Slurm job %s on this node (Slurm's %s) to nvidia-smi's (%s); genv manages "
            "none of them" % (jid, ",".join(map(str, sorted(gpus or ()))),
                              ",".join(str(d["index"]) for d in view.full)))
        mapped = []
    view.pool = mapped
    if why:
        if gpus is None:
            say("cannot ask Slurm for the GPUs of job %s (%s), and no variable says: genv manages no GPU in this "
                "job" % (jid, why))
        else:
            say("cannot ask Slurm for the GPUs of job %s (%s); using what %s says" % (
                jid, why, "SLURM_STEP_GPUS" if os.environ.get("SLURM_STEP_GPUS") is not None else "SLURM_JOB_GPUS"))
    elif not view.pool:
        say("Slurm job %s has no GPUs on this node (%s)" % (jid, sorted(names, key=len)[0]))


def _beside_jobs(view: View, apps: Sequence[App], facts: Any, say: Callable[[str], None]) -> None:
    names = node_names(False)
    by_index = {device["index"] for device in view.full}
    # Whose is each GPU process: its cgroup (a kernel fact) first.
    undecided = []
    uids: Dict[str, Optional[int]] = {}
    for app in apps:
        text = facts.cgroup(app.pid)
        found = cgroup_job(text) if text else None
        if found is not None:
            view.by_pid[app.pid] = found[0]
            uids.setdefault(found[0], found[1])
        else:
            undecided.append(app.pid)
    try:
        view.jobs = parse_jobs(ask(["-d", "-o", "show", "job"]), names)
        view.answered = True
    except SlurmError as error:
        say("cannot ask Slurm which GPUs its jobs hold (%s); GPUs with a job's processes count as held, "
            "and processes that may be a job's are never stopped" % error)
    if view.answered:
        unmatched = []
        for jid, job in view.jobs.items():
            if not (job.here and job.holding):
                continue
            for index in sorted(job.gpus):
                if index in by_index:
                    view.held.setdefault(index, []).append(jid)
                else:
                    unmatched.append("%s:%d" % (jid, index))
        if unmatched:
            say("Slurm jobs hold GPUs that nvidia-smi does not list here (job:GPU %s)" % ", ".join(unmatched))
    else:
        # What the node shows: a GPU with a process in a job's cgroup is that job's.
        index_of = {d["uuid"]: d["index"] for d in view.full if d.get("uuid")}
        for app in apps:
            owner = view.by_pid.get(app.pid)
            at = index_of.get(app.uuid) if app.uuid else None
            if owner is not None and at is not None and owner not in view.held.get(at, []):
                view.held.setdefault(at, []).append(owner)
        for jid, uid in uids.items():
            job = view.jobs.setdefault(jid, Job(jid))
            if uid is not None:
                job.users.add(("", uid))
        view.unsure = set(undecided)
        return
    for jid, uid in uids.items():  # a job Slurm did not list (it just ended): the cgroup still says whose
        if jid not in view.jobs and uid is not None:
            view.jobs[jid] = Job(jid)
            view.jobs[jid].users.add(("", uid))
    running_here = [jid for jid, job in view.jobs.items() if job.here and job.holding]
    if not undecided or not running_here:
        return
    # Processes whose cgroup names no job, while jobs run here: if Slurm keeps
    # a cgroup for every one of them, the cgroups have said all; else ask.
    tracked = cgroup_jobs()
    if tracked is not None and all(jid in tracked for jid in running_here):
        return
    try:
        pids = parse_listpids(ask(["listpids"]))
    except SlurmError as error:
        say("cannot ask Slurm whose processes run here (%s); processes that may be a job's are never stopped"
            % error)
        view.unsure = set(undecided)
        return
    for pid in undecided:
        if pid in pids:
            view.by_pid[pid] = pids[pid]


def cuda_visible(env: Optional[Env], fallback: str) -> str:
    """What ``CUDA_VISIBLE_DEVICES`` holds for an environment in a Slurm
    job: its GPUs' UUIDs in nvidia-smi's order (right whatever numbering
    CUDA uses in this step: device cgroups renumber from 0, and steps of one
    job may see different GPUs); ``fallback`` (indices) where a UUID is
    unknown (mock GPUs)."""
    if not env or not env["devices"]:
        return fallback
    ordered = sorted(env["devices"], key=lambda d: d["index"])
    if not all(d.get("uuid") for d in ordered):
        return fallback
    return ",".join(d["uuid"] for d in ordered)
