"""Which GPUs an environment gets: decisions only, no effects.

``allocate`` looks at the machine, at what every environment holds, at GPUs
that processes outside genv keep busy and at the requests waiting in line,
and returns the GPUs to attach, or raises ``Refused`` saying why. It
changes nothing: the caller stores the choice.

The rules (docs/sharing.md says the same for users):

- A whole GPU (no ``gpu-memory``) is taken only if nobody holds any of it,
  and is then never shared.
- A share (``gpu-memory``) is taken on a GPU that nobody holds whole and
  whose shares, with this one, fit in its total memory; ``over_subscribe``
  lifts the memory check (still never a GPU held whole).
- Neither is newly taken on a GPU where a process outside every environment
  holds memory (``busy``); a GPU the environment already holds stays its own.
- GPUs the environment already holds are kept first. Whole GPUs are then
  taken in index order. Shares go where they fit best: GPUs already partly
  shared first, the one left with the least free memory first, so that whole
  GPUs stay free for those who need them.
- ``indices`` asks for exactly those GPUs: all of them or nothing.
- The line is first come, first served: each request waiting ahead, in
  order, keeps as many GPUs as it asks for: first those it could take now
  (placed as above), then, of the GPUs no earlier request keeps so, the
  ones where the least memory must be given back before it fits (GPUs that
  processes outside genv keep busy last, then the lowest index), held for
  it as they drain. A later request takes no memory on a GPU kept for a
  request ahead as it drains (an environment keeps what it holds there,
  no more); it takes what is left elsewhere. So big requests are not
  starved by small ones, nor whole GPUs by a stream of shares.
"""

from __future__ import annotations

from .errors import GenvError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

    Env = Dict[str, Any]
    Users = Dict[int, Dict[str, Any]]


class Refused(GenvError):
    """Not enough GPUs for the request; the message says which and why."""

    final = False  # True: no release could ever make it possible (do not wait)


class Impossible(Refused):
    """A request that this machine could not meet even with every GPU free."""

    final = True


class Request:
    """What an environment asks for: ``count`` GPUs, whole or a share of
    ``memory`` bytes on each, or exactly the GPUs ``indices``."""

    __slots__ = ("count", "memory", "indices", "over_subscribe")

    def __init__(self, count: int, memory: Optional[int] = None, indices: Optional[Sequence[int]] = None,
                 over_subscribe: bool = False) -> None:
        self.count = len(indices) if indices is not None else count
        self.memory = memory
        self.indices = tuple(sorted(set(indices))) if indices is not None else None
        self.over_subscribe = over_subscribe


class Waiter:
    """A request in line: whose, for which environment."""

    __slots__ = ("uid", "env", "request")

    def __init__(self, uid: int, env: Env, request: Request) -> None:
        self.uid, self.env, self.request = uid, env, request


class _Holder:
    __slots__ = ("uid", "env", "memory")

    def __init__(self, uid: int, env: Optional[Env], memory: Optional[int]) -> None:
        self.uid, self.env, self.memory = uid, env, memory


class _Gpu:
    """One GPU as this decision sees it: what holds it, what is left."""

    __slots__ = ("index", "uuid", "total", "holders", "busy", "claims", "draining")

    def __init__(self, device: Dict[str, Any]) -> None:
        self.index: int = device["index"]
        self.uuid: Optional[str] = device.get("uuid")
        self.total: Optional[int] = device.get("total")
        self.holders: List[_Holder] = []
        self.busy: List[str] = []
        self.claims: List[Env] = []  # the requests waiting ahead in line that keep (some of) it
        self.draining = False  # kept for a request ahead until enough of what holds it is given back

    def whole(self) -> Optional[_Holder]:
        return next((holder for holder in self.holders if holder.memory is None), None)

    def shared(self) -> int:
        return sum(holder.memory or 0 for holder in self.holders)

    def free(self) -> Optional[int]:
        return None if self.total is None else self.total - self.shared()

    def takes(self, request: Request, held: bool = False, covered: bool = False) -> bool:
        """Whether this GPU can take the request now (ignoring the count).
        ``held``: the environment holds it already, and keeps it even if a
        process outside genv moved onto it meanwhile. ``covered``: it holds
        it already with at least what the request asks there, and keeps it
        even if it is kept for a request ahead as it drains."""
        if (self.busy and not held) or (self.draining and not covered) or self.whole() is not None:
            return False
        if request.memory is None:
            return not self.holders
        if request.over_subscribe:
            return True
        if self.total is None:  # unknown size: only an empty GPU is safe
            return not self.holders and request.memory is not None
        return self.shared() + request.memory <= self.total


def _key(gpu: _Gpu, request: Request) -> Tuple[int, int, int, int]:
    """Placement order (smaller first)."""
    if request.memory is None:
        return (0, 0, 0, gpu.index)
    free = gpu.free()
    fits = free is not None and free >= request.memory
    left = (free - request.memory) if (free is not None and fits) else 0
    return (0 if fits else 1, 0 if gpu.holders else 1, left, gpu.index)


