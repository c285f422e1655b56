"""genv's benchmark suite (issues 5, 9, 10, 11, 12 and 18). Run it with ``bench/run``.

Every scenario is timed from inside one long-lived bash process with
``$EPOCHREALTIME`` around the command, so bash's own start-up is excluded;
results are medians over repeated runs (what talks HTTP or starts Jupyter
kernels is timed from Python instead). genv runs on a plain venv
interpreter made for the run (no site-packages, no version-manager shim),
and the floors are measured with that same interpreter. GPUs come from the
fake nvidia-smi in tests/fake, which genv and the upstream genv both query.

With --compare-upstream, genv 1.4.3 (the last upstream release) is installed
from the package index into a throwaway venv and the same scenarios run on
it, interleaved with ours, and the ratio is printed per scenario.

Scenarios (--only/--skip take these names):
  cycle   init, activate, config, attach, detach, deactivate
  shim    nvidia-smi -L through the shim against the fake directly
  envs    genv envs and devices with N live environments (--envs)
  race    N terminals attach at once onto 4 GPUs (--racers)
  procs   (issue 9; genv only) with N GPU processes (--procs): ps, devices and
          attach, each beside the same nvidia-smi calls made straight to the
          fake; the shim's table (through the process filter) and its -L,
          each beside the fake; the nvidia-smi calls per command
          (FAKE_NVIDIA_SMI_LOG) and the Python starts per shim mode; and
          attach on mock GPUs (no nvidia-smi, no busy-GPU check). The timed
          loop's nvidia-smi calls are replayed from answers recorded from
          the fake (see _replay), for genv and the direct calls alike
  share   (issue 10) the cycle with gpu-memory 8g, beside a plain attach
  pack    (issue 10) N environments of mixed sizes attach at once onto 8
          mock GPUs of 80g (--pack); genv devices --json must show no GPU
          over-committed
  wait    (issues 10 and 16) N terminals in 'attach --wait' while N holders
          hold all N GPUs (--waiters): their CPU use over --idle seconds (the
          sum of their utime and stime, from /proc), then each release (kill
          -9 of a holder's terminal and deactivate in turn) to the next attach
  admin   (issue 11) with N environments (real background terminals) and N
          GPU processes (--admin): 'genv enforce' (a dry run; exit 1 as it
          finds the unmanaged quarter of the processes) and one /metrics
          scrape of 'genv monitor --interval 0' (urllib), each beside its
          nvidia-smi calls made straight to the fake; prometheus-client is
          installed into the bench's venv with pip (the scrape is skipped,
          with the reason, if that fails)
  run     (issue 12) 'genv run -- true' and 'genv run --gpus 1 -- true'
          beside true itself, their nvidia-smi calls and the bare interpreter
  sdk     (issue 12) python -I -S -c 'import genv.sdk' beside the bare one
  hosts   (issue 18) genv devices -H over ssh to sshd instances on 127.0.0.1
          (tests/sshd_hosts.py): one and three hosts, with fresh and with
          reused connections, and three hosts whose genv takes --hosts-slow
          seconds beside one (skipped, with the reason, without sshd)
  slurm   (issue 17) genv off Slurm (no Slurm configuration) beside the same
          commands with GENV_SLURM=0, and on a Slurm node (SLURM_CONF set),
          beside and in a job: devices, ps, attach and status, and the calls
          each makes to scontrol (a logging scontrol first on PATH: off Slurm
          it must never run); the import of genv.slurm. Slurm's answer is
          replayed from a recorded one, or, with --slurm-real (root, Slurm's
          packages), comes from a real single-node cluster started for the run
          (tests/slurm_cluster.py)
  record  (issue 19) what a listing pays to record what it saw (root's record
          of claims and processes, genv.sightings.update, and the owner's own
          claims), in-process, with N environments and N GPU processes
          (--record), on a look that changes nothing and on a first look
  kernel  (issue 12) a Jupyter kernel's start (start_kernel() to
          wait_for_ready()), a plain ipykernel kernelspec against one made by
          'genv kernel install --gpus 1', in turn (--kernel-reps); in an
          interpreter with ipykernel and jupyter_client (--kernel-python, else
          a venv made for them with pip; skipped, with the reason, if that
          fails)
"""

import argparse
import contextlib
import json
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE = os.path.join(REPO, "tests", "fake")
UPSTREAM = "genv==1.4.3"


class Tool:
    """One genv to measure: how to set up a shell, where its state lives."""

    def __init__(self, name: str, base: str, path_prefix: str, init: str, env: Dict[str, str]) -> None:
        self.name = name
        self.base = base
        self.tmpdir = os.path.join(base, "state")
        self.env = dict(os.environ)
        for key in list(self.env):
            if key.startswith(("GENV_", "CUDA_", "FAKE_NVIDIA", "SLURM_")):
                del self.env[key]
        self.env.update(env)
        self.env.update({
            "PATH": "%s:%s:/usr/local/bin:/usr/bin:/bin" % (path_prefix, FAKE),
            "GENV_TMPDIR": self.tmpdir,
            "HOME": os.path.join(base, "home"),
            "FAKE_NVIDIA_SMI_GPUS": "4",
        })
        os.makedirs(self.env["HOME"], exist_ok=True)
        self.init = init

    def reset(self) -> None:
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def environ(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        env = dict(self.env)
        env.update(extra or {})
        return env

    def terminal(self, script: str, stdout: int, extra: Optional[Dict[str, str]] = None) -> "subprocess.Popen[str]":
        """A background bash (a "terminal") that has been sent ``script``;
        its stdin stays open so that it lives until closed or killed, and
        what is written to it later runs in it."""
        shell = subprocess.Popen(["bash", "--norc", "--noprofile"], stdin=subprocess.PIPE, stdout=stdout,
                                 stderr=subprocess.DEVNULL, env=self.environ(extra), cwd=self.base, text=True)
        assert shell.stdin is not None
        shell.stdin.write(script)
        shell.stdin.flush()
        return shell

    def script(self, body: str, timeout: float = 600, extra: Optional[Dict[str, str]] = None) -> str:
        """Run a bash script (with ``T label command...`` defined); its stdout."""
        script = 'T() { local l=$1 s e; shift; s=$EPOCHREALTIME; "$@" >/dev/null; e=$EPOCHREALTIME; echo "$l $s $e"; }\n' + body
        done = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], env=self.environ(extra),
                              cwd=self.base, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError("%s: bash failed (%d): %s" % (self.name, done.returncode, done.stderr[-2000:]))
        return done.stdout

    def bash(self, body: str, timeout: float = 600, extra: Optional[Dict[str, str]] = None) -> List[List[str]]:
        """Run a bash script; lines ``label start end`` are collected."""
        return [line.split() for line in self.script(body, timeout, extra).splitlines()
                if line.count(" ") == 2 and not line.startswith("fact ")]


def timings(rows: List[List[str]]) -> Dict[str, List[float]]:
    result: Dict[str, List[float]] = {}
    for label, start, end in rows:
        result.setdefault(label, []).append((float(end) - float(start)) * 1000)
    return result


def cycle(tool: Tool, reps: int) -> Dict[str, List[float]]:
    tool.reset()
    body = """
I() { eval "$(%s)"; }
for i in $(seq %d); do
  T init I
  s=$EPOCHREALTIME
  T activate genv activate
  T config genv config gpus 1
  T attach genv attach
  T detach genv detach
  T deactivate genv deactivate
  e=$EPOCHREALTIME
  echo "cycle $s $e"
done
""" % (tool.init, reps)
    return timings(tool.bash('eval "$(%s)"\n' % tool.init + body))


def floors(tool: Tool, python: str, reps: int) -> Dict[str, List[float]]:
    body = """
for i in $(seq %d); do
  T floor_bash bash -c :
  T floor_python %s -I -S -c pass
  T floor_python_subprocess %s -I -S -c 'import subprocess'
done
""" % (reps, python, python)
    return timings(tool.bash(body))


def shim(tool: Tool, reps: int) -> Dict[str, List[float]]:
    tool.reset()
    body = """
eval "$(%s)"
genv activate >/dev/null && genv config gpus 2 >/dev/null && genv attach >/dev/null
nvidia-smi -L | grep -c GPU >&2
for i in $(seq %d); do
  T shim nvidia-smi -L
  T direct %s/nvidia-smi -L
done
genv deactivate >/dev/null
""" % (tool.init, reps, FAKE)
    return timings(tool.bash(body))


def with_live_envs(tool: Tool, count: int, reps: int) -> Dict[str, List[float]]:
    """``genv envs`` / ``devices`` while ``count`` real background shells
    each hold an environment."""
    tool.reset()
    shells = []
    try:
        for _ in range(count):
            shells.append(tool.terminal('eval "$(%s)" && genv activate --name bench && echo ok > "%s/ready.$$"\n'
                                        % (tool.init, tool.base), subprocess.DEVNULL))
            # At most a few activations in flight (2 cores).
            while len(shells) - ready_count(tool) > 4:
                time.sleep(0.005)
        while ready_count(tool) < count:
            if any(shell.poll() is not None for shell in shells):
                raise RuntimeError("%s: a background shell exited" % tool.name)
            time.sleep(0.01)
        body = """
eval "$(%s)"
test "$(genv envs | grep -c bench)" = %d || { echo "expected %d environments" >&2; exit 1; }
for i in $(seq %d); do
  T envs_%d genv envs
  T devices_%d genv devices
done
""" % (tool.init, count, count, reps, count, count)
        return timings(tool.bash(body))
    finally:
        for shell in shells:
            shell.kill()
        for shell in shells:
            shell.wait()
        for name in os.listdir(tool.base):
            if name.startswith("ready."):
                os.unlink(os.path.join(tool.base, name))


def ready_count(tool: Tool) -> int:
    return sum(1 for name in os.listdir(tool.base) if name.startswith("ready."))


@contextlib.contextmanager
def gate(tool: Tool, setups: List[str], action: str,
         extra: Optional[Dict[str, str]] = None) -> Iterator[Tuple[float, List[List[str]]]]:
    """One terminal per setup script; once every one is set up, all are
    released at the same instant into ``action``, which must print one line
    ``done $EPOCHREALTIME ...``. Yields the release time and each terminal's
    done line (split), while every terminal is still alive."""
    go = os.path.join(tool.base, "go")
    if os.path.exists(go):
        os.unlink(go)
    os.mkfifo(go)
    shells: List["subprocess.Popen[str]"] = []

    def ready(number: int) -> None:
        stdout = shells[number].stdout
        assert stdout is not None
        said = stdout.readline().strip()
        if said != "ready":
            with open(os.path.join(tool.base, "terminal.%d.err" % number)) as handle:
                raise RuntimeError("%s: a terminal failed to set up (%r): %s" % (tool.name, said, handle.read()[-500:]))

    try:
        for number, setup in enumerate(setups):
            shells.append(tool.terminal(
                'exec 2>"%s/terminal.%d.err"\n%s && echo ready || echo failed\nread -r _ < "%s"; %s\n'
                # Stay alive (holding the GPUs) until every terminal is done.
                'read -r _\n' % (tool.base, number, setup, go, action), subprocess.PIPE, extra))
            # At most a few set-ups in flight (2 cores): the set-up is not
            # what is measured, and a crowd of them can outwait the lock.
            if number >= 4:
                ready(number - 4)
        for number in range(max(0, len(shells) - 4), len(shells)):
            ready(number)
        start = time.time()
        # Opening the writer releases every shell blocked in opening the
        # reader; it stays open until all are done, so a shell that reaches
        # its read later still finds its line.
        writer = os.open(go, os.O_WRONLY)
        try:
            os.write(writer, b"\n" * len(shells))
            lines = []
            for shell in shells:
                assert shell.stdout is not None
                line = shell.stdout.readline().split()
                assert line and line[0] == "done", line
                lines.append(line)
        finally:
            os.close(writer)
        yield start, lines
        for shell in shells:
            assert shell.stdin is not None
            shell.stdin.close()
            shell.wait(timeout=600)
    finally:
        for shell in shells:
            if shell.poll() is None:
                shell.kill()
            shell.wait()


