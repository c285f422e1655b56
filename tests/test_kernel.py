"""genv kernel (issue 12): Jupyter kernels whose every notebook gets an
environment of its own.

``genv kernel install`` is run as a user would: ``<python> -m genv kernel
install`` with the Python of the notebooks (the test runner's, which must
have ipykernel and jupyter_client) and the copied genv's root on
PYTHONPATH, or as ``genv kernel install --python <python>``. Kernels go into
the test's folder (``--prefix`` or JUPYTER_DATA_DIR). They are started with
the real ``jupyter_client.KernelManager``, as Jupyter does, code runs in
them, and the state is checked while they run and after they end.

The tests that start kernels skip (with a reason) where ipykernel or
jupyter_client cannot be imported: CI must install them (the test extra).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, alive, assert_free, envs, holders, one_line, system_python, until

KERNEL_PYTHON = sys.executable


def jupyter():
    """Skip unless this Python can run and start kernels."""
    missing = []
    for module in ("ipykernel", "jupyter_client"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        pytest.skip("needs %s in %s (pip install ipykernel jupyter_client)" % (" and ".join(missing), sys.executable))


def genv_kernel(genv, *args, python=KERNEL_PYTHON, **env):
    """``<python> -m genv kernel ARGS`` with the copied genv on PYTHONPATH."""
    environ = genv.environ(PYTHONPATH=genv.root, **env)
    return subprocess.run([python, "-m", "genv", "kernel", *args], env=environ, cwd=genv.work,
                          capture_output=True, timeout=120)


def spec_dir(prefix, name):
    return os.path.join(prefix, "share", "jupyter", "kernels", name)


@pytest.fixture
def prefix(genv):
    path = os.path.join(genv.base, "prefix")
    os.makedirs(path)
    return path


class Kernels:
    """Kernels started with jupyter_client, all shut down at the end."""

    def __init__(self, genv, prefix, monkeypatch):
        self.genv = genv
        self.prefix = prefix
        self.started = []
        runtime = os.path.join(genv.base, "runtime")
        os.makedirs(runtime, exist_ok=True)
        # Where Jupyter itself looks (the test runner is "Jupyter" here).
        monkeypatch.setenv("JUPYTER_PATH", os.path.join(prefix, "share", "jupyter"))
        monkeypatch.setenv("JUPYTER_DATA_DIR", os.path.join(genv.base, "data"))
        monkeypatch.setenv("JUPYTER_RUNTIME_DIR", runtime)
        self.env = genv.environ(JUPYTER_PATH=os.environ["JUPYTER_PATH"],
                                JUPYTER_DATA_DIR=os.environ["JUPYTER_DATA_DIR"], JUPYTER_RUNTIME_DIR=runtime)

    def start(self, name, ready=True):
        from jupyter_client import KernelManager

        manager = KernelManager(kernel_name=name)
        manager.start_kernel(env=dict(self.env), cwd=self.genv.work)
        client = manager.client()
        client.start_channels()
        self.started.append((manager, client))
        if ready:
            client.wait_for_ready(timeout=60)
        return manager, client

    def close(self):
        for manager, client in self.started:
            try:
                client.stop_channels()
            except Exception:
                pass
            try:
                if manager.has_kernel:
                    manager.shutdown_kernel(now=True)
            except Exception:
                pass


@pytest.fixture
def kernels(genv, prefix, monkeypatch):
    jupyter()
    world = Kernels(genv, prefix, monkeypatch)
    try:
        yield world
    finally:
        world.close()


def execute(client, code, timeout=60, aborted_again=0):
    """Run code in the kernel; what it printed. ``aborted_again``: how many
    times to ask again when the kernel answers "aborted" (ipykernel 7 aborts
    a request that reaches it while it still finishes an interrupted cell's
    error, a race that a busy machine makes likely)."""
    for _ in range(1 + aborted_again):
        printed = []

        def hook(message):
            if message["msg_type"] == "stream":
                printed.append(message["content"]["text"])
            elif message["msg_type"] == "error":
                printed.append("ERROR %s: %s" % (message["content"]["ename"], message["content"]["evalue"]))

        reply = client.execute_interactive(code, output_hook=hook, timeout=timeout)
        if reply["content"]["status"] != "aborted":
            break
        time.sleep(0.2)
    assert reply["content"]["status"] in ("ok", "error"), reply
    return "".join(printed)


WHO = "import json, os; print(json.dumps({'cuda': os.environ.get('CUDA_VISIBLE_DEVICES'), " \
      "'id': os.environ.get('GENV_ENVIRONMENT_ID'), 'pid': os.getpid(), 'ppid': os.getppid(), " \
      "'memory': os.environ.get('GENV_GPU_MEMORY')}))"


def install(genv, prefix, *options):
    done = genv_kernel(genv, "install", "--prefix", prefix, *options)
    assert done.returncode == 0 and done.stderr == b"", done
    return done


# === install, list, remove ==================================================================


def test_install_writes_a_spec_that_jupyter_finds(genv, prefix):
    jupyter()
    done = install(genv, prefix, "--name", "train-1", "--gpus", "2", "--gpu-memory", "8g", "--wait", "30")
    folder = spec_dir(prefix, "train-1")
    assert done.stdout.decode() == "installed the kernel train-1 in %s\n" % folder
    with open(os.path.join(folder, "kernel.json")) as handle:
        spec = json.load(handle)
    argv = spec["argv"]
    assert argv[:2] == [os.path.join(genv.root, "bin", "genv"), "run"]
    at = argv.index("--")
    options = argv[2:at]
    assert options[options.index("--gpus") + 1] == "2" and options[options.index("--wait") + 1] == "30"
    assert options[options.index("--gpu-memory") + 1] == "8g"
    assert argv[at + 1:] == [KERNEL_PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    assert spec["language"] == "python" and spec["interrupt_mode"] == "signal"
    assert "genv" in spec["display_name"]
    # Jupyter's own machinery finds it.
    from jupyter_client.kernelspec import KernelSpecManager

    manager = KernelSpecManager(kernel_dirs=[os.path.join(prefix, "share", "jupyter", "kernels")])
    assert manager.find_kernel_specs()["train-1"] == folder
    assert manager.get_kernel_spec("train-1").argv == argv
    # list, then remove.
    listed = genv_kernel(genv, "list", "--prefix", prefix)
    assert listed.returncode == 0, listed
    lines = listed.stdout.decode().splitlines()
    assert lines[0].split() == ["NAME", "GPUS", "GPU", "MEMORY", "WAIT", "PYTHON", "FOLDER"]
    assert lines[1].split() == ["train-1", "2", "8g", "30", "s", KERNEL_PYTHON, folder]
    removed = genv_kernel(genv, "remove", "train-1", "--prefix", prefix)
    assert removed.returncode == 0 and not os.path.exists(folder), removed
    listed = genv_kernel(genv, "list", "--prefix", prefix)
    assert listed.stdout == b"No genv kernels installed\n"


@pytest.mark.parametrize("given,written", [([], "forever"), (["forever"], "forever"), (["123456789"], "123456789"),
                                           (["0.25"], "0.25")])
def test_the_wait_written_is_what_genv_run_accepts_exactly(genv, prefix, given, written):
    """Issue 15, A4 and B4: one spec for --wait: a bare --wait and
    --wait forever are written as "forever" (not an infinite float, which
    JSON cannot hold), a number as it was given; and genv run takes it."""
    done = install(genv, prefix, "--name", "w", "--wait", *given)
    assert done.returncode == 0, done
    with open(os.path.join(spec_dir(prefix, "w"), "kernel.json")) as handle:
        spec = json.load(handle)
    options = spec["argv"][2:spec["argv"].index("--")]
    assert options[options.index("--wait") + 1] == written
    assert spec["metadata"]["genv"]["wait"] == written
    listed = genv_kernel(genv, "list", "--prefix", prefix).stdout.decode()
    assert ("forever" if written == "forever" else written + " s") in listed
    run = genv.cli("run", *options, "--", "true")
    assert run.returncode == 0, run


def test_install_for_a_duration_writes_what_genv_run_accepts(genv, prefix):
    """Issue 19: ``--for`` goes to genv run as given; each notebook's GPUs
    are held that long."""
    done = install(genv, prefix, "--name", "f", "--gpus", "1", "--for", "90m")
    assert done.returncode == 0, done
    with open(os.path.join(spec_dir(prefix, "f"), "kernel.json")) as handle:
        spec = json.load(handle)
    options = spec["argv"][2:spec["argv"].index("--")]
    assert options[options.index("--for") + 1] == "90m" and spec["metadata"]["genv"]["for"] == "90m"
    run = genv.cli("run", *options, "--", "sh", "-c", "genv status --json")
    assert run.returncode == 0, run
    assert json.loads(run.stdout)["until"] == pytest.approx(time.time() + 5400, abs=60)


def test_install_goes_where_jupyter_looks_for_the_users_kernels(genv):
    """The default (--user): the folder jupyter_core names, with and without
    JUPYTER_DATA_DIR and XDG_DATA_HOME."""
    jupyter()
    cases = [{}, {"XDG_DATA_HOME": os.path.join(genv.base, "xdg")},
             {"JUPYTER_DATA_DIR": os.path.join(genv.base, "jdd")}]
    for extra in cases:
        where = subprocess.run([KERNEL_PYTHON, "-c", "from jupyter_core.paths import jupyter_data_dir; "
                                "print(jupyter_data_dir())"], env=genv.environ(**extra), capture_output=True,
                               text=True, check=True).stdout.strip()
        for flags in ([], ["--user"]):
            done = genv_kernel(genv, "install", "--name", "mine", *flags, **extra)
            assert done.returncode == 0, done
            assert os.path.isfile(os.path.join(where, "kernels", "mine", "kernel.json")), (extra, where)
            listed = genv_kernel(genv, "list", **extra)
            assert b"mine" in listed.stdout
            assert genv_kernel(genv, "remove", "mine", *flags, **extra).returncode == 0


def test_genv_kernel_through_bin_genv(genv, prefix):
    """`genv kernel install --python P` from genv's own command line."""
    jupyter()
    done = genv.cli("kernel", "install", "--python", KERNEL_PYTHON, "--prefix", prefix, "--name", "via-cli")
    assert done.returncode == 0, done
    with open(os.path.join(spec_dir(prefix, "via-cli"), "kernel.json")) as handle:
        assert json.load(handle)["argv"][-5] == KERNEL_PYTHON


