"""Read SQLite query results as Arrow tables in a separate process (the Arrow-native ADBC driver).

The ADBC SQLite driver carries its own copy of the SQLite library. Two copies of SQLite in one
process must not open the same database file: SQLite's POSIX advisory locks belong to the
process, so when one copy closes its file descriptor the kernel drops the locks the other copy
holds (https://www.sqlite.org/howtocorrupt.html, "multiple copies of SQLite linked into the same
application"), and the warehouse's own connections (Python's ``sqlite3``) then fail with "disk
I/O error" or worse. So the driver runs here, in a child process of its own (an ordinary second
reader of the file, as another Airflow worker would be), and the parent maps the results it
writes as Arrow IPC files.

Run as ``python -m chainlend.arrow_reader`` with a JSON request on stdin:
``{"path": <database file>, "out": <folder>, "queries": [[sql, count_sql], ...]}``;
writes ``<folder>/<i>.arrow`` per query, rows in the order the query gives them (a caller that
needs an order sorts the decoded frame: ``Warehouse.read_frames`` sorts by key after decoding,
which moves int64 timestamps instead of their text); exits non-zero with the error on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TMPDIR_ENV = "CHAINLEND_ARROW_TMPDIR"  # where the child writes its Arrow files (default /dev/shm, else the temp dir)
READ_THREADS = 4  # queries read at once (the driver releases the GIL while it reads)
TIMEOUT_S = 3600


class ArrowReadError(RuntimeError):
    """The reader process failed; the message holds its error."""


def read_sqlite(path: str, queries: list[tuple[str, str | None]]) -> list:
    """The results of ``queries`` (``(sql, count_sql or None)``) on the
    SQLite file ``path``, as Arrow tables, read by a child process (see the module doc)."""
    import pyarrow as pa

    if not queries:
        return []
    shm = Path("/dev/shm")
    folder = os.environ.get(TMPDIR_ENV) or (str(shm) if shm.is_dir() else None)
    with tempfile.TemporaryDirectory(prefix="chainlend-arrow-", dir=folder) as out:
        request = json.dumps({"path": path, "out": out, "queries": [list(q) for q in queries]})
        proc = subprocess.run([sys.executable, "-m", "chainlend.arrow_reader"], input=request, text=True,
                              capture_output=True, timeout=TIMEOUT_S, env={**os.environ, "PYTHONPATH": _pythonpath()})
        if proc.returncode != 0:
            raise ArrowReadError(f"reading {path} failed (exit {proc.returncode}): {proc.stderr.strip()[-4000:]}")
        # read into memory (not mapped): the folder is removed when this block ends
        return [pa.ipc.open_file(pa.OSFile(os.path.join(out, f"{i}.arrow"))).read_all() for i in range(len(queries))]


def _pythonpath() -> str:
    """This process's import path, so the child imports this same module."""
    return os.pathsep.join(p for p in sys.path if p)


def _read_one(path: str, sql: str, count_sql: str | None):
    """One query through its own ADBC connection. The driver types each column by the first
    batch of rows: the whole result is one batch (of ``count_sql``'s rows, else of the result
    counted first), so a column whose first rows are NULL is typed by its first value."""
    import adbc_driver_sqlite.dbapi as adbc

    with adbc.connect(path, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("PRAGMA busy_timeout = 60000")
        cur.execute(count_sql or f"SELECT COUNT(*) FROM ({sql})")
        n = int(cur.fetchone()[0])
        cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(max(n, 1))})
        cur.execute(sql)
        return cur.fetch_arrow_table()


def main() -> int:
    import pyarrow as pa

    request = json.load(sys.stdin)
    path, out, queries = request["path"], request["out"], request["queries"]

    def run(i: int) -> None:
        sql, count_sql = queries[i]
        data = _read_one(path, sql, count_sql)
        with pa.OSFile(os.path.join(out, f"{i}.arrow"), "wb") as sink, pa.ipc.new_file(sink, data.schema) as writer:
            writer.write_table(data)

    with ThreadPoolExecutor(max_workers=max(1, min(READ_THREADS, len(queries)))) as pool:
        list(pool.map(run, range(len(queries))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
