"""The edge's uplink against a real gateway (in process over aiohttp, or a subprocess
killed with SIGKILL): exactly once, in order, through outages, restarts and eviction."""
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from edgeline import codec, sync
from edgeline.log import RingLog
from edgeline.outbox import Outbox
from edgeline.sender import GATEWAY_LOST
from edgeline_host.agent.config import CircuitBreaker, RetryPolicy
from edgeline_host.agent.uplink import TokenBucket, Uplink
from edgeline_host.gateway.api import GatewayApi
from edgeline_host.gateway.gateway import Gateway

KEY = bytes(range(32))
NODE = "edge-1"
FAST_RETRY = RetryPolicy(initial_ms=20, max_ms=100, multiplier=2.0, jitter=0.2)
NO_BREAKER = CircuitBreaker(failures=0, open_ms=1000)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProc:
    """An in-process gateway on a fixed port that can be stopped and started again."""

    def __init__(self, db, port, **options):
        self.db = db
        self.port = port
        self.options = options
        self.gw = None
        self.server = None

    @property
    def url(self):
        return "http://127.0.0.1:%d/v1/sync" % self.port

    async def start(self):
        self.gw = Gateway(self.db, {NODE: KEY}, **self.options)
        self.api = GatewayApi(self.gw)
        self.server = TestServer(self.api.app(), port=self.port)
        await self.server.start_server()
        return self

    async def stop(self):
        if self.server is not None:
            await self.server.close()
            self.server = None

    def seqs(self, topic):
        return [r["seq"] for r in self.gw.store.records(topic, origin=NODE, limit=10 ** 7)]


def open_topic(tmp_path, name, **options):
    lg = RingLog(str(tmp_path / "logs" / name), **options)
    return lg, Outbox(lg)


def append(lg, first_n, n, size=0):
    for i in range(first_n, first_n + n):
        lg.append(codec.dumps({"n": i, "pad": "x" * size}), ts=1000 + i)
    lg.flush()


async def until(cond, timeout_s=20.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0.01)


async def stopped(up, task):
    up.stop()
    await asyncio.wait_for(task, 10)


def make_uplink(url, topics, **kw):
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("breaker", NO_BREAKER)
    kw.setdefault("interval_ms", 50)
    kw.setdefault("request_timeout_ms", 5000)
    return Uplink(NODE, kw.pop("key", KEY), url, topics, **kw)


# ---------------------------------------------------------------------------- tests


