"""Idempotent HTTP ingest: ``Idempotency-Key`` and ``Edgeline-Producer-Id`` +
``Edgeline-Request-Seq`` (service.py, idempotency.py, docs/agent.md "Retries").

In process (aiohttp's test server): a retry is answered with the original seqs, another
body under the same key is 422, a producer's request seq older than the window is 409,
concurrent duplicates store once, the window's bounds come from edge.yaml. As a real
process, SIGKILLed: between the append and the answer, and after the commit with the
answer lost -- a retry after the restart leaves every record stored exactly once.
"""
import asyncio
import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from aiohttp.test_utils import TestClient, TestServer

from edgeline_host.agent import service
from edgeline_host.agent.config import parse_config
from edgeline_host.agent.idempotency import DedupeWindow
from edgeline_host.agent.service import Agent
from procs import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "core"), os.path.join(ROOT, "host")]))
ENV.pop("EDGELINE_AGENT", None)

EDGE = {
    "node_id": "n1",
    "sync": {"enabled": False},
    "local_topics": [{"topic": "t", "sync": "every"},
                     {"topic": "g", "sync": "group", "group_ms": 300},
                     {"topic": "tiny", "full_policy": "reject", "segment_size": "1KiB", "budget": "2KiB"}],
    "ingest": {"http": {}},
}


def make_agent(tmp_path, **ingest):
    d = copy.deepcopy(EDGE)
    d["ingest"].update(ingest)
    d["data_dir"] = str(tmp_path / "data")
    return Agent(parse_config({"edge": d}, str(tmp_path / "edge.yaml")), print_fn=lambda *_: None)


def run(tmp_path, body, **ingest):
    """Run ``await body(client, agent)`` against an agent's HTTP app; close it after."""
    agent = make_agent(tmp_path, **ingest)

    async def main():
        client = TestClient(TestServer(agent.app()))
        await client.start_server()
        try:
            return await body(client, agent)
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    finally:
        agent.store.close()
        agent._close_windows()


async def post(client, topic, value, **headers):
    r = await client.post("/v1/topics/%s/records" % topic, data=json.dumps(value).encode(),
                          headers={k.replace("_", "-"): v for k, v in headers.items()})
    return r.status, await r.json()


def test_a_retry_gets_the_original_seqs_and_another_body_is_422(tmp_path):
    async def body(c, agent):
        s, a = await post(c, "t", [1, 2], Idempotency_Key="order-17")
        assert s == 200 and (a["first_seq"], a["last_seq"], a["durable"]) == (1, 2, True) and "duplicate" not in a
        s, a = await post(c, "t", [1, 2], Idempotency_Key="order-17")
        assert s == 200 and a == {"topic": "t", "first_seq": 1, "last_seq": 2, "durable": True, "duplicate": True}
        s, a = await post(c, "t", [1, 3], Idempotency_Key="order-17")
        assert s == 422 and "another request body" in a["error"] and "1..2" in a["error"]
        s, a = await post(c, "t", [1, 2], Idempotency_Key="order-18")  # a new key stores
        assert (a["first_seq"], a["last_seq"]) == (3, 4)
        s, a = await post(c, "t", [9])  # no key: stored, as always
        assert a["first_seq"] == 5
        st = agent.topics["t"]
        assert st.log.last_seq == 5 and st.window.hits == 1 and st.window.conflicts == 1
        h = (await (await c.get("/v1/health")).json())
        assert h["duplicates"] == 1
        for bad in ({"Idempotency-Key": ""}, {"Idempotency-Key": "x" * 129}, {"Idempotency-Key": "a\u00e9"},
                    {"Edgeline-Producer-Id": "p"}, {"Edgeline-Producer-Id": "p", "Edgeline-Request-Seq": "-1"},
                    {"Edgeline-Producer-Id": "p/x", "Edgeline-Request-Seq": "1"},
                    {"Edgeline-Producer-Id": "p", "Edgeline-Request-Seq": "\u00b2"},
                    {"Idempotency-Key": "k", "Edgeline-Producer-Id": "p", "Edgeline-Request-Seq": "1"}):
            r = await c.post("/v1/topics/t/records", data=b"[1]", headers=bad)
            assert r.status == 400, bad
            assert "\n" not in (await r.json())["error"]
        assert st.log.last_seq == 5  # nothing stored by a refused request

    run(tmp_path, body)


