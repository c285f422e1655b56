"""genv.sdk (issue 12): GPU environments for Python programs.

Every test runs real Python processes (the test runner's interpreter, as a
user's program would be) with the copied genv's root on ``sys.path`` and
nothing else of genv's set up: no ``genv init``, no GENV_ROOT, no shell. The
processes and the test take turns through files in the test's folder
(``touch`` / ``wait_file``) and the processes write what they saw to a JSON
file (``report``), so that their stdout and stderr can be checked to be
empty: the SDK prints nothing.

The sections:

1. environment(): os.environ inside and restored after, the Environment,
   release however the block ends, joining, nesting
2. the CUDA warning
3. errors: genv.sdk.Error with the command line's message, nothing printed
4. two processes at once: racing for one GPU, waiting in line, lock()
5. status(), envs(), devices(), ps()
6. the package: import cost, type hints, an installed copy without the clone
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import DUMP, REPO, VARS, assert_free, envs, holders, script, system_python, until

PRELUDE = r'''
import json, os, sys, time
sys.path.insert(0, %(root)r)
BASE = %(base)r
NAME = %(name)r
def report(**values):
    path = os.path.join(BASE, NAME + ".json")
    with open(path + ".tmp", "w") as handle:
        json.dump(values, handle)
    os.rename(path + ".tmp", path)
def touch(name):
    open(os.path.join(BASE, name), "w").close()
def wait_file(name, timeout=60):
    end = time.time() + timeout
    while not os.path.exists(os.path.join(BASE, name)):
        if time.time() > end:
            raise SystemExit("timed out waiting for " + name)
        time.sleep(0.01)
def log(line):
    with open(os.path.join(BASE, "shared.log"), "a") as handle:
        handle.write(line + "\n")
VARS = %(vars)r
'''


class Program:
    """A Python program using the SDK, run in the background."""

    def __init__(self, genv, name, code, python=None, **env):
        self.genv, self.name = genv, name
        prelude = PRELUDE % {"root": genv.root, "base": genv.base, "name": name, "vars": VARS}
        self.proc = subprocess.Popen([python or sys.executable, "-c", prelude + code], env=genv.environ(**env),
                                     cwd=genv.work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.pid = self.proc.pid

    def finish(self, timeout=60):
        """Wait for it; it must exit 0 having printed nothing. Its report."""
        out, err = self.proc.communicate(timeout=timeout)
        assert (self.proc.returncode, out, err) == (0, b"", b""), (self.proc.returncode, out, err.decode())
        return self.report()

    def report(self):
        path = os.path.join(self.genv.base, self.name + ".json")
        with open(path) as handle:
            return json.load(handle)

    def reported(self):
        return os.path.exists(os.path.join(self.genv.base, self.name + ".json"))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.fixture
def programs(genv):
    started = []

    def start(name, code, **env):
        program = Program(genv, name, code, **env)
        started.append(program)
        return program

    try:
        yield start
    finally:
        open(os.path.join(genv.base, "leave"), "w").close()
        for program in started:
            program.kill()


def run(genv, name, code, **env):
    """Run a program to its end; its report (it must print nothing)."""
    return Program(genv, name, code, **env).finish()


def touch(genv, name):
    open(os.path.join(genv.base, name), "w").close()


def exists(genv, name):
    return os.path.exists(os.path.join(genv.base, name))


def cli_message(genv, *argv):
    """The message of a failing genv command, without 'genv: '."""
    done = genv.cli(*argv)
    assert done.returncode != 0, done
    lines = done.stderr.decode().splitlines()
    assert lines and lines[-1].startswith("genv: "), done
    return lines[-1][len("genv: "):]


HOLDERS = []


def hold_gpus(genv, count=1, *options):
    """A genv run holding ``count`` GPUs until the test ends (the ``held``
    fixture stops it)."""
    stop = os.path.join(genv.base, "leave")
    proc = subprocess.Popen([os.path.join(genv.root, "bin", "genv"), "run", "--gpus", str(count), *options, "--",
                             "sh", "-c", "n=0; while [ ! -e %s ] && [ $n -lt 6000 ]; do sleep 0.02; n=$((n+1)); done"
                             % stop], env=genv.environ(), cwd=genv.work, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    HOLDERS.append(proc)
    until(lambda: any(proc.pid in env["pids"] for env in envs(genv)), "the holder", 30)
    return proc


@pytest.fixture(autouse=True)
def stop_holders():
    yield
    while HOLDERS:
        proc = HOLDERS.pop()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# === 1. environment() ===================================================================


def test_environment_sets_what_a_terminal_sees_and_restores_os_environ_exactly(genv, programs):
    program = programs("p", r'''
os.environ["GENV_TEST_EMPTY"] = ""
os.environ["CUDA_VISIBLE_DEVICES"] = ""          # empty before: empty after, not unset
os.environ.pop("CUDA_DEVICE_ORDER", None)        # unset before: unset after
os.environ.pop("GENV_ENVIRONMENT_ID", None)
os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] = "false"  # the user's own: kept inside too
before = dict(os.environ)
import genv.sdk
with genv.sdk.environment(gpus=1, gpu_memory="8g", name="sdk") as env:
    inside = {name: os.environ.get(name) for name in VARS}
    info = {"id": env.id, "gpus": env.gpus, "uuids": env.uuids, "name": env.name, "gpu_memory": env.gpu_memory,
            "repr": repr(env), "pid": os.getpid()}
    touch("in")
    wait_file("go")
after = dict(os.environ)
report(inside=inside, info=info, same=after == before,
       changed={k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)})
''')
    until(lambda: exists(genv, "in") or program.proc.poll() is not None, "the block", 30)
    [env] = envs(genv)
    assert env["name"] == "sdk" and env["pids"] == [program.pid] and env["devices"] == [0]
    assert env["gpu_memory"] == 8192
    touch(genv, "go")
    seen = program.finish()
    assert seen["same"], seen["changed"]
    info, inside = seen["info"], seen["inside"]
    assert info["id"] == env["id"] == inside["GENV_ENVIRONMENT_ID"] == str(info["pid"])
    assert info["gpus"] == [0] and info["name"] == "sdk" and info["gpu_memory"] == 8 << 30
    assert info["uuids"] == ["GPU-3f1e2d00-5ee0-4c1a-9a3e-00000000a100"]
    assert info["repr"] == "Environment(id=%r, gpus=[0])" % env["id"]
    # What `genv run` gives its command (a terminal's view) for the same request.
    command = dump(genv, "--gpus", "1", "--gpu-memory", "8g", TF_FORCE_GPU_ALLOW_GROWTH="false")
    for name in VARS:
        if name != "GENV_ENVIRONMENT_ID":
            assert inside[name] == command[name], name
    assert inside["PATH"].split(":")[0] == os.path.join(genv.root, "shims")
    assert inside["TF_FORCE_GPU_ALLOW_GROWTH"] == "false" and inside["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.20"
    assert_free(genv)


def dump(genv, *options, **env):
    out = os.path.join(genv.base, "dump.json")
    done = genv.cli("run", *options, "--", system_python(), script(genv, "dump.py", DUMP), out, *VARS, **env)
    assert done.returncode == 0, done
    with open(out) as handle:
        return json.load(handle)


def test_changes_made_inside_the_block(genv):
    """What the code does with the user's own changes inside the block: the
    variables genv set are put back as they were before the block (a PATH
    extended inside the block loses the extension); anything else stays."""
    seen = run(genv, "p", r'''
import genv.sdk
before = dict(os.environ)
with genv.sdk.environment(gpus=1):
    os.environ["PATH"] += ":/opt/mine/bin"
    os.environ["CUDA_VISIBLE_DEVICES"] = "7"
    os.environ["GENV_TEST_MINE"] = "1"
    del os.environ["CUDA_DEVICE_ORDER"]
report(path=os.environ["PATH"], before=before["PATH"], cuda=os.environ.get("CUDA_VISIBLE_DEVICES"),
       cuda_before=before.get("CUDA_VISIBLE_DEVICES"), mine=os.environ.get("GENV_TEST_MINE"),
       order=os.environ.get("CUDA_DEVICE_ORDER"))
''')
    assert seen["path"] == seen["before"]
    assert seen["cuda"] == seen["cuda_before"] is None
    assert seen["order"] is None
    assert seen["mine"] == "1"
    assert_free(genv)


@pytest.mark.parametrize("how", ["exception", "keyboard-interrupt", "sys-exit"])
def test_leaving_the_block_by_an_exception_releases_and_restores(genv, how):
    raise_it = {"exception": "raise ValueError('boom')", "keyboard-interrupt": "raise KeyboardInterrupt",
                "sys-exit": "raise SystemExit(0)"}[how]
    seen = run(genv, "p", r'''
import genv.sdk
before = dict(os.environ)
caught = None
try:
    with genv.sdk.environment(gpus=2):
        %s
except BaseException as error:
    caught = type(error).__name__
report(caught=caught, same=dict(os.environ) == before, envs=genv.sdk.envs())
''' % raise_it)
    assert seen["caught"] in ("ValueError", "KeyboardInterrupt", "SystemExit") and seen["same"]
    assert seen["envs"] == []
    assert_free(genv)


def test_the_process_dying_releases(genv, programs):
    program = programs("p", r'''
import genv.sdk
with genv.sdk.environment(gpus=4):
    touch("in")
    time.sleep(600)
''')
    until(lambda: exists(genv, "in"), "the block", 30)
    assert all(holders(genv).values())
    os.kill(program.pid, signal.SIGKILL)
    program.proc.wait()
    assert_free(genv)
    assert genv.cli("run", "--gpus", "4", "--", "true").returncode == 0


def test_join_an_environment_of_ones_own(genv, sh):
    shell = genv.shell(sh)
    shell.ok("genv activate --gpus 1 --name term --no-prompt")
    eid = shell.var("GENV_ENVIRONMENT_ID")
    seen = run(genv, "p", r'''
import genv.sdk
with genv.sdk.environment(join=%r) as env:
    report(id=env.id, gpus=env.gpus, cuda=os.environ["CUDA_VISIBLE_DEVICES"], envs=genv.sdk.envs(),
           pid=os.getpid())
''' % eid)
    assert seen["id"] == eid and seen["gpus"] == [0] and seen["cuda"] == "0"
    [env] = seen["envs"]
    assert set(env["pids"]) == {shell.pid, seen["pid"]}
    [env] = envs(genv)
    assert env["pids"] == [shell.pid] and env["devices"] == [0], "the terminal keeps its environment"


def test_nested_blocks(genv):
    seen = run(genv, "p", r'''
import genv.sdk
before = dict(os.environ)
with genv.sdk.environment(gpus=1) as outer:
    outer_env = dict(os.environ)
    with genv.sdk.environment(gpus=1) as inner:
        inner_cuda = os.environ["CUDA_VISIBLE_DEVICES"]
    back = dict(os.environ) == outer_env
report(outer=outer.gpus, inner=inner.gpus, inner_cuda=inner_cuda, back=back, same=dict(os.environ) == before)
''')
    assert seen["outer"] == [0] and seen["inner"] == [1] and seen["inner_cuda"] == "1"
    assert seen["back"] and seen["same"]
    assert_free(genv)


def test_index_and_over_subscribe(genv):
    seen = run(genv, "p", r'''
import genv.sdk
with genv.sdk.environment(index=[2, 3], gpu_memory="30g") as a:
    try:
        with genv.sdk.environment(index=[3], gpu_memory="30g"):
            second = "attached"
    except genv.sdk.Error as error:
        second = str(error)
    with genv.sdk.environment(index=[3], gpu_memory="30g", over_subscribe=True) as b:
        third = b.gpus
report(first=a.gpus, second=second, third=third)
''')
    assert seen["first"] == [2, 3] and seen["third"] == [3]
    assert "GPU 3" in seen["second"]


# === 2. the CUDA warning ====================================================================

WARN = r'''
import types, warnings
torch = types.ModuleType("torch")
def is_initialized():
    %s
torch.cuda = types.SimpleNamespace(is_initialized=is_initialized)
if %r:
    sys.modules["torch"] = torch
import genv.sdk
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with genv.sdk.environment(gpus=1):  # THE WITH LINE
        pass
report(warnings=[[w.category.__name__, str(w.message), w.filename, w.lineno] for w in caught])
'''


@pytest.mark.parametrize("body,imported,warned", [
    ("return True", True, True),
    ("return False", True, False),
    ("raise RuntimeError('no CUDA in this build')", True, False),
    ("return True", False, False),  # torch not imported: not imported by genv either
])
def test_a_warning_when_cuda_was_initialised_before(genv, body, imported, warned):
    seen = run(genv, "p", WARN % (body, imported))
    if not warned:
        assert seen["warnings"] == []
        return
    [[category, message, filename, line]] = seen["warnings"]
    assert category == "RuntimeWarning"
    assert "CUDA" in message and "process" in message
    # It points at the user's `with` line, not into genv or contextlib.
    source = (PRELUDE + WARN).splitlines()
    expected = next(n for n, text in enumerate(source, 1) if "THE WITH LINE" in text)
    assert filename == "<string>" and line == expected, (filename, line)


# === 3. errors ===========================================================================

ERRORS = [
    ("gpus=9", ["--gpus", "9"]),
    ("gpus=-1", ["--gpus", "-1"]),
    ("gpu_memory='3q'", ["--gpu-memory", "3q"]),
    ("gpu_memory=0", ["--gpu-memory", "0"]),
    ("gpu_memory='2p'", ["--gpu-memory", "2p"]),
    ("name=''", ["--name", ""]),
    ("name='x' * 300", ["--name", "x" * 300]),
    ("join='99999'", ["--id", "99999"]),
    ("index=[7]", ["--index", "7"]),
    ("gpus=1, gpu_memory='41g'", ["--gpus", "1", "--gpu-memory", "41g"]),
    ("gpus=1, gpu_memory='1b'", ["--gpus", "1", "--gpu-memory", "1b"]),
]


@pytest.mark.parametrize("arguments,cli", ERRORS, ids=[a for a, _ in ERRORS])
def test_errors_are_genv_sdk_error_with_the_command_lines_message(genv, arguments, cli):
    seen = run(genv, "p", r'''
import genv.sdk, genv.errors
before = dict(os.environ)
try:
    with genv.sdk.environment(%s):
        result = "entered"
except Exception as error:
    result = [type(error).__name__, isinstance(error, genv.sdk.Error), genv.sdk.Error is genv.errors.GenvError,
              str(error)]
report(result=result, same=dict(os.environ) == before)
''' % arguments)
    name, is_error, documented, message = seen["result"]
    assert is_error and documented, seen
    assert message == cli_message(genv, "run", *cli, "--", "true")
    assert seen["same"]
    assert_free(genv)


@pytest.mark.parametrize("wait", ["-1", "float('nan')", "'10'"])
def test_a_bad_wait_is_an_error_at_once(genv, wait):
    """As `genv run --wait -1` / `--wait nan` are refused: an Error, at once
    (nan once waited forever; a string raised TypeError from deep inside)."""
    genv.extra["FAKE_NVIDIA_SMI_GPUS"] = "1"
    hold_gpus(genv, 1)
    program = Program(genv, "p", r'''
import genv.sdk
try:
    with genv.sdk.environment(gpus=1, wait=%s):
        result = "entered"
except Exception as error:
    result = [type(error).__name__, isinstance(error, genv.sdk.Error), str(error)]
report(result=result)
''' % wait)
    try:
        seen = program.finish(timeout=20)
    except subprocess.TimeoutExpired:
        program.kill()
        raise AssertionError("environment(wait=%s) waited on" % wait)
    name, is_error, message = seen["result"]
    assert is_error, seen
    assert "wait" in message, message


def test_lock_errors(genv):
    seen = run(genv, "p", r'''
import genv.sdk
results = []
for where in ("outside", "no gpus"):
    try:
        if where == "outside":
            with genv.sdk.lock():
                results.append("locked")
        else:
            with genv.sdk.environment(gpus=0):
                with genv.sdk.lock():
                    results.append("locked")
    except genv.sdk.Error as error:
        results.append(str(error))
report(results=results)
''')
    outside, without = seen["results"]
    assert outside == cli_message(genv, "lock", "--", "true")
    assert "no GPUs attached" in without


def test_an_interrupt_while_lock_looks_at_a_gpu_leaks_no_descriptor(genv):
    """lock() asks whether an ancestor holds each GPU's lock before it takes
    it; an interrupt there (raised from that look here, as a Ctrl-C would)
    must close the lock file it opened: a leaked one may even hold the lock."""
    seen = run(genv, "p", r'''
import genv.sdk, genv.locking
def lock_files():
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.path.basename(os.readlink("/proc/self/fd/" + fd)).startswith("gpu-")
        except OSError:
            pass
    return found
def interrupted(fd):
    raise KeyboardInterrupt
with genv.sdk.environment(gpus=1):
    with genv.sdk.lock():
        inside = lock_files()
        genv.locking.holder = interrupted
        try:
            with genv.sdk.lock(timeout=0):
                pass
            raised = False
        except KeyboardInterrupt:
            raised = True
        during = lock_files()
after = lock_files()
report(inside=inside, raised=raised, during=during, after=after)
''')
    assert seen == {"inside": 1, "raised": True, "during": 1, "after": 0}


def test_messages_go_to_the_logger_not_to_stderr(genv, programs):
    genv.extra["FAKE_NVIDIA_SMI_GPUS"] = "1"
    hold_gpus(genv, 1)
    seen = run(genv, "p", r'''
import logging
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append([record.name, record.levelname, record.getMessage()])
logging.getLogger("genv").addHandler(Keep())
logging.getLogger("genv").setLevel(logging.INFO)
import genv.sdk
try:
    with genv.sdk.environment(gpus=1, wait=0.5):
        pass
except genv.sdk.Error as error:
    message = str(error)
report(records=records, message=message)
''')
    assert seen["records"][0][:2] == ["genv", "INFO"]
    assert seen["records"][0][2].startswith("waiting for 1 GPU")
    assert seen["message"].startswith("cannot attach 1 GPU")


# === 4. two processes at once =========================================================

RACER = r'''
import genv.sdk
wait_file("go")
try:
    with genv.sdk.environment(gpus=1, wait=%s) as env:
        touch(NAME + ".won")
        got = env.gpus
        wait_file("leave-" + NAME)
    report(won=True, gpus=got, at=time.time())
except genv.sdk.Error as error:
    report(won=False, error=str(error), at=time.time())
'''


@pytest.mark.parametrize("attempt", range(3))
def test_two_processes_race_for_one_gpu_exactly_one_wins(genv, programs, attempt):
    genv.extra["FAKE_NVIDIA_SMI_GPUS"] = "1"
    racers = [programs("r%d" % n, RACER % "None") for n in range(2)]
    touch(genv, "go")
    until(lambda: any(exists(genv, r.name + ".won") for r in racers) and any(r.reported() for r in racers),
          "a winner and a loser", 30)
    [winner] = [r for r in racers if exists(genv, r.name + ".won")]
    [loser] = [r for r in racers if r is not winner]
    result = loser.finish()
    assert result["won"] is False
    assert result["error"].startswith("cannot attach 1 GPU"), result
    [env] = envs(genv)
    assert env["pids"] == [winner.pid] and env["devices"] == [0]
    touch(genv, "leave-" + winner.name)
    assert winner.finish()["won"] is True
    assert_free(genv)


def test_with_wait_the_second_gets_the_gpu_when_the_first_leaves(genv, programs):
    genv.extra["FAKE_NVIDIA_SMI_GPUS"] = "1"
    racers = [programs("w%d" % n, RACER % "30") for n in range(2)]
    touch(genv, "go")
    first = until(lambda: [r for r in racers if exists(genv, r.name + ".won")], "a first", 30)[0]
    [second] = [r for r in racers if r is not first]
    until(lambda: any(env["waiting"] for env in envs(genv)), "the second to wait in line", 30)
    time.sleep(0.5)
    assert not exists(genv, second.name + ".won")
    left = time.time()
    touch(genv, "leave-" + first.name)
    until(lambda: exists(genv, second.name + ".won"), "the second to get the GPU", 30)
    touch(genv, "leave-" + second.name)
    assert first.finish()["won"] is True
    result = second.finish()
    assert result["won"] is True and result["gpus"] == [0] and result["at"] >= left
    assert_free(genv)


def test_a_wait_that_times_out(genv):
    genv.extra["FAKE_NVIDIA_SMI_GPUS"] = "1"
    holder = hold_gpus(genv, 1)
    seen = run(genv, "p", r'''
import genv.sdk
start = time.monotonic()
before = dict(os.environ)
try:
    with genv.sdk.environment(gpus=1, wait=1):
        result = "entered"
except genv.sdk.Error as error:
    result = str(error)
report(result=result, waited=time.monotonic() - start, same=dict(os.environ) == before)
''')
    assert seen["waited"] >= 1 and seen["same"]
    [env] = envs(genv)
    assert env["pids"][0] == holder.pid and env["waiting"] is None
    # The message of a failure without waiting: no environment is left to
    # be "now detached".
    assert seen["result"] == "cannot attach 1 GPU: only 0 of this machine's 1 are free"


def test_ctrl_c_while_waiting_leaves_the_line(genv, programs):
    genv.extra["FAKE_NVIDIA_SMI_GPUS"] = "1"
    holder = hold_gpus(genv, 1)
    program = programs("p", r'''
import genv.sdk
before = dict(os.environ)
try:
    with genv.sdk.environment(gpus=1, wait=float("inf")):
        result = "entered"
except KeyboardInterrupt:
    result = "interrupted"
report(result=result, same=dict(os.environ) == before, envs=genv.sdk.envs())
''')
    until(lambda: any(env["waiting"] for env in envs(genv)), "the program to wait in line", 30)
    os.kill(program.pid, signal.SIGINT)
    seen = program.finish()
    assert seen["result"] == "interrupted" and seen["same"]
    [env] = seen["envs"]
    assert env["pids"][0] == holder.pid and env["waiting"] is None
    [env] = envs(genv)
    assert env["pids"][0] == holder.pid and env["waiting"] is None


def test_ctrl_c_while_waiting_reaches_the_programs_own_handler(genv, programs):
    """SIGINT's handler while a block is open is genv's guard, which calls
    the program's: a handler that only takes note is called, and the wait
    goes on (only one that raises leaves the line)."""
    genv.extra["FAKE_NVIDIA_SMI_GPUS"] = "1"
    hold_gpus(genv, 1)
    program = programs("p", r'''
import signal
import genv.sdk
noted = []
def note(signum, frame):
    noted.append(signum)
    touch("noted")
signal.signal(signal.SIGINT, note)
with genv.sdk.environment(gpus=1, wait=float("inf")) as env:
    result = env.gpus
report(result=result, noted=len(noted))
''')
    until(lambda: any(env["waiting"] for env in envs(genv)), "the program to wait in line", 30)
    os.kill(program.pid, signal.SIGINT)
    until(lambda: exists(genv, "noted"), "the program's handler", 30)
    assert program.proc.poll() is None and any(env["waiting"] for env in envs(genv)), "still in line"
    touch(genv, "leave")  # the holder's command ends
    seen = program.finish()
    assert seen == {"result": [0], "noted": 1}


LOCKER = r'''
import genv.sdk
with genv.sdk.environment(gpus=1, gpu_memory="10g") as env:
    touch(NAME + ".env")
    if NAME == "a":
        wait_file("b.env")
        with genv.sdk.lock():
            log("a in")
            touch("a.locked")
            wait_file("a.release")
            log("a out")
        report(gpus=env.gpus)
    else:
        wait_file("a.locked")
        try:
            with genv.sdk.lock(timeout=0.5):
                log("b early")
        except genv.sdk.Error as error:
            touch("b.timedout")
            message = str(error)
        with genv.sdk.lock():
            log("b in")
        report(gpus=env.gpus, message=message)
'''


def test_lock_is_mutual_exclusion_between_processes(genv, programs):
    genv.extra["FAKE_NVIDIA_SMI_GPUS"] = "1"
    a = programs("a", LOCKER)
    b = programs("b", LOCKER)
    until(lambda: exists(genv, "b.timedout") or b.proc.poll() is not None, "b's first try", 30)
    time.sleep(0.3)
    with open(os.path.join(genv.base, "shared.log")) as handle:
        assert handle.read().splitlines() == ["a in"]
    touch(genv, "a.release")
    first, second = a.finish(), b.finish()
    assert first["gpus"] == second["gpus"] == [0]
    assert second["message"].startswith("gave up after 0.5 s waiting for the lock on GPU 0"), second
    with open(os.path.join(genv.base, "shared.log")) as handle:
        assert handle.read().splitlines() == ["a in", "a out", "b in"]
    assert_free(genv)


# === 5. status(), envs(), devices(), ps() =================================================


def put_process(genv, pid, gpu, mib=100):
    apps = os.path.join(genv.base, "apps")
    with open(apps, "a") as handle:
        handle.write("%d %d %d python\n" % (pid, gpu, mib))


LISTINGS = r'''
import subprocess, genv.sdk
def cli(name):
    done = subprocess.run([%r, name, "--format", "json"], capture_output=True, check=True)
    return json.loads(done.stdout)
sdk = {"status": genv.sdk.status(), "envs": genv.sdk.envs(), "devices": genv.sdk.devices(), "ps": genv.sdk.ps()}
report(sdk=sdk, cli={name: cli(name) for name in sdk})
'''


def test_listings_outside_a_block_are_the_commands_documents(genv):
    apps = os.path.join(genv.base, "apps")
    open(apps, "w").close()
    genv.extra["FAKE_NVIDIA_SMI_APPS"] = apps
    holder = hold_gpus(genv, 2, "--name", "holder")
    put_process(genv, holder.pid, 1, 500)
    seen = run(genv, "p", LISTINGS % os.path.join(genv.root, "bin", "genv"))
    assert seen["sdk"] == seen["cli"]
    assert seen["sdk"]["status"] == {"active": False}
    [env] = seen["sdk"]["envs"]
    assert env["name"] == "holder" and env["devices"] == [0, 1]
    [row] = seen["sdk"]["ps"]
    assert row["pid"] == holder.pid and row["env_id"] == env["id"] and row["memory"] == 500
    fields = {"index", "uuid", "name", "memory_total", "memory_used", "memory_available", "environments",
              "processes"}
    assert all(fields <= set(device) for device in seen["sdk"]["devices"])


def test_status_inside_a_block(genv):
    apps = os.path.join(genv.base, "apps")
    open(apps, "w").close()
    genv.extra["FAKE_NVIDIA_SMI_APPS"] = apps
    seen = run(genv, "p", r'''
import subprocess, genv.sdk
with open(%r, "a") as handle:
    handle.write("%%d 0 300 python\n" %% os.getpid())
with genv.sdk.environment(gpus=1, name="inside") as env:
    mine = genv.sdk.status()
    cli = json.loads(subprocess.run([%r, "status", "--format", "json"], capture_output=True, check=True).stdout)
report(sdk=mine, cli=cli, id=env.id, pid=os.getpid(), after=genv.sdk.status())
''' % (apps, os.path.join(genv.root, "bin", "genv")))
    assert seen["sdk"] == seen["cli"]
    status = seen["sdk"]
    assert status["active"] is True and status["id"] == seen["id"] and status["name"] == "inside"
    assert status["pids"] == [seen["pid"]] and status["devices"] == [0]
    assert [p["pid"] for p in status["processes"]] == [seen["pid"]]
    assert seen["after"] == {"active": False}


def test_listings_inside_a_block_see_the_machine_and_change_nothing(genv):
    """Inside the block the shim is first on PATH (for the program's child
    processes); genv's own queries must still see the real nvidia-smi (the
    whole machine), and must not store the shim's view of it."""
    apps = os.path.join(genv.base, "apps")
    open(apps, "w").close()
    genv.extra["FAKE_NVIDIA_SMI_APPS"] = apps
    holder = hold_gpus(genv, 1, "--name", "holder")
    put_process(genv, holder.pid, 0, 500)
    [held] = envs(genv)
    seen = run(genv, "p", r'''
import genv.sdk
with genv.sdk.environment(gpus=1, gpu_memory="8g") as env:
    devices, ps, others = genv.sdk.devices(), genv.sdk.ps(), genv.sdk.envs()
report(gpus=env.gpus, devices=devices, ps=ps, envs=others)
''')
    assert seen["gpus"] == [1]
    assert [d["index"] for d in seen["devices"]] == [0, 1, 2, 3]
    assert all(d["memory_total"] == 40960 for d in seen["devices"])
    assert [row["pid"] for row in seen["ps"]] == [holder.pid]
    assert holders(genv)[0] == [held["id"]], "the other environment lost its GPU"
    assert envs(genv)[0]["devices"] == [0]


