"""The frame of a command that reads or changes state.

Decisions (which GPUs, which terminals are dead) are made by pure functions
in ``allocate`` and ``environments``; a ``Session`` applies them: it holds
the lock, records what changed, and writes the state when the block ends.
GPU facts are gathered before the lock (nvidia-smi never runs under it).
"""

from __future__ import annotations

from .. import attribution, clock, environments, gpus
from ..errors import GenvError
from ..procs import processes
from ..report import warn
from ..store import StateDir, Transaction

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, List, Optional, Tuple

    from ..allocate import Request
    from .context import Context
    from ..slurm.facts import View


class Session:
    """Discover devices (if needed) *before* the lock, then, inside
    ``with``: hold the lock, drop dead terminals, store a new device list.

    ``holders_only``: only environments that hold or wait for GPUs are
    checked for liveness (what a listing of GPUs needs). ``listing``: a
    command that only shows state (works on a read-only folder).
    ``observe``: also ask nvidia-smi for the processes on the GPUs (and,
    with ``usage``, each GPU's memory in use). ``details``: the processes'
    command lines and executables are read (listings and enforce; an attach
    needs neither). ``fallback``: a lock held too long by someone else
    (``Transaction.unlocked``) does not stop the command: it reads the
    state without it and writes nothing; ``lock_timeout``: how long to wait
    for the lock (None: ``GENV_LOCK_TIMEOUT``). Messages for the caller
    collect in ``messages``."""

    def __init__(self, ctx: Context, holders_only: bool = False, listing: bool = False, observe: bool = False,
                 usage: bool = False, details: bool = False, fallback: bool = False,
                 lock_timeout: Optional[float] = None) -> None:
        self.ctx = ctx
        self.fallback = fallback
        self.lock_timeout = lock_timeout
        self.holders_only = holders_only
        self.listing = listing
        self.details = details
        self.now = clock.wall()  # for people: created, attached
        self.boot = clock.boot()  # for deadlines and idle times (genv.clock)
        self.folder = StateDir()
        self.processes = processes()
        self.record: Optional[Dict[str, Any]] = None
        self.snapshot: Optional[gpus.Snapshot] = None
        self.messages: List[str] = []
        self._attributed: Optional[List[attribution.Process]] = None
        self.slurm: Optional[View] = None  # Slurm (genv/slurm/): None off Slurm
        self._policy: Optional[Any] = None
        self.final = False  # the last refusal of attach() can never change: do not wait
        self._store_record = False
        if observe:
            self.observe(usage)

    def observe(self, usage: bool = False) -> None:
        """The GPU list and the processes on the GPUs (and, with ``usage``,
        each GPU's memory in use): one nvidia-smi query of each kind."""
        cached = (self.folder.peek(self.ctx.euid) or {}).get("devices")
        self.snapshot, self._store_record = gpus.observe(cached, self.processes.clock, usage, self.now)
        self.record = self.snapshot.record
        self._look_at_slurm(cached)

    def _look_at_slurm(self, cached: Optional[Dict[str, Any]]) -> None:
        """Slurm (genv/slurm/), asked before the lock: in a job, the job's
        GPUs are the machine; beside jobs, the GPUs jobs hold are busy."""
        from .. import slurm

        assert self.record is not None and self.snapshot is not None
        self.slurm = slurm.look(self.record["list"], self.snapshot.apps, self.processes, warn)
        if self.slurm is not None:
            self.snapshot.apps = self.slurm.visible_apps(self.snapshot.apps)
            self._store_record = self._store_record and self.slurm.may_store(cached, self.record)

    def attributed(self) -> List[attribution.Process]:
        """The GPU processes, attributed against the state under the lock."""
        if self._attributed is None:
            if self.snapshot is None:
                self._attributed = []
            else:
                self._attributed = attribution.attribute(self.snapshot.apps, self.machine, self.tx.users,
                                                         self.processes, self.snapshot.mark, self.details)
                if self.slurm is not None:  # Slurm: a job's processes are the job's
                    self.slurm.attribute(self._attributed)
        return self._attributed

    def reattribute(self) -> None:
        """The state changed under the lock (GPUs reclaimed): attribute the
        processes seen again (whose environment holds which GPU)."""
        self._attributed = None

    @property
    def machine(self) -> List[Dict[str, Any]]:
        if self.record is None:
            raise GenvError("internal: devices were not discovered")
        if self.slurm is not None:  # Slurm: in a job, the job's GPUs only
            return self.slurm.machine()
        return self.record["list"]  # type: ignore[no-any-return]

    @property
    def holders(self) -> Dict[int, Dict[str, Any]]:
        """The users, and (Slurm) each job holding GPUs as an environment
        ``slurm:<jobid>`` of its owner: what listings of GPUs show."""
        return self.slurm.holders(self.users) if self.slurm is not None else self.users

    def terminal(self) -> Tuple[int, str]:
        """The calling shell's PID and identity token."""
        pid = self.ctx.shell_pid()
        token = self.processes.token(pid)
        if token is None:
            raise GenvError("cannot find this terminal's shell process (pid %d)" % pid)
        return pid, token

    def __enter__(self) -> "Session":
        tx = self.folder.transaction(self.lock_timeout, listing=self.listing, timer=not self.ctx.library,
                                     fallback=self.fallback)
        tx.user_name = self.ctx.user
        self.tx: Transaction = tx.__enter__()
        try:
            euid = self.ctx.euid
            if euid in environments.prune(self.tx.users, self.processes, self.holders_only):
                self.tx.changed(euid)
            if self._store_record and self.record is not None:
                environments.reconcile(self.tx.user(euid), self.record)
                self.tx.changed(euid)
            if self.slurm is not None:  # Slurm gave a job a GPU an environment holds: tell it
                for owner, env, warning in self.slurm.conflicts(self.tx.users):
                    if warning not in env["warnings"] and euid in (0, owner):
                        env["warnings"].append(warning)
                        self.tx.tidied(owner)
            # Reservations that ended release their GPUs, as dead terminals
            # do: in the caller's file (root: in every file), in memory for
            # the others (their owner's next command writes it).
            for uid in environments.expire(self.tx.users, self.boot, self.ends()):
                if uid == euid or euid == 0:
                    self.tx.tidied(uid)
        except BaseException as error:
            self.tx.__exit__(type(error), error, None)
            raise
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        try:
            if kind is None:
                try:
                    self._note_activity()
                    self.witness()
                except BaseException as error:  # (an interrupt, too): the lock is let go all the same
                    self.tx.__exit__(type(error), error, error.__traceback__)
                    raise
            self.tx.__exit__(kind, value, traceback)
        finally:
            self.processes.close()

    def ends(self) -> Dict[Tuple[int, str], Tuple[float, str]]:
        """The ends the policy's ``max_reservation`` sets, counted from what
        root-run commands saw (``genv.sightings.end``): they bind whatever a
        user's own file says. Read only where root's record is of this boot."""
        seen = self.seen()
        if not seen or not seen["envs"] or seen.get("boot") != self.boot_id():
            return {}
        from ..sightings import end
        from ..sizes import format_duration

        policy = self.policy()
        ends: Dict[Tuple[int, str], Tuple[float, str]] = {}
        current = {(uid, env["id"]): env.get("until") for uid in self.users for env in self.users[uid]["envs"]}
        for record in seen["envs"]:
            key = (record["uid"], record["env"])
            if record["uid"] == 0 or key not in current:
                continue  # root is not capped
            limit = policy.cap(self.ctx.user(record["uid"]), "max_reservation")
            found = end(record, limit, current[key], self.boot)
            if found is not None:
                ends[(record["uid"], record["env"])] = (
                    found, "at the end of the longest reservation the policy allows (max_reservation = %s)"
                    % format_duration(limit))
        return ends

    def _note_activity(self) -> None:
        """What this command saw of the caller's own environments' processes
        (when it asked nvidia-smi), in the caller's own file, for display
        (``genv envs``' IDLE): a claim like any other there; decisions read
        root's record only."""
        if self.snapshot is None or self.tx.missing:
            return
        from ..sightings import active_after, busy as in_use

        euid = self.ctx.euid
        used = in_use(self.attributed())
        for env in self.tx.user(euid)["envs"]:
            if not env["devices"]:
                continue
            busy = id(env) in used
            active = active_after(env.get("active"), bool(env.get("busy")), busy, self.boot)
            if active != env.get("active"):
                env["active"] = active
                self.tx.changed(euid)
            if bool(env.get("busy")) != busy:
                env["busy"] = busy
                self.tx.changed(euid)

    def witness(self) -> None:
        """Run by root: bring root's record of what it saw up to date
        (``genv.sightings``): every environment's claims, and, when this
        command asked nvidia-smi, whose processes it saw where (and claims
        on GPUs it does not have are left out). Others cannot write it, and
        do nothing here."""
        if self.ctx.euid != 0 or self.tx.missing:
            return
        from .. import sightings

        root = self.tx.user(0)
        processes = self.attributed() if self.snapshot is not None else None
        new: Optional[Dict[str, Any]] = sightings.update(root.get("seen"), self.users, self.boot_id(), self.now,
                                                         self.boot, processes, self.known_machine())
        if new is not None and not new["envs"]:
            new = None
        if new != root.get("seen"):
            if new is None:
                root.pop("seen", None)
            else:
                root["seen"] = new
            self.tx.changed(0)

    def known_machine(self) -> Optional[List[Dict[str, Any]]]:
        """The GPUs of this command when it asked for them (None: it did not,
        and none is asked for only to know them)."""
        return self.machine if self.record is not None else None

    def boot_id(self) -> str:
        """This boot, as root's record names it."""
        return self.processes.this_boot() or "unknown"

    def seen(self) -> Optional[Dict[str, Any]]:
        """Root's record of what root-run commands saw (``genv.sightings``):
        root's own file, which only root can write."""
        root = self.users.get(0)
        return root.get("seen") if root is not None else None

    @property
    def users(self) -> Dict[int, Dict[str, Any]]:
        return self.tx.users

    def env(self, eid: str) -> Tuple[int, Dict[str, Any]]:
        found = environments.find(self.tx.users, eid, self.ctx.euid)
        if found is None:
            raise GenvError(
                "environment %s no longer exists (this shell still carries its id); "
                "run 'genv deactivate', then 'genv activate'" % eid
            )
        return found

    def mine(self, eid: str) -> Optional[Tuple[int, Dict[str, Any]]]:
        """The environment ``eid`` and its owner, if this process may change
        it (the caller's own; root: any). None otherwise: an id another user
        wrote into their own file is never this process's to leave or
        follow."""
        return environments.mine(self.users, eid, self.ctx.euid)

    def owned_env(self, eid: str) -> Tuple[int, Dict[str, Any]]:
        owner, env = self.env(eid)
        environments.check_owner(owner, self.ctx.euid, eid, self.ctx.describe)
        return owner, env

    def policy(self) -> Any:
        """The admin's policy (read once per command)."""
        if self._policy is None:
            from ..policy import load

            self._policy = load()
        return self._policy

    def busy(self) -> Dict[int, List[str]]:
        """GPUs that processes outside every environment keep busy (and, on
        Slurm, those jobs hold, or in a job those not the job's)."""
        found = attribution.busy(self.attributed(), self.ctx.user)
        if self.slurm is not None:
            for index, who in self.slurm.busy(self.attributed(), self.ctx.user).items():
                found[index] = found.get(index, []) + who
        return found

    def attach(self, owner: int, env: Dict[str, Any], request: Request, detach: bool = True,
               reserve: Optional[float] = None) -> Optional[str]:
        """Give ``env`` the GPUs ``allocate`` chooses, behind the requests
        waiting in line before it. If it refuses, return why, and (all or
        nothing) detach the environment unless ``detach`` is False (a request
        that goes on waiting keeps what it has). Raises CapExceeded (from
        ``policy``) if it would take the owner past a cap: waiting would
        not help, and nothing changes. Once attached, the reservation ends
        ``reserve`` seconds from now (see ``_reserve``)."""
        from ..allocate import Refused, Waiter, allocate

        before = env["devices"]
        ahead = [Waiter(uid, other, waiting_request(other["waiting"]))
                 for uid, other in environments.ahead_of(self.users, env, self.processes, self.judge)]
        capped = owner != 0 and self.ctx.euid != 0  # root is not capped
        if capped and request.count:
            from ..policy import check_caps, least

            # Even the least this request could get: refused at once, waiting would not help.
            check_caps(self.policy(), self.users, owner, self.ctx.user(owner), env,
                       least(request, self.machine, self.users, owner, env), self.machine)
        try:
            chosen = allocate(self.users, env, self.machine, request, self.now, self.ctx.describe, self.busy(),
                              ahead)
            failure = None
            if chosen and capped:
                from ..policy import check_caps

                check_caps(self.policy(), self.users, owner, self.ctx.user(owner), env, chosen, self.machine)
        except Refused as refusal:
            self.final = refusal.final
            chosen = [] if detach else before
            failure = "%s%s" % (refusal, "; the environment is now detached" if detach else "")
        if environments.hold(env, chosen):  # another terminal may just pick them up
            self.tx.changed(owner)
        if failure is None:
            self._reserve(owner, env, reserve, capped)
        return failure

    def judge(self, uid: int, env: Dict[str, Any]) -> Optional[str]:
        """Why a place in line does not count for its request (None: it
        may); see ``judge``."""
        return judge(self.policy(), self.users, self.machine, self.ctx.user, uid, env)

    def _reserve(self, owner: int, env: Dict[str, Any], reserve: Optional[float], capped: bool) -> None:
        """The end of what ``env`` holds after an attach: ``reserve`` seconds
        from now (``attach --for``; a request that waited in line asked for
        it there), capped by the policy's ``max_reservation``, which also
        gives an attach without ``--for`` its end; otherwise the end it had
        (none: until detached). root is not capped."""
        from ..sizes import format_duration

        if not env["devices"]:
            return  # (its end went with its GPUs: environments.hold)
        if reserve is None:
            reserve = (env.get("waiting") or {}).get("for")
        limit = self.policy().cap(self.ctx.user(owner), "max_reservation") if capped else None
        if reserve is not None and limit is not None and reserve > limit:
            self.messages.append("the reservation ends in %s, the longest the policy allows (max_reservation in %s), "
                                 "not in %s" % (format_duration(limit), self.policy().path, format_duration(reserve)))
            reserve = limit
        if reserve is None:
            reserve = limit
        if reserve is not None:
            env["until"] = self.boot + reserve
            self.tx.changed(owner)

    def deliver_warnings(self, owner: int, env: Dict[str, Any]) -> None:
        """Messages left for this environment (a GPU that disappeared) go to
        ``messages``, once."""
        if env["warnings"] and self.ctx.euid in (0, owner):
            self.messages.extend(env["warnings"])
            env["warnings"] = []
            self.tx.changed(owner)


