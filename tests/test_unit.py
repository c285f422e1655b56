"""Unit tests for the pure logic (no shells)."""

import os
import time
import subprocess

import pytest

from genv import environments as envs, jsonio, shell, table, text
from genv.allocate import Refused, Request, allocate
from genv.core import activation
from genv.errors import GenvError, UsageError
from genv.gpus import parse_count, parse_query
from genv.options import OptionalValue, parse
from genv.procs import ProcFS as Processes
from genv.schema import upgrade, validate


@pytest.mark.parametrize("value", [
    {"a": [1, 2.5, None, True, False, "x\udc80\n\u00e9\U0001f600"]}, [], "", 0, -3, 1e300, {"": {}},
])
def test_json_round_trip(value):
    assert jsonio.loads(jsonio.dumps(value)) == value
    assert jsonio.dumps(value).isascii()


@pytest.mark.parametrize("text", ["", "{", "[1,]", '{"a":1} x', "NaN", "\x00", '"abc', "[" * 100000, "'x'"])
def test_json_rejects(text):
    with pytest.raises(jsonio.JSONError):
        jsonio.loads(text)


def test_json_refuses_nan_and_objects():
    with pytest.raises((TypeError, ValueError)):
        jsonio.dumps(float("nan"))
    with pytest.raises(TypeError):
        jsonio.dumps({"a": object()})


def test_parse_options():
    options = {"--id": True, "--no-load": False}
    assert parse(["--id", "x", "--no-load", "a"], options, 1) == ({"--id": "x", "--no-load": True}, ["a"])
    assert parse(["--id=--y", "--", "--no-load"], options, 1) == ({"--id": "--y"}, ["--no-load"])
    assert parse(["-1"], options, 1) == ({}, ["-1"])
    for bad in (["--nope"], ["--id"], ["--no-load=1"], ["--id", "a", "--id", "b"], ["a", "b"]):
        with pytest.raises(UsageError):
            parse(bad, options, 1)


def test_optional_values_and_aliases():
    spec = {"--wait": OptionalValue(), "--over-subscribe": False, "-o": "--over-subscribe"}
    assert parse(["--wait"], spec, 0) == ({"--wait": None}, [])
    assert parse(["--wait", "30"], spec, 0) == ({"--wait": "30"}, [])
    assert parse(["--wait", "forever"], spec, 0) == ({"--wait": "forever"}, [])
    assert parse(["--wait=forever", "-o"], spec, 0) == ({"--wait": "forever", "--over-subscribe": True}, [])
    assert parse(["--wait", "-o"], spec, 0) == ({"--wait": None, "--over-subscribe": True}, [])
    assert parse(["--wait", "x"], spec, 1) == ({"--wait": "x"}, [])
    assert parse(["--wait", "-5"], spec, 1) == ({"--wait": "-5"}, [])
    assert parse(["--wait", "--", "x"], spec, 1) == ({"--wait": None}, ["x"])
    with pytest.raises(UsageError, match="given twice"):
        parse(["-o", "--over-subscribe"], spec, 0)


@pytest.mark.parametrize("text,value", [("0", 0), ("2", 2), ("007", 7), ("1024", 1024)])
def test_counts(text, value):
    assert parse_count(text, "n") == value


@pytest.mark.parametrize("text", ["", "-1", "1.5", "abc", "1025", " 1", "²", "٣", "1_0"])
def test_bad_counts(text):
    with pytest.raises(GenvError):
        parse_count(text, "n")


def test_parse_query_handles_not_available():
    out = "1, GPU-b, [N/A], [N/A]\n0, GPU-a, NVIDIA A100, 40960\n2, GPU-c, Odd, Name, 7\n\n"
    assert parse_query(out) == [
        {"index": 0, "uuid": "GPU-a", "name": "NVIDIA A100", "total": 40960 << 20},
        {"index": 1, "uuid": "GPU-b", "name": None, "total": None},
        {"index": 2, "uuid": "GPU-c", "name": "Odd, Name", "total": 7 << 20},
    ]
    for garbage in ("garbage", "0, GPU-a", "x, GPU-a, n, 1", "0, a, b, 1\n0, a, b, 1", "99999, a, b, 1"):
        with pytest.raises(GenvError):
            parse_query(garbage)


