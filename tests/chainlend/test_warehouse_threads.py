"""One Warehouse used from several threads (approval's and allocation's reads side by side)."""

from __future__ import annotations

import threading

import sqlalchemy as sa

from chainlend.systems import Warehouse
from sources.contract import table


def test_first_uses_of_a_published_table_from_several_threads_define_it_once(tmp_path):
    # without the lock, 8 threads at a barrier made sa.Table raise "already defined" in several of 300 rounds
    contract = table("dealer", "loan_applications")
    errors: list[str] = []
    for _ in range(300):
        w = Warehouse(sa.create_engine(f"sqlite:///{tmp_path / 'wh.db'}"))
        barrier = threading.Barrier(8)
        got: list[sa.Table] = []

        def first_use(w=w, barrier=barrier, got=got):
            barrier.wait()
            try:
                got.append(w.published(contract))
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(exc))

        threads = [threading.Thread(target=first_use) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({id(t) for t in got}) <= 1
    assert errors == []
