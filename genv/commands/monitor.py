"""genv monitor: Prometheus metrics about environments, GPUs and their
processes, served over HTTP.

Each reading is one fresh ``Session`` (one nvidia-smi query of each kind,
run before the state lock, then the state under the lock, briefly) turned
into the listings' documents and from those into metrics
(``genv.metrics``). A reading happens when Prometheus scrapes, not in a
loop; a scrape within ``--interval`` seconds of the last reading is served
that reading again. prometheus-client is an optional dependency
(``pip install 'genv-shell[monitor]'``), imported only here.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from .. import metrics
from .. import options
from ..cli import out
from ..core.context import Context
from ..report import SINK, warn
from ..errors import GenvError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~7 ms to import: annotations only
    from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

    Doc = Dict[str, Any]

OPTIONS = {"--port": True, "--address": True, "--interval": True}
DEFAULT_PORT = 9759
"""Not among the common exporters' ports (node_exporter 9100, DCGM 9400,
nvidia_gpu_exporter 9835); see docs/admin.md."""
DEFAULT_ADDRESS = "127.0.0.1"
"""This machine only: the metrics name users and their processes."""
DEFAULT_INTERVAL = 5.0
PACKAGE = "prometheus-client>=0.16"


def complete(words: List[str]) -> List[str]:
    return options.complete(words, OPTIONS, {"--address": lambda: ["0.0.0.0", "127.0.0.1", "::", "::1"]})


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise UsageError("invalid --port %r: expected a TCP port from 0 to 65535 (0: any free one)" % text)
    return int(text)


def _interval(text: str) -> float:
    from ..sizes import parse_seconds

    return parse_seconds(text, "--interval", hint="0: read at every scrape", error=UsageError)


def _address(text: str) -> str:
    if not text or text != text.strip():
        raise UsageError("invalid --address %r: expected an IP address or a host name" % text)
    return text


def prometheus_client() -> Any:
    """The prometheus_client package, or a one-line GenvError saying how
    to install it. genv runs with ``-S``: site-packages are added first."""
    import importlib

    try:
        return importlib.import_module("prometheus_client")
    except ImportError:
        import site

        site.main()
    try:
        return importlib.import_module("prometheus_client")
    except ImportError:
        raise GenvError(
            "genv monitor needs the Python package prometheus-client, which %s does not have: install it "
            "with '%s -m pip install \"%s\"' (or pip install 'genv-shell[monitor]'), or set GENV_PYTHON to "
            "an interpreter that has it" % (sys.executable, sys.executable, PACKAGE)
        ) from None


# --- reading --------------------------------------------------------------------


def read_documents() -> Tuple[List[Doc], List[Doc], List[Doc]]:
    """One reading: ``genv.core.listings.reading`` for this monitor."""
    from ..core.listings import reading

    return reading(Context())


class Reader:
    """The latest reading and the monitor's own counts. A reading within
    ``interval`` seconds of the last one is reused; one at a time.

    Warnings and errors of a reading go to stderr once: a line that the
    previous reading printed too is not repeated (a journal would otherwise
    get the same warning at every scrape)."""

    def __init__(self, interval: float, read: Any = read_documents) -> None:
        self.interval = interval
        self._read = read
        self._lock = threading.Lock()
        self._started: Optional[float] = None  # monotonic time of the last reading
        self._said: Set[bytes] = set()
        self.families: List[metrics.Family] = []
        self.up = False
        self.read_at: Optional[float] = None
        self.duration: Optional[float] = None
        self.reads = 0
        self.errors = 0

    def current(self) -> List[metrics.Family]:
        """The families to serve now: the health metrics, and the last
        reading's (read again if older than the interval)."""
        with self._lock:
            now = time.monotonic()
            if self._started is None or now - self._started >= self.interval:
                self._started = now
                self._reading()
            return metrics.health(self.up, self.read_at, self.duration, self.reads, self.errors) + self.families

    def _reading(self) -> None:
        started = time.monotonic()
        self.read_at = time.time()
        said: List[str] = []
        sink = SINK.set(said.append)  # this thread's messages, not the server threads'
        try:
            self.families = metrics.collect(*self._read())
            self.up = True
        except GenvError as error:
            self.families, self.up = [], False
            warn(str(error))
        except Exception as error:  # a monitor keeps serving; the reading says it failed
            if os.environ.get("GENV_DEBUG"):
                import traceback

                traceback.print_exc()
            self.families, self.up = [], False
            warn("internal error: %s: %s (run with GENV_DEBUG=1 for details)" % (type(error).__name__, error))
        finally:
            SINK.reset(sink)
        self.duration = time.monotonic() - started
        self.reads += 1
        self.errors += 0 if self.up else 1
        lines = [("genv: %s" % text).encode("utf-8", "backslashreplace") for text in said]
        news = [line for line in lines if line not in self._said]
        self._said = set(lines)
        if news:
            try:
                sys.stderr.buffer.write(b"".join(line + b"\n" for line in news))
                sys.stderr.flush()
            except OSError:
                pass


