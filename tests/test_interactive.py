"""Interactive shells on a pseudo-terminal: the prompt is displayed (and so
expanded again) after every command, as in a user's terminal (issue 4)."""

import os
import re

import pexpect
import pytest

from conftest import SHELLS, need

READY = "READY>"


def spawn(genv, kind, promptsubst=True):
    """promptsubst: zsh's PROMPT_SUBST, or bash's promptvars (on by default)."""
    need(kind)
    env = genv.environ()
    if kind == "bash":
        argv = ["bash", "--norc", "--noprofile", "-i"]
    else:
        argv = ["zsh", "-f", "-i"]
    child = pexpect.spawn(argv[0], argv[1:], env=env, cwd=genv.work, encoding="utf-8", timeout=30,
                          dimensions=(50, 400))
    child.sendline("PS1='%s '; eval \"$(genv init -)\"" % READY)
    if kind == "zsh" and promptsubst:
        child.sendline("setopt PROMPT_SUBST")
    if kind == "bash" and not promptsubst:
        child.sendline("shopt -u promptvars")  # the prompt is then shown literally
    child.sendline("echo SYNC1")
    child.expect("SYNC1\r\n")
    child.expect_exact(READY)
    return child


def command(child, line):
    """Run a line; return what the terminal showed up to the next prompt."""
    marker = "DONE%d" % abs(hash(line))
    child.sendline(line + "; echo " + marker)
    child.expect(marker + "\r\n")
    child.expect(r"\(genv[^\r\n]*\) " + re.escape(READY) + "|" + re.escape(READY))
    return child.after


CASES = [
    ("$(touch PWNED)", "(genv:$(touch PWNED)) "),
    ("`touch PWNED`", "(genv:`touch PWNED`) "),
    ("\\w %~ %F{red}", "(genv:\\\\w %~ %F{red}) "),  # a backslash shows escaped, as everywhere
    ("it's \"x\"", "(genv:it's \"x\") "),
]


@pytest.mark.parametrize("kind,promptsubst", [("bash", True), ("bash", False), ("zsh", False), ("zsh", True)])
@pytest.mark.parametrize("name,shown", CASES)
def test_prompt_shows_name_and_runs_nothing(genv, kind, promptsubst, name, shown):
    child = spawn(genv, kind, promptsubst)
    try:
        quoted = "'" + name.replace("'", "'\\''") + "'"
        prompt = command(child, "genv activate --name %s" % quoted)
        assert prompt == shown + READY
        # A second display, after another command, still shows it as text.
        prompt = command(child, "true")
        assert prompt == shown + READY
        prompt = command(child, "genv config name plain")
        assert prompt == "(genv:plain) " + READY
        prompt = command(child, "genv deactivate")
        assert prompt == READY
        assert not os.path.exists(os.path.join(genv.work, "PWNED"))
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


@pytest.mark.parametrize("kind", SHELLS)
def test_plain_prompt(genv, kind):
    child = spawn(genv, kind, promptsubst=False)
    try:
        assert command(child, "genv activate") == "(genv) " + READY
        assert command(child, "genv deactivate") == READY
    finally:
        child.close(force=True)


@pytest.mark.parametrize("kind", SHELLS)
def test_config_value_is_escaped_on_a_terminal_and_exact_for_scripts(genv, kind):
    """`genv config name` prints for people on a terminal (escaped), for
    scripts otherwise (exact): the shell code it prints asks `[ -t 1 ]`,
    since genv runs inside the function's $(...) (issue 15, B12)."""
    child = spawn(genv, kind)
    try:
        command(child, "genv activate --name \"$(printf 'a\\\\b\\tc')\"")
        child.sendline("genv config name; echo END$((1))")  # (the echo of the line shows END$((1)))
        child.expect("END1\r\n")
        assert "a\\\\b\\tc\r\n" in child.before, child.before  # escaped: a\\b\tc
        child.sendline("v=$(genv config name); printf '%s' \"$v\" | od -c | head -1; echo END$((2))")
        child.expect("END2\r\n")
        assert "a   \\   b  \\t   c" in child.before, child.before  # exact: a \ b TAB c
    finally:
        child.close(force=True)