def request_of(config: Dict[str, Any], indices: Optional[List[int]] = None, over_subscribe: bool = False) -> Request:
    """What an environment's configuration asks ``attach`` for (on these
    GPUs, if given; shared beyond their memory, if asked)."""
    from ..allocate import Request

    return Request(config.get("gpus", 0), config.get("gpu_memory"), indices, over_subscribe)


def waiting_request(waiting: Dict[str, Any]) -> Request:
    """What an environment waiting in line asked for."""
    from ..allocate import Request

    return Request(waiting["count"], waiting["memory"], waiting["indices"], waiting["over_subscribe"])


def judge(policy: Any, users: Dict[int, Dict[str, Any]], machine: List[Dict[str, Any]], user: Callable[[int], str],
          uid: int, env: Dict[str, Any]) -> Optional[str]:
    """Why the place in line of ``env`` (``uid``'s) asks for what joining
    the line would have refused (None: nothing): more than the machine has,
    or more than the owner's caps allow besides what they hold (the least
    the request could hold, as ``attach`` checks when it joins). Such a
    place was written by hand; it counts for nothing. Pure."""
    from ..allocate import unmeetable

    request = waiting_request(env["waiting"])
    why = unmeetable(request, machine)
    if why is not None:
        return "this machine could never meet it (%s)" % why
    if uid == 0 or not request.count:
        return None  # root is not capped
    from ..policy import CapExceeded, check_caps, least

    try:
        check_caps(policy, users, uid, user(uid), env, least(request, machine, users, uid, env), machine)
    except CapExceeded as error:
        return "a cap refuses it (%s)" % error
    return None
