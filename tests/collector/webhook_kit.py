"""A real HTTP receiver on loopback for the HR webhook tests (collector.ingest.hr_push): it
checks every signature with the collector's own verify and answers from a script."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from collector.ingest.detectors_webhooks import verify

SECRET = b"0123456789abcdef-hr-secret"


class Receiver:
    """An HR endpoint: checks each signature, answers from ``script`` (then 200)."""

    def __init__(self) -> None:
        self.script: list[int] = []
        self.got: list[dict[str, Any]] = []
        self.deliveries: list[str] = []
        self.attempted: list[str] = []          # every POST's X-Timeclock-Delivery
        self.bad_signatures = 0
        self.raw: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = verify(SECRET, self.headers["X-Timeclock-Timestamp"], body,
                            self.headers["X-Timeclock-Signature"])
                status = outer.script.pop(0) if outer.script else 200
                outer.attempted.append(self.headers["X-Timeclock-Delivery"])
                if not ok:
                    outer.bad_signatures += 1
                    status = 401
                if status == 200:
                    outer.got.append(json.loads(body))
                    outer.raw.append(body)
                    outer.deliveries.append(self.headers["X-Timeclock-Delivery"])
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/punches"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