def test_two_topics_arrive_exactly_once_in_order(tmp_path):
    async def main():
        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port()).start()
        a, b = open_topic(tmp_path, "a"), open_topic(tmp_path, "b")
        append(a[0], 1, 1500)
        append(b[0], 1, 700)
        up = make_uplink(gw.url, {"a": a, "b": b}, batch_records=200)
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: up.pending == 0, what="pending 0")
            assert gw.seqs("a") == list(range(1, 1501))
            assert gw.seqs("b") == list(range(1, 701))
            assert a[1].acked == a[0].last_seq == 1500 and b[1].acked == b[0].last_seq == 700
            st = up.status()
            assert st["topics"]["a"]["batches"] >= 8 and st["topics"]["a"]["pending"] == 0
            assert st["topics"]["b"]["records_sent"] == 700 and st["topics"]["b"]["last_ack_ms"]
            assert st["failures"] == 0 and st["state"] in ("connected", "idle")
            # records appended later flow on notify()
            append(b[0], 701, 5)
            up.notify()
            await until(lambda: b[1].acked == 705, what="new records")
            assert gw.seqs("b") == list(range(1, 706))
            rec = gw.gw.store.records("a", origin=NODE, limit=1)[0]
            assert codec.loads(rec["value"])["n"] == 1 and rec["ts"] == 1001
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_round_robin_is_fair(tmp_path):
    # a topic with a huge backlog does not hold back a small one: both move in every round
    async def main():
        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port()).start()
        big, small = open_topic(tmp_path, "big"), open_topic(tmp_path, "small")
        append(big[0], 1, 3000)
        append(small[0], 1, 30)
        up = make_uplink(gw.url, {"big": big, "small": small}, batch_records=10)
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: small[1].acked == 30, what="small topic")
            assert big[1].acked <= 300  # not behind all 3000 of the big one: both move every round
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_gateway_down_then_up_and_the_breaker(tmp_path):
    async def main():
        port = free_port()
        lg, ob = open_topic(tmp_path, "t")
        append(lg, 1, 300)
        up = make_uplink("http://127.0.0.1:%d/v1/sync" % port, {"t": (lg, ob)},
                         breaker=CircuitBreaker(failures=3, open_ms=400))
        task = asyncio.create_task(up.run())
        gw = GatewayProc(str(tmp_path / "gw.db"), port)
        try:
            await until(lambda: up.status()["breaker"] == "open", what="breaker open")
            st = up.status()
            assert st["state"] == "open" and st["failures"] == 3
            assert "127.0.0.1:%d" % port in st["last_error"] and "\n" not in st["last_error"]
            assert st["topics"]["t"]["pending"] == 300 and ob.acked == 0
            # open: no attempts at all
            n = up.requests
            await asyncio.sleep(0.2)
            assert up.requests == n
            await gw.start()
            await until(lambda: up.pending == 0, what="records after the gateway came up")
            assert gw.seqs("t") == list(range(1, 301))
            st = up.status()
            assert st["breaker"] == "closed" and st["failures"] == 0 and st["total_failures"] >= 3
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_half_open_failure_opens_again(tmp_path):
    async def main():
        port = free_port()
        lg, ob = open_topic(tmp_path, "t")
        append(lg, 1, 3)
        up = make_uplink("http://127.0.0.1:%d/v1/sync" % port, {"t": (lg, ob)},
                         breaker=CircuitBreaker(failures=2, open_ms=150))
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: up.total_failures >= 2 and up.breaker_state == "open")
            await until(lambda: up.total_failures >= 3, what="the half-open attempt")
            # one half-open attempt failed: open again at once, no backoff series
            assert up.breaker_state == "open" and up.total_failures == 3
        finally:
            await stopped(up, task)

    asyncio.run(main())