def test_producer_id_and_request_seq_and_the_window_bound(tmp_path):
    async def body(c, agent):
        w = agent.topics["t"].window
        assert (w.max_entries, w.max_age_ms) == (3, 60000)  # ingest.dedupe.* act
        for i in range(1, 6):
            s, a = await post(c, "t", {"i": i}, Edgeline_Producer_Id="sensor-7", Edgeline_Request_Seq=str(i))
            assert s == 200 and a["first_seq"] == i
        s, a = await post(c, "t", {"i": 5}, Edgeline_Producer_Id="sensor-7", Edgeline_Request_Seq="5")
        assert s == 200 and a["duplicate"] and a["first_seq"] == 5
        # seqs 1, 2 left the window (max_entries 3): a retry cannot be told from a new request
        s, a = await post(c, "t", {"i": 2}, Edgeline_Producer_Id="sensor-7", Edgeline_Request_Seq="2")
        assert s == 409 and "older than the dedupe window" in a["error"]
        # another producer has its own seqs, from 0
        s, a = await post(c, "t", {"i": 1}, Edgeline_Producer_Id="sensor-8", Edgeline_Request_Seq="0")
        assert s == 200 and a["first_seq"] == 6 and "duplicate" not in a
        # age: max_age_secs later the window has forgotten seq 5 (the clock is moved, not waited for)
        w.clock = lambda: time.time() + 61
        s, a = await post(c, "t", {"i": 5}, Edgeline_Producer_Id="sensor-8", Edgeline_Request_Seq="5")
        assert s == 200 and a["first_seq"] == 7
        assert agent.topics["t"].log.last_seq == 7

    run(tmp_path, body, dedupe={"max_entries": 3, "max_age_secs": "1m"})


def test_concurrent_duplicates_store_once_and_wait_for_the_commit(tmp_path):
    async def body(c, agent):
        answers = await asyncio.gather(*[post(c, "g", [1, 2, 3], Idempotency_Key="same") for _ in range(5)])
        assert all(s == 200 for s, _ in answers)
        assert {(a["first_seq"], a["last_seq"], a["durable"]) for _, a in answers} == {(1, 3, True)}
        assert sum(1 for _, a in answers if a.get("duplicate")) == 4
        assert agent.topics["g"].log.last_seq == 3

    run(tmp_path, body)


def test_a_refused_request_leaves_no_entry(tmp_path):
    async def body(c, agent):
        big = ["x" * 300] * 3
        n = 0
        while True:  # fill the reject topic
            s, a = await post(c, "tiny", big[:1])
            if s != 200:
                break
            n += 1
        st = agent.topics["tiny"]
        assert n >= 1 and st.log.last_seq == n
        s, a = await post(c, "tiny", ["y"], Idempotency_Key="k1")
        assert s == 503 and st.log.last_seq == n  # refused whole: nothing stored
        assert st.window.lookup("k:k1") is None  # the retry will store it
        st.window.sync()
        reread = DedupeWindow(st.window.path)  # the file says so too: no entry comes back at a restart
        try:
            assert reread.lookup("k:k1") is None and len(reread) == len(st.window)
        finally:
            reread.close()

    run(tmp_path, body)


def test_a_request_the_topic_took_in_part_keeps_its_key_for_that_part(tmp_path):
    """A reject topic fills up part way through a keyed request: the 503 says which
    records went in, the key names them; a retry while it is still full stores nothing
    more (and none of them twice), the key still names the stored part."""
    async def body(c, agent):
        st = agent.topics["tiny"]
        big = ["x" * 300] * 12
        s, a = await post(c, "tiny", big, Idempotency_Key="part")
        assert s == 503 and "were stored" in a["error"]
        have = st.log.last_seq
        assert 1 <= have < 12
        assert st.window.lookup("k:part")[:2] == (1, have)
        s, a = await post(c, "tiny", big, Idempotency_Key="part")
        assert s == 503 and st.log.last_seq == have
        assert st.window.lookup("k:part")[:2] == (1, have)

    run(tmp_path, body)


