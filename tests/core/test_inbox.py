"""Records received in DATA, written into a log (edgeline.inbox.append_data, by the rule
edgeline.sync.data_window): cloud records keep their seqs in the log, exactly once, in
order -- also when the power is cut at every write point of a pull loop. Plain
functions; CPython and MicroPython (docs/spec/wire.md, "Cloud-to-edge topics").
"""
from emulator.faultfs import FaultStorage, PowerCut
from edgeline.errors import LogFull, RemoteProtocolError
from edgeline.log import Record, RingLog
from edgeline.inbox import PLACEHOLDER, append_data
from edgeline.sync import Data, batch_from_records, data_window
from support import raises, rmtree, tempdir


def _published(seq):
    # What the gateway published as seq: a value, a key on some, a ts from its clock.
    key = ("k%d" % seq).encode() if seq % 3 == 0 else None
    return Record(seq, (5000 + seq) << 16, key, ("cloud-%d." % seq).encode() * (1 + seq % 4))


def _data(first, n):
    return batch_from_records("cmd", [_published(s) for s in range(first, first + n)], Data)


def _check_log(lg, last):
    # The log holds exactly the published records 1..last, each with its identity.
    seq = 1
    while seq <= last:
        recs = lg.read(seq, 16, 1 << 16)
        assert recs, "nothing at %d" % seq
        for r in recs:
            assert r == _published(seq), (r, seq)
            seq += 1
    assert lg.last_seq == last and lg.read(last + 1, 1) == []


def test_data_window_rule():
    # (held, DATA first_seq, entries) -> entries to skip, or None: a hole (refused)
    table = [
        (0, 1, 5, 0),  # the first DATA
        (5, 6, 3, 0),  # continues what is held
        (5, 3, 5, 3),  # 3..5 held: skip them
        (5, 1, 5, 5),  # all held: skip all
        (5, 1, 2, 5),  # all held, fewer entries than skipped
        (5, 6, 0, 0),  # nothing new: first_seq is after_seq + 1
        (5, 9, 0, 0),  # nothing new from a gateway behind: no hole without entries
        (5, 7, 1, None),  # 6 would be missing
        (0, 2, 1, None),
    ]
    for held, first, n, want in table:
        data = Data("cmd", first, 0, [[0, None, b"v"]] * n)
        if want is None:
            e = raises(RemoteProtocolError, data_window, held, data)
            assert "past %d" % (held + 1) in str(e), (held, first, n)
        else:
            assert data_window(held, data) == want, (held, first, n)


def test_inbox_keeps_the_seqs_skips_duplicates_refuses_holes():
    d = tempdir("down")
    try:
        lg = RingLog(d + "/cmd", segment_bytes=512, budget_bytes=8192, sync="none")
        assert append_data(lg, _data(1, 5)) == 5
        assert lg.durable_seq == 5  # committed before it returns: the next PULL may ack
        assert append_data(lg, _data(3, 5)) == 2  # 3..5 are held: only 6, 7
        assert append_data(lg, _data(1, 7)) == 0
        assert append_data(lg, Data("cmd", 8, 0, [])) == 0
        e = raises(RemoteProtocolError, append_data, lg, _data(9, 2))  # 8 would be missing
        assert "past 8" in str(e)
        assert append_data(lg, _data(8, 30)) == 30  # across segments
        _check_log(lg, 37)
        lg.close()
        lg = RingLog(d + "/cmd", segment_bytes=512, budget_bytes=8192, sync="none")
        _check_log(lg, 37)
        lg.close()
    finally:
        rmtree(d)


def test_inbox_full_log_keeps_what_fits_and_the_rest_waits():
    d = tempdir("down")
    try:
        lg = RingLog(d + "/cmd", segment_bytes=256, budget_bytes=512, sync="none", full_policy="reject")
        raises(LogFull, append_data, lg, _data(1, 40))
        held = lg.last_seq
        assert 0 < held < 40 and lg.durable_seq == held  # what went in is committed
        _check_log(lg, held)
        raises(LogFull, append_data, lg, _data(held + 1, 5))  # still full: nothing more
        assert lg.last_seq == held
        lg.close()
    finally:
        rmtree(d)


_TOTAL = 11  # records the gateway published
_PER_DATA = 4  # max_records of each PULL


def _pull_loop(fs, acked):
    # The agent's loop against a gateway holding _TOTAL records: PULL after last_seq,
    # store the DATA; the PULL's after_seq is what the gateway records as delivered.
    lg = RingLog("/d/cmd", storage=fs, segment_bytes=160, budget_bytes=4096, sync="none")
    while True:
        after = lg.last_seq
        acked[0] = max(acked[0], after)  # this PULL reached the gateway
        n = min(_PER_DATA, _TOTAL - after)
        if n <= 0:
            break
        append_data(lg, _data(after + 1, n))
    lg.close()