def test_gateway_restarted_mid_stream_no_loss_no_duplicate(tmp_path):
    async def main():
        port = free_port()
        db = str(tmp_path / "gw.db")
        gw = await GatewayProc(db, port).start()
        lg, ob = open_topic(tmp_path, "t", budget_bytes=8 << 20)
        n = 20000
        append(lg, 1, n)
        assert lg.first_seq == 1
        up = make_uplink(gw.url, {"t": (lg, ob)}, batch_records=100)
        task = asyncio.create_task(up.run())
        try:
            for _ in range(2):
                before = ob.acked
                await until(lambda: ob.acked > before + 500, what="progress")
                await gw.stop()
                await asyncio.sleep(0.1)  # the uplink fails and backs off meanwhile
                gw = await GatewayProc(db, port).start()
            await until(lambda: up.pending == 0, timeout_s=60, what="pending 0")
            assert gw.seqs("t") == list(range(1, n + 1))
            assert ob.acked == n
            assert up.total_failures >= 1
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_forgotten_session_reconnects_without_a_failure(tmp_path):
    async def main():
        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port()).start()
        lg, ob = open_topic(tmp_path, "t")
        append(lg, 1, 10)
        up = make_uplink(gw.url, {"t": (lg, ob)})
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: ob.acked == 10)
            gw.api.sync.sessions.clear()  # as after session_idle_s
            append(lg, 11, 10)
            up.notify()
            await until(lambda: ob.acked == 20, what="records after the session was forgotten")
            assert gw.seqs("t") == list(range(1, 21))
            assert up.total_failures == 0 and up.sessions == 2
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_eviction_while_offline_is_one_gap_then_the_rest(tmp_path):
    async def main():
        port = free_port()
        gw = await GatewayProc(str(tmp_path / "gw.db"), port).start()
        lg, ob = open_topic(tmp_path, "t", segment_bytes=1024, budget_bytes=4096, full_policy="drop_oldest")
        append(lg, 1, 10, size=20)
        up = make_uplink(gw.url, {"t": (lg, ob)})
        task = asyncio.create_task(up.run())
        await until(lambda: ob.acked == 10)
        await stopped(up, task)
        await gw.stop()  # offline from here
        append(lg, 11, 300, size=20)
        first = lg.first_seq
        assert first > 11 and lg.evicted > 0  # unsent records were evicted
        gw = await GatewayProc(str(tmp_path / "gw.db"), port).start()
        up = make_uplink(gw.url, {"t": (lg, ob)})
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: up.pending == 0)
            gaps = gw.gw.store.gaps(NODE, "t")
            assert [(g["first"], g["last"], g["reason"]) for g in gaps] == [(11, first - 1, "evicted")]
            assert gw.seqs("t") == list(range(1, 11)) + list(range(first, 311))
            assert up.status()["topics"]["t"]["gaps_sent"] == 1
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_wrong_key_is_reported_backs_off_stores_nothing(tmp_path):
    async def main():
        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port()).start()
        lg, ob = open_topic(tmp_path, "t")
        append(lg, 1, 5)
        up = make_uplink(gw.url, {"t": (lg, ob)}, key=b"\x01" * 32,
                         retry=RetryPolicy(initial_ms=200, max_ms=1000, multiplier=2.0, jitter=0.0))
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: up.total_failures >= 2, what="two failures")
            st = up.status()
            assert st["state"] == "backing_off"
            assert "bad_proof" in st["last_error"]
            assert st["next_attempt_in_ms"] is not None
            # backing off: 200 ms, then 400 ms -- not a tight loop
            assert up.requests <= 6
            assert gw.gw.store.status() == [] and ob.acked == 0
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_gateway_that_lost_data_gets_a_gap_and_the_stream_continues(tmp_path):
    async def main():
        port = free_port()
        gw = await GatewayProc(str(tmp_path / "gw1.db"), port).start()
        lg, ob = open_topic(tmp_path, "t")
        append(lg, 1, 10)
        up = make_uplink(gw.url, {"t": (lg, ob)})
        task = asyncio.create_task(up.run())
        await until(lambda: ob.acked == 10)
        await stopped(up, task)
        await gw.stop()
        gw = await GatewayProc(str(tmp_path / "gw2.db"), port).start()  # a gateway reset to empty
        append(lg, 11, 5)
        up = make_uplink(gw.url, {"t": (lg, ob)})
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: up.pending == 0 and gw.seqs("t") == list(range(11, 16)))
            gaps = gw.gw.store.gaps(NODE, "t")
            assert [(g["first"], g["last"], g["reason"]) for g in gaps] == [(1, 10, GATEWAY_LOST)]
            assert ob.acked == 15
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_a_wiped_log_is_a_new_incarnation_whose_records_are_stored(tmp_path):
    # the gateway holds seqs 1..20 of t; the node's log of t was wiped and restarted at 1
    # under a new incarnation: its records are stored as a new stream, not dropped as
    # duplicates of the old seqs, and the gateway reports the new incarnation
    async def main():
        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port()).start()
        old = open_topic(tmp_path / "old", "t")
        append(old[0], 1, 20)
        up = make_uplink(gw.url, {"t": old})
        task = asyncio.create_task(up.run())
        await until(lambda: old[1].acked == 20)
        await stopped(up, task)
        t, other = open_topic(tmp_path / "new", "t"), open_topic(tmp_path / "new", "other")
        assert t[0].incarnation != old[0].incarnation
        append(t[0], 1, 5)
        append(other[0], 1, 7)
        up = make_uplink(gw.url, {"t": t, "other": other})
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: t[1].acked == 5 and other[1].acked == 7)
            st = up.status()
            assert st["topics"]["t"]["error"] is None and st["failures"] == 0 and up.pending == 0
            assert gw.seqs("t") == list(range(1, 21)) + list(range(1, 6))
            store = gw.gw.store
            olds, news = old[0].incarnation.hex(), t[0].incarnation.hex()
            assert store.incarnations_of(NODE, "t") == [olds, news]
            rows = store.records("t", origin=NODE, limit=100)
            assert [(r["incarnation"], r["seq"]) for r in rows][19:21] == [(olds, 20), (news, 1)]
            rep = store.incarnation_report(NODE)
            assert [(i["incarnation"], i["current"], i["last_seq_seen"]) for i in rep[0]["incarnations"]] == \
                [(olds, False, 20), (news, True, 5)]
            assert gw.gw.new_incarnations == 1
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_a_log_restored_from_an_old_backup_sends_nothing_into_the_gateways_old_seqs(tmp_path):
    # same incarnation (the log directory came back from an old backup), fewer seqs than
    # the gateway holds: its records would be dropped as duplicates, so t stalls with a
    # one-line error (wire.md, "Sender rules") while the other topic syncs
    import shutil

    async def main():
        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port()).start()
        old = open_topic(tmp_path / "old", "t")
        append(old[0], 1, 20)
        up = make_uplink(gw.url, {"t": old})
        task = asyncio.create_task(up.run())
        await until(lambda: old[1].acked == 20)
        await stopped(up, task)
        (tmp_path / "new" / "logs" / "t").mkdir(parents=True)
        shutil.copy(str(tmp_path / "old" / "logs" / "t" / "incarnation"), str(tmp_path / "new" / "logs" / "t"))
        t, other = open_topic(tmp_path / "new", "t"), open_topic(tmp_path / "new", "other")
        assert t[0].incarnation == old[0].incarnation
        append(t[0], 1, 5)
        append(other[0], 1, 7)
        up = make_uplink(gw.url, {"t": t, "other": other})
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: gw.seqs("other") == list(range(1, 8)) and other[1].acked == 7)
            st = up.status()
            err = st["topics"]["t"]["error"]
            assert "holds up to seq 20" in err and "ends at 5" in err and "\n" not in err
            assert st["topics"]["t"]["gateway_mark"] == 20 and st["failures"] == 0
            assert t[1].acked == 0 and up.pending == 5 and not up._owes()
            assert gw.seqs("t") == list(range(1, 21))
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_welcome_marks_acknowledge_what_the_gateway_holds(tmp_path):
    # the gateway stored a batch whose ACK never arrived: the next WELCOME moves the cursor
    async def main():
        from edgeline_host.transports.http import HttpEdgeClient
        from edgeline import sync

        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port()).start()
        lg, ob = open_topic(tmp_path, "t")
        append(lg, 1, 50)
        async with aiohttp.ClientSession() as http:
            c = HttpEdgeClient(http, gw.url, NODE, KEY)
            await c.connect({"t": lg.incarnation})
            await c.exchange(sync.batch_from_records("t", lg.read(1, 30)))
        up = make_uplink(gw.url, {"t": (lg, ob)})
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: up.pending == 0)
            assert gw.seqs("t") == list(range(1, 51))
            assert up.status()["topics"]["t"]["records_sent"] == 20  # 1..30 never resent
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_batch_over_the_gateway_limits_is_halved(tmp_path):
    async def main():
        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port(), max_message_bytes=4096,
                               max_batch_records=5).start()
        lg, ob = open_topic(tmp_path, "t")
        append(lg, 1, 60, size=300)
        up = make_uplink(gw.url, {"t": (lg, ob)}, batch_records=1000)
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: up.pending == 0)
            assert gw.seqs("t") == list(range(1, 61))
            st = up.status()
            assert st["failures"] == 0 and st["topics"]["t"]["error"] is None
            assert st["topics"]["t"]["batches"] >= 12
            assert gw.gw.rejected == 0
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_record_over_the_gateway_limit_stalls_only_its_topic(tmp_path):
    async def main():
        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port(), max_message_bytes=1024).start()
        big, ok = open_topic(tmp_path, "big"), open_topic(tmp_path, "ok")
        append(big[0], 1, 1, size=2000)
        append(ok[0], 1, 20)
        up = make_uplink(gw.url, {"big": big, "ok": ok})
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: ok[1].acked == 20)
            await until(lambda: up.status()["topics"]["big"]["error"] is not None)
            assert "seq 1" in up.status()["topics"]["big"]["error"]
            assert gw.seqs("big") == [] and big[1].acked == 0
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_pause_resume_and_sync_now(tmp_path):
    async def main():
        port = free_port()
        lg, ob = open_topic(tmp_path, "t")
        append(lg, 1, 5)
        # a long backoff: only sync_now() makes it try again soon
        up = make_uplink("http://127.0.0.1:%d/v1/sync" % port, {"t": (lg, ob)},
                         retry=RetryPolicy(initial_ms=60000, max_ms=60000, multiplier=1.0, jitter=0.0))
        task = asyncio.create_task(up.run())
        gw = GatewayProc(str(tmp_path / "gw.db"), port)
        try:
            await until(lambda: up.status()["state"] == "backing_off")
            await gw.start()
            up.sync_now()
            await until(lambda: ob.acked == 5, timeout_s=5, what="sync_now")
            up.pause()
            assert up.status()["state"] == "paused"
            append(lg, 6, 5)
            up.notify()
            await asyncio.sleep(0.3)
            assert ob.acked == 5 and gw.seqs("t") == list(range(1, 6))
            up.resume()
            await until(lambda: ob.acked == 10, what="resume")
            assert gw.seqs("t") == list(range(1, 11))
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_interval_finds_records_nobody_notified_about(tmp_path):
    async def main():
        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port()).start()
        lg, ob = open_topic(tmp_path, "t")
        up = make_uplink(gw.url, {"t": (lg, ob)}, interval_ms=100)
        task = asyncio.create_task(up.run())
        try:
            await asyncio.sleep(0.05)
            append(lg, 1, 3)  # no notify()
            await until(lambda: ob.acked == 3, timeout_s=5)
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


