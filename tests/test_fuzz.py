"""Random argument lists at every command (issue 3, item 10): a failure is
one `genv: ...` line on stderr, a non-zero exit, no traceback, no script on
stdout from the commands that change the shell, and no state change."""

import os
import subprocess

from hypothesis import HealthCheck, given, settings, strategies as st

COMMANDS = [
    "sh-activate", "sh-deactivate", "sh-attach", "sh-detach", "sh-config", "envs", "devices", "status", "ps",
    "home", "root", "help", "commands", "init", "completions", "version", "nonexistent", "",
]
WORDS = st.sampled_from([
    "--id", "--name", "--gpus", "--no-load", "--no-attach", "--no-prompt", "--clear", "--save", "--load",
    "--json", "--", "-", "-x", "--gpus=2", "--id=", "gpus", "name", "0", "1", "4", "5", "-1", "1.5", "abc",
    "", "$(touch PWNED)", "x" * 300, "\n", "--help=no", "bash", "zsh", "fish", "E", "99999999999999999999",
    "--format", "csv", "json", "table", "--format=xml", "gpu-memory", "4g", "0", "-1g", "1e3", "--count",
    "--index", "0,2", "0,,1", "--over-subscribe", "-o", "--wait=0", "--wait=-1",
])
ARGS = st.lists(st.one_of(WORDS, st.text(max_size=12)), max_size=5)


def snapshot(folder):
    if not os.path.isdir(folder):
        return {}
    result = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as handle:
            result[name] = handle.read()
    return result


def test_random_arguments(genv):
    holder = subprocess.Popen(["sleep", "600"])
    try:
        base = genv.environ(GENV_DEVICES="4", GENV_SHELL_PID=str(holder.pid))
        setup = subprocess.run([os.path.join(genv.root, "bin", "genv"), "sh-activate"], env=base,
                               capture_output=True)
        eid = str(holder.pid)
        assert setup.returncode == 0, setup
        clean = snapshot(genv.tmpdir)

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(command=st.sampled_from(COMMANDS), args=ARGS, active=st.booleans())
        def check(command, args, active):
            env = dict(base)
            if active:
                env["GENV_ENVIRONMENT_ID"] = eid
            argv = [os.path.join(genv.root, "bin", "genv")] + ([command] if command else []) + args
            argv = [arg.replace("\x00", "") for arg in argv]
            try:
                done = subprocess.run(argv, env=env, cwd=genv.work, capture_output=True, timeout=60)
                stderr = done.stderr.decode("utf-8", "replace")
                assert "Traceback" not in stderr, (argv, stderr)
                assert done.returncode >= 0, (argv, done)
                if done.returncode != 0:
                    lines = stderr.splitlines()
                    assert len(lines) == 1 and lines[0].startswith("genv: "), (argv, stderr)
                    if command.startswith("sh-"):
                        assert done.stdout == b"", (argv, done)
                    assert snapshot(genv.tmpdir) == clean, argv
                assert not os.path.exists(os.path.join(genv.work, "PWNED"))
            finally:
                # Successful commands may change state: start every case afresh.
                for name in os.listdir(genv.tmpdir):
                    if name not in clean:
                        os.unlink(os.path.join(genv.tmpdir, name))
                for name, data in clean.items():
                    path = os.path.join(genv.tmpdir, name)
                    with open(path + ".restore", "wb") as handle:
                        handle.write(data)
                    os.rename(path + ".restore", path)

        check()
    finally:
        holder.kill()
        holder.wait()
