"""genv/slurm/'s pure parts, on Slurm's own output (recorded from the
single-node cluster of tests/slurm_cluster.py, Slurm 22.05) and on what a
user can make it print. No daemons: these run everywhere."""

import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from genv import slurm  # noqa: E402
from genv.gpus import App  # noqa: E402

# `scontrol -d -o show job` with two running jobs (recorded).
TWO_JOBS = (
    "JobId=2 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901758 Nice=0 Account=(null) "
    "QOS=(null) JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 "
    "ExitCode=0:0 DerivedExitCode=0:0 RunTime=00:00:04 TimeLimit=UNLIMITED TimeMin=N/A "
    "SubmitTime=2026-12-07T19:12:04 EligibleTime=2026-12-07T19:12:04 AccrueTime=2026-12-07T19:12:04 "
    "StartTime=2026-12-07T19:12:04 EndTime=Unknown Deadline=N/A SuspendTime=None SecsPreSuspend=0 "
    "LastSchedEval=2026-12-07T19:12:04 Scheduler=Main Partition=debug AllocNode:Sid=localhost:6276 "
    "ReqNodeList=(null) ExcNodeList=(null) NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 "
    "ReqB:S:C:T=0:0:*:* TRES=cpu=1,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* "
    "JOB_GRES=gpu:1   Nodes=vm CPU_IDs=0 Mem=0 GRES=gpu:1(IDX:0) MinCPUsNode=1 MinMemoryNode=0 "
    "MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) "
    "Network=(null) Command=(null) WorkDir=/tmp/slx StdErr=/tmp/slx/first.out StdIn=/dev/null "
    "StdOut=/tmp/slx/first.out Power= TresPerNode=gres:gpu:1 \n"
    "JobId=3 JobName=job.sh UserId=alice(1001) GroupId=alice(1001) MCS_label=N/A Priority=4294901757 Nice=0 "
    "Account=(null) QOS=(null) JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 "
    "Reboot=0 ExitCode=0:0 DerivedExitCode=0:0 RunTime=00:00:04 TimeLimit=UNLIMITED TimeMin=N/A "
    "SubmitTime=2026-12-07T19:12:04 EligibleTime=2026-12-07T19:12:04 AccrueTime=2026-12-07T19:12:04 "
    "StartTime=2026-12-07T19:12:04 EndTime=Unknown Deadline=N/A SuspendTime=None SecsPreSuspend=0 "
    "LastSchedEval=2026-12-07T19:12:04 Scheduler=Main Partition=debug AllocNode:Sid=localhost:6276 "
    "ReqNodeList=(null) ExcNodeList=(null) NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 "
    "ReqB:S:C:T=0:0:*:* TRES=cpu=1,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* "
    "JOB_GRES=gpu:2   Nodes=vm CPU_IDs=1 Mem=0 GRES=gpu:2(IDX:1-2) MinCPUsNode=1 MinMemoryNode=0 "
    "MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 Licenses=(null) "
    "Network=(null) Command=/tmp/slx/job.sh WorkDir=/tmp/slx StdErr=/tmp/slx/batch.out StdIn=/dev/null "
    "StdOut=/tmp/slx/batch.out Power= TresPerNode=gres:gpu:2 \n"
)

# The same job without -o (recorded): one field group per line.
MULTILINE = """JobId=3 JobName=job.sh
   UserId=root(0) GroupId=root(0) MCS_label=N/A
   Priority=4294901757 Nice=0 Account=(null) QOS=(null)
   JobState=RUNNING Reason=None Dependency=(null)
   StartTime=2026-12-07T19:12:04 EndTime=Unknown Deadline=N/A
   NodeList=vm
   JOB_GRES=gpu:2
     Nodes=vm CPU_IDs=1 Mem=0 GRES=gpu:2(IDX:1-2)
   MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0
   TresPerNode=gres:gpu:2

"""


