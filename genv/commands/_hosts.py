"""Listings across hosts: ``genv envs``, ``devices`` and ``ps`` with
``--host`` or ``--all-hosts``.

Every host is asked at once (``genv.remote``) for its listing as JSON; each
answer is checked against the fields this genv reads, and the rows are
merged, host first (``merge``, pure), into one table, CSV or JSON document
(docs/formats.md, "Several hosts"). A host that fails gets one ``genv:
DEST: reason`` line on stderr and the exit status 1, and the others are
listed all the same. Without those options the commands never come here.
"""

from __future__ import annotations

from .. import remote
from .. import options as spec
from ..cli import out, output_format, print_json
from ..report import warn as err
from ..errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

    Doc = Dict[str, Any]
    Table = Callable[[List[Doc], float, Optional[List[str]]], str]
    Csv = Callable[[List[Doc], Optional[List[str]]], str]

FORMAT = 1
"""The version of the multi-host JSON document."""

# --- what this genv reads from a host's answer ------------------------------------
# A spec: a kind (below), a dict (an object with these fields, others
# allowed), a list of one spec (an array of such), or ``Maybe(spec)``.


class Maybe:
    __slots__ = ("spec",)

    def __init__(self, spec: Any) -> None:
        self.spec = spec


INT, NUMBER, TEXT, BOOL = "an integer", "a number", "a string", "true or false"

WAITING = {"since": NUMBER, "pid": INT, "count": INT, "memory": Maybe(INT), "indices": Maybe([INT])}
ENV = {"id": TEXT, "uid": INT, "user": TEXT, "name": Maybe(TEXT), "gpus": Maybe(INT), "gpu_memory": Maybe(INT),
       "created": NUMBER, "pids": [INT], "devices": [INT], "waiting": Maybe(WAITING)}
PROCESS = {"gpu": Maybe(INT), "pid": INT, "uid": Maybe(INT), "user": Maybe(TEXT), "env_id": Maybe(TEXT),
           "env_name": Maybe(TEXT), "memory": Maybe(INT), "command": Maybe(TEXT), "managed": Maybe(BOOL),
           "misplaced": BOOL}
HOLDER = {"id": TEXT, "name": Maybe(TEXT), "uid": INT, "user": TEXT, "memory": Maybe(INT), "attached": NUMBER}
DEVICE = {"index": INT, "uuid": Maybe(TEXT), "name": Maybe(TEXT), "memory_total": Maybe(INT),
          "memory_used": Maybe(INT), "memory_available": Maybe(INT), "environments": [HOLDER],
          "processes": [PROCESS]}
ROWS = {"envs": ENV, "devices": DEVICE, "ps": PROCESS}


def _kind_ok(value: Any, kind: str) -> bool:
    if kind == BOOL:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == INT:
        return isinstance(value, int) and abs(value) < 1 << 63
    if kind == NUMBER:
        return isinstance(value, (int, float)) and abs(value) < 1e15
    return isinstance(value, str)


def problem(value: Any, spec: Any, where: str) -> Optional[str]:
    """What in ``value`` does not match ``spec`` (None: it matches)."""
    if isinstance(spec, Maybe):
        return None if value is None else problem(value, spec.spec, where)
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return "%s is not an object" % where
        for field, inner in spec.items():
            if field not in value:
                return "%s has no field %r" % (where, field)
            found = problem(value[field], inner, "%s.%s" % (where, field))
            if found:
                return found
        return None
    if isinstance(spec, list):
        if not isinstance(value, list):
            return "%s is not an array" % where
        for number, item in enumerate(value):
            found = problem(item, spec[0], "%s[%d]" % (where, number))
            if found:
                return found
        return None
    return None if _kind_ok(value, spec) else "%s is not %s" % (where, spec)


def check(listing: str, value: Any) -> Optional[str]:
    """Why a host's answer is not a listing this genv can read (None: it is)."""
    if isinstance(value, dict) and "format" in value:
        return ("genv there answers in format %r, which this genv cannot read: update genv here"
                % (value["format"],))
    if not isinstance(value, list):
        return "the answer is not a genv %s listing (a JSON array)" % listing
    found = problem(value, [ROWS[listing]], "row")
    if found:
        return "the answer is not a genv %s listing this genv can read (%s): is genv there of another version?" % (
            listing, found)
    return None


# --- merging and printing ------------------------------------------------------------


def merge(answers: Sequence[remote.Answer]) -> List[Tuple[str, Doc]]:
    """The rows of every host that answered, in the order of the hosts and
    then of each host's listing: (host, row)."""
    return [(answer.host.dest, row) for answer in answers if answer.error is None for row in answer.value]


def document(listing: str, answers: Sequence[remote.Answer]) -> Doc:
    """The JSON of a listing across hosts (docs/formats.md): a format
    version, and per host, in order, its rows (each with ``host`` first) or
    its error."""
    hosts = []
    for answer in answers:
        dest = answer.host.dest
        rows = None if answer.error is not None else [
            {"host": dest, **{key: item for key, item in row.items() if key != "host"}} for row in answer.value]
        hosts.append({"host": dest, "rows": rows, "error": answer.error})
    return {"format": FORMAT, "listing": listing, "hosts": hosts}


def ask(name: str, hosts: Sequence[remote.Host], messages: bool = True
        ) -> Tuple[remote.Transport, List[remote.Answer]]:
    """Ask every host at once for its listing ``name`` (JSON): the transport
    and the answers, each checked. On stderr, one line each: the transport's
    warning, what a host's genv said (with ``messages``), why a host failed."""
    transport = remote.Transport()
    warning = transport.warning()
    if warning:
        err(warning)
    answers = remote.ask(transport, hosts, [name, "--format", "json"])
    for answer in answers:
        if answer.error is None:
            answer.error = check(name, answer.value)
        for message in answer.messages if messages else ():
            err("%s: %s" % (answer.host.dest, message))
        if answer.error is not None:
            err("%s: %s" % (answer.host.dest, answer.error))
    return transport, answers


def listing(name: str, argv: List[str], options: Dict[str, bool], table: Table, csv: Csv) -> int:
    """``genv NAME`` across the hosts that ``argv`` names."""
    import time

    hosts, rest = remote.split_options(argv)
    if hosts is None:  # (only called when argv names hosts)
        raise UsageError("no host given")
    opts, _ = spec.parse(rest, options, 0)
    form = output_format(opts)
    _, answers = ask(name, hosts)
    now = time.time()
    rows = merge(answers)
    if form == "json":
        print_json(document(name, answers))
    elif form == "csv":
        out(csv([row for _, row in rows], [host for host, _ in rows]))
    elif rows or any(answer.error is None for answer in answers):
        out(table([row for _, row in rows], now, [host for host, _ in rows]))
    return 1 if any(answer.error is not None for answer in answers) else 0


def known_hosts() -> List[str]:
    """The hosts file's hosts, for completion (nothing on any error)."""
    try:
        path = remote.hosts_file()
        return [host.dest for host in remote.read_hosts(path)] if path else []
    except Exception:
        return []


def complete(words: List[str], options: spec.Spec, values: Dict[str, Callable[[], List[str]]]) -> List[str]:
    """Completion of a listing's options, the host options included."""
    return spec.complete(words, {**options, **remote.HOST_OPTIONS},
                            {**values, "--host": known_hosts, "-H": known_hosts})
