"""A simulated payment rail: a real HTTP server on loopback with an idempotency-key API.

The bank's payment system (CNAPS or an internal payment hub) is the one external system of
disbursement we cannot run here, so this module plays it, with the contract such rails have:

- ``POST /payments`` with JSON ``{idempotency_key, instruction_id, payee_type, payee_id,
  amount_fen}`` pays once: ``201`` and ``{payment_id, status: "accepted", ...}``. The same key
  again returns the **stored** result with ``200``; the same key with a different payee or
  amount is refused with ``409`` (a bug upstream, never a second payment).
- ``POST /payments/batch`` with ``{"payments": [...]}``: the same per payment (each with its
  own idempotency key), answered ``200`` with ``{"results": [{"code": 201|200|409|400, ...},
  ...]}`` in order; the batch is stored in one transaction (one commit, not one per payment).
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
                    results, stall = rail.pay_batch([p if isinstance(p, dict) else {} for p in body.get("payments") or []])
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
        (code, result), stall = self._pay_all([body])
        return code[0], result[0], stall

    def pay_batch(self, bodies: list[dict]) -> tuple[list[dict], float]:
        """``({code, ...response}`` per payment, in order``, seconds to stall)``: each payment as
        :meth:`pay` (its own idempotency key: a new key pays once, a known one replays, a reused
        one with another payee or amount is refused), the batch stored in one transaction."""
        (codes, results), stall = self._pay_all(bodies)
        return [{"code": c, **r} for c, r in zip(codes, results)], stall

    def _pay_all(self, bodies: list[dict]) -> tuple[tuple[list[int], list[dict]], float]:
        """Each payment in order, in one transaction: the stored payments of the batch's keys are
        read in one statement per 500 keys, the new ones inserted together."""
        codes, results, stall = [], [], 0.0
        with self._lock:
            db = self._db()
            try:
                db.execute("BEGIN IMMEDIATE")
                keys = list({b["idempotency_key"] for b in bodies if isinstance(b.get("idempotency_key"), str)})
                stored = {}
                for i in range(0, len(keys), 500):
                    part = keys[i:i + 500]
                    stored.update((row[0], row) for row in db.execute(
                        f"SELECT * FROM payments WHERE idempotency_key IN ({', '.join('?' * len(part))})", part))
                new, now = [], time.strftime("%Y-%m-%dT%H:%M:%S")
                for body in bodies:
                    code, result, s, row = self._pay(stored, body, now)
                    if row is not None:
                        stored[row[0]] = row  # the same key again in this batch replays it
                        new.append(row)
                    codes.append(code)
                    results.append(result)
                    stall = max(stall, s)
                db.executemany("INSERT INTO payments VALUES (?, ?, ?, ?, ?, ?, ?)", new)
                db.execute("COMMIT")  # stored and committed before any stall
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            finally:
                db.close()
        return (codes, results), stall

    def _pay(self, stored: dict[str, tuple], body: dict, now: str) -> tuple[int, dict, float, tuple | None]:
        """``(status, response, stall, the new payment row or None)`` of one payment, given the
        ``stored`` payments by key."""
        missing = [f for f in FIELDS if body.get(f) in (None, "")]
        if missing:
            return 400, {"error": f"missing fields {missing}"}, 0.0, None
        if not isinstance(body["idempotency_key"], str):
            return 400, {"error": f"idempotency_key must be a string, got {body['idempotency_key']!r}"}, 0.0, None
        amount = body["amount_fen"]
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            return 400, {"error": f"amount_fen must be a positive integer, got {amount!r}"}, 0.0, None
        row = stored.get(body["idempotency_key"])
        if row is not None:
            known = self._row(None, row)
            same = all(str(known[f]) == str(body[f]) for f in ("payee_type", "payee_id", "amount_fen"))
            if not same:
                return 409, {"error": "idempotency key reused with a different payment", "stored": known}, 0.0, None
            return 200, {**known, "replayed": True}, 0.0, None
        row = (body["idempotency_key"], "PAY" + uuid.uuid4().hex[:20].upper(), body["instruction_id"],
               body["payee_type"], body["payee_id"], amount, now)
        stall = 0.0
        if self._faults["count"] > 0:
            self._faults["count"] -= 1
            stall = self._faults["stall_after_accept_s"]
        return 201, {**self._row(None, row), "replayed": False}, stall, row

    @staticmethod
    def _row(db: sqlite3.Connection | None, row: tuple) -> dict:
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
