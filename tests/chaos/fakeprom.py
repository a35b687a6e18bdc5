"""A Prometheus stand-in over real HTTP whose answer the chaos run can turn into garbage.

The chaos group scales on `{type: prometheus}` so that its desired count is fixed by a number we control
(the value divided by `target_per_replica`), and so that "the metric source returns garbage" is a real
HTTP answer reaching the controller's real parser.
"""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Each is something a broken exporter, proxy or Prometheus has been seen to send. (status, content type, body)
GARBAGE: tuple[tuple[int, str, bytes], ...] = (
    (200, "application/json", b"{not json"),
    (200, "text/html", b"<html><body>502 Bad Gateway</body></html>"),
    (200, "application/json", b'{"status":"success","data":{"resultType":"vector","result":[]}}'),
    (
        200,
        "application/json",
        b'{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"NaN"]}]}}',
    ),
    (
        200,
        "application/json",
        b'{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"+Inf"]}]}}',
    ),
    (
        200,
        "application/json",
        b'{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"-500"]}]}}',
    ),
    (200, "application/json", b'{"status":"success","data":{"resultType":"matrix","result":"x"}}'),
    (200, "application/json", b'{"status":"success","data":{"resultType":"scalar","result":[1,{"a":1}]}}'),
    (200, "application/json", b"[1, 2, 3]"),
    (200, "application/json", b'"just a string"'),
    (500, "text/plain", b"internal error"),
    (200, "application/json", b"\x00\xff\xfe garbage bytes"),
)


class FakePrometheus:
    def __init__(self, value: float) -> None:
        self.value = value
        self.garbage = False
        self.queries = 0
        self._cycle = itertools.cycle(GARBAGE)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.queries += 1
                status, ctype, body = owner._answer()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _answer(self) -> tuple[int, str, bytes]:
        if self.garbage:
            return next(self._cycle)
        body = {
            "status": "success",
            "data": {"resultType": "vector", "result": [{"value": [0, str(self.value)]}]},
        }
        return 200, "application/json", json.dumps(body).encode()

    def __enter__(self) -> FakePrometheus:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
