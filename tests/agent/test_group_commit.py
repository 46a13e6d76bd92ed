"""Leader/follower group commit in the agent (service.py): a waiting producer starts a
commit at once, the fsync runs in a worker thread, producers arriving during it are
answered by the next commit -- which starts as soon as the running one ends, not at a
timer -- and group_records / group_ms bound what nobody waits for.

The fsync is gated: ``service.sync_commit`` is replaced by one that blocks until the test
opens its gate, so the test decides when each commit's fsync returns. ``group_ms`` is an
hour in the waiting tests: an answer that came from a timer would never come."""
import asyncio
import os
import threading
import time

import pytest

from edgeline import codec, fastpath, storage
from edgeline.errors import EdgelineError
from edgeline_host.agent import service
from edgeline_host.agent.config import parse_config
from edgeline_host.agent.service import Agent

WAIT_S = 30


def config(tmp_path, **topic):
    t = {"topic": "t"}
    t.update(topic)
    return parse_config({"edge": {
        "node_id": "edge-1",
        "data_dir": str(tmp_path / "data"),
        "sync": {"enabled": False},
        "local_topics": [t],
    }}, base_dir=str(tmp_path))


async def until(cond, what):
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        await asyncio.sleep(0.005)


class GatedSync:
    """Each fsync waits for its own gate; ``calls`` are the tokens in order."""

    def __init__(self):
        self.calls = []
        self.gates = []
        self.lock = threading.Lock()

    def __call__(self, token):
        with self.lock:
            gate = threading.Event()
            self.calls.append(token)
            self.gates.append(gate)
        assert gate.wait(WAIT_S), "the test never opened this fsync's gate"
        fastpath.sync_commit(token)

    def open(self, i):
        self.gates[i].set()

    def open_all(self):
        with self.lock:
            for g in self.gates:
                g.set()


def run(agent, fn):
    async def main():
        try:
            return await fn()
        finally:
            gated = service.sync_commit
            if isinstance(gated, GatedSync):
                gated.open_all()
            await agent._settle_commits()
            agent.store.close()
    return asyncio.run(main())


def value(i):
    return codec.dumps({"i": i})


def test_writers_arriving_during_an_fsync_are_answered_by_the_next_commit(tmp_path, monkeypatch):
    gated = GatedSync()
    monkeypatch.setattr(service, "sync_commit", gated)
    agent = Agent(config(tmp_path, group_ms="1h", group_records=1000000), print_fn=lambda *_: None)
    st = agent.topics["t"]

    async def fn():
        first = asyncio.ensure_future(agent.ingest("t", [None], [value(0)]))
        await until(lambda: len(gated.calls) == 1, "the first waiter to start a commit")
        assert gated.calls[0][1] == 1  # it covers seq 1
        # Ten more producers while that fsync runs: they wait, no second commit yet.
        rest = [asyncio.ensure_future(agent.ingest("t", [None, None], [value(i), value(i)])) for i in range(1, 11)]
        await until(lambda: st.log.last_seq == 21, "the followers' appends")
        await asyncio.sleep(0.05)
        assert len(gated.calls) == 1 and not first.done() and not any(f.done() for f in rest)
        assert st.log.durable_seq == 0
        gated.open(0)
        answer = await asyncio.wait_for(first, WAIT_S)
        assert answer == {"topic": "t", "first_seq": 1, "last_seq": 1, "durable": True}
        # The next commit started as the first ended, covering every follower.
        await until(lambda: len(gated.calls) == 2, "the next commit")
        assert gated.calls[1][1] == 21
        await asyncio.sleep(0.05)
        assert not any(f.done() for f in rest) and st.log.durable_seq == 1
        gated.open(1)
        answers = await asyncio.wait_for(asyncio.gather(*rest), WAIT_S)
        assert [(a["first_seq"], a["last_seq"], a["durable"]) for a in answers] == [
            (2 * i, 2 * i + 1, True) for i in range(1, 11)]
        assert st.log.durable_seq == 21 and len(gated.calls) == 2  # 11 producers, 2 fsyncs

    run(agent, fn)


def test_appends_go_on_during_an_fsync(tmp_path, monkeypatch):
    """The loop is not blocked by a commit: a producer that does not wait (sync none
    topic) and readers are served while a group commit's fsync hangs."""
    gated = GatedSync()
    monkeypatch.setattr(service, "sync_commit", gated)
    agent = Agent(config(tmp_path, group_ms="1h", group_records=1000000), print_fn=lambda *_: None)
    st = agent.topics["t"]

    async def fn():
        waiting = asyncio.ensure_future(agent.ingest("t", [None], [value(0)]))
        await until(lambda: len(gated.calls) == 1, "the commit")
        for i in range(100):
            agent.append(st, [None], [value(i)])  # returns at once
        assert st.log.last_seq == 101 and st.log.durable_seq == 0 and not waiting.done()
        gated.open(0)
        assert (await asyncio.wait_for(waiting, WAIT_S))["durable"] is True
        assert st.log.durable_seq == 1  # only what the commit began with
        # Nobody waits for 2..101: group_ms (an hour) bounds them, no commit runs now.
        await asyncio.sleep(0.05)
        assert len(gated.calls) == 1 and st.timer is not None

    run(agent, fn)


def test_group_ms_bounds_records_nobody_waits_for(tmp_path):
    agent = Agent(config(tmp_path, group_ms=20, group_records=1000000), print_fn=lambda *_: None)
    st = agent.topics["t"]

    async def fn():
        agent.append(st, [None, None], [value(1), value(2)])
        assert st.log.durable_seq == 0
        await until(lambda: st.log.durable_seq == 2, "the group_ms commit")

    run(agent, fn)