def test_inbox_power_cut_at_every_write_point():
    probe = FaultStorage()
    _pull_loop(probe, [0])
    total = probe.write_points
    assert total > 10
    runs = 0
    for n in range(1, total + 1):
        fs = FaultStorage(cut_at=n)
        acked = [0]
        try:
            _pull_loop(fs, acked)
            raise AssertionError("write point %d was not cut" % n)
        except PowerCut:
            pass
        for mode in ("torn", "lost"):
            after = fs.crash(mode)
            lg = RingLog("/d/cmd", storage=after, segment_bytes=160, budget_bytes=4096, sync="none")
            # Nothing the gateway was told is held can be missing; nothing is doubled.
            assert lg.last_seq >= acked[0], (n, mode, lg.last_seq, acked[0])
            _check_log(lg, lg.last_seq)
            lg.close()
            again = [0]
            _pull_loop(after, again)  # the restarted agent pulls after what it holds
            lg = RingLog("/d/cmd", storage=after, segment_bytes=160, budget_bytes=4096, sync="none")
            _check_log(lg, _TOTAL)
            lg.close()
            runs += 1
    assert runs == 2 * total


def test_a_compacted_data_keeps_the_seqs_with_placeholders():
    # wire.md, "Compacted DATA": entry [ts_delta, key, value, skip] has skip seqs left
    # out before it; the log gets a placeholder (key None, empty value) for each, so its
    # seqs stay consecutive and a later PULL asks after the last seq covered.
    d = tempdir("down")
    try:
        lg = RingLog(d + "/cmd", segment_bytes=512, budget_bytes=8192, sync="none")
        data = Data("cmd", 1, 100, [[0, b"k", b"v3", 2], [1, b"k", b"v4"], [5, b"j", b"v9", 4]])
        assert append_data(lg, data) == 9
        recs = lg.read(1, 16, 1 << 16)
        assert [r.seq for r in recs] == list(range(1, 10))
        assert [(r.key, r.value) for r in recs if r.value != PLACEHOLDER] == [(b"k", b"v3"), (b"k", b"v4"),
                                                                               (b"j", b"v9")]
        assert [r.ts for r in recs] == [100, 100, 100, 101, 105, 105, 105, 105, 105]
        assert all(r.key is None for r in recs if r.value == PLACEHOLDER)
        # held up to 9: a DATA from 6 (a retry) appends only what is new, placeholders too
        data = Data("cmd", 6, 100, [[0, b"j", b"v9", 3], [1, b"j", b"v12", 2]])
        assert append_data(lg, data) == 3
        assert lg.last_seq == 12 and lg.read(12, 1)[0].value == b"v12"
        e = raises(RemoteProtocolError, append_data, lg, Data("cmd", 14, 0, [[0, None, b"x", 1]]))
        assert "past 13" in str(e)
        e = raises(RemoteProtocolError, append_data, lg, Data("cmd", 13, 0, [[0, None, b"x", -1]]))
        assert "skip" in str(e)
        assert lg.last_seq == 12
        lg.close()
    finally:
        rmtree(d)


_LIVE = (3, 4, 9, 15, 20)  # a compacted stream of 20 seqs: the others were left out


def _compacted_data(after, n):
    # What the gateway sends to an edge that takes compacted DATA: the live seqs after
    # `after`, at most n, each with the count of seqs left out before it.
    entries = []
    prev = after
    base = None
    for seq in _LIVE:
        if seq <= after or len(entries) >= n:
            continue
        r = _published(seq)
        if base is None:
            base = r.ts
        e = [r.ts - base, r.key, r.value]
        if seq - prev - 1:
            e.append(seq - prev - 1)
        entries.append(e)
        prev = seq
    return Data("cmd", after + 1, base or 0, entries)


def _check_compacted(lg, last):
    seq = 1
    while seq <= last:
        recs = lg.read(seq, 16, 1 << 16)
        assert recs, "nothing at %d" % seq
        for r in recs:
            assert r.seq == seq
            if seq in _LIVE:
                assert (r.key, r.value) == (_published(seq).key, _published(seq).value), (r, seq)
            else:
                assert r.key is None and r.value == PLACEHOLDER, (r, seq)
            seq += 1
    assert lg.last_seq == last


def _pull_compacted(fs, acked):
    lg = RingLog("/d/cmd", storage=fs, segment_bytes=160, budget_bytes=4096, sync="none")
    while True:
        after = lg.last_seq
        acked[0] = max(acked[0], after)
        if after >= _LIVE[-1]:
            break
        append_data(lg, _compacted_data(after, 2))
    lg.close()


def test_a_compacted_pull_power_cut_at_every_write_point():
    # The placeholders and records of a compacted DATA are committed together before the
    # next PULL: a cut anywhere loses nothing acknowledged, doubles nothing, and the
    # restarted edge pulls after what it holds (placeholder or record) to the same log.
    probe = FaultStorage()
    _pull_compacted(probe, [0])
    total = probe.write_points
    assert total > 5
    for n in range(1, total + 1):
        fs = FaultStorage(cut_at=n)
        acked = [0]
        try:
            _pull_compacted(fs, acked)
            raise AssertionError("write point %d was not cut" % n)
        except PowerCut:
            pass
        for mode in ("torn", "lost"):
            after = fs.crash(mode)
            lg = RingLog("/d/cmd", storage=after, segment_bytes=160, budget_bytes=4096, sync="none")
            assert lg.last_seq >= acked[0], (n, mode, lg.last_seq, acked[0])
            _check_compacted(lg, lg.last_seq)
            lg.close()
            _pull_compacted(after, [0])
            lg = RingLog("/d/cmd", storage=after, segment_bytes=160, budget_bytes=4096, sync="none")
            _check_compacted(lg, _LIVE[-1])
            lg.close()