# ------------------------------------------------------------------ a real process, SIGKILLed

def http(method, url, body=None, headers=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(pred, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.02)


class AgentProc:
    def __init__(self, tmp_path, group_ms):
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.cfg = tmp_path / "edge.yaml"
        self.cfg.write_text("edge:\n  node_id: n1\n  data_dir: ./data\n  sync: {enabled: false}\n"
                            "  local_topics:\n    - {topic: t, sync: group, group_ms: %d}\n"
                            "  ingest:\n    http: {listen: \"127.0.0.1:%d\"}\n" % (group_ms, self.port))
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeline_host.cli", "agent", "--config", str(self.cfg)],
                                     env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def up():
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                return http("GET", self.url + "/v1/health")[1]
            except OSError:
                return None

        wait_for(up, what="the agent")
        return self

    def queue(self):
        return http("GET", self.url + "/v1/queue")[1]["topics"]["t"]

    def post(self, values, key, timeout=10):
        return http("POST", self.url + "/v1/topics/t/records", json.dumps(values).encode(),
                    {"Idempotency-Key": key}, timeout=timeout)

    def read_all(self):
        return http("GET", self.url + "/v1/topics/t/records?limit=10000")[1]["records"]

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.communicate(timeout=30)


def _post_quietly(agent, values, key):
    try:
        agent.post(values, key, timeout=60)
    except OSError:
        pass  # the agent was killed: the answer is lost


def _retry(agent, values, key):
    """Post (a retry) and get its answer (a waiting producer starts a commit at once)."""
    s, a = agent.post(values, key, timeout=60)
    assert s == 200, a
    return a


@pytest.mark.parametrize("n", [3, 1500], ids=["small-request", "over-the-write-buffer"])
def test_sigkill_between_append_and_answer_then_retry_stores_once(tmp_path, n):
    """SIGKILL as soon as the request's records are appended -- before, during or just
    after the commit its producer started (group commit: the first waiter commits at
    once): whatever reached the log's file is kept by recovery, and the window's entry
    for the rest is cut to what the log holds. The retry stores what is missing and is
    answered with seqs 1..n, as a duplicate when the records had survived; every record
    is stored exactly once."""
    values = ["r%d-%s" % (i, "x" * 60) for i in range(n)]
    agent = AgentProc(tmp_path, group_ms=3600000).start()
    try:
        t = threading.Thread(target=_post_quietly, args=(agent, values, "req-1"), daemon=True)
        t.start()
        wait_for(lambda: agent.queue()["last_seq"] >= n, what="the append")
        agent.kill()
        agent.start()
        survived = agent.queue()["last_seq"]
        a = _retry(agent, values, "req-1")
        assert (a["first_seq"], a["last_seq"], a["durable"]) == (1, n, True)
        assert a.get("duplicate", False) == (survived > 0)
        stored = [r["value"] for r in agent.read_all()]
        assert stored == values
    finally:
        agent.stop()


def test_sigkill_after_the_commit_with_the_answer_lost_then_retry_is_a_duplicate(tmp_path):
    """The request is committed, its answer never reaches the producer (it gave up), the
    agent is SIGKILLed: the retry after the restart gets the original seqs."""
    agent = AgentProc(tmp_path, group_ms=20).start()
    try:
        s, a = agent.post(["a", "b"], "req-2")
        assert s == 200 and (a["first_seq"], a["last_seq"]) == (1, 2)
        # the answer lost: the producer retries after a crash
        wait_for(lambda: agent.queue()["durable_seq"] >= 2, what="the commit")
        agent.kill()
        agent.start()
        s, a = agent.post(["a", "b"], "req-2")
        assert s == 200 and a == {"topic": "t", "first_seq": 1, "last_seq": 2, "durable": True, "duplicate": True}
        assert [r["value"] for r in agent.read_all()] == ["a", "b"]
    finally:
        agent.stop()


# ---------------------------------------------------------------------- review 9: failures

def _agent(tmp_path, **topic):
    t = {"topic": "t"}
    t.update(topic)
    cfg = parse_config({"edge": {"node_id": "e", "data_dir": str(tmp_path / "data"), "sync": {"enabled": False},
                                 "local_topics": [t], "ingest": {"dedupe": {"max_entries": 50}}}},
                       base_dir=str(tmp_path))
    return Agent(cfg, print_fn=lambda *_: None)


def _idem(key, body):
    return Agent._idempotency({"Idempotency-Key": key}, body)


def _go(agent, fn):
    async def main():
        try:
            return await fn()
        finally:
            await agent._settle_commits()
    try:
        return asyncio.run(main())
    finally:
        agent.close()


def test_a_failed_window_compaction_leaves_no_phantom_entry(tmp_path):
    from edgeline import codec

    agent = _agent(tmp_path, sync="every")
    st = agent.topics["t"]
    w = st.window

    async def fn():
        i = 0
        while w._in_file < 2 * w.max_entries + 64:  # up to the compaction trigger
            await agent.ingest("t", [None], [codec.dumps(i)], _idem("k%d" % i, b"%d" % i))
            i += 1
        real = w._rewrite
        w._rewrite = lambda parts: (_ for _ in ()).throw(OSError(28, "No space left on device"))
        a = await agent.ingest("t", [None], [codec.dumps("A")], _idem("A", b"A"))  # compaction fails: no matter
        w._rewrite = real
        b = await agent.ingest("t", [None], [codec.dumps("B")], _idem("B", b"B"))
        r = await agent.ingest("t", [None], [codec.dumps("A")], _idem("A", b"A"))
        assert r["duplicate"] and r["first_seq"] == a["first_seq"] != b["first_seq"]
        assert codec.loads(st.log.read(r["first_seq"], 1)[0].value) == "A"

    _go(agent, fn)


def test_a_write_error_part_way_keeps_the_key_and_the_retry_stores_only_the_rest(tmp_path, monkeypatch):
    """1,500 records under group commit; the 2nd buffer write-out hits ENOSPC: the 500
    says nothing is known durable; the reopened log keeps (and syncs) what reached the file
    whole, the key is cut to it, the retry appends the rest: each record once."""
    from edgeline import codec, storage

    agent = _agent(tmp_path, group_ms="1h", segment_size="4MiB")
    st = agent.topics["t"]
    vals = [codec.dumps("r%d-%s" % (i, "x" * 60)) for i in range(1500)]
    idem = _idem("R", b"the body")
    real_write = storage._File.write
    big = []

    def write(self, buf, k):
        if k > 10000:
            big.append(k)
            if len(big) == 2:
                raise OSError(28, "No space left on device")
        return real_write(self, buf, k)

    async def fn():
        monkeypatch.setattr(storage._File, "write", write)
        with pytest.raises(service.RequestError) as e:
            await agent.ingest("t", [None] * 1500, vals, idem)
        assert e.value.status == 500 and "retry with the same key" in str(e.value)
        monkeypatch.setattr(storage._File, "write", real_write)
        a = await agent.ingest("t", [None] * 1500, vals, idem)
        assert (a["first_seq"], a["last_seq"], a["durable"], a["duplicate"]) == (1, 1500, True, True)
        vs = [codec.loads(r.value) for r in st.log.read(1, 10000, 1 << 30)]
        assert vs == [codec.loads(v) for v in vals]
        assert agent.recovered == 1 and st.window.cut_at_recovery == 1

    _go(agent, fn)


class _FsyncEIO:
    """service.sync_commit failing its first call with EIO."""

    def __init__(self):
        self.calls = 0

    def __call__(self, token):
        from edgeline import fastpath

        self.calls += 1
        if self.calls == 1:
            raise OSError(5, "Input/output error")
        fastpath.sync_commit(token)


def test_after_a_failed_fsync_the_retry_is_answered_only_once_synced(tmp_path, monkeypatch):
    from edgeline import codec, storage

    monkeypatch.setattr(service, "sync_commit", _FsyncEIO())
    agent = _agent(tmp_path, group_ms="1h")
    st = agent.topics["t"]
    seg_syncs = []
    real_sync = storage._File.sync

    def sync(self):
        if self._f.name.endswith(".seg") or "/t/" in self._f.name:
            seg_syncs.append(self._f.name)
        return real_sync(self)

    async def fn():
        with pytest.raises(service.RequestError) as e:
            await agent.ingest("t", [None], [codec.dumps(1)], _idem("K", b"body"))
        assert e.value.status == 500 and "retry with the same key" in str(e.value)
        monkeypatch.setattr(storage._File, "sync", sync)
        a = await agent.ingest("t", [None], [codec.dumps(1)], _idem("K", b"body"))
        assert (a["first_seq"], a["durable"], a["duplicate"]) == (1, True, True)
        assert seg_syncs, "answered durable with no fsync since the failed one"
        assert st.log.last_seq == 1

    _go(agent, fn)


def test_a_failing_fsync_at_recovery_keeps_the_log_failed(tmp_path, monkeypatch):
    """The reopened log's whole-but-unsynced records cannot be synced: recovery fails
    (503, tried again), the new log is closed and forgotten, the window untouched."""
    from edgeline import codec, fastpath

    monkeypatch.setattr(service, "sync_commit", _FsyncEIO())
    agent = _agent(tmp_path, group_ms="1h")
    st = agent.topics["t"]

    async def fn():
        with pytest.raises(service.RequestError):
            await agent.ingest("t", [None], [codec.dumps(1)], _idem("K", b"body"))
        old = st.log
        monkeypatch.setattr(service, "sync_from", lambda lg, seq: (_ for _ in ()).throw(OSError(5, "EIO")))
        with pytest.raises(service.RequestError) as e:
            await agent.ingest("t", [None], [codec.dumps(1)], _idem("K", b"body"))
        assert e.value.status == 503
        assert st.log is old and "t" not in agent.store.logs  # the new log closed and forgotten
        assert st.window.lookup("k:K")[:2] == (1, 1)
        monkeypatch.setattr(service, "sync_from", fastpath.sync_from)
        a = await agent.ingest("t", [None], [codec.dumps(1)], _idem("K", b"body"))
        assert (a["first_seq"], a["durable"], a["duplicate"]) == (1, True, True)

    _go(agent, fn)


def test_a_recovery_whose_window_rewrite_fails_leaves_nothing_half_done(tmp_path, monkeypatch):
    from edgeline import codec

    monkeypatch.setattr(service, "sync_commit", _FsyncEIO())
    agent = _agent(tmp_path, group_ms="1h")
    st = agent.topics["t"]
    w = st.window

    async def fn():
        with pytest.raises(service.RequestError):
            await agent.ingest("t", [None] * 3, [codec.dumps(i) for i in range(3)], _idem("K", b"body"))
        old = st.log
        w._rewrite = lambda parts: (_ for _ in ()).throw(OSError(28, "No space left on device"))
        w._needs_rewrite = True  # the recovery has to rewrite the file
        assert agent.recover(st) is False
        assert st.log is old and "t" not in agent.store.logs  # the new log closed and forgotten
        assert w.lookup("k:K")[:2] == (1, 3)
        del w._rewrite
        assert agent.recover(st) is True and st.log is not old and agent.store.logs["t"] is st.log
        a = await agent.ingest("t", [None] * 3, [codec.dumps(i) for i in range(3)], _idem("K", b"body"))
        assert (a["first_seq"], a["last_seq"], a["duplicate"]) == (1, 3, True)

    _go(agent, fn)


def test_a_request_cut_by_a_crash_and_overtaken_is_409_with_what_was_stored(tmp_path):
    """A crash kept the first record of a keyed 3-record request (the window's entry cut
    to seq 1 by recovery) and another producer's records followed it: the retry cannot
    append the rest right after its part, so it is refused with 409 -- and the answer says,
    for a program, which part is stored: the producer sends records 1.. under a new key."""
    import hashlib

    async def body(c, agent):
        st = agent.topics["t"]
        values = [{"n": 0}, {"n": 1}, {"n": 2}]
        raw = json.dumps(values).encode()
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        s, a = await post(c, "t", values[:1])  # the part the crash kept ...
        assert s == 200 and a["last_seq"] == 1
        st.window.add(b"k:cut", 1, 1, digest)  # ... and the entry recovery cut to it
        s, a = await post(c, "t", ["other"])  # another producer's record after it
        assert s == 200 and a["last_seq"] == 2
        r = await c.post("/v1/topics/t/records", data=raw, headers={"Idempotency-Key": "cut"})
        a = await r.json()
        assert r.status == 409 and "cut by a crash" in a["error"]
        assert (a["stored_records"], a["stored_first_seq"], a["stored_last_seq"]) == (1, 1, 1)
        s, a = await post(c, "t", values[1:], Idempotency_Key="cut-rest")
        assert s == 200 and (a["first_seq"], a["last_seq"]) == (3, 4)

    run(tmp_path, body)


def test_the_dedupe_windows_count_in_max_storage_and_the_logs_give_way(tmp_path):
    # Issue 9: the windows' files were outside resources.max_storage. Now the logs share
    # max_storage less what the windows hold, and storage used counts both.
    d = copy.deepcopy(EDGE)
    d.update(data_dir=str(tmp_path / "data"), resources={"max_storage": "64KiB"},
             local_topics=[{"topic": "t", "sync": "every", "segment_size": "1KiB"}])
    printed = []
    agent = Agent(parse_config({"edge": d}, str(tmp_path / "edge.yaml")), print_fn=printed.append)
    path = service.window_path(str(tmp_path / "data"), "t")
    # 10,000 entries a window is more than this max_storage can spare: said at start
    assert printed == [agent.dedupe_warning] and "ingest.dedupe.max_entries 10000" in printed[0]

    async def main():
        client = TestClient(TestServer(agent.app()))
        await client.start_server()
        try:
            for i in range(200):  # ~36 KB of window entries (128-character keys), ~66 KB of records
                s, a = await post(client, "t", ["x" * 100] * 3, Idempotency_Key="%0128d" % i)
                assert s == 200, a
            h = await (await client.get("/v1/health")).json()
            q = await (await client.get("/v1/queue")).json()
            return h, q
        finally:
            await client.close()

    try:
        h, q = asyncio.run(main())
        window_bytes = os.path.getsize(path)
        logs_bytes = agent.store.size_bytes
        assert window_bytes > 30000  # the window holds about half of max_storage here
        assert h["storage"] == q["storage"] == {"used_bytes": logs_bytes + window_bytes, "budget_bytes": 64 * 1024,
                                                "logs_bytes": logs_bytes, "dedupe_bytes": window_bytes}
        # logs and window within max_storage, but for the room granted before the window grew
        assert logs_bytes + window_bytes <= 64 * 1024 + 1024
        assert agent.topics["t"].log.stats()["evicted"] > 0  # the log gave way, as full_policy says
        assert "storage_full" in [r["code"] for r in h["reasons"]]  # over 90 % of max_storage, counting both
    finally:
        agent.store.close()
        agent._close_windows()


def test_dedupe_windows_that_fit_max_storage_are_not_warned_about(tmp_path):
    for storage, entries, warned in (("64KiB", 20, False), ("64KiB", 50, True), (None, 10000, False)):
        d = copy.deepcopy(EDGE)
        d.update(data_dir=str(tmp_path / ("data-%d" % entries)), local_topics=[{"topic": "t", "segment_size": "1KiB"}])
        d["ingest"]["dedupe"] = {"max_entries": entries}
        if storage:
            d["resources"] = {"max_storage": storage}
        printed = []
        agent = Agent(parse_config({"edge": d}, str(tmp_path / "edge.yaml")), print_fn=printed.append)
        try:
            assert bool(agent.dedupe_warning) == warned and printed == ([agent.dedupe_warning] if warned else [])
        finally:
            agent.store.close()
            agent._close_windows()
            agent.dirlock.release()