@pytest.mark.parametrize("call", ["status", "ps", "devices", "lock"])
def test_a_query_inside_a_block_leaves_other_environments_alone(genv, call):
    """The most innocent call inside the block must not take GPUs from the
    user's other environments (it once stored the shim's one-GPU view of the
    machine as the machine)."""
    holder = hold_gpus(genv, 2, "--name", "holder")
    [held] = envs(genv)
    seen = run(genv, "p", r'''
import genv.sdk
with genv.sdk.environment(gpus=1) as env:
    if %r == "lock":
        with genv.sdk.lock():
            pass
    else:
        getattr(genv.sdk, %r)()
report(gpus=env.gpus)
''' % (call, call))
    assert seen["gpus"] == [2]
    [env] = envs(genv)
    assert env["id"] == held["id"] and holder.pid in env["pids"]
    assert env["devices"] == [0, 1], "genv.sdk.%s() inside a block detached another environment" % call


@pytest.mark.parametrize("step", ["_note_activity", "witness"])
def test_an_interrupt_as_the_lock_is_let_go_never_keeps_it(genv, step):
    """What a session records as it ends (the caller's activity; root's
    record) runs under the state lock: an interrupt landing there (raised
    from that step here, as a Ctrl-C in a notebook would) must still let
    the lock go, or the user's process holds every genv command up."""
    seen = run(genv, "p", r'''
import fcntl, genv.sdk
from genv.core import session
def interrupted(self):
    raise KeyboardInterrupt
setattr(session.Session, %r, interrupted)
try:
    genv.sdk.envs()
    raised = False
except KeyboardInterrupt:
    raised = True
fd = os.open(os.environ["GENV_TMPDIR"], os.O_RDONLY | os.O_DIRECTORY)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    free = True
except OSError:
    free = False
report(raised=raised, free=free)
''' % step)
    assert seen == {"raised": True, "free": True}


