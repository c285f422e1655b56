"""genv kernel: Jupyter kernels whose every notebook gets an environment of its own."""

from __future__ import annotations

import os
import sys

from .. import files, jsonio, options
from ..cli import out
from ..core.context import Context
from ..errors import GenvError, UsageError
from ..gpus import parse_count
from ..table import render

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, List, Optional, Tuple

INSTALL: options.Spec = {"--name": options.VALUE, "--gpus": options.VALUE, "--gpu-memory": options.VALUE,
           "--wait": options.WAIT, "--user": options.FLAG, "--prefix": options.VALUE, "--python": options.VALUE,
                         "--force": options.FLAG, options.FOR: options.VALUE}
WHERE: options.Spec = {"--user": options.FLAG, "--prefix": options.VALUE}
DEFAULT_NAME = "genv"
NATIVE = "python3"
"""The kernel Jupyter lists whenever ipykernel is there (ipykernel's own),
even with no folder of that name."""


def complete(words: List[str]) -> List[str]:
    if not words:
        return ["install", "list", "remove"]
    if words[0] == "install":
        return options.complete(words[1:], INSTALL, {})
    if words[0] in ("list", "remove"):
        return options.complete(words[1:], WHERE, {})
    return []


def check_name(name: str) -> str:
    """A kernel's name is a folder name: letters, digits, '.', '_', '-'."""
    if not name or len(name) > 64 or name[0] == "." or not all(
            c.isascii() and (c.isalnum() or c in "._-") for c in name):
        raise UsageError("invalid kernel name %r: use letters, digits, '.', '_' and '-' (no '/')" % name)
    return name


def data_dir(opts: Dict[str, Any]) -> str:
    """Where kernels are installed: --prefix P (P/share/jupyter), else the
    user's Jupyter data folder (JUPYTER_DATA_DIR, else ~/.local/share/jupyter)."""
    if "--prefix" in opts:
        if "--user" in opts:
            raise UsageError("--user and --prefix cannot be combined")
        return os.path.join(os.path.abspath(opts["--prefix"]), "share", "jupyter")
    configured = os.environ.get("JUPYTER_DATA_DIR")
    if configured:
        return os.path.abspath(configured)
    home = os.path.expanduser("~")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(home, ".local", "share")
    return os.path.join(base, "jupyter")


def search_dirs(opts: Dict[str, Any], prefixes: Tuple[str, ...] = ()) -> List[str]:
    """Every folder Jupyter looks in for kernels, the one given first: the
    user's data folder, JUPYTER_PATH, the prefix of the Python genv runs on
    (and of ``prefixes``: the kernel's Python), /usr/local and /usr."""
    found = [data_dir(opts), data_dir({})]
    for entry in os.environ.get("JUPYTER_PATH", "").split(os.pathsep):
        if entry:
            found.append(os.path.abspath(entry))
    found += [os.path.join(prefix, "share", "jupyter") for prefix in (sys.prefix,) + prefixes]
    found += ["/usr/local/share/jupyter", "/usr/share/jupyter"]
    unique: List[str] = []
    for folder in found:
        if folder not in unique:
            unique.append(folder)
    return unique


