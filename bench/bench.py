"""genv's benchmark suite (issue 5). Run it with ``bench/run``.

Every scenario is timed from inside one long-lived bash process with
``$EPOCHREALTIME`` around the command, so bash's own start-up is excluded;
results are medians over repeated runs. genv runs on a plain venv
interpreter made for the run (no site-packages, no version-manager shim),
and the floors are measured with that same interpreter. GPUs come from the
fake nvidia-smi in tests/fake, which genv and the upstream genv both query.

With --compare-upstream, genv 1.4.3 (the last upstream release) is installed
from the package index into a throwaway venv and the same scenarios run on
it, interleaved with ours, and the ratio is printed per scenario.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

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
            if key.startswith(("GENV_", "CUDA_", "FAKE_NVIDIA")):
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

    def terminal(self, script: str, stdout: int) -> subprocess.Popen:
        """A background bash (a "terminal") that has been sent ``script``;
        its stdin stays open so that it lives until closed or killed."""
        shell = subprocess.Popen(["bash", "--norc", "--noprofile"], stdin=subprocess.PIPE, stdout=stdout,
                                 stderr=subprocess.DEVNULL, env=self.env, cwd=self.base, text=True)
        assert shell.stdin is not None
        shell.stdin.write(script)
        shell.stdin.flush()
        return shell

    def bash(self, body: str, timeout: float = 600) -> List[List[str]]:
        """Run a bash script; lines ``label start end`` are collected."""
        script = 'T() { local l=$1 s e; shift; s=$EPOCHREALTIME; "$@" >/dev/null; e=$EPOCHREALTIME; echo "$l $s $e"; }\n' + body
        done = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], env=self.env, cwd=self.base,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError("%s: bash failed (%d): %s" % (self.name, done.returncode, done.stderr[-2000:]))
        return [line.split() for line in done.stdout.splitlines() if line.count(" ") == 2]


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
done
""" % (reps, python)
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


def race(tool: Tool, racers: int) -> Dict[str, object]:
    """``racers`` terminals, each activated and configured for 1 GPU, run
    ``genv attach`` at the same instant on a 4-GPU machine."""
    tool.reset()
    go = os.path.join(tool.base, "go")
    if os.path.exists(go):
        os.unlink(go)
    os.mkfifo(go)
    shells = []
    try:
        for _ in range(racers):
            shells.append(tool.terminal(
                'eval "$(%s)"; genv activate >/dev/null; genv config gpus 1 >/dev/null; echo ready\n'
                'read -r _ < "%s"; genv attach >/dev/null 2>&1; echo "done $EPOCHREALTIME ${CUDA_VISIBLE_DEVICES-}"\n'
                # Stay alive (holding the GPUs) until every racer is done.
                'read -r _\n'
                % (tool.init, go), subprocess.PIPE))
        for shell in shells:
            assert shell.stdout is not None
            assert shell.stdout.readline().strip() == "ready"
        start = time.time()
        # Opening the writer releases every shell blocked in opening the
        # reader; it stays open until all are done, so a shell that reaches
        # its read later still finds its line.
        writer = os.open(go, os.O_WRONLY)
        try:
            os.write(writer, b"\n" * racers)
            ends, winners = [], []
            for shell in shells:
                assert shell.stdout is not None
                line = shell.stdout.readline().split()
                assert line and line[0] == "done", line
                ends.append(float(line[1]))
                winners.extend(visible(line[2] if len(line) > 2 else ""))
        finally:
            os.close(writer)
        wall = (max(ends) - start) * 1000
        for shell in shells:
            assert shell.stdin is not None
            shell.stdin.close()
            shell.wait(timeout=600)
        double = len(winners) - len(set(winners))
        return {"wall_ms": wall, "winners": len(winners), "double_bookings": double}
    finally:
        for shell in shells:
            if shell.poll() is None:
                shell.kill()
            shell.wait()


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


