"""genv on Slurm (issue 17), against a real single-node Slurm cluster.

The cluster (tests/slurm_cluster.py: munged, slurmctld and slurmd on
loopback, 4 GPUs whose device files are made with mknod) is started once per
kind and stopped when the module ends, whatever happens:

- ``plain``: proctrack/cgroup, no device cgroups: CUDA_VISIBLE_DEVICES in a
  job holds physical indices;
- ``constrained``: task/cgroup with ConstrainDevices=yes: a job may open only
  its GPUs' device files, and CUDA_VISIBLE_DEVICES counts them from 0;
- ``linuxproc``: no cgroups at all: only Slurm (scontrol listpids) says
  whose a process is.

Terminals in a job are real ``srun --jobid=N --overlap bash`` steps driven
like any Shell; batch jobs are polled (not ``sbatch --wait``, which polls
every 10 s). The tests need root (daemons, a second user); they skip without
it, and fail under GENV_TEST_REQUIRE=slurm.
"""

import json
import os
import shutil
import subprocess
import threading
import time
from typing import Dict, List, Optional

import pytest

from conftest import Shell, as_user, need
import slurm_cluster

pytestmark = pytest.mark.serial  # the daemons hold machine-wide resources: one cluster at a time

UUIDS = ["GPU-%08x-5ee0-4c1a-9a3e-%012x" % (0x3F1E2D00 + i, 0xA100 + i) for i in range(4)]
"""The fake nvidia-smi's GPUs, by index."""