def _drain(gpu: _Gpu, request: Request) -> Optional[int]:
    """How much memory must be given back on ``gpu`` before ``request``
    fits there (a GPU held whole: all of it); None if it never fits there."""
    size = gpu.total if gpu.total is not None else 1 << 62  # unknown: as if huge, all of it must go
    held = sum(size if holder.memory is None else holder.memory for holder in gpu.holders)
    if request.memory is None or gpu.whole() is not None or gpu.total is None:
        return held  # a whole GPU, a GPU held whole, a share of a GPU of unknown size: when nobody is left
    if request.over_subscribe:
        return 0
    if request.memory > gpu.total:
        return None
    return max(0, held + request.memory - gpu.total)


def _board(users: Users, machine: Sequence[Dict[str, Any]], busy: Dict[int, List[str]],
           exclude: Optional[Env]) -> Dict[int, _Gpu]:
    from .environments import holdings

    board = {device["index"]: _Gpu(device) for device in machine}
    for index, holders in holdings(users, machine, exclude).items():
        board[index].holders = [_Holder(uid, env, reserved.get("memory")) for uid, env, reserved in holders]
    for index, who in busy.items():
        if index in board:
            board[index].busy = list(who)
    return board


def _place(board: Dict[int, _Gpu], request: Request, keep: Sequence[int], partial: bool,
           covered: Sequence[int] = ()) -> List[int]:
    """The GPUs the request would take now; fewer than asked only if
    ``partial`` (otherwise an empty list means no). ``keep``: the GPUs the
    environment holds; ``covered``: those of them where it holds at least
    what the request asks."""
    if request.indices is not None:
        chosen = [index for index in request.indices
                  if index in board and board[index].takes(request, held=index in keep, covered=index in covered)]
        if len(chosen) == len(request.indices) or partial:
            return chosen
        return []
    kept = [index for index in sorted(keep)
            if index in board and board[index].takes(request, held=True, covered=index in covered)]
    rest = sorted((gpu for gpu in board.values() if gpu.index not in kept and gpu.takes(request)),
                  key=lambda gpu: _key(gpu, request))
    chosen = kept[: request.count] + [gpu.index for gpu in rest][: max(0, request.count - len(kept))]
    if len(chosen) < request.count and not partial:
        return []
    return chosen


def place(gpus: Sequence[Tuple[int, Optional[int], Sequence[Optional[int]], bool]], request: Request) -> List[int]:
    """Where ``request`` would go now on a machine known only from outside
    (another host's ``genv devices``): each GPU as (index, total bytes or
    None, the shares of its holders in bytes (None: held whole), whether a
    process outside genv keeps it busy). The rules of ``allocate``, without
    the line of waiters (which the listing does not show). An empty list:
    it does not fit (or asks for no GPU)."""
    board: Dict[int, _Gpu] = {}
    for index, total, shares, busy in gpus:
        gpu = _Gpu({"index": index, "total": total})
        gpu.holders = [_Holder(-1, None, share) for share in shares]
        gpu.busy = ["busy"] if busy else []
        board[index] = gpu
    return _place(board, request, [], partial=False)


def _held_by(env: Env, board: Dict[int, _Gpu]) -> Dict[int, Optional[int]]:
    """The GPUs ``env`` holds on the board: index -> its share there (None: whole)."""
    return {index: holder.memory for index, gpu in board.items() for holder in gpu.holders if holder.env is env}


def _covers(held: Optional[int], request: Request) -> bool:
    """Whether holding ``held`` (a share, None: the whole GPU) on a GPU is at
    least what ``request`` asks there."""
    return held is None or (request.memory is not None and request.memory <= held)


def _claim(board: Dict[int, _Gpu], waiter: Waiter) -> None:
    """A request ahead in line keeps its GPUs on the board: those it could
    take now, then as many as it still needs of those that will fit it as
    they drain (see the module's doc)."""
    request = waiter.request
    own = _held_by(waiter.env, board)
    for index in own:  # a waiter re-places its own GPUs too
        board[index].holders = [h for h in board[index].holders if h.env is not waiter.env]
    covered = [index for index, held in own.items() if _covers(held, request)]
    claim = _place(board, request, list(own), partial=True, covered=covered)
    missing = request.count - len(claim)
    if missing > 0:
        pool = request.indices if request.indices is not None else sorted(board)
        ranked = []
        for index in pool:
            gpu = board.get(index)
            if gpu is None or index in claim or gpu.draining:
                continue
            drain = _drain(gpu, request)
            if drain is not None:
                ranked.append((bool(gpu.busy), drain, index))
        for _, _, index in sorted(ranked)[:missing]:
            board[index].draining = True
            board[index].claims.append(waiter.env)
    for index in set(own) | set(claim):
        board[index].holders.append(_Holder(waiter.uid, waiter.env, request.memory))
        if index not in own:
            board[index].claims.append(waiter.env)