def test_token_bucket():
    t = [0]
    b = TokenBucket(1000, lambda: t[0])
    assert b.delay_ms(1000) == 0  # one second's burst
    assert 499 <= b.delay_ms(500) <= 501  # then 1000 bytes per second
    t[0] += 1500
    assert b.delay_ms(1000) == 0
    assert TokenBucket(0, lambda: 0).delay_ms(10 ** 9) == 0


def test_bandwidth_limit_is_respected(tmp_path):
    async def main():
        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port()).start()
        lg, ob = open_topic(tmp_path, "t")
        append(lg, 1, 1200, size=100)  # about 140 KB on the wire
        limit = 40000
        # plain BATCHes: the padding would compress to next to nothing
        up = make_uplink(gw.url, {"t": (lg, ob)}, bandwidth_bytes_per_sec=limit, compression="none")
        task = asyncio.create_task(up.run())
        t0 = time.monotonic()
        try:
            await until(lambda: up.pending == 0, timeout_s=60)
            elapsed = time.monotonic() - t0
            sent = up.bytes_sent
            assert sent > 3 * limit
            # the bucket allows one second's burst, then `limit` bytes/s
            assert elapsed >= 0.7 * (sent - limit) / limit, (sent, elapsed)
            assert gw.seqs("t") == list(range(1, 1201))
            # requests are kept near one second's worth so the rate is smooth
            assert up.requests >= sent // limit
        finally:
            await stopped(up, task)
            await gw.stop()

    asyncio.run(main())


