"""The tracking server check before a sweep starts: nothing listening fails at once, a slow
server is waited for, a silent one is named; against real HTTP servers on 127.0.0.1."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from processes import free_port

from kd_tune.tracking.tracker import check_reachable


@contextlib.contextmanager
def http_server(delays: list[float]) -> Iterator[str]:
    """A server answering 200 to each request after the next of ``delays`` (seconds; the last repeats)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            time.sleep(delays.pop(0) if len(delays) > 1 else delays[0])
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_nothing_listening_fails_at_once():
    started = time.monotonic()
    problem = check_reachable(f"http://127.0.0.1:{free_port()}", timeout_s=1.0, answer_within_s=30.0)
    assert problem is not None and "cannot reach the MLflow tracking server" in problem
    assert time.monotonic() - started < 5.0  # refused is final: no waiting for an answer


def test_a_server_slow_to_answer_is_waited_for():
    with http_server([1.5, 0.0]) as uri:  # the first request outlasts the timeout, the second is answered
        assert check_reachable(uri, timeout_s=0.5, answer_within_s=20.0) is None


def test_a_server_that_never_answers_is_named_after_the_wait():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (the kernel's backlog) and never answers
    try:
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        problem = check_reachable(uri, timeout_s=0.5, answer_within_s=2.0)
        assert problem is not None and "does not answer within 2 s" in problem
        assert 2.0 <= time.monotonic() - started < 10.0
    finally:
        listener.close()
