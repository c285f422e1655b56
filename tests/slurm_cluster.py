"""A real single-node Slurm cluster on loopback, for the tests (root only).

``Cluster(base, constrain_devices=...)`` writes a generated ``slurm.conf``,
``gres.conf`` and ``cgroup.conf`` into a folder of its own, starts
``munged`` (on a socket of its own), ``slurmctld`` and ``slurmd`` as root in
the foreground, each in a process group of its own, and waits until
``sinfo`` shows the node idle. ``stop()`` stops every daemon it started
(SIGTERM to the group, then SIGKILL), whatever state they are in, removes
the fake GPU device files it made, and is also registered with ``atexit``.

GPUs: ``gres.conf`` names ``/dev/nvidia0..3``. Where no ``/dev/nvidia*``
exists (never on a machine with NVIDIA GPUs), the cluster makes them as
character devices with NVIDIA's major number, 195 (``mknod``), and removes
them again; opening one fails (no driver behind it), but Slurm only needs
the files, and its device cgroup can allow or deny them.

Nothing here touches /etc/slurm: clients find the configuration through
``SLURM_CONF`` (``cluster.env``), so a machine without Slurm of its own
stays one.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from typing import Dict, List, Optional

DAEMONS = ("munged", "slurmctld", "slurmd")
PACKAGES = "slurmctld slurmd slurm-client munge"
GPUS = 4
CLIENTS = ("sinfo", "srun", "sbatch", "salloc", "scontrol", "squeue", "scancel")


def missing() -> Optional[str]:
    """Why no cluster can start here, or None."""
    if os.geteuid() != 0:
        return "running as uid %d, not root" % os.geteuid()
    for program in DAEMONS + CLIENTS:
        if shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            return "%s is not installed (Debian packages: %s)" % (program, PACKAGES)
    return None


def configured_here() -> bool:
    """Whether this machine has a Slurm configuration of its own (then it
    is a Slurm node for genv whatever the tests do)."""
    return any(os.path.isfile(path) for path in ("/etc/slurm/slurm.conf", "/run/slurm/conf/slurm.conf")) \
        or bool(os.environ.get("SLURM_CONF"))


def which(program: str) -> str:
    found = shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError("%s is not installed" % program)
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cgroup_v1_devices() -> bool:
    """Whether this machine has the cgroup v1 devices controller (what
    ``ConstrainDevices=yes`` uses here)."""
    try:
        with open("/proc/mounts") as handle:
            mounts = handle.read().splitlines()
    except OSError:
        return False
    for line in mounts:
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "cgroup" and "devices" in fields[3].split(","):
            return True
    return False


def cgroup_v1_freezer() -> bool:
    """Whether proctrack/cgroup can work here (cgroup v1 freezer)."""
    try:
        with open("/proc/mounts") as handle:
            mounts = handle.read().splitlines()
    except OSError:
        return False
    return any(len(f) >= 4 and f[2] == "cgroup" and "freezer" in f[3].split(",")
               for f in (line.split() for line in mounts))


def slurm_cgroup_dirs() -> List[str]:
    """Slurm's top cgroup folders (``/sys/fs/cgroup/<controller>/slurm*``)."""
    found = []
    try:
        controllers = os.listdir("/sys/fs/cgroup")
    except OSError:
        return found
    for controller in controllers:
        folder = os.path.join("/sys/fs/cgroup", controller)
        try:
            found += [os.path.join(folder, entry) for entry in os.listdir(folder) if entry.startswith("slurm")]
        except OSError:
            continue
    return found