def record(jid, user="bob(1002)", state="RUNNING", nodes="vm", gres="gpu:1(IDX:3)", name="x", extra=""):
    return ("JobId=%s JobName=%s UserId=%s GroupId=bob(1002) JobState=%s StartTime=2026-12-07T19:12:04 "
            "NodeList=%s NumNodes=1 JOB_GRES=gpu:1   Nodes=%s CPU_IDs=0 Mem=0 GRES=%s MinCPUsNode=1 %s\n"
            % (jid, name, user, state, nodes, nodes, gres, extra))


def test_parse_two_running_jobs():
    jobs = slurm.parse_jobs(TWO_JOBS, {"vm"})
    assert sorted(jobs) == ["2", "3"]
    assert (jobs["2"].uid, jobs["2"].gpus, jobs["2"].here, jobs["2"].holding) == (0, {0}, True, True)
    assert (jobs["3"].uid, jobs["3"].gpus) == (1001, {1, 2})
    assert jobs["3"].start == time.mktime((2026, 12, 7, 19, 12, 4, 0, 0, -1))


def test_parse_without_o_and_other_nodes():
    assert slurm.parse_jobs(MULTILINE, {"vm"})["3"].gpus == {1, 2}
    elsewhere = slurm.parse_jobs(TWO_JOBS, {"gpu07"})
    assert not elsewhere["3"].here and elsewhere["3"].gpus == set()


def test_parse_nothing_and_garbage():
    assert slurm.parse_jobs("No jobs in the system\n", {"vm"}) == {}
    assert slurm.parse_jobs("", {"vm"}) == {}
    with pytest.raises(slurm.SlurmError, match="unexpected answer from scontrol"):
        slurm.parse_jobs("<html>Service Unavailable</html>\n", {"vm"})
    with pytest.raises(slurm.SlurmError):
        slurm.parse_jobs("JobId=abc JobName=x\n", {"vm"})


def test_per_node_parts_of_a_job_on_many_nodes():
    text = ("JobId=9 JobName=big UserId=bob(1002) JobState=RUNNING NodeList=gpu[01-03] JOB_GRES=gpu:4 "
            "  Nodes=gpu[01-02] CPU_IDs=0-3 Mem=0 GRES=gpu:a100:4(IDX:0-3)   Nodes=gpu03 CPU_IDs=0 Mem=0 "
            "GRES=gpu:a100:1(IDX:2),mps:100(0/100,0/100) MinCPUsNode=1\n")
    assert slurm.parse_jobs(text, {"gpu02"})["9"].gpus == {0, 1, 2, 3}
    assert slurm.parse_jobs(text, {"gpu03"})["9"].gpus == {2}
    assert not slurm.parse_jobs(text, {"gpu04"})["9"].here


def test_states():
    assert slurm.parse_jobs(record(5, state="COMPLETING"), {"vm"})["5"].holding
    assert slurm.parse_jobs(record(5, state="SUSPENDED"), {"vm"})["5"].holding
    assert not slurm.parse_jobs(record(5, state="PENDING", gres=""), {"vm"})["5"].holding
    assert not slurm.parse_jobs(record(5, state="COMPLETED"), {"vm"})["5"].holding
    assert slurm.parse_jobs(record(5, state="STOPPED"), {"vm"})["5"].holding  # SIGSTOPped: still allocated


def test_what_a_user_types_can_only_add_holds():
    # A job name that looks like a per-node part, a user and a state.
    forged = record(7, name="x Nodes=vm CPU_IDs=0 Mem=0 GRES=gpu:4(IDX:0-3) UserId=alice(1001) "
                              "JobState=COMPLETED", gres="gpu:1(IDX:3)")
    job = slurm.parse_jobs(forged, {"vm"})["7"]
    assert job.gpus == {0, 1, 2, 3}  # more than Slurm gave: never fewer
    assert job.holding  # one of the states read holds
    assert job.uid == -1  # two users read: nobody in particular
    # A record of its own, after a newline in a comment: another job held, no job's holds dropped.
    text = record(7, extra="Comment=c") + record(8, user="alice(1001)", gres="gpu:1(IDX:0)", name="y") \
        + "JobId=3 JobName=z UserId=carol(1003) JobState=COMPLETED Nodes=vm CPU_IDs=0 Mem=0 GRES=gpu:1(IDX:1)\n"
    jobs = slurm.parse_jobs(TWO_JOBS + text, {"vm"})
    assert jobs["3"].holding and jobs["3"].gpus == {1, 2} and jobs["3"].uid == -1
    assert jobs["8"].gpus == {0}
    # A per-node part whose host list does not parse still counts if it names the node.
    assert slurm.parse_jobs(record(6, nodes="vm[[1"), {"vm"})["6"].gpus == {3}