def read_spec(folder: str) -> Optional[Dict[str, Any]]:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        _, raw = files.read_regular(fd, "kernel.json", 1 << 20)
        spec = jsonio.loads(raw.decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
    return spec if isinstance(spec, dict) else None


def _python(opts: Dict[str, Any]) -> Tuple[str, str]:
    """The Python of the notebooks (it must have ipykernel), and its prefix
    (where its kernels are)."""
    import subprocess

    python = opts.get("--python") or sys.executable
    try:
        done = subprocess.run([python, "-c", "import sys, ipykernel; sys.stdout.write(sys.prefix)"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise GenvError("cannot run %s: %s" % (python, error)) from None
    if done.returncode != 0:
        raise GenvError("%s has no ipykernel: install it there (pip install ipykernel), or run this with the "
                        "Python of your notebooks: <python> -m genv kernel install, or --python <python>" % python)
    return python, done.stdout.decode("utf-8", "surrogateescape")


def _is_genvs(spec: Optional[Dict[str, Any]]) -> bool:
    """Whether a kernel's spec is one genv installed: its "metadata" an
    object with a "genv" object in it (anything else is someone else's)."""
    meta = (spec or {}).get("metadata")
    return isinstance(meta, dict) and isinstance(meta.get("genv"), dict)


def check_unshadowed(name: str, folder: str, dirs: List[str], force: bool) -> None:
    """Refuse a name that a kernel genv did not install has anywhere Jupyter
    looks (a folder with a kernel.json; Jupyter's own python3 too), unless
    ``force``: Jupyter lists one kernel per name, the case ignored, so one
    would hide the other. Two spellings of one name in the folder written
    to are refused even then (Jupyter would pick either), and a kernel that
    genv did not install is never overwritten."""
    target = os.path.dirname(folder)
    if os.path.islink(folder):
        raise GenvError("%s is a symbolic link; genv does not write through it" % folder)
    if os.path.isfile(os.path.join(folder, "kernel.json")) and not _is_genvs(read_spec(folder)):
        raise GenvError("a kernel %s that genv did not install is in %s; choose another --name" % (name, folder))
    for base in dirs:
        kernels = os.path.join(base, "kernels")
        try:
            entries = os.listdir(kernels)
        except OSError:
            continue
        here = os.path.realpath(kernels) == os.path.realpath(target)
        for entry in entries:
            path = os.path.join(kernels, entry)
            if entry.lower() != name.lower() or os.path.realpath(path) == os.path.realpath(folder):
                continue
            if not os.path.isfile(os.path.join(path, "kernel.json")):
                continue  # not a kernel: Jupyter skips it
            if here:
                raise GenvError("a kernel %s is in %s already, and Jupyter takes names that differ only by case for "
                                "one: install it as %s, or choose another --name" % (entry, path, entry))
            if _is_genvs(read_spec(path)) or force:
                continue
            raise GenvError("a kernel %s that genv did not install is in %s, and Jupyter lists one kernel per name "
                            "(the case aside): choose another --name, or --force to install it all the same"
                            % (entry, path))
    if name.lower() == NATIVE and not force and not _is_genvs(read_spec(folder)):
        raise GenvError("%s is the name of Jupyter's own Python kernel (ipykernel's): choose another --name, or "
                        "--force to install it all the same" % NATIVE)


def install(argv: List[str]) -> int:
    from ..sizes import format_size, parse_size

    opts, _ = options.parse(argv, INSTALL, 0)
    name = check_name(opts.get("--name", DEFAULT_NAME))
    folder = os.path.join(data_dir(opts), "kernels", name)  # bad folder options: refused first
    run_options: List[str] = ["--name", name]
    what: List[str] = []
    meta: Dict[str, Any] = {}
    if "--gpus" in opts:
        count = parse_count(opts["--gpus"], "GPU count")
        run_options += ["--gpus", str(count)]
        what.append("%d GPU%s" % (count, "" if count == 1 else "s"))
        meta["gpus"] = count
    if "--gpu-memory" in opts:
        memory = format_size(parse_size(opts["--gpu-memory"], "GPU memory"))
        run_options += ["--gpu-memory", memory]
        what.append(memory + " each" if "--gpus" in opts else memory)
        meta["gpu_memory"] = memory
    if "--wait" in opts:
        # Written as genv run reads it: the number as given, or "forever".
        wait = options.wait_text(opts["--wait"])
        run_options += ["--wait", wait]
        meta["wait"] = wait
    if options.FOR in opts:
        options.reserve_seconds(opts[options.FOR])  # refused now, not when a notebook starts
        run_options += [options.FOR, opts[options.FOR]]
        meta["for"] = opts[options.FOR]
    python, python_prefix = _python(opts)
    check_unshadowed(name, folder, search_dirs(opts, (python_prefix,)), "--force" in opts)
    ctx = Context()
    genv = os.path.join(ctx.root, "bin", "genv")
    # From a clone, genv's own command; installed with pip (no bin/), the
    # kernel's Python runs the package: python -m genv run.
    runner = [genv, "run"] if os.access(genv, os.X_OK) else [python, "-m", "genv", "run"]
    spec = {
        "argv": runner + run_options + ["--", python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (genv%s)" % (": " + ", ".join(what) if what else ""),
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"genv": dict(meta, root=ctx.root, python=python), "debugger": True},
    }
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            payload = jsonio.dumps(spec).encode("ascii") + b"\n"
            files.write_atomic(fd, "kernel.json", payload, files.temp_name(".kernel.json.tmp-"))
        finally:
            os.close(fd)
    except OSError as error:
        raise GenvError("cannot write the kernel %s in %s: %s" % (name, folder, error.strerror)) from None
    out("installed the kernel %s in %s\n" % (name, folder))
    return 0


def _genv_kernels(opts: Dict[str, Any]) -> List[Tuple[str, str, Dict[str, Any]]]:
    found = []
    seen = set()
    for base in search_dirs(opts):
        kernels = os.path.join(base, "kernels")
        try:
            names = sorted(os.listdir(kernels))
        except OSError:
            continue
        for name in names:
            spec = read_spec(os.path.join(kernels, name))
            if spec is not None and _is_genvs(spec) and name not in seen:
                seen.add(name)
                found.append((name, os.path.join(kernels, name), spec["metadata"]["genv"]))
    return found


def list_kernels(argv: List[str]) -> int:
    opts, _ = options.parse(argv, WHERE, 0)
    rows = []
    for name, folder, meta in _genv_kernels(opts):
        rows.append((name, str(meta.get("gpus", "")), str(meta.get("gpu_memory", "")),
                     _wait_shown(meta.get("wait")),
                     str(meta.get("python", "")), folder))
    if not rows:
        out("No genv kernels installed\n")
        return 0
    out(render(("NAME", "GPUS", "GPU MEMORY", "WAIT", "PYTHON", "FOLDER"), rows))
    return 0


def _wait_shown(wait: Any) -> str:
    """The WAIT column: what ``--wait`` the kernel was installed with."""
    if isinstance(wait, bool) or wait is None:
        return ""
    if isinstance(wait, (int, float)):  # kernels installed before the value was kept as text
        return "%g s" % wait
    return "forever" if wait == options.FOREVER else "%s s" % wait


def remove(argv: List[str]) -> int:
    import shutil

    opts, names = options.parse(argv, WHERE, 1)
    if not names:
        raise UsageError("which kernel? genv kernel remove NAME")
    name = check_name(names[0])
    folder = os.path.join(data_dir(opts), "kernels", name)
    if os.path.islink(folder):
        raise GenvError("%s is a symbolic link; remove it yourself if it is genv's" % folder)
    spec = read_spec(folder)
    if spec is None:
        raise GenvError("there is no kernel %s in %s" % (name, os.path.dirname(folder)))
    if not _is_genvs(spec):
        raise GenvError("the kernel %s in %s was not installed by genv; leaving it alone" % (name, folder))
    try:
        shutil.rmtree(folder)
    except OSError as error:
        raise GenvError("cannot remove %s: %s" % (folder, error.strerror or error)) from None
    out("removed the kernel %s from %s\n" % (name, os.path.dirname(folder)))
    return 0


def main(argv: List[str]) -> int:
    actions = {"install": install, "list": list_kernels, "remove": remove}
    if not argv or argv[0] not in actions:
        raise UsageError("expected one of: install, list, remove (see genv kernel --help)")
    return actions[argv[0]](argv[1:])