class Cluster:
    def __init__(self, base: str, constrain_devices: bool = False, cgroups: bool = True,
                 node: Optional[str] = None) -> None:
        self.base = base
        self.constrain_devices = constrain_devices
        self.node = node or socket.gethostname().split(".")[0]
        self.conf = os.path.join(base, "etc", "slurm.conf")
        self.procs: Dict[str, subprocess.Popen] = {}
        self.made_devices: List[str] = []
        # proctrack/cgroup (and task/cgroup for ConstrainDevices) where the
        # cgroup v1 freezer exists, else proctrack/linuxproc.
        self.cgroups = cgroups and cgroup_v1_freezer()
        if constrain_devices and not (self.cgroups and cgroup_v1_devices()):
            raise RuntimeError("ConstrainDevices needs the cgroup v1 devices controller, which this machine lacks")
        self.cgroup_dirs_before = slurm_cgroup_dirs()
        self.started = False
        self._logs: Dict[str, str] = {}

    # -- configuration --------------------------------------------------------

    @property
    def env(self) -> Dict[str, str]:
        """What a client needs to find this cluster."""
        return {"SLURM_CONF": self.conf}

    def _write(self, name: str, text: str) -> None:
        with open(os.path.join(self.base, "etc", name), "w") as handle:
            handle.write(text)

    def configure(self) -> None:
        for folder in ("etc", "state", "spool", "log", "run", "munge"):
            os.makedirs(os.path.join(self.base, folder), exist_ok=True)
        os.chmod(self.base, 0o755)
        for folder in ("etc", "log"):
            os.chmod(os.path.join(self.base, folder), 0o755)
        # Every user's clients reach munged's socket (the key stays root's only).
        os.chmod(os.path.join(self.base, "munge"), 0o755)
        self.ctld_port, self.d_port = free_port(), free_port()
        while self.d_port == self.ctld_port:
            self.d_port = free_port()
        self.munge_socket = os.path.join(self.base, "munge", "munge.socket")
        proctrack = "proctrack/cgroup" if self.cgroups else "proctrack/linuxproc"
        task = "task/cgroup" if (self.cgroups and self.constrain_devices) else "task/none"
        b = self.base
        self._write("slurm.conf", "\n".join([
            "ClusterName=genvtest",
            "SlurmctldHost=%s(127.0.0.1)" % self.node,
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "AuthInfo=socket=%s" % self.munge_socket,
            "CredType=cred/munge",
            "SlurmctldPort=%d" % self.ctld_port,
            "SlurmdPort=%d" % self.d_port,
            "StateSaveLocation=%s/state" % b,
            "SlurmdSpoolDir=%s/spool" % b,
            "SlurmctldPidFile=%s/run/slurmctld.pid" % b,
            "SlurmdPidFile=%s/run/slurmd.pid" % b,
            "SlurmctldLogFile=%s/log/slurmctld.log" % b,
            "SlurmdLogFile=%s/log/slurmd.log" % b,
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=%s" % proctrack,
            "TaskPlugin=%s" % task,
            "GresTypes=gpu",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/builtin",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "InactiveLimit=0",
            "KillWait=2",
            "MinJobAge=2",
            "MessageTimeout=10",
            "NodeName=%s NodeAddr=127.0.0.1 CPUs=2 Gres=gpu:%d State=UNKNOWN" % (self.node, GPUS),
            "PartitionName=debug Nodes=%s Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES" % self.node,
            "",
        ]))
        self._write("gres.conf", "NodeName=%s Name=gpu File=/dev/nvidia[0-%d]\n" % (self.node, GPUS - 1))
        self._write("cgroup.conf", "\n".join([
            "CgroupPlugin=cgroup/v1",
            "CgroupAutomount=yes",
            "ConstrainDevices=%s" % ("yes" if self.constrain_devices else "no"),
            "ConstrainCores=no",
            "ConstrainRAMSpace=no",
            "",
        ]))

    def make_devices(self) -> None:
        """/dev/nvidia0..3 as character devices 195:N, only where no
        /dev/nvidia* exists."""
        if any(name.startswith("nvidia") for name in os.listdir("/dev")):
            if all(os.path.exists("/dev/nvidia%d" % i) for i in range(GPUS)):
                return
            raise RuntimeError("/dev has NVIDIA device files, but not /dev/nvidia0..%d: "
                               "refusing to make fake ones beside them" % (GPUS - 1))
        for index in range(GPUS):
            path = "/dev/nvidia%d" % index
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(195, index))
            self.made_devices.append(path)

    def remove_devices(self) -> None:
        for path in self.made_devices:
            try:
                info = os.lstat(path)
                if stat.S_ISCHR(info.st_mode) and os.major(info.st_rdev) == 195:
                    os.unlink(path)
            except OSError:
                pass
        self.made_devices = []

    # -- daemons -----------------------------------------------------------------

    def _spawn(self, name: str, argv: List[str]) -> None:
        log = os.path.join(self.base, "log", name + ".out")
        self._logs[name] = log
        with open(log, "ab") as out:
            self.procs[name] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env=self.daemon_env(),
            )

    def daemon_env(self) -> Dict[str, str]:
        return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SLURM_CONF": self.conf,
                "LANG": "C.UTF-8"}

    def start(self, timeout: float = 60) -> None:
        atexit.register(self.stop)
        self.started = True
        try:
            self.configure()
            self.make_devices()
            key = os.path.join(self.base, "munge", "munge.key")
            with open(key, "wb") as handle:
                handle.write(os.urandom(1024))
            os.chmod(key, 0o400)
            m = os.path.join(self.base, "munge")
            self._spawn("munged", [which("munged"), "-F", "--force", "-S", self.munge_socket, "--key-file", key,
                                   "--pid-file", m + "/munged.pid", "--seed-file", m + "/munged.seed",
                                   "--log-file", m + "/munged.log"])
            self._wait(lambda: os.path.exists(self.munge_socket), "munged's socket", 20)
            self._spawn("slurmctld", [which("slurmctld"), "-D", "-i", "-f", self.conf])
            self._spawn("slurmd", [which("slurmd"), "-D", "-f", self.conf])
            self._wait(self._idle, "the node to be idle in sinfo", timeout)
        except BaseException:
            self.stop()
            raise

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError("%s exited (status %s) while waiting for %s:\n%s"
                                       % (name, proc.returncode, what, self.logs()))
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError("timed out waiting for %s:\n%s" % (what, self.logs()))

    def _idle(self) -> bool:
        result = self.client(["sinfo", "-h", "-N", "-o", "%t"], check=False)
        return result.returncode == 0 and result.stdout.strip() == "idle"

    def logs(self) -> str:
        parts = []
        for name in ("munged", "slurmctld", "slurmd"):
            for path in (self._logs.get(name), os.path.join(self.base, "log", name + ".log")):
                if path and os.path.exists(path):
                    with open(path, errors="replace") as handle:
                        tail = handle.read()[-3000:]
                    parts.append("--- %s\n%s" % (path, tail))
        return "\n".join(parts)

    def client(self, argv: List[str], check: bool = True, timeout: float = 60, user: Optional[str] = None,
               env: Optional[Dict[str, str]] = None, input: Optional[str] = None) -> subprocess.CompletedProcess:
        full = self.daemon_env()
        full.update(env or {})
        command = [which(argv[0])] + argv[1:]
        if user is not None:
            command = ["runuser", "-u", user, "--"] + ["env", "-i"] + ["%s=%s" % item for item in full.items()] \
                + command
        result = subprocess.run(command, env=full, capture_output=True, text=True, timeout=timeout, input=input,
                                cwd=self.base)
        if check and result.returncode != 0:
            raise RuntimeError("%s failed (%d): %s%s" % (" ".join(argv), result.returncode, result.stdout,
                                                         result.stderr))
        return result

    def stop(self) -> None:
        """Stop everything this cluster started: every user's jobs (while the
        controller still answers), the daemons (their whole process groups),
        then any job process or slurmstepd left (slurmstepd leaves slurmd's
        group): those whose cgroup is one of this cluster's, whose
        environment names this cluster's configuration, or (slurmstepd,
        which clears its environment) that write to this cluster's log.
        Then the device files and the empty cgroup folders go."""
        if not self.started:
            return
        self.started = False
        try:
            atexit.unregister(self.stop)
        except Exception:
            pass
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            try:
                self._cancel_all()
            except Exception:
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None:
                continue
            for signum in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, signum)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for _ in range(3):
            if not self._kill_leftovers():
                break
            time.sleep(0.2)
        self.remove_devices()
        self._remove_cgroups()

    def _cancel_all(self, timeout: float = 15) -> None:
        """Cancel every job of every user and wait until none is left."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = self.client(["squeue", "-h", "-o", "%i %T"], check=False, timeout=10)
            jobs = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
            if listed.returncode != 0 or not jobs:
                return
            self.client(["scancel"] + jobs, check=False, timeout=10)
            time.sleep(0.2)

    def _ours(self, pid: str, tops: List[str]) -> bool:
        """Whether a process is this cluster's: in a cgroup folder that this
        cluster's slurmd made (``tops``: their names), started with its
        configuration, or a slurmstepd writing to its files."""
        try:
            with open("/proc/%s/cgroup" % pid) as handle:
                for line in handle.read().splitlines():
                    parts = line.split(":", 2)[-1].split("/")
                    if len(parts) > 1 and parts[1] in tops:
                        return True
        except OSError:
            return False
        try:
            with open("/proc/%s/environ" % pid, "rb") as handle:
                if ("SLURM_CONF=%s" % self.conf).encode() in handle.read().split(b"\0"):
                    return True
        except OSError:
            pass
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                if not handle.read().startswith(b"slurmstepd"):
                    return False
            for fd in os.listdir("/proc/%s/fd" % pid):
                if os.readlink("/proc/%s/fd/%s" % (pid, fd)).startswith(self.base + "/"):
                    return True
        except OSError:
            pass
        return False

    def _kill_leftovers(self) -> bool:
        """SIGKILL this cluster's job processes and slurmstepds still
        running; whether there were any."""
        found = False
        me = str(os.getpid())
        tops = [os.path.basename(top) for top in slurm_cgroup_dirs() if top not in self.cgroup_dirs_before]
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or entry == me:
                continue
            if self._ours(entry, tops):
                found = True
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except OSError:
                    pass
        return found

    def _remove_cgroups(self) -> None:
        """Remove the (empty) cgroup folders slurmd made, deepest first."""
        for top in slurm_cgroup_dirs():
            if top in self.cgroup_dirs_before:
                continue
            for folder, _, _ in sorted(os.walk(top), key=lambda entry: -entry[0].count("/")):
                try:
                    os.rmdir(folder)
                except OSError:
                    pass