BAD = [
    (["install", "--name", "a/b"], "invalid kernel name"),
    (["install", "--name", "../evil"], "invalid kernel name"),
    (["install", "--name", ".hidden"], "invalid kernel name"),
    (["install", "--name", ""], "invalid kernel name"),
    (["install", "--name", "x" * 65], "invalid kernel name"),
    (["install", "--name", "caf\u00e9"], "invalid kernel name"),
    (["install", "--gpus", "x"], "GPU count"),
    (["install", "--gpus", "-1"], None),
    (["install", "--gpu-memory", "3q"], "invalid GPU memory '3q'"),
    (["install", "--for", "0"], "invalid --for '0'"),
    (["install", "--for", "soon"], "invalid --for 'soon'"),
    (["install", "--gpu-memory", "0"], "invalid GPU memory"),
    (["install", "--wait", "soon"], "invalid --wait"),
    (["install", "--user", "--prefix", "P"], "cannot be combined"),
    (["install", "--bogus"], "unknown option"),
    (["install", "extra"], "unexpected argument"),
    (["install", "--python", "/no/such/python"], "/no/such/python"),
    (["remove"], "which kernel"),
    (["remove", "../x"], "invalid kernel name"),
    (["remove", "nope"], "there is no kernel nope"),
    (["frobnicate"], "expected one of"),
    ([], "expected one of"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a)[:30] or "(none)" for a, _ in BAD])
