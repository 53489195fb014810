"""A simulated payment rail: a real HTTP server on loopback with an idempotency-key API.

The bank's payment system (CNAPS or an internal payment hub) is the one external system of
disbursement we cannot run here, so this module plays it, with the contract such rails have:

- ``POST /payments`` with JSON ``{idempotency_key, instruction_id, payee_type, payee_id,
  amount_fen}`` pays once: ``201`` and ``{payment_id, status: "accepted", ...}``. The same key
  again returns the **stored** result with ``200``; the same key with a different payee or
  amount is refused with ``409`` (a bug upstream, never a second payment).
- ``POST /payments/batch`` with ``{"payments": [...]}``: the same per payment, answered
  ``200`` with ``{"results": [{"code": 201|200|409|400, ...}, ...]}`` in order.
- ``GET /payments/<idempotency_key>``: the stored result, or ``404``.
- ``GET /payments``: ``{count, amount_fen}`` of everything paid (for the demo report and tests).
- ``POST /_faults`` ``{"stall_after_accept_s": 3.0, "count": 1}``: the next ``count`` new
  payments (or batches holding one) are stored and committed, then the response is held for that long, so the caller
  times out *after* the rail accepted: the case an outbox retry must survive.

Payments are stored in SQLite (one file), so a restarted rail still knows what it paid.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIELDS = ("idempotency_key", "instruction_id", "payee_type", "payee_id", "amount_fen")


class PaymentRailServer:
    """The rail, served from a thread on ``host:port`` (``port=0`` picks a free one)."""

    def __init__(self, db_path: Path, host: str = "127.0.0.1", port: int = 0):
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._faults = {"stall_after_accept_s": 0.0, "count": 0}
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS payments (idempotency_key TEXT PRIMARY KEY, payment_id TEXT "
                       "NOT NULL, instruction_id TEXT NOT NULL, payee_type TEXT NOT NULL, payee_id TEXT NOT NULL, "
                       "amount_fen INTEGER NOT NULL, accepted_at TEXT NOT NULL)")
        rail = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: the caller logs what matters
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller timed out and left; the payment is stored all the same

            def _body(self) -> dict:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n) or b"{}")

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                if self.path == "/payments":
                    return self._reply(200, rail.totals())
                if self.path.startswith("/payments/"):
                    found = rail.lookup(self.path.removeprefix("/payments/"))
                    return self._reply(200, found) if found else self._reply(404, {"error": "unknown key"})
                self._reply(404, {"error": f"no route {self.path}"})

            def do_POST(self) -> None:  # noqa: N802
                try:
                    body = self._body()
                except (ValueError, json.JSONDecodeError) as exc:
                    return self._reply(400, {"error": f"body is not JSON: {exc}"})
                if self.path == "/_faults":
                    with rail._lock:
                        rail._faults = {"stall_after_accept_s": float(body.get("stall_after_accept_s", 0)),
                                        "count": int(body.get("count", 0))}
                    return self._reply(200, rail._faults)
                if self.path == "/payments/batch":
                    results, stall = [], 0.0
                    for p in body.get("payments") or []:
                        code, result, s = rail.pay(p if isinstance(p, dict) else {})
                        results.append({"code": code, **result})
                        stall = max(stall, s)
                    if stall:
                        time.sleep(stall)
                    return self._reply(200, {"results": results})
                if self.path != "/payments":
                    return self._reply(404, {"error": f"no route {self.path}"})
                code, result, stall = rail.pay(body)
                if stall:
                    time.sleep(stall)
                self._reply(code, result)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.db_path, timeout=30, isolation_level=None)

    def pay(self, body: dict) -> tuple[int, dict, float]:
        """``(HTTP status, response, seconds to stall)``: pays a new key once, replays a known one."""
        missing = [f for f in FIELDS if body.get(f) in (None, "")]
        if missing:
            return 400, {"error": f"missing fields {missing}"}, 0.0
        amount = body["amount_fen"]
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            return 400, {"error": f"amount_fen must be a positive integer, got {amount!r}"}, 0.0
        with self._lock, self._db() as db:
            row = db.execute("SELECT * FROM payments WHERE idempotency_key = ?", (body["idempotency_key"],)).fetchone()
            if row is not None:
                stored = self._row(db, row)
                same = all(str(stored[f]) == str(body[f]) for f in ("payee_type", "payee_id", "amount_fen"))
                if not same:
                    return 409, {"error": "idempotency key reused with a different payment", "stored": stored}, 0.0
                return 200, {**stored, "replayed": True}, 0.0
            payment_id = "PAY" + uuid.uuid4().hex[:20].upper()
            db.execute("INSERT INTO payments VALUES (?, ?, ?, ?, ?, ?, ?)", (
                body["idempotency_key"], payment_id, body["instruction_id"], body["payee_type"],
                body["payee_id"], amount, time.strftime("%Y-%m-%dT%H:%M:%S")))
            stall = 0.0
            if self._faults["count"] > 0:
                self._faults["count"] -= 1
                stall = self._faults["stall_after_accept_s"]
            stored = self._row(db, db.execute("SELECT * FROM payments WHERE idempotency_key = ?",
                                              (body["idempotency_key"],)).fetchone())
        return 201, {**stored, "replayed": False}, stall

    @staticmethod
    def _row(db: sqlite3.Connection, row: tuple) -> dict:
        cols = ("idempotency_key", "payment_id", "instruction_id", "payee_type", "payee_id", "amount_fen",
                "accepted_at")
        return {**dict(zip(cols, row)), "status": "accepted"}

    def lookup(self, key: str) -> dict | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM payments WHERE idempotency_key = ?", (key,)).fetchone()
            return self._row(db, row) if row else None

    def totals(self) -> dict:
        with self._db() as db:
            n, amount = db.execute("SELECT count(*), coalesce(sum(amount_fen), 0) FROM payments").fetchone()
        return {"count": int(n), "amount_fen": int(amount)}

    def __enter__(self) -> PaymentRailServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="payment-rail", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
