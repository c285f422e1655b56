"""genv's own Python on the interpreter that runs genv (issue C3).

genv runs on whichever interpreter GENV_PYTHON names, from 3.8 on, and
``genv/jsonio.py`` drives ``_json``, a private interface that may change
between versions. These tests run that code on the interpreter the other
tests give genv: GENV_TEST_PYTHON when set (``.ci/run`` sets it to every
Python 3.8 to 3.13 it finds), else ``conftest.system_python()``. The test
runner's own Python is not the one under test, so each check is a small
script run in a subprocess, started as genv starts it (``-I -S``).
"""

import subprocess
import textwrap

import pytest

from conftest import REPO, system_python

PRELUDE = """\
import json, os, sys
sys.path.insert(0, %r)
from genv import jsonio, schema
""" % REPO


def run_python(body: str) -> str:
    """Run PRELUDE + body on genv's interpreter; return its stdout."""
    done = subprocess.run(
        [system_python(), "-I", "-S", "-B", "-c", PRELUDE + textwrap.dedent(body)],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    assert done.returncode == 0, "%s failed:\n%s%s" % (system_python(), done.stdout, done.stderr)
    return done.stdout


def test_supported_version_with_the_accelerator():
    out = run_python("""
        assert sys.version_info >= (3, 8), sys.version
        assert jsonio._json is not None, "no _json: jsonio would fall back to json"
        print("%d.%d" % sys.version_info[:2])
    """)
    assert out.strip() in ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13"), out


def test_every_module_compiles_and_imports():
    run_python("""
        import importlib
        root = sys.path[0]
        names = []
        for package in ("genv", "genv/commands", "genv/core"):
            for entry in sorted(os.listdir(os.path.join(root, package))):
                if entry.endswith(".py"):
                    module = package.replace("/", ".") + ("" if entry == "__init__.py" else "." + entry[:-3])
                    names.append(module)
        assert "genv.jsonio" in names and "genv.commands" in names, names
        for name in names:
            importlib.import_module(name)
        # The commands in libexec/ written in Python must at least compile.
        libexec = os.path.join(root, "libexec")
        for entry in sorted(os.listdir(libexec)):
            path = os.path.join(libexec, entry)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as handle:
                    source = handle.read()
                if source.startswith("#!") and "python" in source.splitlines()[0]:
                    compile(source, path, "exec")
    """)


def test_json_round_trips():
    run_python(r"""
        values = [
            {"a": [1, 2.5, None, True, False, "x\udc80\n\u00e9\U0001f600"]}, [], "", 0, -3, 1e300, -0.0,
            {"": {}}, 2 ** 70, -(2 ** 63), 1.5e-300, "\x00\x1f\x7f\"\\/", {"k\u00e9y": ["\ud800", "\udfff"]},
            {"b": 1, "a": 2}, [[[[[[[[[[[]]]]]]]]]]], {"format": 2, "uid": 1000, "envs": [{"id": "x" * 4096}]},
        ]
        for value in values:
            text = jsonio.dumps(value)
            assert isinstance(text, str) and text.isascii(), (value, text)
            assert text == json.dumps(value, separators=(",", ":"), allow_nan=False), (value, text)
            assert jsonio.loads(text) == value, (value, text)
            assert repr(jsonio.loads(text)) == repr(value), (value, text)  # -0.0, key order
            assert jsonio.loads(" \n\t" + json.dumps(value, indent=2) + "\r\n ") == value, value
        assert jsonio.loads('"\\ud83d\\ude00"') == "\U0001f600"
        assert type(jsonio.loads("1")) is int and type(jsonio.loads("1.0")) is float
    """)


def test_json_rejects():
    run_python(r"""
        for text in ["", " ", "{", "[1,]", '{"a":1} x', "NaN", "Infinity", "-Infinity", "\x00", '"abc',
                     "[" * 100000, "'x'", '{"a" 1}', '"\x01"', "01", "1.", "[1 2]", "{1: 2}", "tru"]:
            try:
                jsonio.loads(text)
            except jsonio.JSONError as error:
                assert isinstance(error, ValueError)
            else:
                raise AssertionError("accepted %r" % text[:50])
        for value, kind in [(float("nan"), ValueError), (float("inf"), ValueError), ({"a": object()}, TypeError),
                            (b"bytes", TypeError), ({"a": {1, 2}}, TypeError)]:
            try:
                jsonio.dumps(value)
            except kind:
                pass
            else:
                raise AssertionError("stored %r" % (value,))
    """)


def test_state_parse_and_validate():
    run_python(r"""
        uid = os.geteuid()
        me = os.getpid()
        token = "linux:boot:123"
        good = {
            "format": 4, "uid": uid,
            "devices": {"key": "k", "checked": 1.5, "list": [
                {"index": 0, "uuid": "GPU-a", "name": "A100", "total": 85899345920},
                {"index": 1, "uuid": None, "name": None, "total": None}]},
            "envs": [{"id": "e1", "created": 1700000000.25, "config": {"gpus": 1, "name": "n\u00e9", "gpu_memory": 1 << 30},
                      "terminals": [{"pid": me, "token": token}],
                      "devices": [{"index": 0, "uuid": "GPU-a", "attached": 1700000001, "memory": 1 << 30,
                                   "total": 85899345920}],
                      "warnings": ["w"],
                      "waiting": {"pid": me, "token": token, "since": 1700000002.5, "count": 1, "memory": None,
                                  "indices": [1], "over_subscribe": False}}],
        }
        text = jsonio.dumps(good)
        assert schema.upgrade(jsonio.loads(text), uid, "user-%d.json" % uid) == (good, [])
        assert schema.validate(jsonio.loads(text), uid) == good

        def refused(data, error=ValueError):
            try:
                schema.upgrade(jsonio.loads(jsonio.dumps(data)), uid, "f")
            except error:
                return
            raise AssertionError("accepted %r" % (data,))

        env = good["envs"][0]
        # Damage to the file as a whole costs the file.
        for broken in [None, [], {}, {"format": "2"}, {"format": 0}, dict(good, uid=uid + 1),
                       dict(good, envs={}), dict(good, devices={"key": 1}),
                       dict(good, joins=[{"uid": 0, "env": "e"}])]:
            refused(broken)
        from genv.errors import GenvError
        refused(dict(good, format=99), GenvError)
        # A damaged environment costs only itself.
        other = dict(env, id="e2", waiting=None)
        for bad in [env, dict(env, id=""), dict(env, config={"gpus": -1}),
                    dict(env, terminals=[{"pid": 0, "token": "t"}]), dict(env, config={"gpu_memory": 0}),
                    dict(env, waiting={"pid": me}), dict(env, created=1e300),
                    dict(env, devices=[env["devices"][0], env["devices"][0]])]:
            data = dict(good, envs=[bad, other] if bad is not env else [other, other])
            kept, dropped = schema.upgrade(jsonio.loads(jsonio.dumps(data)), uid, "f")
            assert [e["id"] for e in kept["envs"]] == ["e2"] and len(dropped) == 1, (bad, kept, dropped)
            try:
                schema.validate(jsonio.loads(jsonio.dumps(data)), uid)
            except ValueError:
                pass
            else:
                raise AssertionError("validated %r" % (bad,))

        # Format 2: the same, without shares and waiters.
        two = dict(good, format=2, envs=[dict(env, config={"gpus": 1}, devices=[dict(env["devices"][0])])])
        del two["envs"][0]["waiting"]
        del two["envs"][0]["devices"][0]["memory"]
        assert schema.upgrade(jsonio.loads(jsonio.dumps(two)), uid, "f")[0]["format"] == 4

        # Format 1: environments keyed by id, bare PIDs (dead ones dropped).
        old = {"format": 1, "envs": {"legacy": {"created": 5.0, "config": {"gpus": 1}, "pids": [me, 999999999],
                                                "devices": [2]}}}
        new = schema.upgrade(jsonio.loads(jsonio.dumps(old)), uid, "f")[0]
        assert new["format"] == 4 and new["uid"] == uid, new
        (legacy,) = new["envs"]
        assert legacy["id"] == "legacy" and [t["pid"] for t in legacy["terminals"]] == [me], legacy
        assert type(legacy["terminals"][0]["token"]) is str and legacy["terminals"][0]["token"], legacy
        assert [d["index"] for d in legacy["devices"]] == [2], legacy
    """)


@pytest.mark.parametrize("command", [["envs", "--json"], ["devices", "--json"]])
def test_commands_run_on_it(genv, command):
    """The whole path once through the dispatcher, on that interpreter."""
    result = genv.cli(*command)
    assert result.returncode == 0 and result.stderr == b"", result
    assert result.stdout.startswith(b"[")


def test_the_signal_functions_genv_uses_are_in_the_c_module():
    """genv/signals.py takes them from _signal (import signal costs enum)."""
    run_python(r"""
        import _signal
        from genv import signals
        for name in signals.__all__:
            assert hasattr(_signal, name), name
            assert getattr(signals, name) is getattr(_signal, name), name
    """)
    clean = subprocess.run([system_python(), "-I", "-S", "-c",
                            "import sys; sys.path.insert(0, %r); import genv.signals; print('enum' in sys.modules)"
                            % REPO], capture_output=True, text=True, timeout=60)
    assert clean.stdout == "False\n", clean



def test_the_waiters_wake_up_on_it(tmp_path):
    """A waiter in line sleeps until a state file changes or a process it
    watches ends (issue 16, item 7): inotify through ctypes and pidfds, on
    the interpreter under test. Without os.pidfd_open (Python 3.8) the
    watch is not complete, and the waiter looks on a short timer instead.
    Every descriptor is let go (the SDK waits in the user's process)."""
    folder = str(tmp_path)
    run_python(r"""
        import subprocess, time
        from genv import procs
        from genv.wake import Wake
        folder = %r
        before = sorted(os.listdir("/proc/self/fd"))
        child = subprocess.Popen(["sleep", "60"])
        facts = procs.processes()
        with Wake(folder) as wake:
            assert wake.complete == hasattr(os, "pidfd_open"), (wake.complete, sys.version)
            assert wake._inotify >= 0, "no inotify"
            wake.watch([(child.pid, facts.token(child.pid))], facts)
            assert not wake.sleep(0.05)
            # A file that is not a state file (a GPU lock, a temporary file): no wake-up.
            for name in ("gpu-index-0.lock", ".tmp-0-1-0123abcd"):
                with open(os.path.join(folder, name), "w") as handle:
                    handle.write("x")
            assert not wake.sleep(0.05)
            # A state file renamed into place wakes it at once.
            started = time.monotonic()
            os.rename(os.path.join(folder, ".tmp-0-1-0123abcd"), os.path.join(folder, "user-1000.json"))
            assert wake.sleep(5) and time.monotonic() - started < 1
            assert not wake.sleep(0.05)
            # The watched process killed: at once, where there are pidfds.
            child.kill()
            started = time.monotonic()
            if wake.complete:
                assert wake.sleep(5) and time.monotonic() - started < 1
            child.wait()
            assert not wake.sleep(0.05)  # its pidfd let go: no busy loop
            # A process that is gone, or a PID taken by another: not watched.
            wake.watch([(child.pid, "linux:x:1")], facts)
            assert not wake.sleep(0.05)
        facts.close()
        assert sorted(os.listdir("/proc/self/fd")) == before, (before, os.listdir("/proc/self/fd"))
        print("ok")
    """ % folder)