def users_with(*reservations):
    """users dict: one env per reservation list, for uid 0."""
    state = {"format": 2, "uid": 0, "devices": None, "envs": []}
    for number, devices in enumerate(reservations):
        state["envs"].append(envs.new_env("e%d" % number, 0.0, {}, 100 + number, "t"))
        state["envs"][-1]["devices"] = [{"index": i, "uuid": u, "attached": 1.0} for i, u in devices]
    return {0: state}


MACHINE = [{"index": i, "uuid": "GPU-%d" % i, "name": None, "total": 80 << 30} for i in range(4)]


def attach(users, env, count, now, machine=MACHINE, **kwargs):
    return allocate(users, env, machine, Request(count, **kwargs), now, str)


def test_allocate_keeps_current_and_fills_lowest():
    users = users_with([(1, "GPU-1")], [(3, "GPU-3")])
    mine = users[0]["envs"][0]
    before = [dict(d) for d in mine["devices"]]
    chosen = attach(users, mine, 2, 5.0)
    assert mine["devices"] == before  # a decision changes nothing
    assert [(d["index"], d["attached"]) for d in chosen] == [(0, 5.0), (1, 1.0)]
    mine["devices"] = chosen
    # Shrinking keeps the GPUs it already has, lowest first.
    assert [(d["index"], d["attached"]) for d in attach(users, mine, 1, 6.0)] == [(0, 5.0)]


def test_allocate_all_or_nothing():
    users = users_with([(0, "GPU-0")], [(3, "GPU-3")])
    mine = users[0]["envs"][0]
    with pytest.raises(Refused, match="only 3 of this machine's 4 are free"):
        attach(users, mine, 4, 5.0)
    with pytest.raises(Refused, match="this machine has 4"):
        attach(users, mine, 5, 5.0)


def test_mock_reservations_match_by_index():
    users = users_with([(2, None)], [])
    mine = users[0]["envs"][1]
    machine = [dict(d, uuid=None) for d in MACHINE]
    assert [d["index"] for d in attach(users, mine, 3, 1.0, machine)] == [0, 1, 3]


def test_reconcile_moves_and_drops():
    users = users_with([(0, "GPU-0"), (2, "GPU-2")])
    record = {"key": "k", "checked": 1.0, "list": [{"index": 0, "uuid": "GPU-2", "name": None}]}
    envs.reconcile(users[0], record)
    env = users[0]["envs"][0]
    assert [(d["index"], d["uuid"]) for d in env["devices"]] == [(0, "GPU-2")]
    assert len(env["warnings"]) == 2


def test_prune_uses_tokens():
    class Fake:
        def alive(self, pid, token):
            return token == "good"

    users = users_with([], [])
    users[0]["envs"][0]["terminals"] = [{"pid": 1, "token": "good"}, {"pid": 2, "token": "bad"}]
    users[0]["envs"][1]["terminals"] = [{"pid": 3, "token": "bad"}]
    assert envs.prune(users, Fake()) == {0}
    assert [(e["id"], [t["pid"] for t in e["terminals"]]) for e in users[0]["envs"]] == [("e0", [1])]


def test_token_matches_psutil():
    psutil = pytest.importorskip("psutil")
    processes = Processes()
    token = processes.token(os.getpid())
    assert token and token.startswith("linux:")
    ticks = int(token.rsplit(":", 1)[1])
    created = psutil.boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    assert abs(created - psutil.Process().create_time()) < 0.05
    assert processes.token(2 ** 22 + 12345) is None
    assert Processes().alive(os.getpid(), token)


def test_validate_rejects_bad_shapes():
    good = {"format": 2, "uid": 0, "devices": None, "envs": [envs.new_env("a", 1.0, {"gpus": 1}, 5, "t")]}
    assert validate(good, 0) is good
    for broken in ({"envs": []}, {**good, "uid": 1}, {**good, "envs": [{"id": "a"}]},
                   {**good, "envs": [good["envs"][0], good["envs"][0]]}):
        with pytest.raises(ValueError):
            validate(broken, 0)
    with pytest.raises(GenvError, match="newer genv"):
        upgrade({"format": 5}, 0, "f")