# === 6. the package ===================================================================

FORBIDDEN = ["json", "typing", "subprocess", "logging", "threading", "socket", "argparse", "shutil",
             "genv.cli", "genv.store", "genv.commands", "genv.jsonio", "genv.procs", "genv.gpus"]


def test_import_genv_sdk_loads_little(genv):
    """`import genv.sdk` costs at most 20 ms: checked by what it loads (a
    test that times it would be flaky); the time measured is printed."""
    code = ("import sys, time; sys.path.insert(0, %r); before = set(sys.modules); start = time.perf_counter(); "
            "import genv.sdk; took = time.perf_counter() - start; "
            "print(repr(sorted(set(sys.modules) - before))); print(took)") % genv.root
    for python in (system_python(), sys.executable):
        warm = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run([python, "-c", code], capture_output=True, check=True, env=warm)  # .pyc written
        done = subprocess.run([python, "-I", "-S", "-c", code], capture_output=True, check=True, text=True)
        loaded, took = done.stdout.splitlines()
        loaded = eval(loaded)
        assert "genv.sdk" in loaded
        assert [name for name in loaded if name in FORBIDDEN or name.startswith("genv.commands")] == []
        print("import genv.sdk with %s: %.1f ms, loads %s" % (python, float(took) * 1000, loaded))