# --- serving -------------------------------------------------------------------------


def prometheus_families(core: Any, families: List[metrics.Family]) -> Iterator[Any]:
    """prometheus_client's metric families (``core``: prometheus_client.core)
    for ours."""
    for family in families:
        spec = family.spec
        if spec.kind == "info":
            made = core.InfoMetricFamily(spec.name[: -len("_info")], spec.help, labels=spec.labels)
            for labels in family.samples:
                made.add_metric(labels, {})
        else:
            kind = core.CounterMetricFamily if spec.kind == "counter" else core.GaugeMetricFamily
            made = kind(spec.name, spec.help, labels=spec.labels, unit=spec.unit)
            for labels, value in family.samples.items():
                made.add_metric(labels, value)
        yield made


class Collector:
    """A prometheus_client collector that reads at each scrape (within the
    interval) instead of in a background loop."""

    def __init__(self, core: Any, reader: Reader) -> None:
        self.core, self.reader = core, reader

    def describe(self) -> List[Any]:
        return []  # nothing to read when registered

    def collect(self) -> Iterator[Any]:
        return prometheus_families(self.core, self.reader.current())


WORKERS = 4
"""Threads that answer complete requests (a reading is one at a time anyway)."""
MAX_CONNECTIONS = 64
"""Connections open at once; past it, a new one closes the one that has
waited longest for its request (a scrape sends its own at once)."""
IDLE_TIMEOUT = 10.0
"""Seconds a connection has to send its whole request, and the client to
take the whole answer."""
MAX_REQUEST = 16384
"""Bytes of request line and headers (a scrape sends a few hundred)."""


def _handler_class() -> Any:
    from wsgiref.simple_server import WSGIRequestHandler

    class Handler(WSGIRequestHandler):
        """wsgiref's, fed the request already read; every socket operation
        ends within IDLE_TIMEOUT; nothing is logged per request."""

        timeout = IDLE_TIMEOUT

        def __init__(self, request: bytes, conn: Any, address: Any, server: Any) -> None:
            self._request = request
            super().__init__(conn, address, server)

        def setup(self) -> None:
            import io

            super().setup()
            self.rfile.close()
            self.rfile = io.BytesIO(self._request)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class Server:
    """HTTP for the metrics, open to the network only where --address says.
    One thread accepts connections and reads their requests without
    blocking, so that an idle connection costs no thread: a connection
    whose request is not complete within IDLE_TIMEOUT is closed, and at
    most MAX_CONNECTIONS are open. A complete request goes to one of
    WORKERS threads, which answer through wsgiref."""

    def __init__(self, family: int, where: Any, app: Any) -> None:
        import queue
        import socket

        self.app = app
        self._handler = _handler_class()
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(where)
            self.socket.listen(128)
        except OSError:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        # What wsgiref's request handler asks of its server.
        self.server_name, self.server_port = "genv", self.server_address[1]
        self.base_environ = {"SERVER_NAME": self.server_name, "GATEWAY_INTERFACE": "CGI/1.1",
                             "SERVER_PORT": str(self.server_port), "REMOTE_HOST": "", "CONTENT_LENGTH": "",
                             "SCRIPT_NAME": ""}
        self._jobs: "queue.Queue[Optional[Tuple[Any, Any, bytes]]]" = queue.Queue()
        self._lock = threading.Lock()
        self._busy = 0  # connections handed to the workers, not yet answered
        self._closed = False

    def get_app(self) -> Any:
        return self.app

    def serve_forever(self) -> None:
        import selectors

        for number in range(WORKERS):
            threading.Thread(target=self._work, name="genv-monitor-%d" % number, daemon=True).start()
        selector = selectors.DefaultSelector()
        selector.register(self.socket, selectors.EVENT_READ, None)
        waiting: Dict[Any, List[Any]] = {}  # connection -> [deadline, address, bytes so far], oldest first

        def drop(conn: Any) -> None:
            selector.unregister(conn)
            del waiting[conn]
            conn.close()

        while not self._closed:
            now = time.monotonic()
            for conn in [conn for conn, (deadline, _, _) in waiting.items() if deadline <= now]:
                drop(conn)  # idle for too long
            timeout = min((deadline for deadline, _, _ in waiting.values()), default=now + 60) - now
            try:
                events = selector.select(max(timeout, 0.01))
            except OSError:  # closed under it: the monitor stops
                break
            for key, _ in events:
                if key.data is None:
                    self._accept(selector, waiting, drop)
                    continue
                conn = key.fileobj
                try:
                    data = conn.recv(4096)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                entry = waiting[conn]
                entry[2] += data
                if not data or len(entry[2]) > MAX_REQUEST:
                    drop(conn)  # gone, or not a scrape
                elif b"\r\n\r\n" in entry[2] or b"\n\n" in entry[2]:
                    selector.unregister(conn)
                    del waiting[conn]
                    with self._lock:
                        self._busy += 1
                    self._jobs.put((conn, entry[1], entry[2]))

    def _accept(self, selector: Any, waiting: Dict[Any, List[Any]], drop: Any) -> None:
        import selectors

        while True:
            try:
                conn, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of files, or the client gave up: the next one may do
                return
            with self._lock:
                full = len(waiting) + self._busy >= MAX_CONNECTIONS
            if full and waiting:
                drop(next(iter(waiting)))  # the one that has waited longest
            elif full:
                conn.close()  # every slot is being answered: this one must try again
                continue
            conn.setblocking(False)
            selector.register(conn, selectors.EVENT_READ, address)
            waiting[conn] = [time.monotonic() + IDLE_TIMEOUT, address, b""]

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn, address, request = job
            try:
                conn.setblocking(True)
                self._handler(request, conn, address, self)
            except Exception:  # the client went away, or timed out taking the answer
                pass
            finally:
                try:
                    conn.shutdown(1)  # (SHUT_WR: the answer ends; as socketserver does)
                except OSError:
                    pass
                conn.close()
                with self._lock:
                    self._busy -= 1

    def server_close(self) -> None:
        self._closed = True
        self.socket.close()
        for _ in range(WORKERS):
            self._jobs.put(None)