def test_bad_input_is_one_line_and_writes_nothing(genv, prefix, argv, message):
    data = os.path.join(genv.base, "data")
    argv = [word if word != "P" else prefix for word in argv]
    for runner in ("python -m genv", "bin/genv"):
        if runner == "bin/genv":
            done = genv.cli("kernel", *argv, JUPYTER_DATA_DIR=data)
        else:
            done = genv_kernel(genv, *argv, JUPYTER_DATA_DIR=data)
        text = one_line(done, None)
        if message:
            assert message in text, text
    assert not os.path.exists(data) and os.listdir(prefix) == []
    assert not os.path.exists(os.path.join(genv.base, "evil")) and not os.path.exists(os.path.join(genv.root, "x"))


def test_a_python_without_ipykernel_is_refused(genv, prefix):
    has = subprocess.run([system_python(), "-c", "import ipykernel"], capture_output=True).returncode == 0
    if has:
        pytest.skip("%s has ipykernel: no Python without it to try" % system_python())
    done = genv.cli("kernel", "install", "--python", system_python(), "--prefix", prefix)
    text = one_line(done, None)
    assert "ipykernel" in text and system_python() in text
    assert os.listdir(prefix) == []


def test_kernels_that_genv_did_not_install_are_left_alone(genv, prefix):
    jupyter()
    folder = spec_dir(prefix, "python3")
    os.makedirs(folder)
    theirs = json.dumps({"argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                         "display_name": "Python 3", "language": "python"})
    with open(os.path.join(folder, "kernel.json"), "w") as handle:
        handle.write(theirs)
    assert "choose another --name" in one_line(genv_kernel(genv, "install", "--name", "python3", "--prefix", prefix),
                                               None)
    assert "not installed by genv" in one_line(genv_kernel(genv, "remove", "python3", "--prefix", prefix), None)
    with open(os.path.join(folder, "kernel.json")) as handle:
        assert handle.read() == theirs
    listed = genv_kernel(genv, "list", "--prefix", prefix)
    assert listed.stdout == b"No genv kernels installed\n"
    # Installing again over genv's own kernel updates it.
    install(genv, prefix, "--name", "mine", "--gpus", "1")
    install(genv, prefix, "--name", "mine", "--gpus", "3")
    with open(os.path.join(spec_dir(prefix, "mine"), "kernel.json")) as handle:
        argv = json.load(handle)["argv"]
    assert argv[argv.index("--gpus") + 1] == "3"


@pytest.mark.parametrize("metadata", ["oops", ["genv"], None, {"genv": "oops"}])
def test_a_foreign_kernel_with_odd_metadata_is_left_alone(genv, prefix, metadata):
    """A kernel.json whose "metadata" is not an object (or has no genv
    object in it) is someone else's kernel: remove refuses it in one line
    (exit 1, not an internal error), and list does not show it."""
    folder = spec_dir(prefix, "odd")
    os.makedirs(folder)
    theirs = json.dumps({"argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                         "display_name": "Odd", "language": "python", "metadata": metadata})
    with open(os.path.join(folder, "kernel.json"), "w") as handle:
        handle.write(theirs)
    text = one_line(genv_kernel(genv, "remove", "odd", "--prefix", prefix))
    assert "not installed by genv" in text, text
    with open(os.path.join(folder, "kernel.json")) as handle:
        assert handle.read() == theirs
    listed = genv_kernel(genv, "list", "--prefix", prefix)
    assert (listed.returncode, listed.stdout) == (0, b"No genv kernels installed\n"), listed


def their_kernel(base, name):
    """A kernel that genv did not install, in ``base``/kernels/``name``."""
    folder = os.path.join(base, "kernels", name)
    os.makedirs(folder)
    with open(os.path.join(folder, "kernel.json"), "w") as handle:
        json.dump({"argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                   "display_name": "Theirs", "language": "python"}, handle)
    return folder


def test_a_name_another_kernel_has_is_refused_unless_forced(genv, prefix):
    """A kernel of the same name anywhere Jupyter looks (names that differ
    only by case are one name for Jupyter) would be hidden by genv's, or
    hide it: refused, unless --force. Jupyter's own python3 counts."""
    jupyter()
    path = os.path.join(genv.base, "jupyter-path")
    data = os.path.join(genv.base, "data")
    env = {"JUPYTER_PATH": path, "JUPYTER_DATA_DIR": data}
    theirs = their_kernel(path, "mine")
    users = their_kernel(data, "notes")
    os.makedirs(os.path.join(path, "kernels", "empty"))  # no kernel.json: not a kernel
    for name, where in (("mine", theirs), ("MINE", theirs), ("Mine", theirs), ("notes", users),
                        ("python3", "python3")):
        text = one_line(genv_kernel(genv, "install", "--name", name, "--prefix", prefix, **env))
        assert where in text and "--force" in text, (name, text)
        assert os.listdir(prefix) == [], name
        # Into the user's folder too (the default).
        if name != "notes":
            text = one_line(genv_kernel(genv, "install", "--name", name, **env))
            assert where in text and "--force" in text, (name, text)
            assert not os.path.exists(os.path.join(data, "kernels", name)), name
    # Forced: installed; theirs untouched.
    for name in ("Mine", "python3"):
        done = genv_kernel(genv, "install", "--name", name, "--prefix", prefix, "--force", **env)
        assert done.returncode == 0 and done.stderr == b"", done
        assert os.path.isfile(os.path.join(spec_dir(prefix, name), "kernel.json"))
    with open(os.path.join(theirs, "kernel.json")) as handle:
        assert json.load(handle)["display_name"] == "Theirs"
    # A folder that is no kernel, and genv's own kernels elsewhere, are no clash.
    assert genv_kernel(genv, "install", "--name", "empty", "--prefix", prefix, **env).returncode == 0
    other = os.path.join(genv.base, "other")
    assert genv_kernel(genv, "install", "--name", "shared", "--prefix", other, **env).returncode == 0
    done = genv_kernel(genv, "install", "--name", "shared", "--prefix", prefix,
                       **dict(env, JUPYTER_PATH=os.pathsep.join([path, os.path.join(other, "share", "jupyter")])))
    assert done.returncode == 0, done
    # A kernel that genv did not install is never overwritten, even forced.
    their_kernel(os.path.join(genv.base, "p2", "share", "jupyter"), "keep")
    text = one_line(genv_kernel(genv, "install", "--name", "keep", "--prefix", os.path.join(genv.base, "p2"),
                                "--force", **env))
    assert "choose another --name" in text
    # Two spellings of one name in one folder: refused, forced or not.
    install(genv, prefix, "--name", "twice")
    for flags in ([], ["--force"]):
        text = one_line(genv_kernel(genv, "install", "--name", "Twice", "--prefix", prefix, *flags, **env))
        assert spec_dir(prefix, "twice") in text, text
    assert sorted(os.listdir(os.path.join(prefix, "share", "jupyter", "kernels"))) == [
        "Mine", "empty", "python3", "shared", "twice"]


def test_remove_of_a_symlinked_kernel_folder(genv, prefix):
    """A kernel folder that is a link to genv's kernel elsewhere: remove
    neither follows it nor says 'None'."""
    jupyter()
    other = os.path.join(genv.base, "other")
    install(genv, other, "--name", "real")
    os.makedirs(os.path.join(prefix, "share", "jupyter", "kernels"))
    os.symlink(spec_dir(other, "real"), spec_dir(prefix, "link"))
    text = one_line(genv_kernel(genv, "remove", "link", "--prefix", prefix), None)
    assert "link" in text and not text.endswith("None"), text
    assert os.path.isfile(os.path.join(spec_dir(other, "real"), "kernel.json"))


def test_install_from_a_pip_installed_package(genv, prefix, tmp_path):
    """`<python> -m genv kernel install` where the Python has only the
    package (pip install: no bin/, libexec/, shims/): the kernel must still
    start under genv run (e.g. `<python> -m genv run`)."""
    jupyter()
    site = tmp_path / "site"
    shutil.copytree(os.path.join(genv.root, "genv"), str(site / "genv"))
    done = subprocess.run([KERNEL_PYTHON, "-m", "genv", "kernel", "install", "--prefix", prefix],
                          env=genv.environ(PYTHONPATH=str(site)), capture_output=True, cwd=genv.work)
    assert done.returncode == 0, done
    with open(os.path.join(spec_dir(prefix, "genv"), "kernel.json")) as handle:
        argv = json.load(handle)["argv"]
    assert os.access(argv[0], os.X_OK)


def test_the_help_names_documents_that_exist(genv):
    for command in ("kernel", "run"):
        done = genv.cli(command, "--help")
        assert done.returncode == 0
        for path in re.findall(r"docs/[\w-]+\.md", done.stdout.decode()):
            assert os.path.isfile(os.path.join(REPO, path)), "genv %s --help points at %s" % (command, path)


# === kernels that run ===============================================================================


def test_each_kernel_gets_its_own_environment_and_frees_it(genv, prefix, kernels):
    install(genv, prefix, "--name", "nb", "--gpus", "1", "--gpu-memory", "10g")
    first, first_client = kernels.start("nb")
    second, second_client = kernels.start("nb")
    one = json.loads(execute(first_client, WHO))
    two = json.loads(execute(second_client, WHO))
    assert one["cuda"] == "0" and two["cuda"] in ("0", "1") and one["id"] != two["id"]
    assert one["memory"] == str(10 << 30)
    listed = {env["id"]: env for env in envs(genv)}
    assert set(listed) == {one["id"], two["id"]}
    for seen, manager in ((one, first), (two, second)):
        env = listed[seen["id"]]
        assert env["name"] == "nb"
        # The kernel is a terminal of its environment; so is genv run, the
        # process Jupyter started (the kernel's parent).
        assert seen["pid"] in env["pids"] and seen["ppid"] == manager.provisioner.process.pid
        assert seen["ppid"] in env["pids"]
    # CUDA_VISIBLE_DEVICES in a process the notebook starts, and nvidia-smi
    # there (the shim: the environment's GPU and share only).
    out = execute(first_client, "import subprocess; print(subprocess.run(['nvidia-smi', '-L'], "
                                "capture_output=True, text=True).stdout.count('GPU '))")
    assert out.strip() == "1"
    first_client.stop_channels()
    first.shutdown_kernel()
    assert not alive(one["pid"]) and not alive(one["ppid"])
    assert [env["id"] for env in envs(genv)] == [two["id"]]
    second_client.stop_channels()
    second.shutdown_kernel()
    assert_free(genv)


def test_a_kernel_that_dies_frees_its_gpus(genv, prefix, kernels):
    install(genv, prefix, "--name", "nb", "--gpus", "2")
    manager, client = kernels.start("nb")
    seen = json.loads(execute(client, WHO))
    assert seen["cuda"] == "0,1"
    os.kill(seen["pid"], signal.SIGKILL)
    until(lambda: not manager.is_alive(), "jupyter to see the kernel die", 30)
    assert not alive(seen["ppid"])
    assert_free(genv)


def test_a_kernel_killed_by_jupyter_frees_its_gpus(genv, prefix, kernels):
    install(genv, prefix, "--name", "nb", "--gpus", "4")
    manager, client = kernels.start("nb")
    seen = json.loads(execute(client, WHO))
    manager.shutdown_kernel(now=True)  # SIGKILL to the process group
    until(lambda: not alive(seen["pid"]), "the kernel to die", 30)
    assert_free(genv)


def test_restart_gives_a_new_environment_and_frees_the_old(genv, prefix, kernels):
    install(genv, prefix, "--name", "nb", "--gpus", "1")
    manager, client = kernels.start("nb")
    before = json.loads(execute(client, WHO))
    manager.restart_kernel()
    client.wait_for_ready(timeout=60)
    after = json.loads(execute(client, WHO))
    assert after["id"] != before["id"]
    assert [env["id"] for env in envs(genv)] == [after["id"]]
    client.stop_channels()
    manager.shutdown_kernel()
    assert_free(genv)


def cell_output(client, msg_id, done):
    """Read the kernel's output for ``msg_id`` until ``done(text so far)``,
    or (``done`` None) until the kernel is idle again; the text."""
    printed = []
    while True:
        message = client.get_iopub_msg(timeout=30)
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        if message["msg_type"] == "stream":
            printed.append(message["content"]["text"])
            if done is not None and done("".join(printed)):
                return "".join(printed)
        if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            assert done is None, "the cell ended early: %r" % printed
            return "".join(printed)


COUNT = r'''
import signal, time
got = []
old = signal.signal(signal.SIGINT, lambda s, f: got.append(s))
print("armed", flush=True)
end = time.time() + 1.5
while time.time() < end:
    time.sleep(0.01)
signal.signal(signal.SIGINT, old)
print("count", len(got))
'''


def test_interrupt_reaches_the_kernel_once(genv, prefix, kernels):
    """Jupyter's interrupt (SIGINT to the kernel's process group): the code
    running in the notebook gets one SIGINT, not one from Jupyter and a
    second one passed on by genv run."""
    install(genv, prefix, "--name", "nb", "--gpus", "1")
    manager, client = kernels.start("nb")
    counts = []
    for _ in range(3):
        msg_id = client.execute(COUNT)
        printed = cell_output(client, msg_id, lambda text: "armed" in text)
        manager.interrupt_kernel()
        printed = cell_output(client, msg_id, None)
        counts.append(printed.replace("armed", "").strip())
    assert counts == ["count 1"] * 3


def test_interrupt_stops_a_running_cell(genv, prefix, kernels):
    install(genv, prefix, "--name", "nb", "--gpus", "1")
    manager, client = kernels.start("nb")
    msg_id = client.execute("import time\nprint('started', flush=True)\ntime.sleep(60)")
    cell_output(client, msg_id, lambda text: "started" in text)
    start = time.monotonic()
    manager.interrupt_kernel()
    reply = client.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = client.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - start < 10
    assert json.loads(execute(client, WHO, aborted_again=5))["cuda"] == "0", "the kernel lives on after the interrupt"


def test_a_kernel_whose_gpus_cannot_be_had_does_not_start_and_holds_nothing(genv, prefix, kernels):
    install(genv, prefix, "--name", "big", "--gpus", "5")
    manager, client = kernels.start("big", ready=False)
    with pytest.raises(RuntimeError):
        client.wait_for_ready(timeout=30)
    until(lambda: not manager.is_alive(), "the kernel process to end", 30)
    assert manager.provisioner is None or manager.provisioner.process is None or \
        manager.provisioner.process.poll() == 1
    assert_free(genv)


def test_a_kernel_with_wait_starts_when_the_gpu_is_freed(genv, prefix, kernels):
    genv.extra["FAKE_NVIDIA_SMI_GPUS"] = "1"
    kernels.env["FAKE_NVIDIA_SMI_GPUS"] = "1"
    install(genv, prefix, "--name", "patient", "--gpus", "1", "--wait", "60")
    stop = os.path.join(genv.base, "stop")
    holder = subprocess.Popen([os.path.join(genv.root, "bin", "genv"), "run", "--gpus", "1", "--", "sh", "-c",
                               "while [ ! -e %s ]; do sleep 0.02; done" % stop], env=genv.environ(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until(lambda: holders(genv).get(0), "the holder", 30)
        manager, client = kernels.start("patient", ready=False)
        until(lambda: any(env["waiting"] for env in envs(genv)), "the kernel to wait in line", 30)
        open(stop, "w").close()
        client.wait_for_ready(timeout=60)
        assert json.loads(execute(client, WHO))["cuda"] == "0"
        client.stop_channels()
        manager.shutdown_kernel()
    finally:
        open(stop, "w").close()
        holder.wait(30)
    assert_free(genv)


def test_without_gpus_the_notebooks_project_configuration_applies(genv, prefix, kernels):
    """A kernel installed without --gpus: the project's saved configuration
    in the notebook's folder applies, as on activate."""
    project = os.path.join(genv.work)
    os.makedirs(os.path.join(project, ".genv"))
    with open(os.path.join(project, ".genv", "config.json"), "w") as handle:
        json.dump({"format": 1, "gpus": 2, "name": "proj"}, handle)
    os.chmod(os.path.join(project, ".genv"), 0o755)
    os.chmod(os.path.join(project, ".genv", "config.json"), 0o644)
    install(genv, prefix, "--name", "plain")
    manager, client = kernels.start("plain")
    assert json.loads(execute(client, WHO))["cuda"] == "0,1"
    client.stop_channels()
    manager.shutdown_kernel()
    assert_free(genv)