class Manager:
    """Starts the cluster of the kind a test asks for (stopping another kind
    first): one cluster runs at a time."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cluster: Optional[slurm_cluster.Cluster] = None
        self.kind = ""
        self.started = 0

    def get(self, kind: str) -> slurm_cluster.Cluster:
        need("slurm")
        if kind == "constrained" and not slurm_cluster.cgroup_v1_devices():
            pytest.skip("ConstrainDevices=yes needs the cgroup v1 devices controller, which this machine lacks")
        if self.cluster is not None and self.kind == kind:
            return self.cluster
        self.stop()
        self.started += 1
        folder = os.path.join(self.base, "%s-%d" % (kind, self.started))
        os.makedirs(folder)
        cluster = slurm_cluster.Cluster(folder, constrain_devices=kind == "constrained", cgroups=kind != "linuxproc")
        cluster.start()
        self.cluster, self.kind = cluster, kind
        return cluster

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None


@pytest.fixture(scope="module")
def slurm():
    base = os.path.realpath(os.path.join("/tmp", "genv-slurm-%d" % os.getpid()))
    os.makedirs(base, exist_ok=True)
    os.chmod(base, 0o755)
    manager = Manager(base)
    try:
        yield manager
    finally:
        manager.stop()
        shutil.rmtree(base, ignore_errors=True)


class JobShell(Shell):
    """A terminal that is a step of a job: ``srun --jobid=N --overlap bash``."""

    def __init__(self, argv: List[str], env: Dict[str, str], cwd: str, user=None) -> None:
        self.kind = "bash"
        extra = as_user(user) if user is not None else {}
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, cwd=cwd, start_new_session=True, **extra)
        self.pid = self.proc.pid
        result = self.run('eval "$(genv init -)"')
        assert result.rc == 0, result


class Site:
    """A test's view of the cluster: genv (installed by the genv fixture),
    jobs it submits (cancelled at the end), terminals in jobs."""

    def __init__(self, genv, cluster: slurm_cluster.Cluster) -> None:
        self.genv = genv
        self.cluster = cluster
        self.jobs_dir = os.path.join(os.path.dirname(genv.tmpdir), "genv-slurm")
        # Outside jobs: the node's genv, with the cluster's configuration.
        genv.extra.update({"SLURM_CONF": cluster.conf, "GENV_SLURM_TMPDIR": self.jobs_dir})
        self.shared = os.path.join(genv.base, "shared")
        os.makedirs(self.shared)
        os.chmod(self.shared, 0o777)
        self.submitted: List[str] = []
        self.shells: List[Shell] = []

    def job_env(self, **overrides: Optional[str]) -> Dict[str, str]:
        """What a job inherits: genv's test environment, without the node's
        GENV_TMPDIR (a user who sets it chooses the state folder)."""
        env = self.genv.environ(GENV_TMPDIR=None)
        env.update({key: value for key, value in overrides.items() if value is not None})
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
        return env

    def _run(self, argv: List[str], user=None, env=None, timeout: float = 60) -> subprocess.CompletedProcess:
        extra = as_user(user) if user is not None else {}
        return subprocess.run(argv, env=env or self.job_env(), cwd=self.shared, capture_output=True, text=True,
                              timeout=timeout, **extra)

    def sbatch(self, script: str, gres: Optional[str] = "gpu:2", user=None, **env: Optional[str]) -> str:
        path = os.path.join(self.shared, "job-%d.sh" % (len(self.submitted) + 1))
        with open(path, "w") as handle:
            handle.write("#!/bin/bash\n" + script)
        os.chmod(path, 0o755)
        argv = ["sbatch", "--parsable", "-o", os.path.join(self.shared, "slurm-%j.out")]
        if gres:
            argv.append("--gres=" + gres)
        result = self._run(argv + [path], user=user, env=self.job_env(**env))
        assert result.returncode == 0, result
        jid = result.stdout.strip().split(";")[0]
        self.submitted.append(jid)
        return jid

    def salloc(self, gres: Optional[str] = "gpu:2", user=None) -> str:
        argv = ["salloc", "--no-shell"] + (["--gres=" + gres] if gres else [])
        result = self._run(argv, user=user)
        assert result.returncode == 0, result
        words = [w for w in result.stderr.split() if w.isdigit()]
        assert "Granted job allocation" in result.stderr and words, result
        self.submitted.append(words[-1])
        return words[-1]

    def state(self, jid: str) -> str:
        result = self.cluster.client(["scontrol", "-o", "show", "job", jid], check=False)
        for token in result.stdout.split():
            if token.startswith("JobState="):
                return token.split("=", 1)[1]
        return "GONE"

    def wait_state(self, jid: str, states, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state(jid)
            if state in states:
                return state
            time.sleep(0.1)
        raise AssertionError("job %s still %s after %gs; its output: %s" % (
            jid, self.state(jid), timeout, self.output(jid)))

    def output(self, jid: str) -> str:
        try:
            with open(os.path.join(self.shared, "slurm-%s.out" % jid)) as handle:
                return handle.read()
        except OSError:
            return "(none)"

    def wait_file(self, name: str, timeout: float = 60, jid: Optional[str] = None) -> str:
        path = os.path.join(self.shared, name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(path + ".done"):
                with open(path) as handle:
                    return handle.read()
            time.sleep(0.05)
        raise AssertionError("no %s after %gs; job output: %s" % (name, timeout, self.output(jid) if jid else "-"))

    def step(self, jid: str, user=None, gres: Optional[str] = None, **env: Optional[str]) -> JobShell:
        argv = ["srun", "--jobid=" + jid, "--overlap"] + (["--gres=" + gres] if gres else []) \
            + ["bash", "--norc", "--noprofile"]
        shell = JobShell(argv, self.job_env(**env), self.shared, user=user)
        self.shells.append(shell)
        return shell

    def cancel(self, jid: str) -> None:
        self.cluster.client(["scancel", jid], check=False)
        self.wait_state(jid, ("CANCELLED", "COMPLETED", "FAILED", "GONE"))

    def close(self) -> None:
        for shell in self.shells:
            shell.close()
        for jid in self.submitted:
            self.cluster.client(["scancel", jid], check=False)
        for jid in self.submitted:
            try:
                self.wait_state(jid, ("CANCELLED", "COMPLETED", "FAILED", "GONE", "TIMEOUT"), 30)
            except AssertionError:
                pass
        deadline = time.monotonic() + 30  # the next test finds the node idle
        while time.monotonic() < deadline:
            result = self.cluster.client(["sinfo", "-h", "-N", "-o", "%t"], check=False)
            if result.stdout.strip() == "idle":
                break
            time.sleep(0.1)


def site_for(slurm, genv, kind: str):
    site = Site(genv, slurm.get(kind))
    return site


@pytest.fixture
def plain(slurm, genv):
    site = site_for(slurm, genv, "plain")
    yield site
    site.close()


@pytest.fixture
def constrained(slurm, genv):
    site = site_for(slurm, genv, "constrained")
    yield site
    site.close()


@pytest.fixture
def linuxproc(slurm, genv):
    site = site_for(slurm, genv, "linuxproc")
    yield site
    site.close()


def devices_json(shell: Shell) -> List[dict]:
    out = shell.ok("genv devices --format json")
    return json.loads(out)


def opens(index: int, shell: Shell) -> str:
    """How opening /dev/nvidia<index> fails in that shell: 'allowed' (no
    driver behind it: ENXIO) or 'denied' (the device cgroup: EPERM)."""
    out = shell.run("( exec 3</dev/nvidia%d ) 2>&1" % index).out
    if "No such device or address" in out:
        return "allowed"
    assert "Operation not permitted" in out, out
    return "denied"


# --- item 1 and 2: inside a job the pool is the job's GPUs -------------------------------


BATCH = r"""
eval "$(genv init -)"
out=%(shared)s/batch
{
  echo "JOB_GPUS=${SLURM_JOB_GPUS-}"
  echo "CUDA_BEFORE=${CUDA_VISIBLE_DEVICES-}"
  echo "DEVICES=$(genv devices --format json | tr -d '\n')"
  echo "RUN=$(genv run --gpus 1 -- printenv CUDA_VISIBLE_DEVICES)"
  genv activate --gpus 2 || echo "ACTIVATE=failed"
  echo "CUDA_AFTER=${CUDA_VISIBLE_DEVICES-}"
  echo "SMI=$(nvidia-smi --query-gpu=index,uuid --format=csv,noheader | tr '\n' ';')"
  genv attach --count 3 2>"$out.attach"
  echo "ATTACH3=$(cat "$out.attach")"
} >"$out" 2>"$out.err"
touch "$out.done"
sleep 600
"""


@pytest.mark.parametrize("kind,cgroup_view", [("plain", ""), ("constrained", ""), ("constrained", "1")])
def test_batch_job_sees_exactly_its_gpus_and_exports_what_cuda_finds(slurm, genv, kind, cgroup_view):
    # Another job takes GPU 0 first, so that the job's GPUs are 1,2 (not 0,1).
    site = site_for(slurm, genv, kind)
    try:
        first = site.sbatch("sleep 600\n", gres="gpu:1")
        site.wait_state(first, ("RUNNING",))
        jid = site.sbatch(BATCH % {"shared": site.shared}, gres="gpu:2",
                          FAKE_NVIDIA_SMI_CGROUP=cgroup_view or None)
        lines = site.wait_file("batch", jid=jid).splitlines()
        with open(os.path.join(site.shared, "batch.err")) as handle:
            errors = handle.read()
        values = dict(line.split("=", 1) for line in lines)
        assert "ACTIVATE" not in values, errors
        assert values["JOB_GPUS"] == "1,2"
        assert values["CUDA_BEFORE"] == ("0,1" if kind == "constrained" else "1,2")
        listed = json.loads(values["DEVICES"])
        uuids = [doc["uuid"] for doc in listed]
        assert uuids == [UUIDS[1], UUIDS[2]], listed
        if cgroup_view:  # nvidia-smi numbers the GPUs the job may open from 0
            assert [doc["index"] for doc in listed] == [0, 1]
        else:
            assert [doc["index"] for doc in listed] == [1, 2]
        # CUDA is told the job's GPUs by UUID: right with and without device cgroups.
        assert values["RUN"] == UUIDS[1], errors
        assert values["CUDA_AFTER"] == "%s,%s" % (UUIDS[1], UUIDS[2]), errors
        # The shim narrows nvidia-smi to the same GPUs.
        assert values["SMI"] == "".join("%d, %s;" % (doc["index"], doc["uuid"]) for doc in listed)
        assert "cannot attach 3 GPUs: this machine has 2" in values["ATTACH3"]
        assert "Traceback" not in errors
        if kind == "constrained":
            # Exactly the GPUs named are those the job may open.
            shell = site.step(jid)
            assert [opens(index, shell) for index in range(4)] == ["denied", "allowed", "allowed", "denied"]
            # A step given one of the job's GPUs: CUDA counts it as 0, Slurm by its index.
            one = site.step(jid, gres="gpu:1")
            assert one.var("CUDA_VISIBLE_DEVICES") == "0" and one.var("SLURM_STEP_GPUS") in ("1", "2")
    finally:
        site.close()


def test_terminals_of_one_job_share_one_pool(plain):
    jid = plain.salloc("gpu:2")
    a = plain.step(jid)
    b = plain.step(jid)
    c = plain.step(jid)
    assert a.var("SLURM_STEP_GPUS") == "0,1"
    a.ok("genv activate --gpus 1")
    b.ok("genv activate --gpus 1")
    got = {a.var("CUDA_VISIBLE_DEVICES"), b.var("CUDA_VISIBLE_DEVICES")}
    assert got == {UUIDS[0], UUIDS[1]}
    refused = c.run("genv activate --gpus 1")
    assert refused.rc == 1 and "cannot attach 1 GPU: only 0 of this machine's 2 are free" in refused.err, refused
    # Every terminal sees the same pool: the job's two GPUs, one environment on each.
    for shell in (a, b, c):
        docs = devices_json(shell)
        assert [doc["index"] for doc in docs] == [0, 1]
        assert sorted(len(doc["environments"]) for doc in docs) == [1, 1]
    # A third terminal waits for a GPU; the first one's deactivate hands it over.
    timer = threading.Timer(1.0, lambda: a.ok("genv deactivate"))
    timer.start()
    try:
        waited = c.run("genv attach --count 1 --wait 30")
    finally:
        timer.join()
    assert waited.rc == 0, waited
    assert c.var("CUDA_VISIBLE_DEVICES") in (UUIDS[0], UUIDS[1])


def test_a_batch_script_and_an_srun_into_its_job_share_one_pool(plain):
    script = """