def test_hostlist():
    assert slurm.hostlist("vm") == ["vm"]
    assert slurm.hostlist("gpu[01-03,07],login") == ["gpu01", "gpu02", "gpu03", "gpu07", "login"]
    assert slurm.hostlist("r[1-2]n[8-9]") == ["r1n8", "r1n9", "r2n8", "r2n9"]
    assert slurm.hostlist("a[9-10]-ib") == ["a9-ib", "a10-ib"]
    for bad in ("a[1-", "a]1[", "a[x]", "a[3-1]", "a,,b", "a[0-99999999]"):
        with pytest.raises(ValueError):
            slurm.hostlist(bad)


def test_gres_and_indices():
    assert slurm.gres_gpus("gpu:2(IDX:0-1)") == {0, 1}
    assert slurm.gres_gpus("gpu:a100:1(IDX:3),gpu:v100:2(IDX:5,7)") == {3, 5, 7}
    assert slurm.gres_gpus("gpu:0") == set()
    assert slurm.gres_gpus("gpu:1(IDX:N/A)") == set()
    assert slurm.gres_gpus("mps:100(0/100,0/100),shard:2(2/4)") == set()
    assert slurm.gres_gpus("") == set()
    with pytest.raises(ValueError):
        slurm.gres_gpus("gpu:1(IDX:x)")
    assert slurm.indices("0-2,5") == {0, 1, 2, 5}
    for bad in ("", "1-", "-1", "2-1", "a", "99999"):
        with pytest.raises(ValueError):
            slurm.indices(bad)


def test_cgroup_of_a_job_process():
    # Recorded: a step's process under proctrack/cgroup (and task/cgroup), cgroup v1.
    v1 = ("9:name=systemd:/\n8:pids:/\n6:freezer:/slurm_vm/uid_0/job_3/step_batch\n"
          "5:devices:/slurm_vm/uid_0/job_2/step_0/task_0\n4:memory:/process_api/a3fac6\n0::/\n")
    assert slurm.cgroup_job(v1) == ("3", 0)
    assert slurm.cgroup_job("3:cpuset:/slurm/uid_1001/job_42/step_0\n") == ("42", 1001)
    assert slurm.cgroup_job("0::/system.slice/slurmstepd.scope/job_12/step_0/user/task_0\n") == ("12", None)
    # Paths a user can make (a delegated subtree) do not count.
    assert slurm.cgroup_job("0::/user.slice/user-1000.slice/user@1000.service/slurm/uid_0/job_5\n") is None
    assert slurm.cgroup_job("0::/user.slice/system.slice/slurmstepd.scope/job_5\n") is None
    assert slurm.cgroup_job("4:memory:/process_api/a3fac6\n0::/\n") is None


def test_cgroup_jobs(tmp_path):
    assert slurm.cgroup_jobs(str(tmp_path)) is None
    (tmp_path / "freezer" / "slurm_vm" / "uid_0" / "job_3" / "step_0").mkdir(parents=True)
    (tmp_path / "devices" / "slurm_vm" / "uid_1001" / "job_4").mkdir(parents=True)
    (tmp_path / "devices" / "slurm_vm" / "uid_1001" / "job_x").mkdir(parents=True)
    assert slurm.cgroup_jobs(str(tmp_path)) == {"3", "4"}
    (tmp_path / "system.slice" / "slurmstepd.scope" / "job_12").mkdir(parents=True)
    assert slurm.cgroup_jobs(str(tmp_path)) == {"3", "4", "12"}