# ------------------------------------------------------------- a real gateway process


def _start_gateway_process(tmp_path, port):
    exe = os.path.join(os.path.dirname(sys.executable), "edgeline")
    if not os.path.exists(exe):
        pytest.skip("the edgeline command is not installed in this environment")
    keys = tmp_path / "keys.yaml"
    keys.write_text("%s: %s\n" % (NODE, KEY.hex()))
    return subprocess.Popen(
        [exe, "gateway", "--keys", str(keys), "--db", str(tmp_path / "gw.db"), "--listen", "127.0.0.1:%d" % port],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


async def _healthy(http, port, proc, timeout_s=20):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("gateway exited: %s" % proc.stderr.read().decode(errors="replace"))
        try:
            async with http.get("http://127.0.0.1:%d/healthz" % port) as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("gateway did not come up")


def test_gateway_sigkilled_while_sending_loses_and_duplicates_nothing(tmp_path):
    async def main():
        port = free_port()
        lg, ob = open_topic(tmp_path, "t", budget_bytes=8 << 20)
        n = 30000
        append(lg, 1, n)
        assert lg.first_seq == 1
        procs = []
        async with aiohttp.ClientSession() as http:
            proc = _start_gateway_process(tmp_path, port)
            procs.append(proc)
            await _healthy(http, port, proc)
            up = make_uplink("http://127.0.0.1:%d/v1/sync" % port, {"t": (lg, ob)}, batch_records=100)
            task = asyncio.create_task(up.run())
            try:
                for _ in range(2):
                    before = ob.acked
                    await until(lambda: ob.acked > before + 1000, timeout_s=30, what="progress")
                    assert ob.acked < n, "sent everything before the kill; make n larger"
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
                    await asyncio.sleep(0.1)
                    proc = _start_gateway_process(tmp_path, port)
                    procs.append(proc)
                    await _healthy(http, port, proc)
                await until(lambda: up.pending == 0, timeout_s=120, what="pending 0")
                seqs = []
                while True:
                    params = {"topic": "t", "origin": NODE, "from": len(seqs) + 1, "limit": 100000}
                    async with http.get("http://127.0.0.1:%d/v1/records" % port, params=params) as r:
                        rows = (await r.json())["records"]
                    if not rows:
                        break
                    seqs += [x["seq"] for x in rows]
                async with http.get("http://127.0.0.1:%d/v1/gaps" % port) as r:
                    gaps = (await r.json())["gaps"]
                assert gaps == []
                assert seqs == list(range(1, n + 1))
                assert ob.acked == n and up.total_failures >= 2
            finally:
                await stopped(up, task)
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
                        try:
                            p.wait(10)
                        except subprocess.TimeoutExpired:
                            p.kill()
                            p.wait()
                    p.stderr.close()

    asyncio.run(main())


def test_from_config(tmp_path):
    from edgeline_host.agent.config import parse_config
    from edgeline_host.agent.uplink import from_config

    cfg = parse_config({"edge": {
        "node_id": NODE, "key": KEY.hex(), "cloud_endpoint": "http://127.0.0.1:8700/v1/sync",
        "sync": {"interval_secs": 5, "batch_size": 250, "bandwidth_limit": "32KB/s",
                 "circuit_breaker": {"failures": 3, "open_secs": 10}},
        "sync_topics": [{"topic": "t", "direction": "edge_to_cloud"}],
    }}, base_dir=str(tmp_path))
    lg, ob = open_topic(tmp_path, "t")
    up = from_config(cfg, {"t": (lg, ob)})
    assert (up.url, up.interval_ms, up.batch_records) == ("http://127.0.0.1:8700/v1/sync", 5000, 250)
    assert up.bandwidth_bytes_per_sec == cfg.sync.bandwidth_bytes_per_sec > 0
    assert up.breaker.failures == 3 and up.breaker.open_ms == 10000
    assert up.status()["state"] == "idle" and up.status()["topics"]["t"]["pending"] == 0


class _WireV1GatewayConnection(sync.GatewayConnection):
    """A gateway from before incarnations: it speaks wire version 1 only."""

    def _received(self, event):
        if type(event) is sync.Hello and event.version != 1:
            raise self._fail(sync.ERR_UNSUPPORTED_VERSION, "HELLO version %d; this side speaks version 1" % event.version)
        sync.GatewayConnection._received(self, event)


def test_against_a_wire_version_1_gateway_the_agent_speaks_version_1(tmp_path, caplog):
    # upgrade order gone wrong: the agent first. It falls back to version 1 (no
    # incarnations: every topic is the legacy stream there), says so once, and syncs.
    async def main():
        gw = await GatewayProc(str(tmp_path / "gw.db"), free_port()).start()
        gw.gw.new_connection = lambda: _WireV1GatewayConnection(gw.gw.keys.get, os.urandom)
        lg, ob = open_topic(tmp_path, "t")
        append(lg, 1, 30)
        up = make_uplink(gw.url, {"t": (lg, ob)})
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: ob.acked == 30)
            assert gw.seqs("t") == list(range(1, 31))
            assert gw.gw.store.incarnations_of(NODE, "t") == ["0" * 16]
            st = up.status()
            assert st["old_gateway"] is True and st["failures"] == 0
        finally:
            await stopped(up, task)
            await gw.stop()

    with caplog.at_level("WARNING", logger="edgeline.uplink"):
        asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if "wire version 1 only" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
