"""Group commit: concurrent submitters share commits; failures reach every waiter."""
import asyncio
import sqlite3

import pytest

from edgeline import sync
from edgeline_host.gateway.committer import Committer
from edgeline_host.gateway.store import GatewayStore


def Batch(origin, topic, first, ents):
    return (origin, sync.Batch(topic, first, 0, [list(e) for e in ents]))


def run(coro):
    return asyncio.run(coro)


def test_concurrent_edges_share_commits(tmp_path):
    store = GatewayStore(str(tmp_path / "gw.db"))

    async def main():
        c = Committer(store, lambda: 1)
        await c.start()

        async def edge(e):
            marks = []
            for k in range(20):
                m = await c.submit([Batch("e%d" % e, "t", 1 + k * 5, [(1, None, b"v")] * 5)])
                marks.append(m[0])
            return marks

        res = await asyncio.gather(*(edge(e) for e in range(10)))
        await c.stop()
        return c, res

    c, res = run(main())
    for marks in res:
        assert marks == [5 * (k + 1) for k in range(20)]
    assert c.items == 200
    assert c.commits < 200  # groups formed while commits ran
    assert len(store.records("t", "e3", limit=1000)) == 100
    store.close()


def test_a_failed_commit_fails_its_waiters_and_stores_nothing(tmp_path):
    store = GatewayStore(str(tmp_path / "gw.db"))

    async def main():
        c = Committer(store, lambda: 1)
        await c.start()
        ok = await c.submit([Batch("e1", "t", 1, [(1, None, b"v")])])
        # the database fails on the group's second batch (as a full disk would)
        store._db.execute("CREATE TEMP TRIGGER fail BEFORE INSERT ON chunks WHEN NEW.stream <> 1 "
                          "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
        with pytest.raises(sqlite3.IntegrityError):
            await c.submit([Batch("e1", "t", 2, [(1, None, b"v")]), Batch("e1", "u", 1, [(1, None, b"x")])])
        store._db.execute("DROP TRIGGER fail")
        again = await c.submit([Batch("e1", "t", 2, [(1, None, b"w")])])
        await c.stop()
        return ok, again

    ok, again = run(main())
    assert ok == [1] and again == [2]
    assert [r["value"] for r in store.records("t", "e1")] == [b"v", b"w"]
    store.close()