def test_listpids():
    text = ("PID      JOBID    STEPID   LOCALID GLOBALID\n2417     3        batch    0       0       \n"
            "2640     3        batch    -       -       \n2432     2        0        0       0\n")
    assert slurm.parse_listpids(text) == {2417: "3", 2640: "3", 2432: "2"}
    assert slurm.parse_listpids("No job steps exist on this node.\n") == {}


def machine(count=4):
    return [{"index": i, "uuid": "GPU-%d" % i, "name": "A100", "total": 40 << 30} for i in range(count)]


def test_map_job_gpus():
    assert slurm.map_job_gpus({1, 2}, machine()) == [1, 2]  # nvidia-smi lists every GPU
    assert slurm.map_job_gpus({1, 2}, machine(2)) == [0, 1]  # it lists the job's only (device cgroup)
    assert slurm.map_job_gpus({1, 2}, machine(1)) == [0]  # a step that may open fewer
    assert slurm.map_job_gpus(set(), machine()) == []
    assert slurm.map_job_gpus({1, 5}, machine(4)) is None  # GPU 5 is not among nvidia-smi's 4


class Process:
    """attribution.Process's fields that the view reads and writes."""

    def __init__(self, pid, gpu, uid=0, memory=100 << 20):
        self.pid, self.gpu, self.uid, self.memory = pid, gpu, uid, memory
        self.known, self.env, self.owner, self.misplaced = True, None, None, False


def beside(held, jobs, by_pid=()):
    view = slurm.View(machine())
    view.held = held
    view.jobs = jobs
    view.by_pid = dict(by_pid)
    return view


def test_view_beside_jobs():
    jobs = slurm.parse_jobs(record(12, user="alice(1001)", gres="gpu:2(IDX:1-2)"), {"vm"})
    view = beside({1: ["12"], 2: ["12"]}, jobs, {40: "12"})
    mine, theirs, stray = Process(30, 0), Process(40, 1, 1001), Process(40, 3, 1001)
    view.attribute([mine, theirs, stray])
    assert mine.env is None
    assert theirs.env["id"] == "slurm:12" and theirs.owner == 1001 and not theirs.misplaced
    assert stray.env is theirs.env or stray.env["id"] == "slurm:12"
    assert stray.misplaced
    names = {1001: "alice"}.get
    assert view.busy([mine, theirs, stray], lambda uid: names(uid) or str(uid)) == {
        1: ["Slurm job 12 of alice"], 2: ["Slurm job 12 of alice"], 3: ["pid 40 of Slurm job 12"]}
    assert view.spare(theirs) == "left to Slurm (job 12)" and view.spare(mine) is None
    users = {0: {"uid": 0, "devices": None, "envs": []}}
    shown = view.holders(users)
    assert users[0]["envs"] == [] and 1001 not in users  # a view: the state is untouched
    (env,) = shown[1001]["envs"]
    assert env["id"] == "slurm:12" and [d["index"] for d in env["devices"]] == [1, 2]
    assert env["devices"][0]["attached"] == jobs["12"].start
    # An environment outside jobs that holds GPU 2 is told.
    holder = {"id": "77", "created": 1.0, "config": {}, "terminals": [], "warnings": [],
              "devices": [{"index": 2, "uuid": "GPU-2", "attached": 1.0}]}
    conflicts = view.conflicts({0: {"uid": 0, "devices": None, "envs": [holder]}})
    assert conflicts == [(0, holder, "GPU 2 is now held by Slurm job 12, which Slurm gave it to; stop using it and "
                                     "run 'genv detach'")]


def test_view_unsure_processes_are_spared():
    view = beside({}, {})
    view.unsure = {50}
    assert view.spare(Process(50, 0)) == "not stopped: it may be a Slurm job's"
    assert view.spare(Process(51, 0)) is None


