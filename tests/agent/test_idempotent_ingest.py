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
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from aiohttp.test_utils import TestClient, TestServer

from edgeline_host.agent.config import parse_config
from edgeline_host.agent.service import Agent

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
        s, a = await post(c, "tiny", ["y"], Idempotency_Key="k1")
        assert s == 503
        assert agent.topics["tiny"].window.lookup("k:k1") is None  # the retry will store it
        assert n >= 1

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

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    """Post (a retry) and get its answer: the agent's commit waits an hour, so a clean
    stop (SIGTERM: shutdown commits and answers the waiting producer) ends the wait; the
    agent is started again."""
    out = {}
    t = threading.Thread(target=lambda: out.update(a=agent.post(values, key, timeout=60)), daemon=True)
    t.start()
    wait_for(lambda: "a" in out or agent.queue()["last_seq"] >= len(values), what="the retry's append")
    agent.stop()
    t.join(30)
    s, a = out["a"]
    assert s == 200, a
    agent.start()
    return a


@pytest.mark.parametrize("n", [3, 1500], ids=["in-the-buffer", "written-not-synced"])
def test_sigkill_between_append_and_answer_then_retry_stores_once(tmp_path, n):
    """The commit waits an hour: the records are appended, the producer waits; SIGKILL.
    3 records were still in the log's write buffer: lost with the process; the window's
    entry names seqs the log does not hold and is dropped, the retry stores them. 1500
    records (over the 64 KB buffer) reached the file unsynced, and SIGKILL keeps what
    reached the file: so does the entry, and the retry is answered as a duplicate.
    Either way every record is stored exactly once."""
    values = ["r%d-%s" % (i, "x" * 60) for i in range(n)]
    agent = AgentProc(tmp_path, group_ms=3600000).start()
    try:
        t = threading.Thread(target=_post_quietly, args=(agent, values, "req-1"), daemon=True)
        t.start()
        wait_for(lambda: agent.queue()["last_seq"] >= n, what="the append")
        agent.kill()
        agent.start()
        a = _retry(agent, values, "req-1")
        assert (a["first_seq"], a["last_seq"], a["durable"]) == (1, n, True)
        assert a.get("duplicate", False) == (n > 3)
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