def race(tool: Tool, racers: int) -> Dict[str, object]:
    """``racers`` terminals, each activated and configured for 1 GPU, run
    ``genv attach`` at the same instant on a 4-GPU machine."""
    tool.reset()
    setup = 'eval "$(%s)"; genv activate >/dev/null; genv config gpus 1 >/dev/null; true' % tool.init
    action = 'genv attach >/dev/null 2>&1; echo "done $EPOCHREALTIME ${CUDA_VISIBLE_DEVICES-}"'
    with gate(tool, [setup] * racers, action) as (start, lines):
        ends, winners = [], []
        for line in lines:
            ends.append(float(line[1]))
            winners.extend(visible(line[2] if len(line) > 2 else ""))
    wall = (max(ends) - start) * 1000
    double = len(winners) - len(set(winners))
    return {"wall_ms": wall, "winners": len(winners), "double_bookings": double}


# --- issue 9: GPU processes ----------------------------------------------------

SLEEP = "900"  # seconds the bench's GPU processes would live if not killed


def _wait_for(path: str, shell: "subprocess.Popen[str]", what: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if shell.poll() is not None:
            raise RuntimeError("%s exited (status %s)" % (what, shell.returncode))
        if time.monotonic() > deadline:
            raise RuntimeError("%s: timed out" % what)
        time.sleep(0.005)
    with open(path) as handle:
        return handle.read()


def _kinds(log: str) -> Dict[str, int]:
    """nvidia-smi calls by kind of fact: ``--query-gpu``, ``--query-compute-apps``,
    ``-L``, ``table`` (no mode argument), or the subcommand."""
    kinds: Dict[str, int] = {}
    for line in log.splitlines():
        args = line.split()
        kind = "table"
        for arg in args:
            if arg.startswith("--query-"):
                kind = arg.split("=", 1)[0]
                break
            if arg in ("-L", "--list-gpus", "dmon", "pmon"):
                kind = arg
                break
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def _direct_calls(name: str, log: str, program: Optional[str] = None) -> str:
    """A bash function ``name`` that makes the logged nvidia-smi calls
    straight to ``program`` (the fake), with the same arguments."""
    program = program or os.path.join(FAKE, "nvidia-smi")
    calls = ["%s %s >/dev/null" % (shlex.quote(program), " ".join(shlex.quote(arg) for arg in line.split()))
             for line in log.splitlines()]
    return "%s() { %s; }\n" % (name, "; ".join(calls) or ":")


def _replay(folder: str, logs: List[str], env: Dict[str, str]) -> str:
    """An ``nvidia-smi`` in ``folder`` (returned) that answers each call
    logged in ``logs`` with the fake's recorded answer (``cat`` of a file, from
    one ``sh``), and passes anything else on to the fake. The fake is a bash
    script whose time with 100 processes is ~50 ms and varies by ±10 ms;
    subtracting such calls from a command's time drowns what genv itself
    costs. The replayed calls cost ~1 ms and vary little, and genv, its shim
    and the direct calls it is compared with all make them alike."""
    fake = os.path.join(FAKE, "nvidia-smi")
    os.makedirs(folder, exist_ok=True)
    cases = []
    seen: Dict[str, str] = {}
    for log in logs:
        for line in log.splitlines():
            if not line or line in seen:
                continue
            out = os.path.join(folder, "answer.%d" % len(seen))
            env_fake = {key: value for key, value in env.items() if key != "FAKE_NVIDIA_SMI_LOG"}
            done = subprocess.run([fake] + line.split(), env=env_fake, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
            with open(out, "wb") as handle:
                handle.write(done.stdout)
            seen[line] = out
            cases.append("%s) cat %s; exit %d ;;" % (shlex.quote(line), shlex.quote(out), done.returncode))
    script = os.path.join(folder, "nvidia-smi")
    with open(script, "w") as handle:
        handle.write('#!/bin/sh\ncase "$*" in\n%s\nesac\nexec %s "$@"\n' % ("\n".join(cases), shlex.quote(fake)))
    os.chmod(script, 0o755)
    return folder


def with_processes(tool: Tool, count: int, reps: int, python: str) -> Tuple[Dict[str, List[float]], Dict[str, Any]]:
    """``genv ps``, ``devices`` and ``attach`` and the shim's process modes
    while ``count`` real processes (``sleep``) are on the fake's 4 GPUs: half
    started by 2 genv terminals that hold GPUs (on their GPUs), half by the
    bench outside genv, spread over the held GPUs and a third one. The fourth
    GPU stays free for ``attach``. Also counts the nvidia-smi calls each
    command makes (FAKE_NVIDIA_SMI_LOG) and the Python starts of each shim
    mode."""
    tool.reset()
    base = tool.base
    apps = os.path.join(base, "apps")
    log = os.path.join(base, "smi.log")
    pylog = os.path.join(base, "py.log")
    wrapper = os.path.join(base, "python-logged")
    for path in [apps, log, pylog] + [os.path.join(base, "holder.%d" % n) for n in range(2)]:
        if os.path.exists(path):
            os.unlink(path)
    with open(wrapper, "w") as handle:
        handle.write('#!/bin/sh\necho "$*" >> %s\nexec %s "$@"\n' % (shlex.quote(pylog), shlex.quote(python)))
    os.chmod(wrapper, 0o755)
    extra = {"FAKE_NVIDIA_SMI_APPS": apps}
    per_holder = count // 4
    holders: List["subprocess.Popen[str]"] = []
    sleepers: List[Tuple[int, int]] = []  # (pid, GPU)
    outside: List["subprocess.Popen[bytes]"] = []
    try:
        held: List[Tuple[str, int]] = []
        for number in range(2):
            done = os.path.join(base, "holder.%d" % number)
            holders.append(tool.terminal(
                'eval "$(%s)" && genv activate --name holder >/dev/null && genv config gpus 1 >/dev/null '
                '&& genv attach >/dev/null || exit 1\n'
                'p=; for i in $(seq %d); do sleep %s & p="$p $!"; done\n'
                'echo "$GENV_ENVIRONMENT_ID $GENV_ATTACHED_GPUS$p" > "%s.tmp" && mv "%s.tmp" "%s"\n'
                % (tool.init, per_holder, SLEEP, done, done, done), subprocess.DEVNULL, extra))
            fields = _wait_for(done, holders[-1], "%s: a holder terminal" % tool.name).split()
            held.append((fields[0], int(fields[1])))
            sleepers.extend((int(pid), int(fields[1])) for pid in fields[2:])
        for _ in range(count - 2 * per_holder):
            outside.append(subprocess.Popen(["sleep", SLEEP], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, env=tool.env, cwd=base))
        others = [gpu for gpu in range(4) if gpu not in [gpu for _, gpu in held]]
        busy_gpu, free_gpu = others[0], others[1]
        lines = []
        for number, (pid, gpu) in enumerate(sleepers):
            lines.append("%d %d %d /usr/bin/python3 train.py" % (pid, gpu, 1000 + number))
        spread = [gpu for _, gpu in held] + [busy_gpu]
        for number, process in enumerate(outside):
            lines.append("%d %d %d /usr/bin/python3 other.py" % (process.pid, spread[number % 3], 500 + number))
        with open(apps, "w") as handle:
            handle.write("".join(line + "\n" for line in lines))

        # The calls each command makes (device list cached: a warm machine).
        probe = """
eval "$(%(init)s)"
genv ps >/dev/null && genv devices >/dev/null || exit 1
logged() {
  local name=$1; shift; : > %(log)s
  export FAKE_NVIDIA_SMI_LOG=%(log)s
  "$@" >/dev/null || { echo "$* failed" >&2; exit 1; }
  unset FAKE_NVIDIA_SMI_LOG
  echo "== $name"; cat %(log)s
}
logged ps genv ps
logged devices genv devices
genv activate >/dev/null && genv config gpus 1 >/dev/null && genv attach >/dev/null && genv detach >/dev/null || exit 1
logged attach genv attach
case " %(free)s " in *" $GENV_ATTACHED_GPUS "*) ;; *) echo "attach got '$GENV_ATTACHED_GPUS', expected one of %(free)s" >&2; exit 1 ;; esac
genv deactivate >/dev/null
genv activate --id %(holder)s >/dev/null || exit 1
logged shim_table nvidia-smi
logged shim_list nvidia-smi -L
py() {
  local name=$1; shift; : > %(pylog)s
  GENV_PYTHON=%(wrapper)s "$@" >/dev/null 2>&1 || { echo "through the shim: $* failed" >&2; exit 1; }
  echo "fact python_$name $(grep -c . %(pylog)s)"
}
py table nvidia-smi
py apps nvidia-smi --query-compute-apps=pid,used_memory --format=csv
py list nvidia-smi -L
py query_gpu nvidia-smi --query-gpu=index,memory.used --format=csv
py dmon nvidia-smi dmon -c 1
genv deactivate >/dev/null
""" % {"init": tool.init, "log": shlex.quote(log), "holder": held[0][0],
       # The GPU with processes from outside genv is busy: attach avoids it.
       "free": " ".join(str(gpu) for gpu in ([free_gpu] if outside else others)),
       "pylog": shlex.quote(pylog), "wrapper": shlex.quote(wrapper)}
        out = tool.script(probe, extra=extra)
        calls: Dict[str, str] = {}
        pythons: Dict[str, int] = {}
        name = None
        for line in out.splitlines():
            if line.startswith("== "):
                name = line[3:]
                calls[name] = ""
            elif line.startswith("fact python_"):
                _, key, value = line.split()
                pythons[key[len("python_"):]] = int(value)
            elif name is not None:
                calls[name] += line + "\n"

        n = count
        # The timed loop's nvidia-smi calls are replayed (see _replay).
        replay = _replay(os.path.join(base, "replay"), list(calls.values()), tool.environ(extra))
        smi = os.path.join(replay, "nvidia-smi")
        body = _direct_calls("S_ps", calls["ps"], smi) + _direct_calls("S_devices", calls["devices"], smi)
        body += _direct_calls("S_attach", calls["attach"], smi)
        body += """
export PATH=%(replay)s:$PATH
eval "$(%(init)s)"
genv activate >/dev/null && genv config gpus 1 >/dev/null || exit 1
for i in $(seq %(reps)d); do
  T ps_%(n)d genv ps
  T ps_smi_%(n)d S_ps
  T devices_procs_%(n)d genv devices
  T devices_procs_smi_%(n)d S_devices
  T attach_procs_%(n)d genv attach
  test -n "$GENV_ATTACHED_GPUS" || { echo "attach failed" >&2; exit 1; }
  T attach_procs_smi_%(n)d S_attach
  T detach_procs_%(n)d genv detach
  T floor_procs_%(n)d %(python)s -I -S -c pass
done
genv deactivate >/dev/null
genv activate --id %(holder)s >/dev/null || exit 1
for i in $(seq %(shim_reps)d); do
  T shim_table_%(n)d nvidia-smi
  T direct_table_%(n)d %(fake)s --id="$GENV_ATTACHED_GPUS"
  T shim_list_%(n)d nvidia-smi -L
  T direct_list_%(n)d %(fake)s --id="$GENV_ATTACHED_GPUS" -L
  T floor_procs_%(n)d %(python)s -I -S -c pass
done
genv deactivate >/dev/null
""" % {"init": tool.init, "reps": max(3, reps // 2), "n": n, "holder": held[0][0], "shim_reps": reps,
       "fake": shlex.quote(smi), "python": shlex.quote(python), "replay": shlex.quote(replay)}
        data = timings(tool.bash(body, extra=extra))
        facts = {"calls": {name: _kinds(log_text) for name, log_text in calls.items()},
                 "python_starts": pythons, "processes": count}
        return data, facts
    finally:
        for shell in holders:
            shell.kill()
        for shell in holders:
            shell.wait()
        for pid, _ in sleepers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in outside:
            process.kill()
        for process in outside:
            process.wait()


def attach_without_smi(tool: Tool, reps: int) -> Dict[str, List[float]]:
    """The attach cycle on mock GPUs (GENV_DEVICES=4): no nvidia-smi call,
    so no busy-GPU check: what attach costs without it."""
    tool.reset()
    body = """
eval "$(%s)"
for i in $(seq %d); do
  genv activate >/dev/null && genv config gpus 1 >/dev/null || exit 1
  T attach_nosmi genv attach
  test -n "$GENV_ATTACHED_GPUS" || { echo "attach failed" >&2; exit 1; }
  genv detach >/dev/null; genv deactivate >/dev/null
done
""" % (tool.init, reps)
    return timings(tool.bash(body, extra={"GENV_DEVICES": "4"}))


# --- issue 10: shares, packing, waiting -----------------------------------------

def share_cycle(tool: Tool, reps: int) -> Dict[str, List[float]]:
    """The cycle with ``genv config gpu-memory 8g``: attach places a share.
    A plain attach is timed in the same loop, for the comparison."""
    tool.reset()
    body = """
eval "$(%s)"
for i in $(seq %d); do
  genv activate >/dev/null && genv config gpus 1 >/dev/null || exit 1
  T share_plain_attach genv attach
  genv detach >/dev/null; genv deactivate >/dev/null
  s=$EPOCHREALTIME
  T share_activate genv activate
  T share_config genv config gpus 1
  T share_memory genv config gpu-memory 8g
  T share_attach genv attach
  test -n "$GENV_ATTACHED_GPUS" && test -n "${GENV_GPU_MEMORY-}" || { echo "no share attached" >&2; exit 1; }
  T share_detach genv detach
  T share_deactivate genv deactivate
  e=$EPOCHREALTIME
  echo "share_cycle $s $e"
done
""" % (tool.init, reps)
    return timings(tool.bash(body))


# Sizes of the packing run's environments, in turn; None: a whole GPU.
PACK_SIZES = ["4g", "8g", "16g", "4g", "24g", "8g", None, "4g", "16g", "8g"]
PACK_GPUS = 8


def packing(tool: Tool, terminals: int) -> Dict[str, Any]:
    """``terminals`` environments of mixed sizes (PACK_SIZES) attach at the
    same instant onto 8 mock GPUs of 80g; then ``genv devices --json`` must
    show no GPU over-committed."""
    tool.reset()
    extra = {"GENV_DEVICES": str(PACK_GPUS)}
    setups = []
    for number in range(terminals):
        size = PACK_SIZES[number % len(PACK_SIZES)]
        setups.append('eval "$(%s)" && genv activate >/dev/null && genv config gpus 1 >/dev/null%s' % (
            tool.init, " && genv config gpu-memory %s >/dev/null" % size if size else ""))
    # (attach's complaints go to the terminal's error file.)
    action = 'genv attach >/dev/null; echo "done $EPOCHREALTIME ${GENV_ATTACHED_GPUS:--} $GENV_ENVIRONMENT_ID"'
    with gate(tool, setups, action, extra) as (start, lines):
        devices = json.loads(tool.script('eval "$(%s)"\ngenv devices --json\n' % tool.init, extra=extra))
    timeouts = 0
    for number in range(terminals):
        with open(os.path.join(tool.base, "terminal.%d.err" % number)) as handle:
            timeouts += "gave up after" in handle.read()
    wall = (max(float(line[1]) for line in lines) - start) * 1000
    attached = {line[3] for line in lines if line[2] != "-"}
    over, whole_shared, placed, total = 0, 0, 0, 0
    seen: Set[str] = set()
    for gpu in devices:
        holders = gpu["environments"]
        shares = [holder["memory"] for holder in holders]
        seen.update(holder["id"] for holder in holders)
        total += gpu["memory_total"]
        if None in shares:
            placed += gpu["memory_total"]
            if len(holders) > 1:
                whole_shared += 1
        else:
            placed += sum(shares)
            if sum(shares) > gpu["memory_total"]:
                over += 1
    return {"wall_ms": wall, "terminals": terminals, "gpus": len(devices), "attached": len(attached),
            "refused": terminals - len(attached), "lock_timeouts": timeouts, "over_committed": over,
            "whole_shared": whole_shared, "placed_mib": placed, "total_mib": total, "consistent": seen == attached}


def _cpu_ticks(pid: int) -> Optional[int]:
    """utime + stime (+ reaped children's) of a process, in clock ticks."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    return sum(int(field) for field in fields[11:15])


def _rows(path: str) -> List[List[str]]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [line.split() for line in handle if line.strip()]


def waiting(tool: Tool, waiters: int, idle: float) -> Dict[str, Any]:
    """``waiters`` terminals run ``genv attach --wait`` on a machine whose
    GPUs (as many, from the fake) are all held by as many holder terminals.
    Measures the CPU the waiting processes use over ``idle`` seconds, then
    releases the GPUs one by one (kill -9 and deactivate in turn) and times
    each release to the next waiter's attach."""
    tool.reset()
    base = tool.base
    extra = {"FAKE_NVIDIA_SMI_GPUS": str(waiters)}
    attached_log = os.path.join(base, "attached")
    for name in os.listdir(base):
        if name.startswith(("held.", "released.", "attached")):
            os.unlink(os.path.join(base, name))
    holders: List["subprocess.Popen[str]"] = []
    queue: List["subprocess.Popen[str]"] = []
    try:
        held = []
        for number in range(waiters):
            done = os.path.join(base, "held.%d" % number)
            holders.append(tool.terminal(
                'eval "$(%s)" && genv activate >/dev/null && genv attach --count 1 >/dev/null || exit 1\n'
                'echo "$GENV_ATTACHED_GPUS" > "%s.tmp" && mv "%s.tmp" "%s"\n' % (tool.init, done, done, done),
                subprocess.DEVNULL, extra))
            held.append(_wait_for(done, holders[-1], "%s: a holder terminal" % tool.name).strip())
        if sorted(held) != sorted(str(gpu) for gpu in range(waiters)):
            raise RuntimeError("%s: holders got GPUs %s" % (tool.name, held))
        for number in range(waiters):
            queue.append(tool.terminal(
                'eval "$(%s)" && genv activate >/dev/null || exit 1\n'
                'genv attach --count 1 --wait >/dev/null 2>&1\n'
                'echo "$EPOCHREALTIME ${GENV_ATTACHED_GPUS:--} $GENV_ENVIRONMENT_ID" >> "%s"\n'
                % (tool.init, attached_log), subprocess.DEVNULL, extra))
        # Everyone in line?
        deadline = time.monotonic() + 120
        while True:
            envs = json.loads(tool.script('eval "$(%s)"\ngenv envs --json\n' % tool.init, extra=extra))
            pids = [env["waiting"]["pid"] for env in envs if env.get("waiting")]
            if len(pids) == waiters:
                break
            if any(shell.poll() is not None for shell in queue) or time.monotonic() > deadline:
                raise RuntimeError("%s: only %d of %d waiters got in line" % (tool.name, len(pids), waiters))
            time.sleep(0.1)
        for pid in pids:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                if b"genv-sh-attach" not in handle.read():
                    raise RuntimeError("%s: waiting pid %d is not genv-sh-attach" % (tool.name, pid))
        time.sleep(0.5)
        before = [_cpu_ticks(pid) for pid in pids]
        began = time.monotonic()
        time.sleep(idle)
        after = [_cpu_ticks(pid) for pid in pids]
        interval = time.monotonic() - began
        if None in before or None in after:
            raise RuntimeError("%s: a waiter stopped waiting while idle" % tool.name)
        cpu = sum(b - a for a, b in zip(before, after) if a is not None and b is not None) / os.sysconf(
            "SC_CLK_TCK")

        latencies: List[Optional[float]] = []
        methods: List[str] = []
        for number, shell in enumerate(holders):
            time.sleep(0.05 + 0.25 * random.random())  # any phase of the waiters' polls
            if number % 2 == 0:
                methods.append("kill -9")
                released = time.time()
                shell.kill()
            else:
                methods.append("deactivate")
                mark = os.path.join(base, "released.%d" % number)
                assert shell.stdin is not None
                shell.stdin.write('s=$EPOCHREALTIME; genv deactivate >/dev/null 2>&1; echo "$s" > "%s.tmp"; '
                                  'mv "%s.tmp" "%s"\n' % (mark, mark, mark))
                shell.stdin.flush()
                released = float(_wait_for(mark, shell, "%s: a holder's deactivate" % tool.name))
            deadline = time.monotonic() + 30
            rows = _rows(attached_log)
            while len(rows) <= number and time.monotonic() < deadline:
                time.sleep(0.002)
                rows = _rows(attached_log)
            if len(rows) <= number:
                latencies.append(None)
                break
            latencies.append((float(rows[number][0]) - released) * 1000)
        time.sleep(0.2)
        rows = _rows(attached_log)
        gpus = [row[1] for row in rows]
        measured = [latency for latency in latencies if latency is not None]
        ok = (len(rows) == waiters and len(measured) == waiters and "-" not in gpus and len(set(gpus)) == waiters)
        return {"waiters": waiters, "idle_s": interval, "cpu_s": cpu, "cpu_total_pct": cpu / interval * 100,
                "cpu_per_waiter_pct": cpu / interval / waiters * 100, "latencies_ms": latencies,
                "methods": methods, "attached": len(rows), "ok": ok,
                "latency_median_ms": median(measured), "latency_max_ms": max(measured) if measured else None}
    finally:
        for shell in holders + queue:
            if shell.poll() is None:
                shell.kill()
            shell.wait()


# --- issue 11: enforce and the monitor -------------------------------------------

ADMIN_SHARE = "2g"  # each attached environment's share: 20 of them fit a fake 40 GB GPU


def pip_install(python: str, packages: List[str]) -> Optional[str]:
    """Install ``packages`` with pip into the venv whose interpreter is
    ``python``: its own pip, else the base interpreter's (``pip --python``),
    else ensurepip first. None when it worked; else why not (one line)."""
    base_python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable

    def attempt(command: List[str]) -> Optional[str]:
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as error:
            return str(error)
        if done.returncode == 0:
            return None
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines()
                 if line.strip() and not line.startswith("WARNING")]
        return lines[-1] if lines else "exit status %d" % done.returncode

    install = ["install", "-q", "--disable-pip-version-check", *packages]
    if attempt([python, "-m", "pip", "--version"]) is None:
        why = attempt([python, "-m", "pip", *install])
    else:
        why = attempt([base_python, "-m", "pip", "--python", python, *install])
        if why is not None and attempt([python, "-m", "ensurepip", "-q"]) is None:
            why = attempt([python, "-m", "pip", *install])
    return None if why is None else "pip install %s failed: %s" % (" ".join(packages), why)


def _kill_all(shells: List["subprocess.Popen[str]"], pids: List[int],
              others: List["subprocess.Popen[bytes]"]) -> None:
    for shell in shells:
        if shell.poll() is None:
            shell.kill()
    for shell in shells:
        shell.wait()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for process in others:
        process.kill()
    for process in others:
        process.wait()


def _metric(text: str, name: str) -> float:
    """The sum of a metric's samples in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _start_monitor(tool: Tool, extra: Dict[str, str]) -> Tuple["subprocess.Popen[str]", str]:
    """``genv monitor --port 0 --interval 0`` on the loopback; its URL."""
    import select

    errors = os.path.join(tool.base, "monitor.err")
    with open(errors, "w") as stderr:
        monitor = subprocess.Popen(["genv", "monitor", "--port", "0", "--interval", "0", "--address", "127.0.0.1"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                                   env=tool.environ(extra), cwd=tool.base, text=True)
    assert monitor.stdout is not None
    ready, _, _ = select.select([monitor.stdout], [], [], 60)
    line = monitor.stdout.readline() if ready else ""
    words = [word for word in line.split() if word.startswith("http://")]
    if not words:
        monitor.kill()
        monitor.wait()
        with open(errors) as handle:
            raise RuntimeError("%s: genv monitor did not start: %r %s" % (tool.name, line, handle.read()[-1000:]))
    return monitor, words[0]


def _scrape(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as answer:
        body: bytes = answer.read()
    return body.decode("utf-8")


def administration(tool: Tool, count: int, reps: int, python: str,
                   monitor_unavailable: Optional[str]) -> Tuple[Dict[str, List[float]], Dict[str, Any]]:
    """``genv enforce`` (a dry run) and one ``/metrics`` scrape of ``genv
    monitor --interval 0`` while ``count`` real background terminals each
    hold an environment and ``count`` real processes (``sleep``) are on the
    fake's GPUs: three quarters of the terminals attached a share of a GPU
    and started one process on it (managed), the rest of the processes were
    started by the bench outside genv (unmanaged: enforce's findings). Each
    is timed beside the same nvidia-smi calls made straight to the fake (its
    calls are logged once with FAKE_NVIDIA_SMI_LOG; the device list is
    cached, as on a warm machine). ``monitor_unavailable``: why the scrape
    cannot run (prometheus-client missing), or None."""
    tool.reset()
    base = tool.base
    apps = os.path.join(base, "apps")
    log = os.path.join(base, "smi.log")
    attached = count - count // 4
    unmanaged = count - attached
    gpus = max(8, -(-attached // 16))
    extra = {"FAKE_NVIDIA_SMI_APPS": apps, "FAKE_NVIDIA_SMI_GPUS": str(gpus),
             # The cached device list stays valid however long the set-up takes.
             "GENV_DEVICES_TTL": "86400"}
    for name in os.listdir(base):
        if name.startswith(("apps", "smi.log", "admin.", "findings")):
            os.unlink(os.path.join(base, name))
    shells: List["subprocess.Popen[str]"] = []
    sleepers: List[Tuple[int, int]] = []  # (pid, GPU)
    outside: List["subprocess.Popen[bytes]"] = []
    monitor: Optional["subprocess.Popen[str]"] = None
    try:
        def done_count() -> int:
            return sum(1 for name in os.listdir(base) if name.startswith("admin.") and not name.endswith(".tmp"))

        for number in range(count):
            done = os.path.join(base, "admin.%d" % number)
            if number < attached:
                setup = ('genv config gpus 1 >/dev/null && genv config gpu-memory %s >/dev/null && '
                         'genv attach >/dev/null || exit 1\nsleep %s & p=$!\n' % (ADMIN_SHARE, SLEEP))
            else:
                setup = "p=\n"
            shells.append(tool.terminal(
                'eval "$(%s)" && genv activate --name admin >/dev/null || exit 1\n%s'
                'echo "$GENV_ENVIRONMENT_ID ${GENV_ATTACHED_GPUS:--} ${p:--}" > "%s.tmp" && mv "%s.tmp" "%s"\n'
                % (tool.init, setup, done, done, done), subprocess.DEVNULL, extra))
            # At most a few set-ups in flight (2 cores).
            while len(shells) - done_count() > 4:
                if any(shell.poll() is not None for shell in shells):
                    raise RuntimeError("%s: a terminal failed to set up" % tool.name)
                time.sleep(0.005)
        for number, shell in enumerate(shells):
            fields = _wait_for(os.path.join(base, "admin.%d" % number), shell, "%s: a terminal" % tool.name).split()
            if number < attached:
                if fields[1] == "-" or fields[2] == "-":
                    raise RuntimeError("%s: terminal %d attached no GPU" % (tool.name, number))
                sleepers.append((int(fields[2]), int(fields[1])))
        for _ in range(unmanaged):
            outside.append(subprocess.Popen(["sleep", SLEEP], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, env=tool.env, cwd=base))
        lines = ["%d %d %d /usr/bin/python3 train.py" % (pid, gpu, 1000 + number % 1000)
                 for number, (pid, gpu) in enumerate(sleepers)]
        lines += ["%d %d %d /usr/bin/python3 other.py" % (process.pid, number % gpus, 500 + number % 1000)
                  for number, process in enumerate(outside)]
        with open(apps + ".tmp", "w") as handle:
            handle.write("".join(line + "\n" for line in lines))
        os.rename(apps + ".tmp", apps)

        # The calls enforce makes, and what it finds (exit 1: it found some).
        probe = """
genv devices >/dev/null || exit 1
test "$(genv envs | grep -c admin)" = %(count)d || { echo "expected %(count)d environments" >&2; exit 1; }
: > %(log)s
FAKE_NVIDIA_SMI_LOG=%(log)s genv enforce --json > %(findings)s
rc=$?
test $rc -le 1 || { echo "genv enforce failed ($rc)" >&2; exit 1; }
echo "fact rc $rc"
cat %(log)s
""" % {"count": count, "log": shlex.quote(log), "findings": shlex.quote(os.path.join(base, "findings.json"))}
        out = tool.script(probe, extra=extra)
        calls = "".join(line + "\n" for line in out.splitlines() if not line.startswith("fact "))
        with open(os.path.join(base, "findings.json")) as handle:
            findings: Dict[str, int] = {}
            for finding in json.load(handle):
                findings[finding["rule"]] = findings.get(finding["rule"], 0) + 1
        n = count
        body = _direct_calls("S_enforce", calls) + """
for i in $(seq %(reps)d); do
  T enforce_%(n)d genv enforce
  T enforce_smi_%(n)d S_enforce
  T floor_admin_%(n)d %(python)s -I -S -c pass
done
""" % {"reps": reps, "n": n, "python": shlex.quote(python)}
        data = timings(tool.bash(body, extra=extra))
        facts: Dict[str, Any] = {"environments": count, "processes": count, "attached": attached,
                                 "unmanaged": unmanaged, "gpus": gpus, "findings": findings,
                                 "calls": {"enforce": _kinds(calls)}, "scrape": None}

        if monitor_unavailable is None:
            monitor_log = os.path.join(base, "smi.log.monitor")
            env = dict(extra, FAKE_NVIDIA_SMI_LOG=monitor_log)
            monitor, url = _start_monitor(tool, env)
            text = _scrape(url)  # (waits for the first reading, made at start)
            seen = {"environments": _metric(text, "genv_environments"),
                    "unmanaged": _metric(text, "genv_unmanaged_processes"),
                    "processes": _metric(text, "genv_gpu_processes")}
            if seen != {"environments": count, "unmanaged": unmanaged, "processes": count}:
                raise RuntimeError("%s: the monitor shows %s" % (tool.name, seen))
            open(monitor_log, "w").close()
            _scrape(url)
            with open(monitor_log) as handle:
                scrape_calls = handle.read()
            commands = [[os.path.join(FAKE, "nvidia-smi")] + line.split() for line in scrape_calls.splitlines()]
            environ = tool.environ(env)  # (the direct calls log too, as the monitor's do)
            scrapes, smi = [], []
            for _ in range(reps):
                started = time.perf_counter()
                _scrape(url)
                scrapes.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                for command in commands:
                    subprocess.run(command, env=environ, stdout=subprocess.DEVNULL, check=True)
                smi.append((time.perf_counter() - started) * 1000)
            data["scrape_%d" % n] = scrapes
            data["scrape_smi_%d" % n] = smi
            facts["calls"]["scrape"] = _kinds(scrape_calls)
            facts["scrape"] = seen
        return data, facts
    finally:
        if monitor is not None:
            monitor.terminate()
            try:
                monitor.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                monitor.kill()
                monitor.communicate()
        _kill_all(shells, [pid for pid, _ in sleepers], outside)


# --- issue 12: genv run, the SDK, Jupyter kernels ----------------------------------


def run_overhead(tool: Tool, reps: int, python: str) -> Tuple[Dict[str, List[float]], Dict[str, Any]]:
    """``genv run -- true`` and ``genv run --gpus 1 -- true`` beside ``true``
    run directly (the same program), the nvidia-smi calls each makes (logged
    once, then made straight to the fake with the same arguments) and the
    bare interpreter, all in the same loop. genv is run as a script or a
    kernel runs it: no shell integration."""
    tool.reset()
    log = os.path.join(tool.base, "smi.log")
    true = shutil.which("true", path=tool.env["PATH"]) or "/bin/true"
    probe = """
genv devices >/dev/null || exit 1
logged() {
  local name=$1; shift; : > %(log)s
  FAKE_NVIDIA_SMI_LOG=%(log)s "$@" >/dev/null || { echo "$* failed" >&2; exit 1; }
  echo "== $name"; cat %(log)s
}
logged plain genv run -- true
logged gpu genv run --gpus 1 -- true
test "$(genv envs --json)" = "[]" || { echo "genv run left an environment" >&2; exit 1; }
""" % {"log": shlex.quote(log)}
    calls: Dict[str, str] = {}
    name = None
    extra = {"GENV_DEVICES_TTL": "86400"}  # the cached device list stays valid for the whole run
    for line in tool.script(probe, extra=extra).splitlines():
        if line.startswith("== "):
            name = line[3:]
            calls[name] = ""
        elif name is not None:
            calls[name] += line + "\n"
    body = _direct_calls("S_plain", calls["plain"]) + _direct_calls("S_gpu", calls["gpu"]) + """
for i in $(seq %(reps)d); do
  T run_direct %(true)s
  T run_plain genv run -- true
  T run_plain_smi S_plain
  T run_gpu genv run --gpus 1 -- true
  T run_gpu_smi S_gpu
  T floor_run %(python)s -I -S -c pass
done
""" % {"reps": reps, "true": shlex.quote(true), "python": shlex.quote(python)}
    return timings(tool.bash(body, extra=extra)), {name: _kinds(text) for name, text in calls.items()}


def sdk_import(tool: Tool, reps: int, python: str) -> Dict[str, List[float]]:
    """``import genv.sdk`` in a bare interpreter, beside the bare interpreter."""
    code = shlex.quote("import sys; sys.path.insert(0, %r); import genv.sdk" % REPO)
    body = """
%(python)s -I -S -c %(code)s || exit 1
for i in $(seq %(reps)d); do
  T sdk_import %(python)s -I -S -c %(code)s
  T sdk_floor %(python)s -I -S -c pass
done
""" % {"reps": reps, "python": shlex.quote(python), "code": code}
    return timings(tool.bash(body))


# A recorded answer of `scontrol -d -o show job` (Slurm 22.05), trimmed, with
# this machine's host name as the node: job 41 holds GPUs 0 and 1.
SLURM_ANSWER = ("JobId=41 JobName=train UserId=%(user)s(%(uid)d) GroupId=%(user)s(%(uid)d) MCS_label=N/A "
                "Priority=4294901758 Nice=0 Account=(null) QOS=(null) JobState=RUNNING Reason=None "
                "Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:04 "
                "TimeLimit=UNLIMITED StartTime=2026-12-07T19:12:04 EndTime=Unknown Partition=debug "
                "NodeList=%(node)s BatchHost=%(node)s NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 "
                "TRES=cpu=1,node=1,billing=1 JOB_GRES=gpu:2   Nodes=%(node)s CPU_IDs=0 Mem=0 GRES=gpu:2(IDX:0-1) "
                "MinCPUsNode=1 Features=(null) Command=/home/%(user)s/train.sh WorkDir=/home/%(user)s "
                "StdOut=/home/%(user)s/slurm-41.out Power= TresPerNode=gres:gpu:2 \n")


SLURM_COMMANDS = ("devices", "ps", "attach")


def slurm_costs(tool: Tool, reps: int, python: str, real: bool) -> Tuple[Dict[str, List[float]], Dict[str, Any]]:
    """genv off Slurm, with GENV_SLURM=0, on a Slurm node and in a job: the
    same commands in one loop, and the scontrol calls of each (counted by a
    logging scontrol first on PATH)."""
    import pwd

    tool.reset()
    folder = os.path.join(tool.base, "slurm")
    os.makedirs(folder, exist_ok=True)
    log = os.path.join(folder, "scontrol.log")
    cluster = None
    facts: Dict[str, Any] = {"source": "replayed"}
    try:
        if real:
            sys.path.insert(0, os.path.join(REPO, "tests"))
            import slurm_cluster

            why = slurm_cluster.missing()
            if why is not None:
                raise RuntimeError("--slurm-real: %s" % why)
            cluster = slurm_cluster.Cluster(os.path.join(folder, "cluster"))
            cluster.start()
            job = cluster.client(["sbatch", "--parsable", "--gres=gpu:2", "-o", "/dev/null", "--wrap",
                                  "sleep 3600"]).stdout.strip()
            deadline = time.monotonic() + 60
            while "JobState=RUNNING" not in cluster.client(["scontrol", "-o", "show", "job", job]).stdout:
                if time.monotonic() > deadline:
                    raise RuntimeError("the job did not start")
                time.sleep(0.1)
            conf, real_scontrol = cluster.conf, slurm_cluster.which("scontrol")
            facts["source"] = "a real single-node cluster, %s" % cluster.client(["scontrol", "-V"]).stdout.strip()
        else:
            job = "41"
            conf = os.path.join(folder, "slurm.conf")
            with open(conf, "w") as handle:
                handle.write("# genv's bench: a Slurm configuration that scontrol is not asked to read\n")
            answer = os.path.join(folder, "answer")
            me = pwd.getpwuid(os.getuid())
            with open(answer, "w") as handle:
                handle.write(SLURM_ANSWER % {"user": me.pw_name, "uid": me.pw_uid,
                                             "node": os.uname().nodename.split(".")[0]})
            real_scontrol = os.path.join(folder, "replay")
            with open(real_scontrol, "w") as handle:
                handle.write("#!/bin/bash\ncase \"$*\" in\n'-d -o show job'*) cat %s ;;\n"
                             "listpids) echo 'PID      JOBID    STEPID   LOCALID GLOBALID' ;;\n*) exit 1 ;;\nesac\n"
                             % shlex.quote(answer))
            os.chmod(real_scontrol, 0o755)
        logging = os.path.join(folder, "bin")
        os.makedirs(logging, exist_ok=True)
        with open(os.path.join(logging, "scontrol"), "w") as handle:
            handle.write("#!/bin/bash\necho \"$*\" >>%s\nexec %s \"$@\"\n" % (shlex.quote(log),
                                                                         shlex.quote(real_scontrol)))
        os.chmod(os.path.join(logging, "scontrol"), 0o755)
        path = logging + ":" + tool.env["PATH"]
        # Timed: scontrol itself (the replay where there is no real one), not the logging one.
        replay_bin = os.path.join(folder, "replay-bin")
        os.makedirs(replay_bin, exist_ok=True)
        os.symlink(real_scontrol, os.path.join(replay_bin, "scontrol"))
        timed_path = replay_bin + ":" + tool.env["PATH"]
        modes = {"off": "", "disabled": "GENV_SLURM=0", "node": "SLURM_CONF=%s" % shlex.quote(conf),
                 "job": "SLURM_CONF=%s SLURM_JOB_ID=%s GENV_SLURM_TMPDIR=%s" % (
                     shlex.quote(conf), job, shlex.quote(os.path.join(folder, "jobs")))}
        probe = 'eval "$(genv init -)"\n'
        for mode, assignments in modes.items():
            probe += """: > %(log)s
%(set)s genv devices >/dev/null || exit 1
echo "== $(wc -l < %(log)s) %(mode)s devices"; : > %(log)s
%(set)s genv ps >/dev/null || exit 1
echo "== $(wc -l < %(log)s) %(mode)s ps"; : > %(log)s
%(set)s genv activate || exit 1
%(set)s genv attach --count 1 || exit 1
echo "== $(wc -l < %(log)s) %(mode)s attach"; : > %(log)s
%(set)s genv status >/dev/null || exit 1
echo "== $(wc -l < %(log)s) %(mode)s status"; : > %(log)s
%(set)s genv deactivate || exit 1
echo "== $(wc -l < %(log)s) %(mode)s deactivate"
""" % {"log": shlex.quote(log), "set": assignments, "mode": mode}
        calls: Dict[str, Dict[str, int]] = {}
        for line in tool.script(probe, extra={"PATH": path}).splitlines():
            if line.startswith("== "):
                number, mode, command = line[3:].split()
                calls.setdefault(mode, {})[command] = int(number)
        facts["calls"] = calls
        # The import, timed inside the interpreter (a second interpreter's
        # start varies more than the import takes), after what a command has
        # imported already.
        code = ("import os, sys, time, __future__; sys.path.insert(0, %r); import genv.errors; "
                "s = time.perf_counter(); import genv.slurm; e = time.perf_counter(); "
                "print('slurm_import %%.9f %%.9f' %% (s, e))" % REPO)
        # One function per mode and command: a variable assigned before a
        # function call holds for the call (and what it runs), and no extra
        # process is started.
        body = 'eval "$(genv init -)"\n'
        for mode, assignments in modes.items():
            for command, args in (("devices", "devices"), ("ps", "ps"), ("attach", "attach --count 1"),
                                  ("activate", "activate"), ("deactivate", "deactivate")):
                body += "%s_%s() { %s genv %s >/dev/null; }\n" % (command, mode, assignments, args)
        body += "for i in $(seq %d); do\n" % reps
        for mode in modes:
            body += """  T slurm_%(mode)s_devices devices_%(mode)s
  T slurm_%(mode)s_ps ps_%(mode)s
  activate_%(mode)s
  T slurm_%(mode)s_attach attach_%(mode)s
  deactivate_%(mode)s
""" % {"mode": mode}
        body += """  %(python)s -I -S -c %(code)s
done
""" % {"python": shlex.quote(python), "code": shlex.quote(code)}
        return timings(tool.bash(body, extra={"PATH": timed_path})), facts
    finally:
        if cluster is not None:
            cluster.stop()


RECORD_HELPER = r'''
"""Times genv.sightings.update (and the owner's claims) in-process: N
environments, each holding one GPU, N attributed processes (half of them
on their environment's GPU), as a root-run listing records them."""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
from genv import sightings
from genv.attribution import Process

count, reps = int(sys.argv[2]), int(sys.argv[3])
users = {}
processes = []
for n in range(count):
    uid = 1000 + n % 50
    env = {"id": str(10000 + n), "devices": [{"index": n % 8, "uuid": "GPU-%d" % (n % 8), "attached": time.time()}],
           "until": None}
    users.setdefault(uid, {"envs": []})["envs"].append(env)
    process = Process(n % 8 if n % 2 else (n + 1) % 8, 20000 + n, 100 << 20, "python")
    process.known, process.uid, process.owner, process.env, process.misplaced = True, uid, uid, env, not n % 2
    processes.append(process)
wall, boot = time.time(), time.clock_gettime(time.CLOCK_BOOTTIME)
first, again = [], []
for _ in range(reps):
    started = time.perf_counter()
    seen = sightings.update(None, users, "b", wall, boot, processes)
    first.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    new = sightings.update(seen, users, "b", wall, boot + 1, processes)
    same = new == seen
    used = sightings.busy(processes)
    for state in users.values():
        for env in state["envs"]:
            _ = id(env) in used
    again.append((time.perf_counter() - started) * 1000)
print(json.dumps({"first": statistics.median(first), "again": statistics.median(again), "same": same,
                  "bytes": len(json.dumps(seen))}))
'''


def recording(python: str, count: int, reps: int) -> Dict[str, Any]:
    """Issue 19: the cost of recording what a listing saw (RECORD_HELPER)."""
    done = subprocess.run([python, "-I", "-S", "-c", RECORD_HELPER, REPO, str(count), str(reps)],
                          capture_output=True, text=True, timeout=600, check=True)
    return dict(json.loads(done.stdout), count=count)


KERNEL_HELPER = r'''
"""Runs in an interpreter with jupyter_client: starts kernels, as Jupyter
does, and times each from start_kernel() to wait_for_ready()."""
import json
import sys
import time

from jupyter_client import KernelManager

job = json.loads(sys.stdin.read())


def start(name, extra=None):
    manager = KernelManager(kernel_name=name)
    env = dict(job["env"], **(extra or {}))
    began = time.perf_counter()
    manager.start_kernel(env=env, cwd=job["cwd"])
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
        took = (time.perf_counter() - began) * 1000
    finally:
        client.stop_channels()
        manager.shutdown_kernel()  # a shutdown request, as Jupyter sends
    return took


# Warm-ups (not timed); the genv one logs its nvidia-smi calls.
start(job["plain"])
start(job["genv"], {"FAKE_NVIDIA_SMI_LOG": job["log"]})
times = {job["plain"]: [], job["genv"]: []}
for number in range(job["reps"]):
    order = [job["plain"], job["genv"]]
    for name in order if number % 2 == 0 else order[::-1]:
        times[name].append(start(name))
print(json.dumps({"plain": times[job["plain"]], "genv": times[job["genv"]]}))
'''


def kernel_python(given: Optional[str], work: str) -> Tuple[Optional[str], Optional[str]]:
    """An interpreter with ipykernel and jupyter_client: ``given``, or a
    venv made for them. (The interpreter, why there is none.)"""
    probe = "import ipykernel, jupyter_client"
    if given:
        done = subprocess.run([given, "-c", probe], capture_output=True, timeout=120)
        if done.returncode == 0:
            return given, None
        return None, "%s has no ipykernel and jupyter_client" % given
    try:
        python = make_venv(os.path.join(work, "kernel-venv"), [])
    except subprocess.CalledProcessError as error:
        return None, "cannot make a venv: %s" % error
    why = pip_install(python, ["ipykernel", "jupyter_client"])
    return (None, why) if why else (python, None)


def kernels(tool: Tool, reps: int, kpython: str) -> Tuple[Dict[str, List[float]], Dict[str, Any]]:
    """A Jupyter kernel's start, from KernelManager.start_kernel() to the
    client's wait_for_ready(), for a plain ipykernel kernelspec and for a
    genv kernelspec (``genv kernel install --gpus 1``), in turn; the genv
    kernel's nvidia-smi calls are logged once and made straight to the fake."""
    tool.reset()
    base = tool.base
    prefix = os.path.join(base, "prefix")
    jupyter = os.path.join(prefix, "share", "jupyter")
    log = os.path.join(base, "smi.log")
    shutil.rmtree(prefix, ignore_errors=True)
    plain = os.path.join(jupyter, "kernels", "bench-plain")
    os.makedirs(plain)
    with open(os.path.join(plain, "kernel.json"), "w") as handle:
        json.dump({"argv": [kpython, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                   "display_name": "Python (plain)", "language": "python", "interrupt_mode": "signal",
                   "metadata": {"debugger": True}}, handle)
    installed = subprocess.run([kpython, "-m", "genv", "kernel", "install", "--gpus", "1", "--name", "bench-genv",
                                "--prefix", prefix], env=tool.environ({"PYTHONPATH": REPO}), cwd=base,
                               capture_output=True, text=True, timeout=300)
    if installed.returncode != 0:
        raise RuntimeError("%s: genv kernel install failed: %s" % (tool.name, installed.stderr[-1000:]))
    jupyter_env = {"JUPYTER_PATH": jupyter, "JUPYTER_DATA_DIR": os.path.join(base, "jupyter-data"),
                   "JUPYTER_RUNTIME_DIR": os.path.join(base, "jupyter-runtime"),
                   "JUPYTER_CONFIG_DIR": os.path.join(base, "jupyter-config"),
                   "IPYTHONDIR": os.path.join(base, "ipython"), "JUPYTER_PLATFORM_DIRS": "1",
                   # The cached device list stays valid for the whole run.
                   "GENV_DEVICES_TTL": "86400"}
    for folder in jupyter_env.values():
        if folder.startswith(base):
            os.makedirs(folder, exist_ok=True)
    helper = os.path.join(base, "kernels.py")
    with open(helper, "w") as handle:
        handle.write(KERNEL_HELPER)
    open(log, "w").close()
    tool.script("genv devices >/dev/null\n", extra=jupyter_env)  # the device list cached: a warm machine
    job = {"env": tool.environ(jupyter_env), "cwd": base, "plain": "bench-plain", "genv": "bench-genv",
           "log": log, "reps": reps}
    done = subprocess.run([kpython, helper], input=json.dumps(job), env=tool.environ(jupyter_env), cwd=base,
                          capture_output=True, text=True, timeout=600 + 60 * reps)
    if done.returncode != 0:
        raise RuntimeError("%s: the kernel starts failed: %s" % (tool.name, done.stderr[-2000:]))
    times = json.loads(done.stdout.strip().splitlines()[-1])
    with open(log) as handle:
        calls = handle.read()
    left = json.loads(tool.script("genv envs --json\n", extra=jupyter_env))
    body = _direct_calls("S_kernel", calls) + "for i in $(seq %d); do T kernel_smi S_kernel; done\n" % max(reps, 5)
    data = timings(tool.bash(body, extra=jupyter_env))
    data["kernel_plain"] = times["plain"]
    data["kernel_genv"] = times["genv"]
    return data, {"calls": _kinds(calls), "reps": reps, "environments_left": len(left), "python": kpython}


def visible(value: str) -> List[str]:
    """The GPUs a CUDA_VISIBLE_DEVICES value exposes, read as CUDA does: the
    first invalid entry (genv 1.4.3 detaches with -1) ends the list."""
    gpus = []
    for entry in value.split(","):
        if not (entry.isdigit() or entry.startswith("GPU-")):
            break
        gpus.append(entry)
    return gpus


def make_venv(path: str, packages: List[str]) -> str:
    base_python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    subprocess.run([base_python, "-m", "venv", path] + ([] if packages else ["--without-pip"]), check=True)
    if packages:
        subprocess.run([os.path.join(path, "bin", "python"), "-m", "pip", "install", "-q", *packages], check=True)
    return os.path.join(path, "bin", "python3")


def several_hosts(python: str, reps: int, slow: float) -> Tuple[Dict[str, List[float]], Dict[str, Any]]:
    """(issue 18) Listings across hosts, over ssh to real sshd instances on
    127.0.0.1 (tests/sshd_hosts.py): ``genv devices -H`` with one and with
    three hosts, each with fresh connections (the handshakes included) and
    with the connections ssh reuses (ControlMaster); and with three hosts
    whose genv takes ``slow`` seconds to answer (a wrapper that sleeps
    first), beside one such host. Timed from Python around the whole
    command (ms)."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import sshd_hosts

    base = tempfile.mkdtemp(prefix="genv-bench-ssh-", dir="/tmp")
    hosts = sshd_hosts.Hosts(base, REPO, python)
    try:
        for number in (1, 2, 3):
            hosts.add("fast%d" % number, gpus=4)
        wrapper = os.path.join(base, "slow-genv")
        with open(wrapper, "w") as handle:
            handle.write("#!/bin/sh\nsleep %s\nexec %s \"$@\"\n" % (slow, shlex.quote(os.path.join(REPO, "bin",
                                                                                                    "genv"))))
        os.chmod(wrapper, 0o755)
        for number in (1, 2, 3):
            hosts.alias("slow%d" % number, of="fast%d" % number)
        hosts.write_hosts("".join("fast%d\n" % n for n in (1, 2, 3)) + "".join("slow%d %s\n" % (n, wrapper)
                                                                               for n in (1, 2, 3)))
        env = {key: value for key, value in os.environ.items() if not key.startswith(("GENV_", "FAKE_"))}
        env.update(hosts.environ())
        env.update({"GENV_PYTHON": python, "GENV_TMPDIR": os.path.join(base, "state"), "GENV_DEVICES": "1",
                    "PATH": "%s/bin:%s" % (REPO, env.get("PATH", "/usr/bin:/bin"))})

        def timed(label: str, targets: str) -> None:
            began = time.perf_counter()
            done = subprocess.run([os.path.join(REPO, "bin", "genv"), "devices", "-H", targets, "--format", "csv"],
                                  env=env, capture_output=True, timeout=120)
            took = (time.perf_counter() - began) * 1000
            if done.returncode != 0 or done.stderr:
                raise RuntimeError("genv devices -H %s failed: %r" % (targets, done))
            data.setdefault(label, []).append(took)

        data: Dict[str, List[float]] = {}
        timed("hosts_warmup", "fast1,fast2,fast3")
        for _ in range(reps):
            for label, targets in (("hosts_1_first", "fast1"), ("hosts_3_first", "fast1,fast2,fast3")):
                hosts.forget_connections()
                timed(label, targets)
                timed(label.replace("first", "reused"), targets)
        for _ in range(max(2, reps // 4)):
            timed("hosts_1_slow", "slow1")
            timed("hosts_3_slow", "slow1,slow2,slow3")
        return data, {"slow_seconds": slow}
    finally:
        hosts.stop()
        shutil.rmtree(base, ignore_errors=True)


def median(values: List[float]) -> Optional[float]:
    return statistics.median(values) if values else None


SCENARIOS = ("cycle", "shim", "envs", "race", "procs", "share", "pack", "wait", "admin", "run", "sdk", "record",
             "kernel", "hosts", "slurm")


def counts(text: str) -> List[int]:
    return [int(n) for n in text.split(",") if n]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20, help="repetitions per timed scenario (default 20)")
    parser.add_argument("--envs", default="1,100,1000", help="live environment counts (default 1,100,1000)")
    parser.add_argument("--racers", default="16,64", help="racing terminals (default 16,64)")
    parser.add_argument("--procs", default="0,100",
                        help="GPU process counts for ps, devices, attach and the shim's filter (default 0,100)")
    parser.add_argument("--pack", type=int, default=100,
                        help="environments of mixed sizes packed onto 8 mock GPUs of 80g (default 100; 0 skips)")
    parser.add_argument("--waiters", type=int, default=16,
                        help="terminals waiting in line with 'attach --wait' (default 16; 0 skips)")
    parser.add_argument("--idle", type=float, default=10.0,
                        help="seconds over which the waiters' CPU use is measured (default 10)")
    parser.add_argument("--admin", default="100",
                        help="environments and GPU processes (as many of each) for enforce and the monitor's "
                             "scrape (default 100; a comma list; 0 skips)")
    parser.add_argument("--record", default="100,1000",
                        help="environments and GPU processes (as many of each) for the record scenario "
                             "(default 100,1000)")
    parser.add_argument("--kernel-reps", type=int, default=9,
                        help="starts of each Jupyter kernel, plain and genv's (default 9; 0 skips)")
    parser.add_argument("--kernel-python",
                        help="an interpreter with ipykernel and jupyter_client for the kernels (default: a venv "
                             "made for them with pip)")
    parser.add_argument("--hosts-slow", type=float, default=1.5,
                        help="seconds the slow hosts of the hosts scenario take to answer (default 1.5)")
    parser.add_argument("--slurm-real", action="store_true",
                        help="the slurm scenario asks a real single-node cluster started for the run (root, Slurm's "
                             "packages) instead of replaying a recorded answer")
    parser.add_argument("--only", default="", help="run only these scenarios (comma list of %s)" % ",".join(SCENARIOS))
    parser.add_argument("--skip", default="", help="skip these scenarios (same names)")
    parser.add_argument("--compare-upstream", action="store_true", help="also measure %s" % UPSTREAM)
    parser.add_argument("--upstream-max-envs", type=int, default=100,
                        help="skip upstream env counts above this (its activate is slow; default 100)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    chosen = set(args.only.split(",")) - {""} if args.only else set(SCENARIOS)
    chosen -= set(args.skip.split(","))
    unknown = (set(args.only.split(",")) | set(args.skip.split(","))) - set(SCENARIOS) - {""}
    if unknown:
        parser.error("unknown scenario %s (known: %s)" % (", ".join(sorted(unknown)), ", ".join(SCENARIOS)))
    env_counts = counts(args.envs) if "envs" in chosen else []
    racer_counts = counts(args.racers) if "race" in chosen else []
    proc_counts = counts(args.procs) if "procs" in chosen else []
    admin_counts = [n for n in counts(args.admin) if n > 0] if "admin" in chosen else []

    work = tempfile.mkdtemp(prefix="genv-bench-")
    laps: Dict[str, float] = {}  # scenario -> its wall time, seconds
    last = [time.monotonic()]

    def lap(name: str) -> None:
        """The wall time since the previous lap goes to ``name``."""
        now = time.monotonic()
        laps[name] = laps.get(name, 0.0) + now - last[0]
        last[0] = now

    try:
        python = make_venv(os.path.join(work, "venv"), [])
        ours = Tool("genv", os.path.join(work, "ours"), os.path.join(REPO, "bin"), "genv init -",
                    {"GENV_PYTHON": python})
        tools = [ours]
        if args.compare_upstream:
            upstream_python = make_venv(os.path.join(work, "upstream-venv"), [UPSTREAM])
            tools.append(Tool("genv 1.4.3", os.path.join(work, "upstream"), os.path.dirname(upstream_python),
                              "genv shell --init", {}))
        lap("venvs")

        results: Dict[str, Dict[str, Any]] = {tool.name: {} for tool in tools}
        extras: Dict[str, Any] = {"procs": {}, "packing": None, "waiting": None, "admin": {}, "run_calls": None,
                                  "kernel": None, "hosts": None, "slurm": None, "record": [], "skipped": {}}

        def record(tool: Tool, data: Dict[str, List[float]]) -> None:
            for label, values in data.items():
                results[tool.name].setdefault(label, []).extend(values)

        record(ours, floors(ours, python, args.reps))
        lap("floors")
        # Interleaved: each scenario runs on every tool before the next one.
        if "cycle" in chosen:
            for tool in tools:
                record(tool, cycle(tool, args.reps))
            lap("cycle")
        if "shim" in chosen:
            for tool in tools:
                record(tool, shim(tool, args.reps))
            lap("shim")
        for count in env_counts:
            for tool in tools:
                if tool is not ours and count > args.upstream_max_envs:
                    continue
                record(tool, with_live_envs(tool, count, max(3, args.reps // 2)))
            lap("envs")
        for racers in racer_counts:
            for tool in tools:
                results[tool.name]["race_%d" % racers] = race(tool, racers)
            lap("race")
        # The scenarios of issues 9 and 10: genv only (1.4.3 has no ps, no
        # shares, no waiting line).
        if proc_counts:
            record(ours, attach_without_smi(ours, max(3, args.reps // 2)))
        for count in proc_counts:
            data, facts = with_processes(ours, count, args.reps, python)
            record(ours, data)
            extras["procs"][str(count)] = facts
            lap("procs")
        if "share" in chosen:
            record(ours, share_cycle(ours, args.reps))
            lap("share")
        if "pack" in chosen and args.pack > 0:
            extras["packing"] = packing(ours, args.pack)
            lap("pack")
        if "wait" in chosen and args.waiters > 0:
            extras["waiting"] = waiting(ours, args.waiters, args.idle)
            lap("wait")
        # Issues 11 and 12: genv only (1.4.3 has none of these commands).
        if admin_counts:
            # The monitor needs prometheus-client in genv's interpreter.
            unavailable = pip_install(python, ["prometheus-client"])
            lap("admin: pip install")
            if unavailable:
                extras["skipped"]["scrape"] = unavailable
                print("skipping the monitor's scrape: %s" % unavailable, file=sys.stderr)
            for count in admin_counts:
                data, facts = administration(ours, count, args.reps, python, unavailable)
                record(ours, data)
                extras["admin"][str(count)] = facts
                lap("admin")
        if "run" in chosen:
            data, extras["run_calls"] = run_overhead(ours, args.reps, python)
            record(ours, data)
            lap("run")
        if "sdk" in chosen:
            record(ours, sdk_import(ours, args.reps, python))
            lap("sdk")
        if "slurm" in chosen:
            data, extras["slurm"] = slurm_costs(ours, args.reps, python, args.slurm_real)
            record(ours, data)
            lap("slurm")
        if "record" in chosen:
            extras["record"] = [recording(python, count, args.reps) for count in counts(args.record) if count > 0]
            lap("record")
        if "kernel" in chosen and args.kernel_reps > 0:
            kpython, why = kernel_python(args.kernel_python, work)
            if kpython is None:
                extras["skipped"]["kernel"] = why
                print("skipping the kernel starts: %s" % why, file=sys.stderr)
            else:
                data, extras["kernel"] = kernels(ours, args.kernel_reps, kpython)
                record(ours, data)
            lap("kernel")

        if "hosts" in chosen:
            sys.path.insert(0, os.path.join(REPO, "tests"))
            import sshd_hosts

            why = sshd_hosts.missing()
            if why:
                extras["skipped"]["hosts"] = why
                print("skipping the hosts scenario: %s" % why, file=sys.stderr)
            else:
                data, extras["hosts"] = several_hosts(python, max(3, args.reps // 2), args.hosts_slow)
                record(ours, data)
            lap("hosts")

        summary = report(results, tools, python, env_counts, racer_counts, proc_counts, admin_counts, extras)
        summary["seconds"] = {name: round(value, 2) for name, value in laps.items()}
        print("\nbench: wall time per scenario (s): %s" % ", ".join("%s %.1f" % item for item in laps.items()))
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(summary, handle, indent=2)
        return 0 if summary["races_ok"] and summary["checks_ok"] else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def paired(results: Dict[str, Any], minuend: str, subtrahend: str) -> Optional[float]:
    """The median of the differences of two scenarios timed in the same loop."""
    if minuend not in results or subtrahend not in results:
        return None
    return median([a - b for a, b in zip(results[minuend], results[subtrahend])])


def net(results: Dict[str, Any], minuend: str, *subtrahends: str) -> Optional[float]:
    """The median of ``minuend - subtrahends...``, run by run (the scenarios
    timed in the same loop)."""
    if any(key not in results for key in (minuend,) + subtrahends):
        return None
    columns = [results[key] for key in (minuend,) + subtrahends]
    return median([row[0] - sum(row[1:]) for row in zip(*columns)])


def report(results: Dict[str, Dict[str, Any]], tools: List[Tool], python: str, env_counts: List[int],
           racer_counts: List[int], proc_counts: List[int], admin_counts: List[int],
           extras: Dict[str, Any]) -> Dict[str, Any]:
    med: Dict[str, Dict[str, Optional[float]]] = {
        name: {label: median(values) for label, values in data.items() if isinstance(values, list)}
        for name, data in results.items()}
    for name in med:
        if "shim" in results[name] and "direct" in results[name]:
            med[name]["shim_overhead"] = paired(results[name], "shim", "direct")
    ours = med["genv"]
    for n in proc_counts:
        raw = results["genv"]
        ours["filter_overhead_%d" % n] = paired(raw, "shim_table_%d" % n, "direct_table_%d" % n)
        ours["plain_overhead_%d" % n] = paired(raw, "shim_list_%d" % n, "direct_list_%d" % n)
        ours["ps_net_%d" % n] = paired(raw, "ps_%d" % n, "ps_smi_%d" % n)
        ours["devices_procs_net_%d" % n] = paired(raw, "devices_procs_%d" % n, "devices_procs_smi_%d" % n)
        ours["attach_procs_net_%d" % n] = paired(raw, "attach_procs_%d" % n, "attach_procs_smi_%d" % n)
    raw = results["genv"]
    for n in admin_counts:
        ours["enforce_net_%d" % n] = net(raw, "enforce_%d" % n, "enforce_smi_%d" % n)
        ours["scrape_net_%d" % n] = net(raw, "scrape_%d" % n, "scrape_smi_%d" % n)
    for what in ("plain", "gpu"):
        ours["run_%s_over" % what] = net(raw, "run_%s" % what, "run_direct")
        ours["run_%s_net" % what] = net(raw, "run_%s" % what, "run_direct", "run_%s_smi" % what)
    ours["sdk_net"] = net(raw, "sdk_import", "sdk_floor")
    ours["kernel_diff"] = net(raw, "kernel_genv", "kernel_plain")
    if ours["kernel_diff"] is not None and ours.get("kernel_smi") is not None:
        ours["kernel_net"] = ours["kernel_diff"] - ours["kernel_smi"]  # type: ignore[operator]
    for command in SLURM_COMMANDS:
        ours["slurm_off_over_disabled_%s" % command] = paired(raw, "slurm_off_%s" % command,
                                                              "slurm_disabled_%s" % command)
        ours["slurm_node_over_off_%s" % command] = paired(raw, "slurm_node_%s" % command, "slurm_off_%s" % command)
        ours["slurm_job_over_off_%s" % command] = paired(raw, "slurm_job_%s" % command, "slurm_off_%s" % command)
    rows = ["init", "activate", "config", "attach", "detach", "deactivate", "cycle"]
    rows += ["envs_%d" % n for n in env_counts] + ["devices_%d" % n for n in env_counts]
    rows += ["shim_overhead", "direct", "floor_bash", "floor_python", "floor_python_subprocess", "attach_nosmi"]
    for n in proc_counts:
        rows += [key % n for key in (
            "ps_%d", "ps_smi_%d", "ps_net_%d", "devices_procs_%d", "devices_procs_smi_%d", "devices_procs_net_%d",
            "attach_procs_%d", "attach_procs_smi_%d", "attach_procs_net_%d", "detach_procs_%d",
            "shim_table_%d", "direct_table_%d", "filter_overhead_%d", "shim_list_%d", "direct_list_%d",
            "plain_overhead_%d", "floor_procs_%d")]
    rows += ["share_plain_attach", "share_activate", "share_config", "share_memory", "share_attach", "share_detach",
             "share_deactivate", "share_cycle"]
    for n in admin_counts:
        rows += [key % n for key in ("enforce_%d", "enforce_smi_%d", "enforce_net_%d", "scrape_%d", "scrape_smi_%d",
                                     "scrape_net_%d", "floor_admin_%d")]
    rows += ["run_direct", "run_plain", "run_plain_smi", "run_plain_over", "run_plain_net", "run_gpu", "run_gpu_smi",
             "run_gpu_over", "run_gpu_net", "floor_run", "sdk_import", "sdk_floor", "sdk_net", "kernel_plain",
             "kernel_genv", "kernel_diff", "kernel_smi", "kernel_net"]
    for command in SLURM_COMMANDS:
        rows += [key % command for key in ("slurm_off_%s", "slurm_disabled_%s", "slurm_off_over_disabled_%s",
                                           "slurm_node_%s", "slurm_node_over_off_%s", "slurm_job_%s",
                                           "slurm_job_over_off_%s")]
    rows += ["slurm_import"]
    names = [tool.name for tool in tools]
    print("genv benchmark: %s, %s cores, %s, Python %s (%s), %s" % (
        platform.node(), os.cpu_count(), platform.platform(), platform.python_version(), python,
        time.strftime("%Y-%m-%d")))
    header = "| scenario | " + " | ".join("%s (ms)" % name for name in names)
    header += " | ratio |" if len(names) > 1 else " |"
    print(header)
    print("|" + "---|" * (len(names) + 1 + (1 if len(names) > 1 else 0)))
    for row in rows:
        values = [med[name].get(row) for name in names]
        if all(value is None for value in values):
            continue
        cells = ["%.1f" % value if value is not None else "n/a" for value in values]
        line = "| %s | %s" % (row, " | ".join(cells))
        if len(names) > 1:
            first, second = values[0], values[1]
            line += " | %s" % ("%.1f×" % (second / first) if first and second else "n/a")
        print(line + " |")
    races_ok = True
    for racers in racer_counts:
        cells = []
        for name in names:
            data = results[name]["race_%d" % racers]
            cells.append("%.0f ms, %d won, %d double" % (data["wall_ms"], data["winners"], data["double_bookings"]))
            if data["double_bookings"] or (name == "genv" and data["winners"] != min(4, racers)):
                races_ok = races_ok and name != "genv"
        print("| race_%d (4 GPUs) | %s |" % (racers, " | ".join(cells)))
    checks_ok = True
    pack = extras.get("packing")
    if pack:
        print("| pack_%d (%d GPUs of %dg, mock) | %.0f ms, %d attached, %d refused (%d of them lock time-outs), "
              "%d of %d GiB placed, %d over-committed, %d whole GPUs shared%s |" % (
                  pack["terminals"], pack["gpus"], pack["total_mib"] // max(1, pack["gpus"]) >> 10, pack["wall_ms"],
                  pack["attached"], pack["refused"], pack["lock_timeouts"], pack["placed_mib"] >> 10,
                  pack["total_mib"] >> 10,
                  pack["over_committed"], pack["whole_shared"],
                  "" if pack["consistent"] else ", devices DISAGREES with the terminals"))
        checks_ok = checks_ok and not pack["over_committed"] and not pack["whole_shared"] and pack["consistent"]
    wait = extras.get("waiting")
    if wait:
        by: Dict[str, List[float]] = {}
        for method, latency in zip(wait["methods"], wait["latencies_ms"]):
            if latency is not None:
                by.setdefault(method, []).append(latency)
        print("| wait_%d (release to next attach) | median %s ms, worst %s ms (%s), %d of %d attached |" % (
            wait["waiters"], _num(wait["latency_median_ms"], "%.0f"), _num(wait["latency_max_ms"], "%.0f"),
            ", ".join("%s: median %.0f, worst %.0f" % (method, median(values), max(values))  # type: ignore[str-format]
                      for method, values in by.items()), wait["attached"], wait["waiters"]))
        print("| wait_%d (CPU while waiting) | %.3f s over %.1f s: %.2f%% of one core in all (%.3f%% per waiter) |" % (
            wait["waiters"], wait["cpu_s"], wait["idle_s"], wait["cpu_total_pct"], wait["cpu_per_waiter_pct"]))
        checks_ok = checks_ok and wait["ok"]
    procs = extras.get("procs") or {}
    if procs:
        print()
        print("nvidia-smi calls per command, by kind (device list cached):")
        for n, facts in procs.items():
            print("- %s processes: %s" % (n, "; ".join(
                "%s %s" % (command, ", ".join("%s×%d" % (kind, number) for kind, number in sorted(kinds.items()))
                           or "none") for command, kinds in facts["calls"].items())))
        print("Python starts per shim mode: %s" % "; ".join(
            "%s processes: %s" % (n, ", ".join("%s %d" % item for item in facts["python_starts"].items()))
            for n, facts in procs.items()))
    admin = extras.get("admin") or {}
    run_calls = extras.get("run_calls")
    kernel = extras.get("kernel")
    slurm = extras.get("slurm")
    skipped = extras.get("skipped") or {}

    def kinds(calls: Optional[Dict[str, int]]) -> str:
        if calls is None:
            return "not run"
        return ", ".join("%s×%d" % (kind, number) for kind, number in sorted(calls.items())) or "none"

    if admin or run_calls or kernel:
        print()
        print("nvidia-smi calls (device list cached):")
    for n, facts in admin.items():
        print("- enforce and a scrape, %s environments (%d attached, a %s share each, on %d GPUs) and %s processes "
              "(%d unmanaged): enforce %s, finding %s; a scrape %s" % (
                  n, facts["attached"], ADMIN_SHARE, facts["gpus"], n, facts["unmanaged"],
                  kinds(facts["calls"]["enforce"]),
                  ", ".join("%s×%d" % item for item in sorted(facts["findings"].items())) or "nothing",
                  kinds(facts["calls"].get("scrape"))))
    if run_calls:
        print("- genv run -- true: %s; genv run --gpus 1 -- true: %s" % (kinds(run_calls["plain"]),
                                                                      kinds(run_calls["gpu"])))
    if kernel:
        print("- a genv kernel's start (--gpus 1): %s; %d environments left after the kernels" % (
            kinds(kernel["calls"]), kernel["environments_left"]))
    for what, why in skipped.items():
        print("- skipped %s: %s" % (what, why))
    if slurm:
        print()
        print("scontrol calls per command (Slurm's answer: %s):" % slurm["source"])
        for mode, label in (("off", "off Slurm"), ("disabled", "GENV_SLURM=0"), ("node", "on a Slurm node"),
                            ("job", "in a job")):
            print("- %s: %s" % (label, ", ".join("%s %d" % item for item in slurm["calls"][mode].items())))

    floor = ours.get("floor_python")
    targets: List[Tuple[str, Optional[float], Optional[bool]]] = []

    def target(label: str, value: Optional[float], limit: float, at_least: bool = False) -> None:
        ok = None if value is None else (value >= limit if at_least else value <= limit)
        targets.append((label, value, ok))

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b else None

    listed = [ours.get(key) for key in ("activate", "config", "attach", "detach", "deactivate")]
    if env_counts:
        listed += [ours.get("envs_%d" % env_counts[0]), ours.get("devices_%d" % env_counts[0])]
    if all(value is not None for value in listed):
        target("command/floor (max of activate, config, attach, detach, deactivate, envs_1, devices_1; "
               "target <= 2.5)", ratio(max(listed), floor), 2.5)  # type: ignore[type-var]
    if ours.get("shim_overhead") is not None:
        target("shim overhead ms (target <= 5)", ours["shim_overhead"], 5)
    if len(env_counts) > 1:
        for what in ("envs", "devices"):
            target("%s at %d / at %d (target <= 2)" % (what, env_counts[-1], env_counts[0]),
                   ratio(ours.get("%s_%d" % (what, env_counts[-1])), ours.get("%s_%d" % (what, env_counts[0]))), 2)
    if len(names) > 1 and med[names[1]].get("cycle"):
        target("cycle speed-up over 1.4.3 (target >= 15)", ratio(med[names[1]]["cycle"], ours.get("cycle")), 15,
               at_least=True)
    if procs:
        at = ",".join(procs)
        most = max(number for facts in procs.values() for command in ("ps", "devices", "attach")
                   for number in (list(facts["calls"][command].values()) or [0]))
        target("nvidia-smi calls per kind of fact, ps/devices/attach at %s processes (target <= 1)" % at, most, 1)
        # Against the floor timed in the same loops (floor_procs_N): the
        # load of a busy machine then weighs on both sides alike.
        for what, key in (("ps", "ps_net_%d"), ("devices", "devices_procs_net_%d")):
            worst = [ratio(ours.get(key % n), ours.get("floor_procs_%d" % n)) for n in proc_counts]
            if all(value is not None for value in worst):
                target("(%s - its nvidia-smi calls) / floor, worst of %s processes (target <= 2.5)" % (what, at),
                       max(worst), 2.5)  # type: ignore[type-var]
        added = []
        for n in proc_counts:
            overhead, plain = ours.get("filter_overhead_%d" % n), ours.get("plain_overhead_%d" % n)
            start = ours.get("floor_procs_%d" % n)
            if overhead is not None and plain is not None and start:
                added.append((overhead - plain) / start)
        if len(added) == len(proc_counts):
            target("shim table: what the filter adds to the plain shim, in interpreter starts (floor_procs_N), "
                   "worst of %s processes (target <= 1)" % at, max(added), 1)
        starts = [facts["python_starts"] for facts in procs.values()]
        target("shim: Python starts in the process modes (table, --query-compute-apps; target <= 1)",
               max(start.get(mode, 0) for start in starts for mode in ("table", "apps")), 1)
        target("shim: Python starts in the other modes (-L, --query-gpu, dmon; target 0)",
               max(start.get(mode, 0) for start in starts for mode in ("list", "query_gpu", "dmon")), 0)
    if ours.get("share_attach") is not None:
        target("attach with a share / plain attach (target <= 1.2)",
               ratio(ours["share_attach"], ours.get("share_plain_attach")), 1.2)
    if pack:
        target("packing: GPUs over-committed or shared while held whole (target 0)",
               pack["over_committed"] + pack["whole_shared"], 0)
    if wait:
        target("waiting: a release (or a killed holder) to the next waiter's attach, worst ms (target <= 250)",
               wait["latency_max_ms"], 250)
        target("waiting: CPU of %d waiters while waiting, %% of one core in all (target <= 1)" % wait["waiters"],
               wait["cpu_total_pct"], 1)
    if admin_counts:
        at = ",".join(str(n) for n in admin_counts)
        worst = [ours.get("enforce_net_%d" % n) for n in admin_counts]
        if all(value is not None for value in worst):
            target("genv enforce (dry run) less its nvidia-smi calls, ms, worst of %s environments and processes "
                   "(target <= 100)" % at, max(worst), 100)  # type: ignore[type-var]
        worst = [ours.get("scrape_net_%d" % n) for n in admin_counts]
        if all(value is not None for value in worst):
            target("a /metrics scrape (--interval 0) less its nvidia-smi calls, ms, worst of %s environments and "
                   "processes (target <= 50)" % at, max(worst), 50)  # type: ignore[type-var]
    run_net = [ours.get("run_plain_net"), ours.get("run_gpu_net")]
    if all(value is not None for value in run_net) and ours.get("floor_run"):
        target("genv run -- true over true, less its nvidia-smi calls, in interpreter starts (floor_run), worst of "
               "no GPU and --gpus 1 (target <= 2)", max(run_net) / ours["floor_run"], 2)  # type: ignore
    if ours.get("sdk_net") is not None:
        target("import genv.sdk over the bare interpreter, ms (target <= 20)", ours["sdk_net"], 20)
    for facts in extras.get("record") or ():
        print("- recording what a listing saw, %d environments and processes: %.3f ms on a look that changes "
              "nothing, %.3f ms on a first look; root's record %d bytes" % (
                  facts["count"], facts["again"], facts["first"], facts["bytes"]))
        if facts["count"] <= 100:
            target("recording what a listing saw, ms, %d environments and processes (target <= 1)" % facts["count"],
                   max(facts["again"], facts["first"]), 1)
    if ours.get("kernel_net") is not None:
        target("a kernel's start with genv (--gpus 1) minus without, less its nvidia-smi calls, ms "
               "(target <= 100)", ours["kernel_net"], 100)
    several = extras.get("hosts")
    if several:
        three, one = ours.get("hosts_3_slow"), ours.get("hosts_1_slow")
        if three is not None and one is not None:
            target("3 hosts that take %g s each, over 1.5 x one such host + 0.5 s (target <= 1)"
                   % several["slow_seconds"], three / (1.5 * one + 500), 1)
        target("3 fast hosts over one, fresh connections (target <= 2)",
               ratio(ours.get("hosts_3_first"), ours.get("hosts_1_first")), 2)
        target("3 fast hosts over one, reused connections (target <= 2)",
               ratio(ours.get("hosts_3_reused"), ours.get("hosts_1_reused")), 2)
        target("a listing repeated within the reuse window over the first, one host (target <= 0.5)",
               ratio(ours.get("hosts_1_reused"), ours.get("hosts_1_first")), 0.5)
        target("the same, three hosts (target <= 0.5)",
               ratio(ours.get("hosts_3_reused"), ours.get("hosts_3_first")), 0.5)
        print()
        print("genv devices -H over ssh to sshd on 127.0.0.1 (medians, ms): one host %s first, %s reused; three "
              "hosts %s first, %s reused; hosts that take %g s: one %s, three %s" % tuple(
                  [_num(ours.get(key), "%.0f") for key in ("hosts_1_first", "hosts_1_reused", "hosts_3_first",
                                                           "hosts_3_reused")]
                  + [several["slow_seconds"]] + [_num(ours.get(key), "%.0f") for key in ("hosts_1_slow",
                                                                                         "hosts_3_slow")]))
    if slurm:
        calls = slurm["calls"]
        target("off Slurm and with GENV_SLURM=0: scontrol calls in all (target 0)",
               sum(calls["off"].values()) + sum(calls["disabled"].values()), 0)
        target("on a Slurm node and in a job: scontrol calls per command, most (target <= 1)",
               max(list(calls["node"].values()) + list(calls["job"].values())), 1)
        worst = [ours.get("slurm_off_over_disabled_%s" % command) for command in SLURM_COMMANDS]
        if all(value is not None for value in worst):
            target("off Slurm over GENV_SLURM=0, ms, worst of devices, ps, attach (target <= 1)",
                   max(worst), 1)  # type: ignore[type-var]
        if ours.get("slurm_import") is not None:
            target("import genv.slurm, ms (paid off Slurm too, by commands that look at GPUs; target <= 0.2)",
                   ours["slurm_import"], 0.2)
    print()
    for label, value, ok in targets:
        print("- %s: %s (%s)" % (label, _num(value, "%.2f"), "n/a" if ok is None else "met" if ok else "missed"))
    print("- races: %s" % ("no GPU handed out twice" if races_ok else "FAILED"))
    if pack or wait:
        print("- packing and waiting checks: %s" % ("passed" if checks_ok else "FAILED"))
    if admin or kernel:
        # enforce finds exactly the unmanaged processes; every kernel's
        # environment is gone once the kernels are.
        ours_ok = all(facts["findings"] == ({"unmanaged": facts["unmanaged"]} if facts["unmanaged"] else {})
                      for facts in admin.values())
        ours_ok = ours_ok and (kernel is None or kernel["environments_left"] == 0)
        print("- enforce and kernel checks: %s" % ("passed" if ours_ok else "FAILED"))
        checks_ok = checks_ok and ours_ok
    return {"medians": med, "races": {name: {k: v for k, v in results[name].items() if k.startswith("race")}
                                      for name in names},
            "targets": {label: value for label, value, _ in targets},
            "targets_met": {label: ok for label, _, ok in targets},
            "nvidia_smi_calls": {n: facts["calls"] for n, facts in procs.items()},
            "shim_python_starts": {n: facts["python_starts"] for n, facts in procs.items()},
            "packing": pack, "waiting": wait, "admin": admin, "run_calls": run_calls, "kernel": kernel,
            "hosts": extras.get("hosts"), "slurm": slurm, "record": extras.get("record"), "skipped": skipped,
            "races_ok": races_ok, "checks_ok": checks_ok}


def _num(value: Optional[float], form: str) -> str:
    return "n/a" if value is None else form % value


if __name__ == "__main__":
    sys.exit(main())