def test_a_key_in_a_users_own_environment_makes_it_no_jobs():
    """An environment outside jobs is a user's claim, whatever keys it has
    (the state format keeps unknown ones): only the environments the view
    made for jobs are left to Slurm."""
    jobs = slurm.parse_jobs(record(12, user="alice(1001)", gres="gpu:2(IDX:1-2)"), {"vm"})
    view = beside({1: ["12"], 2: ["12"]}, jobs, {40: "12"})
    forged = {"id": "7", "created": 1.0, "config": {}, "terminals": [], "warnings": [], "slurm": "12",
              "devices": [{"index": 0, "uuid": "GPU-0", "attached": 1.0}]}
    mine, stray = Process(30, 3, 1001), Process(40, 3, 1001)
    mine.env, mine.owner, mine.misplaced = forged, 1001, True  # on GPU 3, which its environment does not hold
    view.attribute([mine, stray])
    assert mine.env is forged and stray.env["id"] == "slurm:12" and stray.misplaced
    assert view.spare(mine) is None
    assert view.spare(stray) == "left to Slurm (job 12)"
    assert view.busy([mine, stray], str)[3] == ["pid 40 of Slurm job 12"]
    # A copy of the job's own environment (as a listing or a state file would hold it) is no job's either.
    copy = Process(41, 3, 1001)
    copy.env, copy.misplaced = dict(stray.env), True
    assert view.spare(copy) is None and view.busy([copy], str).get(3) is None


def test_view_in_a_job():
    view = slurm.View(machine())
    view.job, view.pool = "12", [1, 2]
    assert [d["index"] for d in view.machine()] == [1, 2]
    assert view.busy([], str) == {0: ["not a GPU of Slurm job 12"], 3: ["not a GPU of Slurm job 12"]}
    apps = [App(10, "GPU-0", 1, "a"), App(11, "GPU-2", 1, "b"), App(12, None, 1, "c")]
    assert [app.pid for app in view.visible_apps(apps)] == [11]
    record = {"list": machine()[:2]}
    assert view.may_store({"list": machine()}, record) is False  # it would detach GPUs 2 and 3 elsewhere
    assert view.may_store({"list": machine()[:1]}, record) is True
    assert view.may_store(None, record) is True
    assert view.holders({}) == {}


def test_cuda_visible():
    env = {"devices": [{"index": 2, "uuid": "GPU-b"}, {"index": 1, "uuid": "GPU-a"}]}
    assert slurm.cuda_visible(env, "1,2") == "GPU-a,GPU-b"
    env["devices"][0]["uuid"] = None
    assert slurm.cuda_visible(env, "1,2") == "1,2"  # mock GPUs have no UUID
    assert slurm.cuda_visible({"devices": []}, "") == ""


def test_where_slurm_is(monkeypatch, tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    assert slurm.configuration() == str(conf)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "none"))
    assert slurm.configuration() is None
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    assert slurm.job_id() == "12" and not slurm.in_job()
    monkeypatch.setenv("SLURM_CONF", str(conf))
    assert slurm.in_job()
    monkeypatch.setenv("GENV_SLURM", "0")
    assert not slurm.in_job()
    assert slurm.look(machine(), [], None, print) is None
    monkeypatch.setenv("SLURM_JOB_ID", "12; rm -rf /")
    assert slurm.job_id() is None
    monkeypatch.setenv("SLURM_JOB_ID", "012")  # not as Slurm writes job 12: scontrol would answer for 12
    assert slurm.job_id() is None