def unmeetable(request: Request, machine: Sequence[Dict[str, Any]]) -> Optional[str]:
    """Why this machine could not meet ``request`` even with every GPU
    free (None: it could): more GPUs than it has, a GPU it does not have, a
    share larger than its largest GPU."""
    if request.indices is not None:
        missing = [index for index in request.indices if index not in {d["index"] for d in machine}]
        if missing:
            return "cannot attach GPU %d: this machine has no such GPU (it has %d)" % (missing[0], len(machine))
    elif request.count > len(machine):
        return "cannot attach %d GPU%s: this machine has %d" % (
            request.count, "" if request.count == 1 else "s", len(machine))
    if request.memory is not None and not request.over_subscribe:
        sizes = [d["total"] for d in machine if d.get("total") is not None]
        if sizes and request.memory > max(sizes):
            return ("cannot attach a share of %s: the largest GPU here has %s (use --over-subscribe to share it "
                    "anyway)" % (_size(request.memory), _size(max(sizes))))
    return None


def allocate(users: Users, env: Env, machine: Sequence[Dict[str, Any]], request: Request, now: float,
             describe: Callable[[int], str], busy: Optional[Dict[int, List[str]]] = None,
             ahead: Sequence[Waiter] = ()) -> List[Dict[str, Any]]:
    """The reservations ``env`` should have for ``request``: kept ones keep
    their attach time, new ones get ``now``. Raises Refused. Pure."""
    count = request.count
    why = unmeetable(request, machine)
    if why is not None:
        raise Impossible(why)
    # The environment's own GPUs are on the board while the requests ahead
    # in line are placed: they are its own, not free for those requests.
    board = _board(users, machine, busy or {}, None)
    # Requests ahead in line keep their GPUs, in order.
    for waiter in ahead:
        if waiter.env is not env:
            _claim(board, waiter)
    own = _held_by(env, board)
    for gpu in board.values():  # then they are this request's to keep
        gpu.holders = [holder for holder in gpu.holders if holder.env is not env]
    current = {reserved["index"]: reserved for reserved in env["devices"]}
    chosen = _place(board, request, list(current), partial=False,
                    covered=[index for index, held in own.items() if _covers(held, request)])
    if not chosen and count > 0:
        keeping = {id(claimant) for gpu in board.values() for claimant in gpu.claims}
        raise Refused(_why(board, request, describe, len(keeping)))
    result = []
    for index in sorted(chosen):
        gpu = board[index]
        old = current.get(index)
        attached = old["attached"] if old is not None and old.get("memory") == request.memory else now
        record: Dict[str, Any] = {"index": index, "uuid": gpu.uuid, "attached": attached}
        if request.memory is not None:
            record["memory"] = request.memory
            if gpu.total is not None:
                record["total"] = gpu.total
        result.append(record)
    return result


def _size(value: int) -> str:
    from .sizes import format_size

    return format_size(value)


def _holder_text(holder: _Holder, describe: Callable[[int], str]) -> str:
    from .text import printable

    env = holder.env or {}
    name = env.get("config", {}).get("name")
    return "environment %s%s of %s" % (
        printable(env.get("id", "?")), " (%s)" % printable(name) if name else "", describe(holder.uid))


def _why(board: Dict[int, _Gpu], request: Request, describe: Callable[[int], str], waiting: int) -> str:
    count = request.count
    share = " with %s each" % _size(request.memory) if request.memory is not None else ""
    if request.indices is not None:
        for index in request.indices:
            gpu = board[index]
            if gpu.takes(request):
                continue
            whole = gpu.whole()
            label = "GPU %d" % index
            if gpu.busy:
                return "cannot attach %s: it is busy outside genv (%s)" % (label, ", ".join(gpu.busy))
            if gpu.claims:
                return "cannot attach %s: it is kept for a request waiting ahead in line" % label
            if whole is not None:
                return "cannot attach %s: it is held by %s" % (label, _holder_text(whole, describe))
            if request.memory is None:
                return "cannot attach %s whole: it is shared by %s" % (
                    label, ", ".join(_holder_text(h, describe) for h in gpu.holders))
            return "cannot attach %s%s: only %s of it is free (use --over-subscribe to share it anyway)" % (
                label, share, _size(max(0, gpu.free() or 0)))
        return "cannot attach GPUs %s" % ",".join(map(str, request.indices))  # pragma: no cover
    usable = sum(1 for gpu in board.values() if gpu.takes(request))
    if request.memory is None:
        head = "cannot attach %d GPU%s: only %d of this machine's %d %s free" % (
            count, "" if count == 1 else "s", usable, len(board), "is" if usable == 1 else "are")
    else:
        head = "cannot attach %d GPU%s%s: only %d of this machine's %d can take it" % (
            count, "" if count == 1 else "s", share, usable, len(board))
    notes = []
    busy = [gpu for gpu in board.values() if gpu.busy]
    if busy:
        notes.append("busy outside genv: %s" % "; ".join(
            "GPU %d (%s)" % (gpu.index, ", ".join(gpu.busy)) for gpu in sorted(busy, key=lambda g: g.index)))
    kept = sum(1 for gpu in board.values() if gpu.claims)
    if kept:
        notes.append("%d GPU%s kept for %d request%s waiting ahead in line" % (
            kept, " is" if kept == 1 else "s are", waiting, "" if waiting == 1 else "s"))
    return head + "".join("; " + note for note in notes)