def make_server(address: str, port: int, app: Any) -> Server:
    """The server for ``address``:``port`` (an IPv4 or IPv6 address, or a
    host name), or a one-line GenvError."""
    import socket

    try:
        found = socket.getaddrinfo(address, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        raise GenvError("invalid --address %r: %s" % (address, error)) from None
    try:
        return Server(found[0][0], found[0][4][:2], app)  # (host, port), IPv4 or IPv6
    except OSError as error:
        raise GenvError("cannot listen on %s port %d: %s" % (address, port, error.strerror or error)) from None


class _Stop(BaseException):
    """SIGTERM or SIGINT, raised in the main thread, which only waits."""


_stopping: List[int] = []


def _stop(signum: int, frame: Any) -> None:
    if not _stopping:  # a second signal must not interrupt the shutdown
        _stopping.append(signum)
        raise _Stop()


def main(argv: List[str]) -> int:
    opts, _ = options.parse(argv, OPTIONS, 0)
    port = _port(opts.get("--port", str(DEFAULT_PORT)))
    address = _address(opts.get("--address", DEFAULT_ADDRESS))
    interval = _interval(opts.get("--interval", str(DEFAULT_INTERVAL)))
    client = prometheus_client()
    import importlib

    reader = Reader(interval)
    registry = client.CollectorRegistry()
    registry.register(Collector(importlib.import_module("prometheus_client.core"), reader))
    client.ProcessCollector(registry=registry)
    server = make_server(address, port, client.make_wsgi_app(registry))
    host, bound = server.server_address[:2]
    shown = "[%s]" % host if ":" in host else host
    out("genv monitor: serving metrics at http://%s:%d/metrics (reading at most every %gs)\n"
        % (shown, bound, interval))
    sys.stdout.flush()

    def serve() -> None:
        reader.current()  # the first reading: problems show at once
        server.serve_forever()

    # The server runs in a thread; the main thread only waits for a signal,
    # so that a signal never breaks into a request or a reading. Python runs
    # signal handlers in the main thread, but the kernel may deliver the
    # signal to another one: the wakeup socket wakes the main thread then.
    # On a signal the process exits at once (cli.run ends it with _exit): a
    # reading in progress is dropped, as a killed genv command's would be.
    import select
    import signal
    import socket

    wake, woken = socket.socketpair()
    woken.setblocking(False)
    signal.set_wakeup_fd(woken.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=serve, name="genv-monitor", daemon=True).start()
    try:
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        while True:
            select.select([wake], [], [])
            wake.recv(256)
    except _Stop:
        pass
    finally:
        # Signals that come on while it shuts down change nothing, and none is
        # written to the wakeup socket once it is closed.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        wake.close()
        woken.close()
    server.server_close()
    return 0