def median(values: List[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20, help="repetitions per timed scenario (default 20)")
    parser.add_argument("--envs", default="1,100,1000", help="live environment counts (default 1,100,1000)")
    parser.add_argument("--racers", default="16,64", help="racing terminals (default 16,64)")
    parser.add_argument("--compare-upstream", action="store_true", help="also measure %s" % UPSTREAM)
    parser.add_argument("--upstream-max-envs", type=int, default=100,
                        help="skip upstream env counts above this (its activate is slow; default 100)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    env_counts = [int(n) for n in args.envs.split(",") if n]
    racer_counts = [int(n) for n in args.racers.split(",") if n]

    work = tempfile.mkdtemp(prefix="genv-bench-")
    try:
        python = make_venv(os.path.join(work, "venv"), [])
        ours = Tool("genv", os.path.join(work, "ours"), os.path.join(REPO, "bin"), "genv init -",
                    {"GENV_PYTHON": python})
        tools = [ours]
        if args.compare_upstream:
            upstream_python = make_venv(os.path.join(work, "upstream-venv"), [UPSTREAM])
            tools.append(Tool("genv 1.4.3", os.path.join(work, "upstream"), os.path.dirname(upstream_python),
                              "genv shell --init", {}))

        results: Dict[str, Dict[str, object]] = {tool.name: {} for tool in tools}

        def record(tool: Tool, data: Dict[str, List[float]]) -> None:
            for label, values in data.items():
                results[tool.name].setdefault(label, []).extend(values)  # type: ignore[union-attr]

        record(ours, floors(ours, python, args.reps))
        # Interleaved: each scenario runs on every tool before the next one.
        for tool in tools:
            record(tool, cycle(tool, args.reps))
        for tool in tools:
            record(tool, shim(tool, args.reps))
        for count in env_counts:
            for tool in tools:
                if tool is not ours and count > args.upstream_max_envs:
                    continue
                record(tool, with_live_envs(tool, count, max(3, args.reps // 2)))
        for racers in racer_counts:
            for tool in tools:
                results[tool.name]["race_%d" % racers] = race(tool, racers)

        summary = report(results, tools, python, env_counts, racer_counts)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(summary, handle, indent=2)
        return 0 if summary["races_ok"] else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results, tools, python, env_counts, racer_counts):
    med = {name: {label: median(values) for label, values in data.items() if isinstance(values, list)}
           for name, data in results.items()}
    for name in med:
        if "shim" in med[name] and "direct" in med[name]:
            diffs = [s - d for s, d in zip(results[name]["shim"], results[name]["direct"])]
            med[name]["shim_overhead"] = median(diffs)
    rows = ["init", "activate", "config", "attach", "detach", "deactivate", "cycle"]
    rows += ["envs_%d" % n for n in env_counts] + ["devices_%d" % n for n in env_counts]
    rows += ["shim_overhead", "direct", "floor_bash", "floor_python"]
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
            line += " | %s" % ("%.1f×" % (values[1] / values[0]) if values[0] and values[1] else "n/a")
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
    floor = med["genv"]["floor_python"]
    targets = {
        "command/floor (max of activate, config, attach, detach, deactivate, envs_1, devices_1; target <= 2.5)":
            max(med["genv"][k] for k in ("activate", "config", "attach", "detach", "deactivate",
                                          "envs_%d" % env_counts[0], "devices_%d" % env_counts[0])) / floor,
        "shim overhead ms (target <= 5)": med["genv"]["shim_overhead"],
    }
    if len(env_counts) > 1:
        targets["envs at %d / at %d (target <= 2)" % (env_counts[-1], env_counts[0])] = (
            med["genv"]["envs_%d" % env_counts[-1]] / med["genv"]["envs_%d" % env_counts[0]])
        targets["devices at %d / at %d (target <= 2)" % (env_counts[-1], env_counts[0])] = (
            med["genv"]["devices_%d" % env_counts[-1]] / med["genv"]["devices_%d" % env_counts[0]])
    if len(names) > 1 and med[names[1]].get("cycle"):
        targets["cycle speed-up over 1.4.3 (target >= 15)"] = med[names[1]]["cycle"] / med["genv"]["cycle"]
    print()
    for label, value in targets.items():
        print("- %s: %.2f" % (label, value))
    print("- races: %s" % ("no GPU handed out twice" if races_ok else "FAILED"))
    return {"medians": med, "races": {name: {k: v for k, v in results[name].items() if k.startswith("race")}
                                      for name in names}, "targets": targets, "races_ok": races_ok}


if __name__ == "__main__":
    sys.exit(main())