def test_the_jobs_state_folder(monkeypatch, tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    monkeypatch.setenv("GENV_SLURM_TMPDIR", str(tmp_path / "jobs"))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert slurm.job_state_dir() is None
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SLURM_JOB_UID", str(os.geteuid()))
    path = slurm.job_state_dir()
    assert path == str(tmp_path / "jobs" / "job-12")
    assert os.stat(path).st_mode & 0o777 == 0o700
    assert os.stat(str(tmp_path / "jobs")).st_mode & 0o7777 == 0o1777
    os.chmod(path, 0o777)
    with pytest.raises(slurm.GenvError, match="others may write to it"):
        slurm.job_state_dir()
    os.chmod(path, 0o700)
    if os.geteuid() == 0:  # a folder someone else made for the job: not used, even by root
        os.chown(path, 54321, -1)
        with pytest.raises(slurm.GenvError, match="belongs to uid 54321, not to the job's user"):
            slurm.job_state_dir()
        monkeypatch.setenv("SLURM_JOB_UID", "54321")  # the job's user's own: root may use it
        assert slurm.job_state_dir() == path
    os.rmdir(path)
    os.symlink(str(tmp_path), path)
    with pytest.raises(slurm.GenvError, match="not a folder"):
        slurm.job_state_dir()


def test_sweep_removes_ended_jobs_folders_only(monkeypatch, tmp_path):
    monkeypatch.setenv("GENV_SLURM_TMPDIR", str(tmp_path))
    for jid in ("1", "2", "3"):
        folder = tmp_path / ("job-" + jid)
        folder.mkdir()
        (folder / "user-0.json").write_text("{}")
    (tmp_path / "job-3" / "notes.txt").write_text("the user's own")
    (tmp_path / "job-x").mkdir()
    past = time.time() - 10
    for name in ("job-1", "job-2", "job-3"):
        os.utime(str(tmp_path / name), (past, past))
    slurm.sweep(lambda jid: jid == "2", time.time())
    assert sorted(os.listdir(str(tmp_path))) == ["job-2", "job-3", "job-x"]
    assert os.listdir(str(tmp_path / "job-3")) == ["notes.txt"]  # not genv's: left alone
    # Every name genv writes in a state folder goes (the shell's marker too),
    # and only those: a name that merely looks like one is the user's.
    ours = ("user-0.json", "user-0.sync", "user-1001.sync", ".tmp-0-4242-0123abcd")
    theirs = ("user-foo.json", "user-01.json", "user-0.sync.old", ".tmp-notes", ".tmp-0-4242-XYZ", "notes.txt")
    for jid, names in (("5", ours), ("6", ours + theirs)):
        folder = tmp_path / ("job-" + jid)
        folder.mkdir()
        for name in names:
            (folder / name).write_text("x")
        os.utime(str(folder), (past, past))
    slurm.sweep(lambda jid: jid == "2", time.time())
    assert "job-5" not in os.listdir(str(tmp_path))
    assert sorted(os.listdir(str(tmp_path / "job-6"))) == sorted(theirs)
    # A folder made after Slurm was asked (a job that just started) stays.
    (tmp_path / "job-4").mkdir()
    slurm.sweep(lambda jid: False, time.time() - 5)
    assert "job-4" in os.listdir(str(tmp_path))


class NoCgroups:
    """Process facts where no process is in a job's cgroup."""

    def cgroup(self, pid):
        return None


def test_commands_beside_jobs_keep_the_folders_of_running_jobs(monkeypatch, tmp_path):
    # A running job keeps its folder whichever name Slurm gives the node (a
    # NodeName that is not the host name: the job does not look "here") and
    # whether or not it holds GPUs here; only a job Slurm no longer lists as
    # holding its resources loses it. Once, every running job of a node whose
    # Slurm name differed from its host name lost its folder.
    monkeypatch.setenv("GENV_SLURM_TMPDIR", str(tmp_path))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    past = time.time() - 10
    for jid in ("5", "6", "7", "8"):
        folder = tmp_path / ("job-" + jid)
        folder.mkdir()
        (folder / "user-0.json").write_text("{}")
        os.utime(str(folder), (past, past))
    listed = record(5, nodes="node7") + record(6, gres="") + record(7, state="COMPLETED")  # 8: not listed
    monkeypatch.setattr(slurm.facts, "ask", lambda args: listed if args[-1] == "job" else "")
    monkeypatch.setattr(slurm.facts, "cgroup_jobs", lambda: None)
    said = []
    view = slurm.look_here([], [], NoCgroups(), said.append)
    assert view.answered and said == []
    assert sorted(os.listdir(str(tmp_path))) == ["job-5", "job-6"]