def test_only_roots_file_holds_what_root_saw():
    """Root's record (genv.sightings) is valid in user-0.json only: a user
    who writes one into their own file has a damaged file."""
    record = {"uid": 1000, "env": "e", "claims": [{"gpu": "GPU-1", "whole": True, "first": 5.0},
                                                 {"gpu": 3, "whole": False, "first": 6.0}],
              "since": 4.0, "active": None, "busy": False, "until": {"value": None, "first": 5.0}}
    seen = {"boot": "0123abcd", "envs": [record]}
    assert validate({"format": 4, "uid": 0, "devices": None, "envs": [], "seen": seen}, 0)
    with pytest.raises(ValueError, match="seen"):
        validate({"format": 4, "uid": 1000, "devices": None, "envs": [], "seen": seen}, 1000)
    for bad in ({**record, "since": -1.0}, {**record, "claims": [{"gpu": None, "whole": True, "first": 1.0}]},
                {**record, "busy": 1}, {**record, "until": {"value": "x", "first": 1.0}}, {**record, "uid": -1}):
        with pytest.raises(ValueError, match="seen"):
            validate({"format": 4, "uid": 0, "devices": None, "envs": [], "seen": {"boot": "b", "envs": [bad]}}, 0)


@pytest.mark.parametrize("value", ["", "plain", "it's", "'", "''", "a\\", "$(x)", "`x`", "\n", "!x", "\udcff"])
def test_quote_round_trips_through_bash_and_zsh(value):
    for shell_name in ("bash", "zsh"):
        code = "x=%s; printf '%%s' \"$x\"" % shell.quote(value)
        out = subprocess.run([shell_name, "-c", code], capture_output=True,
                             input=None).stdout
        assert out == value.encode("utf-8", "surrogateescape")


