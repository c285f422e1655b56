"""Every example in the README runs as written (issue 8, item 11).

- ``console`` blocks are terminal sessions: each line after a prompt (``$ ``
  or ``(genv...) $ ``) is run in one bash terminal, in order, and what it
  prints must be the lines that follow, up to the next prompt. PIDs, ids,
  users and times differ from machine to machine: numbers of three digits
  or more, ``user(uid)`` and ``just now``/``N seconds ago`` are compared as
  placeholders. The prompt shown must be the terminal's (genv's prefix).
- ``sh`` blocks are run too (the test command excepted: CI runs it).
- ``python`` blocks run on genv's SDK, with ``train()`` standing in for
  your training.
"""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

README = os.path.join(REPO, "README.md")
PROMPT = re.compile(r"^(\(genv[^)]*\) )?\$ (.*)$")


def blocks(kind):
    text = open(README, encoding="utf-8").read()
    found = re.findall(r"^```%s\n(.*?)^```$" % re.escape(kind), text, flags=re.S | re.M)
    return [block for block in found]


def normalise(text):
    text = re.sub(r"\b[a-z_][a-z0-9_-]*\(\d+\)", "USER", text)
    text = re.sub(r"\b(just now|\d+ seconds? ago)\b", "TIME", text)
    text = re.sub(r"\d{3,}", "N", text)
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def session(block):
    """(prompt prefix, command, expected output) for each prompt line."""
    steps = []
    for line in block.splitlines():
        match = PROMPT.match(line)
        if match:
            steps.append([match.group(1) or "", match.group(2), []])
        else:
            assert steps, "output before the first prompt: %r" % line
            steps[-1][2].append(line)
    return steps


CONSOLE = blocks("console")


def test_the_readme_has_examples():
    assert len(CONSOLE) >= 5 and len(blocks("sh")) >= 3 and blocks("python")


@pytest.mark.parametrize("number", range(len(CONSOLE)))
def test_console_examples(genv, number):
    shell = genv.shell("bash", GENV_DEVICES=None)
    shell.ok("PS1='$ '")
    status = 0
    for prefix, command, expected in session(CONSOLE[number]):
        prompt = shell.ok('printf %s "${PS1@P}"')
        assert prompt == prefix + "$ ", (command, prompt)
        result = shell.run("(exit %d); %s" % (status, command))  # $? as the previous command left it
        status = result.rc
        assert normalise(result.out) == normalise("\n".join(expected)), (command, result)
        assert result.err == "", (command, result)


def test_quick_start(genv):
    (quick,) = [block for block in blocks("sh") if "genv activate --gpus 1" in block]
    for machine in ({"PATH": "/usr/bin:/bin"}, {}):  # no nvidia-smi: mock GPUs; the fake one
        env = genv.environ(**machine)
        env.pop("GENV_DEVICES", None)
        done = subprocess.run(["bash", "--norc", "--noprofile", "-c", quick], cwd=genv.root, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done
        assert "environment: " in done.stdout and "attached: 0" in done.stdout, done


def test_installing(genv, tmp_path):
    """The rc file lines, with the clone in ~/genv."""
    (lines,) = [block for block in blocks("sh") if 'eval "$(genv init -)"' in block and "HOME" in block]
    home = tmp_path / "home"
    home.mkdir()
    os.symlink(genv.root, str(home / "genv"))
    env = genv.environ(HOME=str(home), PATH="/usr/bin:/bin:%s/tests/fake" % genv.root)
    script = lines + "genv activate --gpus 1 && echo \"$CUDA_VISIBLE_DEVICES\" && genv root\n"
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done
    assert done.stdout.splitlines()[0] == "0"


def test_the_test_command_is_what_ci_runs():
    (command,) = [block.strip() for block in blocks("sh") if "pytest" in block]
    ci = open(os.path.join(REPO, ".ci", "run"), encoding="utf-8").read()
    assert command in ci


def test_python_example(genv):
    (example,) = blocks("python")
    program = "import sys\nsys.path.insert(0, %r)\ndef train():\n    pass\n%s" % (genv.root, example)
    env = genv.environ(GENV_DEVICES="4")
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done
    eid, gpus = done.stdout.split(" ", 1)
    assert eid.isdigit() and gpus.strip() == "[0]"
    assert done.stderr == ""