def test_type_hints_and_py_typed(genv):
    assert os.path.isfile(os.path.join(REPO, "genv", "py.typed"))
    user = os.path.join(genv.base, "user.py")
    with open(user, "w") as handle:
        handle.write('''from typing import Any, Dict, List, Optional
import genv.sdk


def train() -> List[int]:
    with genv.sdk.environment(gpus=1, gpu_memory="8g", name=None, wait=None) as env:
        ident: str = env.id
        uuids: List[Optional[str]] = env.uuids
        with genv.sdk.lock(timeout=1.0):
            pass
        status: Dict[str, Any] = genv.sdk.status()
        rows: List[Dict[str, Any]] = genv.sdk.devices() + genv.sdk.envs() + genv.sdk.ps()
        del ident, uuids, status, rows
        return env.gpus


try:
    train()
except genv.sdk.Error as error:
    print(error)
''')
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.skip("needs mypy (pip install mypy)")
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull,
                           user], capture_output=True, text=True, cwd=genv.base, env={**os.environ,
                                                                                      "MYPYPATH": genv.root})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "genv.sdk" not in done.stdout


def test_an_installed_package_without_the_clone(genv, tmp_path):
    """What pip installs: the package alone (no bin/, libexec/, shims/).
    The SDK works (no shim to put on PATH), and so does python -m genv."""
    site = tmp_path / "site"
    shutil.copytree(os.path.join(genv.root, "genv"), str(site / "genv"))
    env = {**genv.environ(), "PYTHONPATH": str(site)}
    env["PATH"] = "%s/tests/fake:/usr/local/bin:/usr/bin:/bin" % genv.root  # no genv on PATH
    code = ("import os, genv.sdk\nbefore = dict(os.environ)\nwith genv.sdk.environment(gpus=1) as e:\n"
            "    print(e.gpus, os.environ['CUDA_VISIBLE_DEVICES'], os.environ['PATH'] == before['PATH'])\n"
            "print(dict(os.environ) == before)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=str(tmp_path))
    assert (done.returncode, done.stdout, done.stderr) == (0, "[0] 0 True\nTrue\n", "")
    done = subprocess.run([sys.executable, "-m", "genv", "run", "--gpus", "2", "--", "sh", "-c",
                           "echo $CUDA_VISIBLE_DEVICES"], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "0,1\n", "")
    done = subprocess.run([sys.executable, "-m", "genv", "nonsense"], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and done.stderr.startswith("usage: python -m genv")
    assert_free(genv)


@pytest.mark.parametrize("kind", ["bash", "zsh"])
def test_python_m_genv_in_an_activated_terminal_leaves_other_environments_alone(genv, kind):
    """`python -m genv status` (no bin/genv, so no GENV_ROOT) in a terminal
    whose PATH starts with the shim: genv must still ask the real
    nvidia-smi, and store nothing else as the machine."""
    holder = hold_gpus(genv, 2, "--name", "holder")
    shell = genv.shell(kind)
    shell.ok("genv activate --gpus 1 --no-prompt")
    assert shell.var("PATH").startswith(os.path.join(genv.root, "shims") + ":")
    shell.ok("PYTHONPATH=%s %s -m genv status >/dev/null" % (genv.root, system_python()))
    mine = {env["name"]: env for env in envs(genv)}
    assert holder.pid in mine["holder"]["pids"]
    assert mine["holder"]["devices"] == [0, 1], "python -m genv status detached another environment"


# === 7. the seams (issue 15, part B) =====================================================


def test_a_joined_block_inside_its_own_environment_leaves_it_as_it_was(genv):
    """B8: `with environment(join=outer.id)` inside the outer block: leaving
    gives the outer environment back exactly (its terminal, its GPUs, its
    configuration), and the GPUs the join attached are released."""
    seen = run(genv, "p", r'''
import genv.sdk
with genv.sdk.environment(gpus=1, name="outer") as outer:
    with genv.sdk.environment(join=outer.id) as same:
        inside = [e["devices"] for e in genv.sdk.envs()]
    after_plain = (genv.sdk.envs(), os.environ["CUDA_VISIBLE_DEVICES"], os.environ["GENV_ENVIRONMENT_ID"])
    with genv.sdk.environment(join=outer.id, gpus=2) as more:
        more_gpus = more.gpus
    after_more = (genv.sdk.envs(), os.environ["CUDA_VISIBLE_DEVICES"])
report(inside=inside, same=same.id == outer.id, after_plain=after_plain, more=more_gpus, after_more=after_more,
       pid=os.getpid(), outer=outer.id)
''')
    assert seen["same"] and seen["inside"] == [[0]]
    envs_after, cuda, eid = seen["after_plain"]
    assert [(e["id"], e["pids"], e["devices"], e["gpus"]) for e in envs_after] == [(seen["outer"], [seen["pid"]], [0], 1)]
    assert cuda == "0" and eid == seen["outer"]
    assert seen["more"] == [0, 1]
    envs_after, cuda = seen["after_more"]
    assert [(e["devices"], e["gpus"], e["name"]) for e in envs_after] == [([0], 1, "outer")] and cuda == "0"
    assert_free(genv)


def test_blocks_in_two_threads_at_once_are_refused(genv):
    """B8: os.environ is the process's: a second thread's block while one is
    open raises genv.sdk.Error, and nothing is left of it."""
    seen = run(genv, "p", r'''
import threading
import genv.sdk
results = {}
opened = threading.Event()
done = threading.Event()
def first():
    with genv.sdk.environment(gpus=1):
        opened.set()
        done.wait(30)
def second():
    opened.wait(30)
    try:
        with genv.sdk.environment(gpus=1):
            results["second"] = "entered"
    except genv.sdk.Error as error:
        results["second"] = str(error)
    done.set()
a, b = threading.Thread(target=first), threading.Thread(target=second)
a.start(); b.start(); a.join(); b.join()
report(second=results["second"], envs=genv.sdk.envs(), id=os.environ.get("GENV_ENVIRONMENT_ID"))
''')
    assert "another thread" in seen["second"]
    assert seen["envs"] == [] and seen["id"] is None


def test_the_callers_signal_mask_handlers_and_timers_are_as_before(genv):
    """B6: after every SDK call (a block, with a wait in line, a lock wait),
    the caller's signal mask, handlers and interval timer are untouched."""
    hold_gpus(genv, 1)
    seen = run(genv, "p", r'''
import signal
import genv.sdk
def mine(signum, frame):
    pass
signal.signal(signal.SIGALRM, mine)
signal.signal(signal.SIGHUP, mine)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
signal.setitimer(signal.ITIMER_REAL, 500, 250)
def state():
    return (sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, set())),
            [signal.getsignal(s) is mine for s in (signal.SIGALRM, signal.SIGHUP)],
            signal.getsignal(signal.SIGINT) is signal.default_int_handler,
            signal.getitimer(signal.ITIMER_REAL)[1])
before = state()
seen = []
with genv.sdk.environment(gpus=0):
    try:  # inside the block, an interrupt reaches the caller at once
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
        inside = "not delivered"
    except KeyboardInterrupt:
        inside = "delivered"
seen.append(state())
try:
    with genv.sdk.environment(gpus=4, wait=0.3):
        pass
except genv.sdk.Error:
    pass
seen.append(state())
with genv.sdk.environment(gpus=0, gpu_memory="1g") as env:
    pass
seen.append(state())
genv.sdk.envs(); genv.sdk.devices(); genv.sdk.ps(); genv.sdk.status()
seen.append(state())
report(before=before, seen=seen, inside=inside)
''')
    before = seen["before"]
    assert seen["inside"] == "delivered"
    for after in seen["seen"]:
        assert after[:3] == before[:3], (before, after)
        assert after[3] == 250, after


def test_the_lock_waits_without_touching_the_callers_signals(genv, programs):
    """B6: genv.sdk.lock() waiting for another holder uses no SIGALRM and
    no timer of the caller's."""
    genv.extra["FAKE_NVIDIA_SMI_GPUS"] = "1"
    holder = genv.shell("bash")
    holder.ok("genv activate --gpus 1")
    eid = holder.var("GENV_ENVIRONMENT_ID")
    locked = subprocess.Popen(["bash", "-c", 'eval "$(genv init -)"; genv lock -- sleep 1.5'],
                              env=genv.environ(GENV_ENVIRONMENT_ID=eid), cwd=genv.work)
    try:
        time.sleep(0.7)
        seen = run(genv, "p", r'''
import signal
import genv.sdk
alarms = []
signal.signal(signal.SIGALRM, lambda signum, frame: alarms.append(signum))
signal.setitimer(signal.ITIMER_REAL, 300)
start = time.time()
with genv.sdk.lock():
    waited = time.time() - start
time.sleep(0.1)
report(waited=waited, alarms=len(alarms), handler=signal.getsignal(signal.SIGALRM).__name__,
       timer=signal.getitimer(signal.ITIMER_REAL))
''', GENV_ENVIRONMENT_ID=eid)
    finally:
        locked.wait(30)
    assert seen["waited"] > 0.3, "it had to wait for the other holder"
    assert seen["alarms"] == 0 and seen["handler"] == "<lambda>"
    assert seen["timer"][0] > 0, "the caller's timer still runs, untouched"


INTERRUPTED = r'''
import random, signal, threading
import genv.sdk
random.seed(SEED)
interrupted = 0
for n in range(60):
    timer = threading.Timer(random.random() * 0.1, lambda: os.kill(os.getpid(), signal.SIGINT))
    try:
        timer.start()  # the interrupt may come before start() returns (a loaded machine)
        with genv.sdk.environment(gpus=1):
            pass
    except KeyboardInterrupt:
        interrupted += 1
    while True:  # the interrupt may come after the block, here: wait for it
        try:
            timer.join()
            time.sleep(0.01)
            break
        except KeyboardInterrupt:
            interrupted += 1
report(interrupted=interrupted, envs=genv.sdk.envs(), mine=os.environ.get("GENV_ENVIRONMENT_ID"))
'''


def test_a_handler_that_does_not_raise_gets_its_block_with_the_environment(genv):
    """A program's own SIGINT handler that only takes note (a training loop's
    "stop after this epoch") is called for an interrupt that lands while
    genv enters; as it does not raise, the block runs: with the environment
    it was given (the GPUs held, os.environ pointing at them), never with
    os.environ restored and nothing held behind an Environment that says
    otherwise."""
    seen = run(genv, "p", r'''
import signal
import genv.sdk
from genv.core import operations
noted = []
signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum))
real = operations.enter
def enter(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)  # held back while genv enters
    return real(*args, **kwargs)
operations.enter = enter
with genv.sdk.environment(gpus=1) as env:
    inside = {"gpus": env.gpus, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "noted": len(noted),
              "held": [doc["devices"] for doc in genv.sdk.envs() if os.getpid() in doc["pids"]]}
report(inside=inside, after=genv.sdk.envs(), noted=len(noted))
''')
    assert seen["inside"] == {"gpus": [0], "cuda": "0", "noted": 1, "held": [[0]]}, seen
    assert seen["after"] == [] and seen["noted"] == 1


@pytest.mark.parametrize("seed", range(4))
def test_an_interrupt_anywhere_in_genvs_code_never_leaks(genv, seed):
    """B7: 60 blocks, each interrupted at a random moment (entering, leaving,
    writing the state, or after): afterwards the process holds nothing."""
    seen = run(genv, "p", INTERRUPTED.replace("SEED", str(seed)))
    assert seen["interrupted"] > 0
    assert seen["envs"] == [] and seen["mine"] is None, seen


@pytest.mark.parametrize("arguments", [
    "gpus=True", "gpus=1.0", "gpus='1'", "gpus=10**400", "gpu_memory=1.5", "gpu_memory=True", "gpu_memory=-5",
    "gpu_memory=10**400", "name=5", "name=b'x'", "index=[3.0]", "index=[True]", "index='01'", "index=['0']",
    "index=[0, 0]", "index=3", "index=[-1]", "index=[10**400]", "wait=10**400", "wait='5'", "wait=True",
    "wait=float('nan')", "wait=-1", "over_subscribe=1", "join=5", "gpus=1, index=[0, 1]",
    "gpus=1, for_=0", "gpus=1, for_=-60", "gpus=1, for_='soon'", "gpus=1, for_=True", "gpus=1, for_=float('nan')",
    "gpus=1, for_=10**400", "gpus=1, for_=b'1h'", "gpus=1, for_='90 minutes'",
])
def test_bad_input_is_genv_sdk_error_and_writes_nothing(genv, arguments):
    """B9: checked as the command line checks; nothing reaches the state."""
    seen = run(genv, "p", r'''
import genv.sdk, genv.errors
try:
    with genv.sdk.environment(%s):
        result = "entered"
except genv.sdk.Error as error:
    result = "error: " + str(error)
except Exception as error:
    result = "wrong: %%s: %%s" %% (type(error).__name__, error)
report(result=result)
''' % arguments)
    assert seen["result"].startswith("error: "), seen
    assert "\n" not in seen["result"]
    assert envs(genv) == []
    state = os.path.join(genv.tmpdir, "user-%d.json" % os.geteuid())
    if os.path.exists(state):
        with open(state) as handle:
            assert json.load(handle)["envs"] == []
