"""The shape of the package (issue 15): one core under several front ends.

- No import circles in genv/: every import counts, inside functions too (a
  lazy import is still a dependency); imports under ``if TYPE_CHECKING:``
  are annotations only and never run, so they do not.
- Nothing outside genv/commands/ imports a command module (the dispatcher,
  genv/__main__.py, aside): the SDK and every front end sit on the core.
- A non-editable ``pip install .`` gives a working ``import genv.sdk`` and
  ``python -m genv`` (help included).
"""

import ast
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import REPO

PACKAGE = os.path.join(REPO, "genv")


def modules():
    """Module name -> file, for every module of the package."""
    found = {}
    for folder, _, names in os.walk(PACKAGE):
        if "__pycache__" in folder:
            continue
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _type_checking(node):
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports_of(module, path, known):
    """The genv modules ``module`` imports (anywhere but TYPE_CHECKING blocks)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    is_package = path.endswith("__init__.py")
    base = module.split(".") if is_package else module.split(".")[:-1]
    found = set()

    def visit(node):
        if _type_checking(node):
            for child in node.orelse:  # the else branch runs
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "genv":
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - node.level + 1]
                target = ".".join(parent + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "genv":
                for alias in node.names:
                    candidate = target + "." + alias.name
                    found.add(candidate if candidate in known else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name in known and name != module}


def graph():
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, result = {}, {}, [], set(), []
    counter = [0]

    def connect(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in sorted(edges):
        if node not in index:
            connect(node)
    return result


def test_the_reader_sees_every_kind_of_import():
    """The test's own parser, on a sample: a test that cannot fail is none."""
    known = {"genv", "genv.a", "genv.b", "genv.c", "genv.core", "genv.core.d", "genv.e"}
    folder = tempfile.mkdtemp()
    try:
        path = os.path.join(folder, "x.py")
        with open(path, "w") as handle:
            handle.write("from . import a\nfrom .b import thing\ndef f():\n    from .core import d\n"
                         "    import genv.c\nTYPE_CHECKING = False\nif TYPE_CHECKING:\n    from . import e\n")
        assert imports_of("genv.x", path, known) == {"genv.a", "genv.b", "genv.core.d", "genv.c"}
    finally:
        shutil.rmtree(folder)
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    assert cycles(graph()) == []


def test_only_the_dispatcher_imports_commands():
    offenders = sorted(
        "%s imports %s" % (name, imported)
        for name, imported_set in graph().items()
        if not name.startswith("genv.commands") and name != "genv.__main__"
        for imported in imported_set if imported.startswith("genv.commands")
    )
    assert offenders == []


def test_the_core_prints_nothing_and_imports_no_front_end():
    """Messages leave the core as data or through genv.report."""
    known = modules()
    for name, path in known.items():
        if not name.startswith("genv.core"):
            continue
        assert not any(imported in ("genv.cli", "genv.sdk", "genv.shell") or imported.startswith("genv.commands")
                       for imported in imports_of(name, path, known)), name
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
        assert "print(" not in source and "sys.stdout" not in source and "sys.stderr" not in source, name


def test_a_plain_pip_install_works(tmp_path):
    """Not editable: the package alone (no clone next to it) imports, runs
    python -m genv, and finds every command's help."""
    from conftest import system_python

    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info",
                                                                "build", "dist", ".pytest_cache"))
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                           str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    shutil.rmtree(source)  # nothing of the clone is left to lean on
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "GENV_DEVICES": "2",
           "GENV_TMPDIR": str(tmp_path / "state"), "HOME": str(tmp_path), "LANG": "C.UTF-8"}

    def run(*args):
        return subprocess.run([system_python(), *args], capture_output=True, text=True, env=env, cwd=str(tmp_path))

    done = run("-c", "import genv.sdk, genv.core.operations; print(genv.sdk.__file__)")
    assert done.returncode == 0 and done.stdout.startswith(str(site)), done
    done = run("-c", "import genv.sdk\nwith genv.sdk.environment(gpus=1) as env: print(env.gpus)")
    assert (done.returncode, done.stdout, done.stderr) == (0, "[0]\n", ""), done
    done = run("-m", "genv", "envs", "--format", "json")
    assert (done.returncode, done.stdout) == (0, "[]\n"), done
    for name in ("run", "lock", "envs", "kernel"):
        done = run("-m", "genv", name, "--help")
        assert done.returncode == 0 and done.stdout.startswith("Usage: genv %s" % name), done


@pytest.mark.parametrize("name", ["run", "lock", "envs", "devices", "ps", "status", "home", "enforce", "monitor",
                                  "kernel"])
def test_python_m_genv_help_is_genv_help(genv, name):
    """`python -m genv CMD --help` prints what `genv CMD --help` prints."""
    from conftest import system_python

    expected = genv.cli(name, "--help")
    env = genv.environ()
    done = subprocess.run([system_python(), "-m", "genv", name, "--help"], capture_output=True, env=env,
                          cwd=genv.root)
    assert expected.returncode == 0 and expected.stdout
    assert (done.returncode, done.stdout, done.stderr) == (0, expected.stdout, b"")