eval "$(genv init -)"
genv activate --gpus 1 >%(shared)s/script 2>&1
echo "$CUDA_VISIBLE_DEVICES" >>%(shared)s/script
touch %(shared)s/script.done
sleep 600
""" % {"shared": plain.shared}
    jid = plain.sbatch(script, gres="gpu:2")
    mine = plain.wait_file("script", jid=jid).strip().splitlines()[-1]
    step = plain.step(jid)
    step.ok("genv activate --gpus 1")
    other = step.var("CUDA_VISIBLE_DEVICES")
    assert {mine, other} == {UUIDS[0], UUIDS[1]}
    third = plain.step(jid)
    assert third.run("genv activate --gpus 1").rc == 1
    envs = json.loads(third.ok("genv envs --format json"))
    assert sorted(len(env["devices"]) for env in envs) == [0, 1, 1]  # the third one's, detached


def test_a_job_without_gpus_here_manages_none(plain):
    jid = plain.salloc(None)
    shell = plain.step(jid)
    result = shell.run("genv devices")
    assert result.rc == 0
    assert result.err.strip() == "genv: Slurm job %s has no GPUs on this node (%s)" % (jid, plain.cluster.node)
    assert "NVIDIA" not in result.out
    assert json.loads(shell.ok("genv devices --format json 2>/dev/null")) == []
    refused = shell.run("genv activate --gpus 1")
    assert refused.rc == 1 and "this machine has 0" in refused.err


def test_a_job_id_of_no_running_job_of_ours_gives_no_gpu(plain, other_user):
    """SLURM_JOB_ID (and SLURM_JOB_GPUS) carried outside a job, by mistake (a
    shell kept from a job that ended) or by hand: genv in it never hands out
    a GPU that Slurm gave a job, nor another user's job's GPUs; Slurm's
    answer, not the variables, says what the job holds."""
    mine = plain.salloc("gpu:2")  # GPUs 0 and 1: a running job of root's
    ended = plain.salloc("gpu:1")  # GPU 2, until it ends
    plain.cancel(ended)
    cases = [
        (None, ended, "2", "genv: Slurm job %s is not running; genv manages no GPU in it" % ended),
        (None, "999999", "0-3", "genv: Slurm job 999999 is not running; genv manages no GPU in it"),
        (other_user, mine, "0-1", "genv: Slurm job %s is not yours (it is root's); genv manages no GPU in it" % mine),
    ]
    # (The other user keeps their state in a folder of theirs: a job's folder made by root is refused to them.)
    theirs = os.path.join(plain.genv.base, "home-" + other_user.pw_name, "state")
    for user, jid, gpus, message in cases:
        shell = plain.genv.shell(user=user, SLURM_JOB_ID=jid, SLURM_JOB_GPUS=gpus,
                                 GENV_TMPDIR=theirs if user is not None else None)
        result = shell.run("genv devices --format json")
        assert result.rc == 0 and json.loads(result.out) == [], (jid, result)
        assert result.err.strip() == message, (jid, result)
        refused = shell.run("genv activate --gpus 1")
        assert refused.rc == 1 and "this machine has 0" in refused.err, (jid, refused)
        shell.close()
    # A job id Slurm would not write (a leading zero) names no job: genv works as outside jobs.
    shell = plain.genv.shell(user=other_user, SLURM_JOB_ID="0" + mine, SLURM_JOB_GPUS="0-1")
    docs = devices_json(shell)
    assert [[h["id"] for h in doc["environments"]] for doc in docs] == [["slurm:" + mine]] * 2 + [[], []]
    shell.ok("genv activate --gpus 1")
    assert shell.var("CUDA_VISIBLE_DEVICES") == "2"
    shell.close()
    # The job's own terminals still get its GPUs.
    own = plain.step(mine)
    own.ok("genv activate --gpus 2")
    assert own.var("CUDA_VISIBLE_DEVICES") == "%s,%s" % (UUIDS[0], UUIDS[1])


# --- item 3: one pool per job, private; state gone with the job -------------------------


def test_two_jobs_of_two_users_are_private_and_end_cleanly(plain, other_user):
    mine = plain.salloc("gpu:2")
    theirs = plain.salloc("gpu:2", user=other_user)
    a = plain.step(mine)
    b = plain.step(theirs, user=other_user)
    a.ok("genv activate --gpus 2 --name mine")
    b.ok("genv activate --gpus 2 --name theirs")
    assert a.var("CUDA_VISIBLE_DEVICES") == "%s,%s" % (UUIDS[0], UUIDS[1])
    assert b.var("CUDA_VISIBLE_DEVICES") == "%s,%s" % (UUIDS[2], UUIDS[3])
    assert [e["name"] for e in json.loads(a.ok("genv envs --format json"))] == ["mine"]
    assert [e["name"] for e in json.loads(b.ok("genv envs --format json"))] == ["theirs"]
    # Each job's state is its own folder, readable by its user only.
    folders = {name: os.stat(os.path.join(plain.jobs_dir, name)) for name in os.listdir(plain.jobs_dir)}
    assert set(folders) == {"job-" + mine, "job-" + theirs}
    assert folders["job-" + theirs].st_uid == other_user.pw_uid
    assert all(info.st_mode & 0o777 == 0o700 for info in folders.values())
    # Outside jobs: no environment, and both jobs hold their GPUs.
    outside = plain.genv.shell()
    assert json.loads(outside.ok("genv envs --format json")) == []
    docs = devices_json(outside)
    holders = [[(h["id"], h["user"], h["uid"], h["memory"]) for h in doc["environments"]] for doc in docs]
    assert holders == [[("slurm:" + mine, "root", 0, None)]] * 2 + \
        [[("slurm:" + theirs, other_user.pw_name, other_user.pw_uid, None)]] * 2
    csv = outside.ok("genv devices --format csv").splitlines()
    assert csv[1].split(",")[7:11] == ["slurm:" + mine, "", "0", "root"]
    table = outside.ok("genv devices").splitlines()
    assert "slurm:%s  Slurm job of %s" % (theirs, other_user.pw_name) in table[3]
    # A job's end: its terminals go, and the next genv command drops its folder.
    b.close()
    plain.cancel(theirs)
    time.sleep(1.1)  # the sweep leaves alone folders made after Slurm was asked (mtime, whole seconds)
    docs = devices_json(outside)
    assert [len(doc["environments"]) for doc in docs] == [1, 1, 0, 0]
    assert sorted(os.listdir(plain.jobs_dir)) == ["job-" + mine]


def test_two_jobs_of_one_user_do_not_share(plain):
    first, second = plain.salloc("gpu:1"), plain.salloc("gpu:1")
    a, b = plain.step(first), plain.step(second)
    a.ok("genv activate --gpus 1 --name first")
    b.ok("genv activate --gpus 1 --name second")
    assert [e["name"] for e in json.loads(a.ok("genv envs --format json"))] == ["first"]
    assert [e["name"] for e in json.loads(b.ok("genv envs --format json"))] == ["second"]
    assert (a.var("CUDA_VISIBLE_DEVICES"), b.var("CUDA_VISIBLE_DEVICES")) == (UUIDS[0], UUIDS[1])


def test_genv_tmpdir_still_wins_and_genv_slurm_0_turns_it_off(plain):
    jid = plain.salloc("gpu:1")
    chosen = os.path.join(plain.genv.base, "chosen")
    shell = plain.step(jid, GENV_TMPDIR=chosen)
    shell.ok("genv activate --gpus 1")
    assert os.path.exists(os.path.join(chosen, "user-%d.json" % os.geteuid()))
    assert [doc["index"] for doc in devices_json(shell)] == [0]  # still the job's GPU only
    off = plain.step(jid, GENV_SLURM="0", GENV_TMPDIR=plain.genv.tmpdir)
    assert [doc["index"] for doc in devices_json(off)] == [0, 1, 2, 3]
    assert off.var("CUDA_VISIBLE_DEVICES") == "0"  # Slurm's own
    off.ok("genv activate && genv attach --index 3")
    assert off.var("CUDA_VISIBLE_DEVICES") == "3"
    assert os.path.exists(os.path.join(plain.genv.tmpdir, "user-%d.json" % os.geteuid()))


# --- item 4: beside jobs, Slurm's GPUs are held --------------------------------------------


JOB_PROCESS = r"""
sleep 600 &
echo $! >%(shared)s/pid
touch %(shared)s/pid.done
wait
"""


def scontrol_log(site: Site) -> str:
    """A PATH whose scontrol logs each call, then runs the real one."""
    folder = os.path.join(site.genv.base, "logging-bin")
    os.makedirs(folder, exist_ok=True)
    log = os.path.join(site.genv.base, "scontrol.log")
    with open(os.path.join(folder, "scontrol"), "w") as handle:
        handle.write('#!/bin/bash\necho "$*" >>%s\nexec %s "$@"\n' % (log, slurm_cluster.which("scontrol")))
    os.chmod(os.path.join(folder, "scontrol"), 0o755)
    return folder + ":" + site.genv.environ()["PATH"]


def calls(site: Site) -> List[str]:
    try:
        with open(os.path.join(site.genv.base, "scontrol.log")) as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        return []


def apps_file(site: Site, rows: List[str]) -> str:
    path = os.path.join(site.genv.base, "apps")
    with open(path, "w") as handle:
        handle.write("".join(row + "\n" for row in rows))
    return path


@pytest.mark.parametrize("kind", ["plain", "linuxproc"])
def test_beside_jobs_their_gpus_and_processes_are_theirs(slurm, genv, kind):
    site = site_for(slurm, genv, kind)
    try:
        jid = site.sbatch(JOB_PROCESS % {"shared": site.shared}, gres="gpu:2")
        pid = int(site.wait_file("pid", jid=jid))
        stranger = subprocess.Popen(["sleep", "600"])
        try:
            # The job's process on its GPU 0 and (misplaced) on GPU 3; a
            # process outside Slurm on GPU 2.
            apps = apps_file(site, ["%d 0 100 python" % pid, "%d 3 100 python" % pid,
                                    "%d 2 100 intruder" % stranger.pid])
            site.genv.extra.update({"FAKE_NVIDIA_SMI_APPS": apps, "PATH": scontrol_log(site)})
            shell = site.genv.shell()
            ps = json.loads(shell.ok("genv ps --format json"))
            assert [(p["gpu"], p["pid"], p["env_id"], p["managed"], p["misplaced"]) for p in ps] == [
                (0, pid, "slurm:" + jid, True, False), (2, stranger.pid, None, False, False),
                (3, pid, "slurm:" + jid, True, True)]
            # One scontrol call (cgroups say whose the processes are), or two
            # (scontrol listpids, where no cgroup says).
            assert calls(site) == (["-d -o show job"] if site.cluster.cgroups else ["-d -o show job", "listpids"])
            enforce = shell.run("genv enforce --kill --grace 0.1 --format json")
            assert enforce.rc == 1 and enforce.err == "", enforce
            actions = json.loads(enforce.out)
            assert [(a["rule"], a["pid"], a["env_id"], a["outcome"]) for a in actions] == [
                ("unmanaged", stranger.pid, None, "terminated (SIGTERM)"),
                ("misplaced", pid, "slurm:" + jid, "left to Slurm (job %s)" % jid)]
            assert site.state(jid) == "RUNNING"
            assert os.path.exists("/proc/%d" % pid)
        finally:
            stranger.kill()
            stranger.wait()
    finally:
        site.close()


def test_attach_never_takes_a_jobs_gpu_and_waits_for_it(plain):
    jid = plain.sbatch("sleep 600\n", gres="gpu:3")
    plain.wait_state(jid, ("RUNNING",))
    plain.genv.extra["PATH"] = scontrol_log(plain)
    shell = plain.genv.shell()
    refused = shell.run("genv activate && genv attach --index 0")
    assert refused.rc == 1
    assert refused.err == "genv: cannot attach GPU 0: it is busy outside genv (Slurm job %s of root); " \
        "the environment is now detached\n" % jid, refused
    shell.ok("genv deactivate")
    shell.ok("genv activate --gpus 1")
    assert shell.var("CUDA_VISIBLE_DEVICES") == "3"
    count = shell.run("genv attach --count 2")
    assert count.rc == 1 and "busy outside genv: GPU 0 (Slurm job %s of root)" % jid in count.err
    # Waiting: Slurm is asked at most once a second; the job's end frees its GPUs.
    os.unlink(os.path.join(plain.genv.base, "scontrol.log"))
    start = time.monotonic()
    timer = threading.Timer(3.0, lambda: plain.cluster.client(["scancel", jid]))
    timer.start()
    try:
        waited = shell.run("genv attach --count 2 --wait 60")
    finally:
        timer.join()
    took = time.monotonic() - start
    assert waited.rc == 0, waited
    assert shell.var("CUDA_VISIBLE_DEVICES") == "0,1"  # the refused attach above detached GPU 3
    assert len(calls(plain)) <= took + 2, calls(plain)


def test_a_stopped_job_still_holds_its_gpus(plain):
    """A job its user stopped (scancel --signal=STOP: JobState=STOPPED) keeps
    its allocation, and goes on where it was when continued."""
    jid = plain.sbatch("sleep 600\n", gres="gpu:1")
    plain.wait_state(jid, ("RUNNING",))
    plain.cluster.client(["scancel", "--signal=STOP", jid])
    plain.wait_state(jid, ("STOPPED",))
    shell = plain.genv.shell()
    docs = devices_json(shell)
    assert [[h["id"] for h in doc["environments"]] for doc in docs] == [["slurm:" + jid], [], [], []]
    refused = shell.run("genv activate && genv attach --index 0")
    assert refused.rc == 1 and "it is busy outside genv (Slurm job %s of root)" % jid in refused.err, refused
    plain.cluster.client(["scancel", "--signal=CONT", jid])


def test_monitor_counts_a_jobs_gpus_as_held(plain):
    jid = plain.sbatch("sleep 600\n", gres="gpu:2")
    plain.wait_state(jid, ("RUNNING",))
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from genv.commands.monitor import read_documents\n"
            "from genv.metrics import collect\n"
            "envs, devices, procs = read_documents()\n"
            "for family in collect(envs, devices, procs):\n"
            "    if family.spec.name == 'genv_gpu_environments':\n"
            "        print(sorted(family.samples.items()))\n") % plain.genv.root
    result = subprocess.run([plain.genv.environ()["GENV_PYTHON"], "-c", code], env=plain.genv.environ(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result
    assert result.stdout.strip() == "[(('0',), 1), (('1',), 1), (('2',), 0), (('3',), 0)]"


def test_slurm_gives_a_job_a_gpu_an_environment_holds(plain):
    shell = plain.genv.shell()
    shell.ok("genv activate && genv attach --index 3")
    jid = plain.sbatch("sleep 600\n", gres="gpu:4")  # Slurm knows nothing of genv: all four
    plain.wait_state(jid, ("RUNNING",))
    docs = devices_json(shell)
    assert sorted(h["id"] for h in docs[3]["environments"]) == sorted(["slurm:" + jid, shell.var("GENV_ENVIRONMENT_ID")])
    told = shell.run("genv status")
    assert "GPU 3 is now held by Slurm job %s, which Slurm gave it to; stop using it and run 'genv detach'" % jid \
        in told.err, told


# --- item 5: bad or missing answers ------------------------------------------------------


def broken_scontrol(site: Site, body: str, name: str = "broken") -> str:
    folder = os.path.join(site.genv.base, name + "-bin")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "scontrol"), "w") as handle:
        handle.write("#!/bin/bash\n" + body)
    os.chmod(os.path.join(folder, "scontrol"), 0o755)
    return folder + ":" + site.genv.environ()["PATH"]


def no_scontrol(site: Site) -> str:
    """PATH with genv, the fake nvidia-smi and every program of /usr/bin and
    /bin but scontrol."""
    folder = os.path.join(site.genv.base, "no-scontrol-bin")
    if not os.path.isdir(folder):
        os.makedirs(folder)
        for source in ("/usr/bin", "/bin"):
            for entry in os.scandir(source):
                target = os.path.join(folder, entry.name)
                if entry.name != "scontrol" and not os.path.lexists(target):
                    os.symlink(entry.path, target)
    return "%s/bin:%s/tests/fake:%s" % (site.genv.root, site.genv.root, folder)


def test_beside_jobs_without_slurms_answer_genv_falls_back_on_the_node(plain):
    if not plain.cluster.cgroups:
        pytest.skip("a job's processes show in their cgroup only with proctrack/cgroup, which needs the cgroup v1 "
                    "freezer this machine lacks")
    jid = plain.sbatch(JOB_PROCESS % {"shared": plain.shared}, gres="gpu:2")
    pid = int(plain.wait_file("pid", jid=jid))
    apps = apps_file(plain, ["%d 1 0 python" % pid])  # a job's process, holding no memory yet
    plain.genv.extra["FAKE_NVIDIA_SMI_APPS"] = apps
    # A configuration scontrol cannot read fails at once (a controller that is
    # down fails too, after about 9 s of retries: too slow for the tests).
    wrong = os.path.join(plain.genv.base, "wrong.conf")
    with open(plain.cluster.conf) as handle:
        text = handle.read()
    with open(wrong, "w") as handle:
        handle.write(text + "NodeName=extra CPUs=1 Bogus\n")
    cases = {
        "missing": ({"PATH": no_scontrol(plain)}, "scontrol is not on PATH"),
        "failing": ({"SLURM_CONF": wrong}, "failed with exit status 1: scontrol: error: Parse error in file"),
        "hanging": ({"PATH": broken_scontrol(plain, "sleep 30\n", "hanging"), "GENV_SLURM_TIMEOUT": "0.5"},
                    "scontrol did not answer within 0.5 s"),
        "garbage": ({"PATH": broken_scontrol(plain, "echo '<html>Service Unavailable</html>'\n", "garbage")},
                    "unexpected answer from scontrol"),
    }
    for name, (env, why) in cases.items():
        shell = plain.genv.shell(**env)
        result = shell.run("genv devices --format json")
        assert result.rc == 0, (name, result)
        lines = result.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("genv: cannot ask Slurm which GPUs its jobs hold") \
            and why in lines[0], (name, result)
        docs = json.loads(result.out)
        # The GPU with the job's process is the job's; the job's other GPU looks free.
        assert [[h["id"] for h in doc["environments"]] for doc in docs] == [[], ["slurm:" + jid], [], []], name
        refused = shell.run("genv activate && genv attach --index 1")
        assert refused.rc == 1 and "Slurm job %s" % jid in refused.err, (name, refused)
        shell.ok("genv deactivate")
        shell.close()


def test_enforce_never_stops_what_may_be_a_jobs_process(linuxproc):
    jid = linuxproc.sbatch(JOB_PROCESS % {"shared": linuxproc.shared}, gres="gpu:2")
    pid = int(linuxproc.wait_file("pid", jid=jid))
    apps = apps_file(linuxproc, ["%d 0 100 python" % pid])
    linuxproc.genv.extra["FAKE_NVIDIA_SMI_APPS"] = apps
    shell = linuxproc.genv.shell(PATH=no_scontrol(linuxproc))
    result = shell.run("genv enforce --kill --grace 0.1 --format json")
    assert "genv: cannot ask Slurm which GPUs its jobs hold (scontrol is not on PATH)" in result.err
    actions = json.loads(result.out)
    assert [(a["rule"], a["pid"], a["outcome"]) for a in actions] == [
        ("unmanaged", pid, "not stopped: it may be a Slurm job's")]
    assert os.path.exists("/proc/%d" % pid)
    assert linuxproc.state(jid) == "RUNNING"


def test_in_a_job_without_slurms_answer_the_variables_say(plain):
    jid = plain.salloc("gpu:2")
    broken = broken_scontrol(plain, "exit 1\n")
    a = plain.step(jid, PATH=broken)
    b = plain.step(jid, PATH=broken)
    result = a.run("genv activate --gpus 1")
    assert result.rc == 0, result
    assert result.err.strip() == ("genv: cannot ask Slurm for the GPUs of job %s (scontrol -d -o show job %s failed "
                                  "with exit status 1); using what SLURM_STEP_GPUS says" % (jid, jid))
    b.ok("genv activate --gpus 1 2>/dev/null")
    assert {a.var("CUDA_VISIBLE_DEVICES"), b.var("CUDA_VISIBLE_DEVICES")} == {UUIDS[0], UUIDS[1]}
    assert b.run("genv attach --count 2").rc == 1  # never a GPU twice in one job
    # No variable says (a shell of salloc, not a step): no GPU at all.
    shell = plain.genv.shell(SLURM_JOB_ID=jid, GENV_TMPDIR=None, PATH=broken)
    result = shell.run("genv devices --format json")
    assert json.loads(result.out) == []
    assert "and no variable says: genv manages no GPU in this job" in result.err


# --- off Slurm: nothing asked ---------------------------------------------------------------


def test_off_slurm_nothing_is_asked(genv):
    """No Slurm configuration (SLURM_CONF unset, none in /etc/slurm): an
    installed scontrol is never run, in or out of a 'job'."""
    if slurm_cluster.configured_here():
        pytest.skip("this machine has a Slurm configuration of its own")
    log = os.path.join(genv.base, "scontrol.log")
    folder = os.path.join(genv.base, "bin")
    os.makedirs(folder)
    with open(os.path.join(folder, "scontrol"), "w") as handle:
        handle.write("#!/bin/bash\necho \"$*\" >>%s\nexit 1\n" % log)
    os.chmod(os.path.join(folder, "scontrol"), 0o755)
    for env in ({}, {"SLURM_JOB_ID": "12", "SLURM_JOB_GPUS": "1"}):
        shell = genv.shell(PATH=folder + ":" + genv.environ()["PATH"], **env)
        shell.ok("genv activate --gpus 1")
        assert shell.var("CUDA_VISIBLE_DEVICES") == "0"
        result = shell.run("genv devices; genv ps; genv status")
        assert result.rc == 0 and result.err == "", result
        shell.close()
    assert not os.path.exists(log)


# --- the README's examples (item 7) --------------------------------------------------------


def readme_sessions():
    import re

    import test_readme

    text = open(test_readme.README, encoding="utf-8").read()
    blocks = re.findall(r"^```console-slurm\n(.*?)^```$", text, flags=re.S | re.M)
    return [test_readme.session(block) for block in blocks]


def test_the_readme_has_slurm_examples():
    assert len(readme_sessions()) == 2


def run_session(site: Site, shell: Shell, steps, replace) -> None:
    import test_readme

    shell.ok("PS1='$ '")
    for prefix, command, expected in steps:
        prompt = shell.ok('printf %s "${PS1@P}"')
        assert prompt == prefix + "$ ", (command, prompt)
        result = shell.run(command)
        shown = replace(result.out + result.err)
        assert test_readme.normalise(shown) == test_readme.normalise("\n".join(expected)), (command, result)


def test_readme_in_a_job(plain):
    (first, rest) = readme_sessions()[0][0], readme_sessions()[0][1:]
    assert first[1] == "srun --gres=gpu:2 --pty bash" and not first[2]
    # The job srun makes, with a shell in it (a pipe instead of a pty).
    shell = JobShell(["srun", "--gres=gpu:2", "bash", "--norc", "--noprofile"], plain.job_env(), plain.shared)
    plain.shells.append(shell)
    plain.submitted.append(shell.var("SLURM_JOB_ID"))
    run_session(plain, shell, rest, lambda text: text)


def test_readme_beside_a_job(plain, other_user):
    steps = readme_sessions()[1]
    (submit, expected) = steps[0][1], steps[0][2]
    assert submit.startswith("sbatch ")
    import shlex

    result = plain._run(shlex.split(submit), user=other_user)
    assert result.returncode == 0, result
    jid = result.stdout.split()[-1]
    plain.submitted.append(jid)
    assert expected == ["Submitted batch job 41"] and result.stdout.strip() == "Submitted batch job " + jid
    plain.wait_state(jid, ("RUNNING",))
    shell = plain.genv.shell()
    run_session(plain, shell, steps[1:],
                lambda text: text.replace("slurm:%s " % jid, "slurm:41 ").replace("job %s " % jid, "job 41 ")
                .replace(other_user.pw_name, "alice"))