def test_group_records_bounds_records_nobody_waits_for(tmp_path):
    agent = Agent(config(tmp_path, group_ms="1h", group_records=10), print_fn=lambda *_: None)
    st = agent.topics["t"]

    async def fn():
        for i in range(9):
            agent.append(st, [None], [value(i)])
        assert st.log.durable_seq == 0
        agent.append(st, [None], [value(9)])
        assert st.log.durable_seq == 10

    run(agent, fn)


def test_a_failed_fsync_fails_its_waiters_and_the_next_are_refused(tmp_path, monkeypatch):
    def failing(token):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(service, "sync_commit", failing)
    agent = Agent(config(tmp_path, group_ms="1h"), print_fn=lambda *_: None)
    st = agent.topics["t"]

    async def fn():
        answers = await asyncio.gather(*[agent.ingest("t", [None], [value(i)]) for i in range(3)],
                                       return_exceptions=True)
        assert all(isinstance(a, service.RequestError) and a.status == 500 for a in answers), answers
        failed = st.log
        assert failed.durable_seq == 0 and failed.failure is not None
        # The failed log refuses every write and commit ...
        with pytest.raises(EdgelineError):
            failed.append(value(9), ts=1)
        with pytest.raises(EdgelineError):
            fastpath.begin_commit(failed, 0)
        assert failed.last_seq == 3
        # ... and the next request is never answered durable by it: the agent reopens the
        # log -- it finds record 1 whole in the file (2 and 3, appended during the fsync,
        # were still in the buffer) and syncs it -- and the next commit fails again.
        with pytest.raises(service.RequestError) as e:
            await agent.ingest("t", [None], [value(3)])
        assert e.value.status == 500
        assert st.log is not failed and agent.recovered == 1
        assert st.log.durable_seq == 1 and st.log.last_seq == 2 and st.log.failure is not None

    run(agent, fn)


def test_every_stays_durable_before_the_answer(tmp_path, monkeypatch):
    gated = GatedSync()
    monkeypatch.setattr(service, "sync_commit", gated)
    agent = Agent(config(tmp_path, sync="every"), print_fn=lambda *_: None)
    st = agent.topics["t"]

    async def fn():
        a = await agent.ingest("t", [None], [value(1)])
        assert a["durable"] is True and st.log.durable_seq == 1 and not gated.calls

    run(agent, fn)


def test_shutdown_waits_for_the_fsync_in_flight_and_answers_everyone(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gated = GatedSync()
    monkeypatch.setattr(service, "sync_commit", gated)
    cfg = parse_config({"edge": {
        "node_id": "edge-1", "data_dir": str(tmp_path / "data"), "sync": {"enabled": False},
        "local_topics": [{"topic": "t", "group_ms": "1h"}],
        "ingest": {"http": {"listen": "127.0.0.1:%d" % port}},
    }}, base_dir=str(tmp_path))
    agent = Agent(cfg, print_fn=lambda *_: None)
    st = agent.topics["t"]

    async def main():
        task = asyncio.ensure_future(agent.run(install_signals=False))
        await until(lambda: agent._stop is not None, "the agent to start")
        first = asyncio.ensure_future(agent.ingest("t", [None], [value(1)]))
        await until(lambda: len(gated.calls) == 1, "the commit")
        second = asyncio.ensure_future(agent.ingest("t", [None], [value(2)]))
        await until(lambda: st.log.last_seq == 2, "the follower's append")
        agent.stop()
        await asyncio.sleep(0.05)
        assert not task.done()  # it waits for the fsync in flight
        gated.open(0)
        await asyncio.wait_for(task, WAIT_S)
        assert (await first)["durable"] is True and (await second)["durable"] is True
        assert len(gated.calls) == 1  # the follower was covered by the final flush, not a new commit
        assert agent.unflushed == {}

    seg = []
    real_sync = storage._File.sync

    def sync(self):  # the size of each segment file at each fsync of it
        if os.path.basename(os.path.dirname(self._f.name)) == "t":
            seg.append((self._f.name, os.fstat(self._f.fileno()).st_size))
        return real_sync(self)

    monkeypatch.setattr(storage._File, "sync", sync)
    asyncio.run(main())
    # The second record was answered durable at shutdown: an fsync (the final flush's)
    # saw the segment file hold its bytes -- the file's whole size now.
    from edgeline.log import RingLog

    reopened = RingLog(str(tmp_path / "data" / "t"))
    assert reopened.last_seq == 2 and len(reopened.read(1, 10)) == 2
    reopened.close()
    assert seg and max(n for name, n in seg) == os.path.getsize(seg[-1][0]), seg


def test_many_producers_share_two_commits(tmp_path, monkeypatch):
    """200 producers at once on real files: the first leads a commit, the other 199 --
    all appended while its fsync runs (asyncio runs them before the worker's answer) --
    share the next. Every answer is durable; seqs are unique and consecutive."""
    calls = []

    def counting(token):
        calls.append(token[1])
        fastpath.sync_commit(token)

    monkeypatch.setattr(service, "sync_commit", counting)
    agent = Agent(config(tmp_path, group_ms="1h", group_records=1000000), print_fn=lambda *_: None)

    async def fn():
        answers = await asyncio.gather(*[agent.ingest("t", [None], [value(i)]) for i in range(200)])
        assert all(a["durable"] for a in answers)
        assert sorted(a["first_seq"] for a in answers) == list(range(1, 201))
        assert calls == [1, 200]

    run(agent, fn)