def test_snapshot_keeps_unset_and_empty_apart(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    monkeypatch.setenv("GENV_ATTACHED_GPUS", "x'\udc80")
    saved = activation.read_snapshot(activation.snapshot(os.environ))
    for name in ("GENV_GPU_MEMORY", "XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                 "TF_FORCE_GPU_ALLOW_GROWTH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TF_FORCE_GPU_ALLOW_GROWTH", "")
    saved = activation.read_snapshot(activation.snapshot(os.environ))
    assert saved == {"CUDA_VISIBLE_DEVICES": "", "CUDA_DEVICE_ORDER": None, "GENV_ATTACHED_GPUS": "x'\udc80",
                     "GENV_GPU_MEMORY": None, "XLA_CLIENT_MEM_FRACTION": None, "XLA_PYTHON_CLIENT_MEM_FRACTION": None,
                     "TF_FORCE_GPU_ALLOW_GROWTH": ""}
    assert activation.read_snapshot("!!not base64") is None
    assert activation.read_snapshot(None) is None


def test_script_rejects_bad_variable_names_and_helpers():
    script = shell.Script()
    with pytest.raises(ValueError):
        script.export("A; rm -rf /", "x")
    with pytest.raises(ValueError):
        script.call("rm -rf /")
    script.call("_genv_path_add", "/a b/'c'")
    assert script.render() == "_genv_path_add '/a b/'\\''c'\\'''\n"


def test_script_encodes_or_raises():
    script = shell.Script()
    script.export("X", "\udcff ok")
    assert script.encode() == b"X='\xff ok'\nexport X\n"
    script.export("Y", "\ud800")
    with pytest.raises(UnicodeEncodeError):
        script.encode()


def test_printable_and_ago():
    assert text.printable("a\nb\x1b[31m\\") == "a\\nb\\x1b[31m\\\\"
    assert text.printable("\udcff") == "\\xff"
    assert table.ago(0) == "just now"
    assert table.ago(61) == "1 minute ago"
    assert table.ago(7 * 3600 + 5) == "7 hours ago"
    assert table.ago(float("inf")) == "long ago" and table.ago(float("nan")) == "long ago"
    assert table.ago(-5) == "just now"
    assert table.render(("A", "B"), [("x", "y")]) == "A  B\nx  y\n"


def test_psutil_backend_agrees_with_proc():
    """GENV_PROCESS_BACKEND=psutil (and systems without /proc) get the very
    same tokens, parents, owners, environments and command lines."""
    pytest.importorskip("psutil")
    from genv.procs import ProcFS, Psutil
    before = ProcFS().clock()
    child = subprocess.Popen(["sleep", "600"], env={"GENV_ENVIRONMENT_ID": "e 1", "PATH": "/usr/bin:/bin"})
    try:
        proc, ps = ProcFS(), Psutil()
        for pid in (os.getpid(), child.pid, 1):
            assert proc.token(pid) == ps.token(pid) is not None
            assert proc.started(pid) == ps.started(pid) is not None
            assert proc.parent(pid) == ps.parent(pid)
            assert proc.uid(pid) == ps.uid(pid)
            assert proc.command(pid) == ps.command(pid)
        assert proc.environ(child.pid, "GENV_ENVIRONMENT_ID") == ps.environ(child.pid, "GENV_ENVIRONMENT_ID") == "e 1"
        assert proc.environ(child.pid, "NOPE") is ps.environ(child.pid, "NOPE") is None
        assert proc.parent(child.pid) == os.getpid()
        assert proc.command(child.pid) == "sleep 600"
        assert before - 0.02 <= proc.started(child.pid) <= proc.clock()  # to the tick, rounded down
        gone = 2 ** 22 + 12345
        assert proc.token(gone) is ps.token(gone) is None
        assert proc.started(gone) is ps.started(gone) is None
        assert proc.uid(gone) is ps.uid(gone) is None
    finally:
        child.kill()
        child.wait()
    assert ProcFS().token(child.pid) is Psutil().token(child.pid) is None


def test_backend_switch(monkeypatch):
    from genv.procs import ProcFS, Psutil, processes
    monkeypatch.delenv("GENV_PROCESS_BACKEND", raising=False)
    assert type(processes()) is ProcFS
    pytest.importorskip("psutil")
    monkeypatch.setenv("GENV_PROCESS_BACKEND", "psutil")
    assert type(processes()) is Psutil


def test_process_facts_do_not_leak_descriptors():
    """A waiter or the monitor asks afresh four times a second: each look
    must let go of its /proc descriptor (it leaked one per look)."""
    from genv.procs import processes
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        facts = processes()
        facts.token(os.getpid())
    del facts
    assert len(os.listdir("/proc/self/fd")) <= before + 1
    facts = processes()
    facts.close()
    facts.close()
    assert facts.token(os.getpid()) is None  # closed: it knows nothing more


class _Facts:
    """Process facts for the line: start times, a clock, the kernel's name
    and state of each process, set by hand (every process waits in genv and
    runs unless ``names``/``states`` say otherwise)."""

    names = True

    def __init__(self, started, now=1000.0, named=None, states=None):
        self._started, self.now = started, now
        self._named, self._states = named or {}, states or {}

    def started(self, pid):
        return self._started.get(pid)

    def clock(self):
        return self.now

    def name(self, pid):
        return self._named.get(pid, envs.WAITING_NAME)

    def state(self, pid):
        return self._states.get(pid, "S")


def _waiter(eid, pid, arrived, since):
    return {"id": eid, "waiting": {"pid": pid, "token": "t", "since": since, "arrived": arrived, "count": 1,
                                   "memory": None, "indices": None, "over_subscribe": False}}


def test_the_line_is_ordered_by_arrival_on_the_process_clock_never_before_the_waiter_started():
    honest = _waiter("a", 10, arrived=500.0, since=1_700_000_500.0)
    later = _waiter("b", 20, arrived=503.0, since=1_700_000_503.0)
    users = {1000: {"envs": [later]}, 1001: {"envs": [honest]}}
    facts = _Facts({10: 499.9, 20: 502.9})
    assert [env["id"] for _, env in envs.line(users, facts)] == ["a", "b"]
    # The wall clock stepped (since is for people): the order stays.
    later["waiting"]["since"] = 1.0
    assert [env["id"] for _, env in envs.line(users, facts)] == ["a", "b"]
    # b edits its own file to say it arrived first: not before its process started.
    later["waiting"]["arrived"] = 0.0
    assert envs.arrival(later["waiting"], facts) == 502.9
    assert [env["id"] for _, env in envs.line(users, facts)] == ["a", "b"]
    # ... but a waiter whose process is older than the others' arrival (an SDK
    # notebook) keeps the arrival it wrote.
    facts = _Facts({10: 499.9, 20: 100.0})
    later["waiting"]["arrived"] = 503.0
    assert [env["id"] for _, env in envs.line(users, facts)] == ["a", "b"]
    # A record without "arrived" (written before it existed): since, converted.
    del honest["waiting"]["arrived"]
    honest["waiting"]["since"] = time.time() - 700.0
    facts = _Facts({10: 200.0, 20: 502.9}, now=1000.0)
    assert abs(envs.arrival(honest["waiting"], facts) - 300.0) < 1.0
    assert [env["id"] for _, env in envs.line(users, facts)] == ["a", "b"]
    assert envs.ahead_of(users, later, facts) == [(1001, honest)]


def test_a_time_in_the_future_puts_a_place_last_and_ties_go_by_kernel_facts():
    """Issue 16, item 4: a forged far-future ``arrived`` is read as now (it
    was stored as is, and the next joiner stored it plus 1e-6, which the
    float absorbs: everyone behind tied and was served by uid)."""
    forged = _waiter("f", 30, arrived=9e10, since=1_700_000_000.0)
    honest = _waiter("h", 20, arrived=900.0, since=1_700_000_900.0)
    rooted = _waiter("r", 10, arrived=950.0, since=1_700_000_950.0)
    users = {0: {"envs": [rooted]}, 1000: {"envs": [forged]}, 1001: {"envs": [honest]}}
    facts = _Facts({10: 940.0, 20: 800.0, 30: 100.0}, now=1000.0)
    assert envs.arrival(forged["waiting"], facts) == 1000.0
    assert [env["id"] for _, env in envs.line(users, facts)] == ["h", "r", "f"]
    # Two arrivals alike: the waiter that started first, then the lower PID;
    # never the owner's uid (root's 0 wins nothing) or an id a user chose.
    honest["waiting"]["arrived"] = rooted["waiting"]["arrived"] = 950.0
    facts = _Facts({10: 940.0, 20: 930.0, 30: 100.0}, now=1000.0)
    assert [env["id"] for _, env in envs.line(users, facts)] == ["h", "r", "f"]
    facts = _Facts({10: 930.0, 20: 930.0, 30: 100.0}, now=1000.0)
    assert [env["id"] for _, env in envs.line(users, facts)] == ["r", "h", "f"]


def test_a_place_counts_only_while_its_process_waits_in_genv():
    """Issue 16, item 3: the kernel's name of the process, its state, one
    place per process, and the judge (caps, the machine)."""
    first, second, third = _waiter("a", 10, 500.0, 1.0), _waiter("b", 20, 501.0, 1.0), _waiter("c", 30, 502.0, 1.0)
    users = {1000: {"envs": [first, second, third]}}
    facts = _Facts({10: 400.0, 20: 400.0, 30: 400.0}, named={20: "bash"}, states={30: "T"})
    found = {env["id"]: why for _, env, why in envs.places(users, facts)}
    assert found == {"a": envs.WAITING, "b": "its process (pid 20) is not waiting in genv", "c": envs.STOPPED}
    assert [env["id"] for _, env in envs.line(users, facts)] == ["a"]
    # Stopped by a tracer counts as stopped too; running again, it counts again, in its place.
    assert envs.places(users, _Facts({}, states={30: "t"}))[2][2] == envs.STOPPED
    assert [env["id"] for _, env in envs.line(users, _Facts({}))] == ["a", "b", "c"]
    # Two places naming one process: neither counts (genv writes one per waiter).
    third["waiting"]["pid"] = 10
    found = {env["id"]: why for _, env, why in envs.places(users, _Facts({}))}
    assert found["a"] == found["c"] == "its process (pid 10) is named by another place in line too"
    assert [env["id"] for _, env in envs.line(users, _Facts({}))] == ["b"]
    # The judge's word: a place for what joining would have refused counts for nothing.
    third["waiting"]["pid"] = 30
    judge = lambda uid, env: "too much" if env["id"] == "b" else None  # noqa: E731
    assert [env["id"] for _, env in envs.line(users, _Facts({}), judge)] == ["a", "c"]
    assert envs.ahead_of(users, third, _Facts({}), judge) == [(1000, first)]


def _share_holder(index, memory, eid="s"):
    env = envs.new_env(eid, 0.0, {}, 500, "t")
    env["devices"] = [{"index": index, "uuid": "GPU-%d" % index, "attached": 1.0, "memory": memory}]
    return env


def test_a_waiter_ahead_keeps_the_gpus_it_waits_for_as_they_drain():
    """Issue 16, item 6: one GPU, a share held, a whole GPU waited for:
    a later share no longer takes the GPU (it did, at once, every time)."""
    from genv.allocate import Waiter

    gib = 1 << 30
    machine = [{"index": 0, "uuid": "GPU-0", "name": None, "total": 16 * gib}]
    holder = _share_holder(0, 4 * gib)
    waiter = envs.new_env("w", 0.0, {}, 501, "t")
    later = envs.new_env("l", 0.0, {}, 502, "t")
    users = {0: {"envs": [holder, waiter, later]}}
    ahead = [Waiter(0, waiter, Request(1))]
    with pytest.raises(Refused, match="1 GPU is kept for 1 request waiting ahead in line"):
        allocate(users, later, machine, Request(1, 4 * gib), 5.0, str, {}, ahead)
    with pytest.raises(Refused, match="GPU 0: it is kept for a request waiting ahead in line"):
        allocate(users, later, machine, Request(1, 4 * gib, indices=[0]), 5.0, str, {}, ahead)
    # The holder keeps what it holds there (a re-attach), and may shrink, not grow.
    assert [d["memory"] for d in allocate(users, holder, machine, Request(1, 4 * gib), 5.0, str, {}, ahead)] \
        == [4 * gib]
    assert [d["memory"] for d in allocate(users, holder, machine, Request(1, 2 * gib), 5.0, str, {}, ahead)] \
        == [2 * gib]
    with pytest.raises(Refused):
        allocate(users, holder, machine, Request(1, 8 * gib), 5.0, str, {}, ahead)
    # Without the waiter the share fits; once the holder leaves, the waiter takes it.
    assert allocate(users, later, machine, Request(1, 4 * gib), 5.0, str, {}, [])
    holder["devices"] = []
    assert [d["index"] for d in allocate(users, waiter, machine, Request(1), 5.0, str, {}, [])] == [0]


def test_which_gpus_a_waiter_keeps_as_they_drain():
    """The rule (docs/sharing.md): those it could take now, then the GPUs
    where the least memory must drain before it fits, GPUs busy outside
    genv last, then the lowest index; each kept for one request only; the
    others stay open to later requests."""
    from genv.allocate import Waiter

    gib = 1 << 30
    machine = [{"index": i, "uuid": "GPU-%d" % i, "name": None, "total": 16 * gib} for i in range(4)]
    holders = [_share_holder(0, 12 * gib, "h0"), _share_holder(1, 2 * gib, "h1"), _share_holder(2, 2 * gib, "h2"),
               _share_holder(3, 8 * gib, "h3")]
    first, second, later = (envs.new_env(name, 0.0, {}, 600 + n, "t") for n, name in enumerate("fsl"))
    users = {0: {"envs": holders + [first, second, later]}}

    def free_for_later(ahead, request=Request(1, 2 * gib), busy=None):
        """The GPUs a later request could take, one at a time."""
        found = []
        for index in range(4):
            try:
                allocate(users, later, machine, Request(1, request.memory, indices=[index]), 5.0, str, busy or {},
                         ahead)
                found.append(index)
            except Refused:
                pass
        return found

    # A whole GPU: 2g must drain on GPU 1 and on GPU 2; the lower index is kept.
    assert free_for_later([Waiter(0, first, Request(1))]) == [0, 2, 3]
    # A share of 8g fits GPUs 1, 2 and 3 now: it keeps its 8g where it fits
    # best (GPU 3, left full); the room left elsewhere stays open.
    assert free_for_later([Waiter(0, first, Request(1, 8 * gib))]) == [0, 1, 2]
    # Two whole GPUs: GPU 1 and 2 (2g each to drain), not 3 (8g) or 0 (12g).
    assert free_for_later([Waiter(0, first, Request(2))]) == [0, 3]
    # A second waiter keeps other GPUs than the first: GPU 3 next (8g to drain).
    assert free_for_later([Waiter(0, first, Request(2)), Waiter(0, second, Request(1))]) == [0]
    # A GPU busy outside genv comes last, whatever must drain there.
    assert free_for_later([Waiter(0, first, Request(1))], busy={1: ["pid 9"]}) == [0, 3]
    # Asking for given GPUs keeps those.
    assert free_for_later([Waiter(0, first, Request(1, indices=[3]))]) == [0, 1, 2]
    # A share larger than a GPU is never kept on it (it could never fit there):
    # it keeps the GPU held whole, which will fit it once given back.
    small = [{"index": 0, "uuid": "GPU-0", "name": None, "total": 4 * gib}, machine[1]]
    whole = envs.new_env("whole", 0.0, {}, 700, "t")
    whole["devices"] = [{"index": 1, "uuid": "GPU-1", "attached": 1.0}]
    users = {0: {"envs": [whole, first, later]}}
    ahead = [Waiter(0, first, Request(1, 10 * gib))]
    assert allocate(users, later, small, Request(1, 1 * gib, indices=[0]), 5.0, str, {}, ahead)
    with pytest.raises(Refused, match="2 GPUs are kept for 2 requests"):
        allocate(users, later, small, Request(1, 1 * gib), 5.0, str, {}, ahead + [Waiter(0, second, Request(1))])


# --- root's record (genv.sightings) is bounded --------------------------------------

RECORD_MACHINE = [{"index": n, "uuid": "GPU-%d" % n} for n in range(8)]


def _env(eid, devices, until=None):
    return {"id": eid, "devices": [dict(device, attached=1.0) for device in devices], "until": until}


def _forged(count):
    """``count`` environments of 8 claims each, as a user can write them:
    the same GPU under several indices, and GPUs the machine has not."""
    devices = [{"index": 0, "uuid": "GPU-0"}, {"index": 1, "uuid": "GPU-0"}, {"index": 2, "uuid": "GPU-0"},
               {"index": 3, "uuid": "GPU-1"}, {"index": 9, "uuid": "GPU-nope"}, {"index": 10, "uuid": None},
               {"index": 11, "uuid": "GPU-1"}, {"index": 12, "uuid": "GPU-2"}]
    return [_env("f%d" % n, devices) for n in range(count)]


def _size(record, uid):
    return sum(len(jsonio.dumps(env)) + 1 for env in record["envs"] if env["uid"] == uid)


@pytest.mark.parametrize("machine", [RECORD_MACHINE, None], ids=["gpus-known", "gpus-unknown"])
def test_roots_record_keeps_a_bounded_share_of_each_user(machine):
    """One user's file (their own to write, up to the reader's 64 MiB) made
    root's record, kept in root's own file, grow past what a reader accepts:
    root's file was moved aside as damaged (root's environments and the
    record lost). Each claim is now recorded once, only on the machine's
    GPUs when the command knows them, and each user's environments take at
    most MAX_RECORD bytes: those root recorded before keep their place."""
    from genv import sightings
    from genv.limits import MAX_RECORD

    real = _env("real", [{"index": 5, "uuid": "GPU-5"}])
    honest = _env("h", [{"index": 6, "uuid": "GPU-6"}])
    users = {1001: {"envs": [honest]}, 1002: {"envs": [real]}}
    first = sightings.update(None, users, "b", 100.0, 10.0, None, machine)
    assert sightings.over(users, machine) == []
    # Forged environments in front of the real one in the forger's file.
    users[1002]["envs"] = _forged(10000) + [real]
    record = sightings.update(first, users, "b", 200.0, 20.0, None, machine)
    assert sightings.over(users, machine) == [1002]
    assert _size(record, 1002) <= MAX_RECORD
    assert len(jsonio.dumps(record)) < 2 * MAX_RECORD
    mine = {env["env"]: env for env in record["envs"] if env["uid"] == 1002}
    assert mine["real"] == [env for env in first["envs"] if env["env"] == "real"][0]  # kept, first seen at 10
    assert [env["env"] for env in record["envs"] if env["uid"] == 1001] == ["h"]
    assert 500 < len(mine) < 10000
    for env in mine.values():
        keys = [(claim["gpu"], claim["whole"]) for claim in env["claims"]]
        assert len(keys) == len(set(keys))
        if env["env"] != "real":
            assert keys == ([("GPU-0", True), ("GPU-1", True), ("GPU-2", True)] if machine else
                            [("GPU-0", True), ("GPU-1", True), ("GPU-nope", True), (10, True), ("GPU-2", True)])
    # A look that changes nothing keeps the same record; the environments
    # kept do not change with the order of the file.
    assert sightings.update(record, users, "b", 300.0, 30.0, None, machine) == record
    users[1002]["envs"].reverse()
    again = sightings.update(record, users, "b", 300.0, 30.0, None, machine)
    assert sorted(env["env"] for env in again["envs"]) == sorted(env["env"] for env in record["envs"])


def test_the_bound_of_roots_record_holds_for_the_longest_names():
    """Names in a user's file take up to 12 bytes a character in root's
    file (ASCII-only JSON): the budget counts them so."""
    from genv import sightings
    from genv.limits import MAX_GPUS, MAX_RECORD, MAX_TEXT

    astral = "\U0001f600" * MAX_TEXT
    envs = [_env("%s%d" % (astral[:-6], n), [{"index": i, "uuid": "%s%d" % (astral[:-6], i)} for i in range(8)],
                 until=1e10 + 0.123456789)
            for n in range(200)]
    envs += [_env("x" * MAX_TEXT + str(n), [{"index": i, "uuid": None} for i in range(MAX_GPUS - 8, MAX_GPUS)])
             for n in range(2000)]
    users = {(1 << 31) - 2: {"envs": envs}}
    record = sightings.update(None, users, "b", 1e10 + 0.123456789, 1e9 + 0.123456789, None)
    assert sightings.over(users) == [(1 << 31) - 2]
    assert 0 < len(record["envs"]) < len(envs)
    assert _size(record, (1 << 31) - 2) <= MAX_RECORD
    for env in record["envs"]:
        estimate = sightings.ENV_BYTES + sightings._text_bytes(env["env"]) + sum(
            sightings.CLAIM_BYTES + (sightings._text_bytes(c["gpu"]) if type(c["gpu"]) is str else 0)
            for c in env["claims"])
        worst = dict(env, active=1e9 + 0.123456789, since=1e9 + 0.123456789,
                     until={"value": 1e9 + 0.123456789, "first": 1e9 + 0.123456789},
                     claims=[dict(c, first=1e9 + 0.123456789) for c in env["claims"]])
        assert len(jsonio.dumps(worst)) + 1 <= estimate


def test_a_claim_of_a_user_the_record_leaves_out_is_not_ordered():
    """A user over the record's bound may have held a GPU before a claim root
    recorded: their claim root has no record of is not taken for a later
    one (nothing is stopped: an admin must decide); the recorded claim stays."""
    from genv.sightings import conflicts

    holders = [(1, {"id": "a"}, {"index": 0, "uuid": "GPU-0", "attached": 1.0}),
               (2, {"id": "b"}, {"index": 0, "uuid": "GPU-0", "attached": 1.0})]
    seen = {"boot": "b", "envs": [{"uid": 1, "env": "a", "claims": [{"gpu": "GPU-0", "whole": True, "first": 5.0}],
                                   "since": 0.0, "active": None, "busy": False,
                                   "until": {"value": None, "first": 0.0}}]}
    kept, lost, undecided = conflicts(holders, seen, "b", unordered={2})
    assert ([h[1]["id"] for h in kept], lost, [h[1]["id"] for h in undecided]) == (["a"], [], ["b"])
    kept, lost, undecided = conflicts(holders, seen, "b")  # a claim made since root's last look
    assert ([h[1]["id"] for h in kept], [h[1]["id"] for h in lost], undecided) == (["a"], ["b"], [])


@pytest.mark.timing
def test_judging_many_environments_looks_each_up_once():
    """Root's enforce and listings looked each environment up by scanning
    root's whole record: a user with tens of thousands of environments in
    their own file (bounded record or not) made root's enforce take seconds
    to minutes. The record is indexed once per command."""
    from genv import enforce, sightings
    from genv.listing import Times
    from genv.policy import Policy, check

    users = {1002: {"envs": _forged(30000)}}
    record = sightings.update(None, users, "b", 100.0, 10.0, None)
    assert len(record["envs"]) > 500
    data, problems = check({"default": {"max_idle": "1h"}})
    assert problems == []
    policy = Policy(data)
    started = time.monotonic()
    found = enforce._idle([], users, policy, lambda uid: "u%d" % uid, record, "b", 10.0 + 7200)
    times = Times(7300.0, 10.0 + 7200, record, "b")
    idle = [times.idle(1002, env) for env in users[1002]["envs"]]
    took = time.monotonic() - started
    assert len(found) == len(record["envs"]) and sum(value is not None for value in idle) == 30000
    assert took < 0.8, took  # 0.1 s here; 1.8 s before (a scan per environment)


def test_a_gpu_held_whole_counts_all_its_memory_whatever_the_file_says():
    """``max_gpu_memory`` counts all of a GPU held whole. A "total" written
    by hand on such a reservation (genv writes one only on shares) made an
    80 GiB GPU count as 1 MiB, so its holder went past the cap unseen by
    enforce and by the line's judge."""
    from genv.policy import held

    machine = [{"index": 0, "uuid": "GPU-0", "total": 80 << 30}, {"index": 1, "uuid": "GPU-1", "total": 80 << 30}]
    users = {1002: {"envs": [{"devices": [{"index": 0, "uuid": "GPU-0", "attached": 1.0, "total": 1 << 20},
                                          {"index": 1, "uuid": "GPU-1", "attached": 1.0, "memory": 4 << 30,
                                           "total": 80 << 30}]}]}}
    assert held(users, 1002, machine) == {"max_gpus": 2, "max_environments": 1, "max_gpu_memory": (84 << 30)}
