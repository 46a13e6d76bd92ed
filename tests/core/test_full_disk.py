"""A full disk (ENOSPC) at every point of a run: one clear error, durable data kept,
the cursor never moves on a failed write, and the log works again once there is room."""
from edgeline.errors import StorageError
from edgeline.log import RingLog
from edgeline.outbox import Outbox
from emulator.faultfs import FaultStorage
from support import raises, value_of

_DIR = "/data/t"
_OPTS = {"segment_bytes": 256, "budget_bytes": 4096, "sync": "group", "group_records": 4, "buffer_bytes": 128}


def _run(fs):
    """Append, commit and acknowledge until the disk refuses; return what was durable."""
    log = RingLog(_DIR, storage=fs, **_OPTS)
    ob = Outbox(log, "uplink")
    durable = 0
    acked = 0
    err = None
    try:
        for i in range(60):
            log.append(value_of(log.next_seq), ts=i)
            durable = log.durable_seq
            if i % 9 == 8:
                batch = ob.peek(5)
                durable = log.durable_seq
                if batch:
                    ob.ack(batch[-1].seq)
                    acked = ob.acked
        log.flush()
        durable = log.durable_seq
    except StorageError as e:
        err = e
        assert "\n" not in str(e)
        # a failed cursor write never moves the cursor; a failed log write leaves the log
        # refusing further writes (one line) until it is reopened
        assert ob.acked == acked
        if log.failure is not None:
            e2 = raises(StorageError, log.append, b"more", ts=1)
            assert "reopen" in str(e2) and "\n" not in str(e2)
    return durable, acked, err


def test_full_disk_at_every_size_keeps_durable_data():
    refused = 0
    for limit in range(0, 2600, 37):
        fs = FaultStorage(full_at_bytes=limit)
        try:
            durable, acked, err = _run(fs)
        except StorageError:
            refused += 1  # the disk cannot even hold the log's directory or first header
            continue
        if err is not None:
            refused += 1
            assert "No space" in str(err) or "28" in str(err), str(err)
        # reopen on the same full disk: everything durable is there, intact
        log = RingLog(_DIR, storage=fs, **_OPTS)
        ob = Outbox(log, "uplink")
        assert log.last_seq >= durable and ob.acked >= acked
        seq = log.first_seq
        while seq <= log.last_seq:
            recs = log.read(seq, 10)
            assert recs and recs[0].seq == seq
            for r in recs:
                assert r.value == value_of(r.seq)
            seq = recs[-1].seq + 1
        log.close()
        # room again: appending continues after the last seq
        fs.full_at_bytes = None
        log = RingLog(_DIR, storage=fs, **_OPTS)
        last = log.last_seq
        assert log.append(b"after", ts=1) == last + 1
        log.close()
    assert refused > 10  # the sweep did hit the full disk at many points
