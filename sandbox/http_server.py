"""What the provider test doubles share: a JSON HTTP server on a thread, fault bookkeeping, request logs.

A double subclasses :class:`ThreadedTestServer` (its state, its rules, ``handle`` and ``_control``) and
:class:`ThreadedTestHandler` (how one request reaches ``handle``), and names the handler in
``handler_class``. Everything here is provider-neutral; the provider's rules stay in its own module.

Connections: HTTP/1.1 kept alive (as a provider's API does: a client pays for a TCP connection and a
server thread once, not per request), a thread each, and a listen backlog of LISTEN_BACKLOG (the
standard library's is 5, so a burst of clients connecting at once saw resets), so hundreds of
concurrent clients are served. ``stop()`` also closes the connections still open, so a stopped server
answers nothing more. An answer's action ends a connection without an answer: "drop" closes it (FIN),
"reset" aborts it (RST, as a crashed proxy or a load balancer does).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Self, Tuple, Type

Answer = Tuple[int, Dict[str, Any], Dict[str, str], Optional[str]]  # status, body, headers, action
LISTEN_BACKLOG = 1024
CONNECTION_ACTIONS = ("drop", "reset")  # answers that end the connection without a response


class _Server(ThreadingHTTPServer):
    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True


class Fault:
    """One armed fault: the next `times` requests matching method + path prefix, after `after` of them."""

    def __init__(self, kind: str, path_prefix: str, method: Optional[str], times: int, retry_after_s: float,
                 delay_s: float, status: Optional[int], after: int = 0):
        self.kind, self.path_prefix = kind, path_prefix
        self.method = method.upper() if method else None
        self.remaining, self.retry_after_s, self.delay_s, self.status = int(times), retry_after_s, delay_s, status
        self.after = int(after)  # matching requests let through before the fault applies

    def matches(self, method: str, path: str) -> bool:
        return (self.remaining > 0 and (self.method is None or self.method == method)
                and path.startswith(self.path_prefix))


class ThreadedTestHandler(BaseHTTPRequestHandler):
    """Reads a request, serves /_test/ controls, otherwise asks ``_answer``; counts it as in flight."""

    test_server: ThreadedTestServer  # bound by ThreadedTestServer.start
    sys_version = ""
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries Content-Length
    disable_nagle_algorithm = True  # headers and body are two writes: Nagle + delayed ACK held the body ~40 ms
    json_indent: Optional[int] = None

    def log_message(self, format: str, *args: Any) -> None:  # silence
        pass

    def setup(self) -> None:
        super().setup()
        self.test_server._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.test_server._closed(self.connection)

    def _answer(self, method: str, split: urllib.parse.SplitResult, raw: bytes) -> Answer:
        raise NotImplementedError

    def _log_entry(self, method: str, path: str, status: int) -> Tuple[Any, ...]:
        """The row this request adds to ``requests_log()``; status 0 = connection dropped."""
        return (method, path, status)

    def _standard_headers(self) -> Dict[str, str]:
        """Headers every answer carries, after Content-Type and Content-Length."""
        return {}

    def _dispatch(self, method: str) -> None:
        server = self.test_server
        server._enter()
        try:
            self._dispatch_inner(server, method)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            pass  # the client gave up (e.g. timed out on a slow request)
        finally:
            server._exit()

    def _dispatch_inner(self, server: ThreadedTestServer, method: str) -> None:
        split = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if split.path.startswith("/_test/"):
            status, body = server.handle_control(method, split.path, raw)
            self._send(status, body, {})
            return
        if server.latency_s > 0:
            time.sleep(server.latency_s)
        status, body, headers, action = self._answer(method, split, raw)
        if action in CONNECTION_ACTIONS:
            server._log_request(self._log_entry(method, split.path, 0))
            self.close_connection = True
            try:
                if action == "reset":  # linger on with a zero timeout: close() sends RST, not FIN
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                else:
                    self.connection.shutdown(2)
            except OSError:
                pass
            return
        server._log_request(self._log_entry(method, split.path, status))
        self._send(status, body, headers)

    def _send(self, status: int, body: Dict[str, Any], headers: Dict[str, str]) -> None:
        """Answer JSON; headers named with a leading underscore are internal and never sent."""
        data = json.dumps(body, indent=self.json_indent).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in self._standard_headers().items():
            self.send_header(name, value)
        for name, value in headers.items():
            if not name.startswith("_"):
                self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")


class ThreadedTestServer:
    """Lifecycle, faults, request log, creation counts and /_test/ plumbing of a stateful HTTP double."""

    handler_class: Type[ThreadedTestHandler] = ThreadedTestHandler
    thread_name = "threaded-test-server"
    fault_kinds: Tuple[str, ...] = ()

    def __init__(self, port: int = 0, host: str = "127.0.0.1", latency_s: float = 0.0):
        self._host, self._port = host, port
        self.latency_s = float(latency_s)  # added to every provider request (not /_test/): a provider's answer time
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._connections: set = set()  # sockets of the connections open now
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._init_state()

    def _init_state(self) -> None:
        """Everything ``reset()`` forgets; a subclass extends it and calls this one."""
        self._faults: List[Fault] = []
        self._log: List[Tuple[Any, ...]] = []
        self._creations: Dict[str, int] = {}

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        if self._httpd is not None:
            return self
        handler = type(self.handler_class.__name__, (self.handler_class,), {"test_server": self})
        self._httpd = _Server((self._host, self._port), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            open_now = list(self._connections)
        for connection in open_now:  # kept-alive connections: their threads would go on answering
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd, self._thread = None, None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    # ------------------------------------------------------ control (Python)
    def reset(self) -> None:
        """Forget all state, faults and logs; back to the constructor's settings."""
        with self._lock:
            self._init_state()

    def inject(self, kind: str, **fields: Any) -> None:
        """Arm a fault: each double names its own fields, builds a :class:`Fault` and calls ``_arm_fault``."""
        raise NotImplementedError

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> List[Tuple[str, str, int]]:
        with self._lock:
            return [(f.kind, f.path_prefix, f.remaining) for f in self._faults if f.remaining > 0]

    def creations_by_key(self) -> Dict[str, int]:
        """How many objects were really created per idempotency key (must stay 1)."""
        with self._lock:
            return dict(self._creations)

    def requests_log(self) -> List[Tuple[Any, ...]]:
        """One row per request, shaped by the handler's ``_log_entry``; status 0 = connection dropped or reset."""
        with self._lock:
            return list(self._log)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until no request is being handled (e.g. a ``slow`` one); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
            return True

    # ------------------------------------------------------ request handling
    def _arm_fault(self, fault: Fault) -> None:
        if fault.kind not in self.fault_kinds:
            raise ValueError(f"unknown fault kind {fault.kind!r}; expected one of {self.fault_kinds}")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, method: str, path: str, kinds: Tuple[str, ...]) -> Optional[Fault]:
        """The first armed fault of one of `kinds` for this request, consumed; None if none applies."""
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.matches(method, path):
                    if fault.after > 0:
                        fault.after -= 1
                        continue
                    fault.remaining -= 1
                    return fault
            return None

    def _note_creation(self, key: Optional[str]) -> None:
        if key:
            with self._lock:
                self._creations[key] = self._creations.get(key, 0) + 1

    def _log_request(self, entry: Tuple[Any, ...]) -> None:
        with self._lock:
            self._log.append(entry)

    def _opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def _closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1

    def _exit(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    @staticmethod
    def _public(obj: Dict[str, Any]) -> Dict[str, Any]:
        """A deep copy without the internal fields (those named with a leading underscore)."""
        return {k: v for k, v in json.loads(json.dumps(obj)).items() if not k.startswith("_")}

    # ---------------------------------------------------- HTTP control API
    def handle_control(self, method: str, path: str, raw: bytes) -> Tuple[int, Dict[str, Any]]:
        """The Python controls under /_test/ (JSON bodies), for a client in another process."""
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            return 400, {"error": "invalid json"}
        parts = [p for p in path.split("/") if p][1:]
        try:
            if method == "POST" and parts == ["reset"]:
                self.reset()
                return 200, {"ok": True}
            if method == "POST" and parts == ["faults"]:
                self.inject(**data)
                return 200, {"ok": True}
            answer = self._control(method, parts, data)
        except (TypeError, ValueError, KeyError, ArithmeticError) as exc:
            return 400, {"error": repr(exc)}
        return answer if answer is not None else (404, {"error": "unknown control endpoint"})

    def _control(self, method: str, parts: List[str], data: Any) -> Optional[Tuple[int, Dict[str, Any]]]:
        """The double's own /_test/ endpoints: (status, body), or None for an unknown one."""
        return None
