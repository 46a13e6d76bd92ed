"""Crash tests of the split group commit (fastpath.begin_commit / sync_commit /
end_commit: the agent runs the middle one in a worker thread while appends go on).
CPython only -- fastpath is never loaded on a board; under MicroPython the tests return.

The scenarios interleave appends, buffer write-outs, segment seals and a synchronous
flush with a commit in flight, and are cut at every write point, crashed each way and
checked with test_crash's invariants (G1-G3): ``durable_seq`` as it was seen after every
call that returned -- end_commit's in particular -- is really on storage, so a power cut
between begin and end loses nothing acknowledged.
"""
import sys

from edgeline.log import RingLog

_CPYTHON = sys.implementation.name == "cpython"
if _CPYTHON:  # a board's heap is spared test_crash's scenarios
    from emulator.faultfs import FaultStorage, PowerCut
    from test_crash import CRASHES, _DIR, _append, _check, _note, _Obs


def _play(fs, sc, o):
    from edgeline.fastpath import begin_commit, end_commit, sync_commit

    log = RingLog(_DIR, storage=fs, warn=o.warnings.append, **sc[1])
    token = error = None
    for step in sc[2]:
        op = step[0]
        if op == "append":
            for _ in range(step[1]):
                _append(o, log)
        elif op == "begin":
            token = begin_commit(log, 0)
            error = None
        elif op == "sync":  # the worker's part: it may find its handle sealed and closed
            try:
                sync_commit(token)
            except PowerCut:
                raise
            except Exception as e:
                error = e
        elif op == "end":
            if token is not None:
                end_commit(log, token, error)
            token = None
        elif op == "flush":  # e.g. the uplink's peek, with a commit in flight
            log.flush()
        elif op == "close":
            log.close()
        _note(o, log)


def _run(fs, sc, o):
    try:
        _play(fs, sc, o)
    except PowerCut:
        return True
    return False


def _explore(sc):
    fs = FaultStorage()
    o = _Obs()
    assert not _run(fs, sc, o), sc[0]
    total = fs.write_points
    assert total > 3 and o.durable == o.max_seq, (sc[0], total, o.durable, o.max_seq)
    opts = (sc[0], sc[1], False)
    _check(fs.crash("lost"), opts, o, sc[0] + " uncut")
    for n in range(1, total + 1):
        fs = FaultStorage(cut_at=n)
        o = _Obs()
        assert _run(fs, sc, o), "%s: point %d was not cut" % (sc[0], n)
        for mode, torn in CRASHES:
            _check(fs.crash(mode, torn_bytes=torn), opts, _Obs(o), "%s, %s, %s/%s" % (sc[0], fs.cut, mode, torn))
    return total


# Group commit with bounds out of reach (the agent's waiters drive the commits); small
# segments and a 64-byte buffer: appends during a commit write out, seal and rotate.
_OPTS = {"segment_bytes": 160, "budget_bytes": 4096, "sync": "group", "group_records": 1000,
         "group_ms": 10 ** 9, "buffer_bytes": 64}

# Appends between begin and sync (the fsync in flight); the next commit starts as one ends.
FOLLOWERS = ("followers", _OPTS, [
    ("append", 2), ("begin",), ("append", 2), ("sync",), ("append", 1), ("end",),
    ("begin",), ("sync",), ("end",), ("append", 1), ("begin",), ("sync",), ("end",), ("close",)])

# A seal during the fsync: the worker's handle is synced and closed under it.
SEALED = ("sealed", _OPTS, [
    ("append", 1), ("begin",), ("append", 6), ("sync",), ("end",),
    ("begin",), ("append", 5), ("sync",), ("end",), ("begin",), ("sync",), ("end",), ("close",)])

# A synchronous flush (the uplink's peek) while a commit is in flight, then its end.
FLUSHED = ("flushed", _OPTS, [
    ("append", 3), ("begin",), ("append", 2), ("flush",), ("append", 1), ("sync",), ("end",),
    ("begin",), ("sync",), ("end",), ("close",)])


def test_split_commit_followers():
    if _CPYTHON:
        _explore(FOLLOWERS)


def test_split_commit_sealed_under_the_worker():
    if _CPYTHON:
        _explore(SEALED)


def test_split_commit_with_a_flush_in_flight():
    if _CPYTHON:
        _explore(FLUSHED)


def test_durable_seq_waits_for_end_commit():
    # Between begin and end nothing new is claimed durable, and end publishes only what
    # begin covered -- not the appends that came during the fsync.
    if not _CPYTHON:
        return
    from edgeline.fastpath import begin_commit, end_commit, sync_commit

    log = RingLog(_DIR + "x", storage=FaultStorage(), **_OPTS)
    for i in range(3):
        log.append(b"r%d" % i, ts=1)
    token = begin_commit(log, 0)
    assert token[1] == 3 and log.durable_seq == 0
    log.append(b"r3", ts=1)
    sync_commit(token)
    assert log.durable_seq == 0
    end_commit(log, token)
    assert log.durable_seq == 3 and log.last_seq == 4
    assert begin_commit(log, 0)[1] == 4
    log.close()
    assert begin_commit(RingLog(_DIR + "x", storage=FaultStorage(), **_OPTS), 0) is None


def test_a_write_failure_during_the_fsync_publishes_nothing():
    # The handle is closed by the failure; what the worker synced is unknown.
    if not _CPYTHON:
        return
    from edgeline.errors import StorageError
    from edgeline.fastpath import begin_commit, end_commit, sync_commit

    fs = FaultStorage()
    log = RingLog(_DIR + "f", storage=fs, **_OPTS)
    log.append(b"r1", ts=1)
    token = begin_commit(log, 0)
    fs.full_at_bytes = 0  # the next write fails: ENOSPC
    try:
        for i in range(20):
            log.append(b"x" * 40, ts=1)
        assert False, "the write did not fail"
    except StorageError:
        pass
    try:
        sync_commit(token)  # the failure closed the handle under the worker
        error = None
    except ValueError as e:
        error = e
    # Whether the worker's sync failed (ValueError here) or seemed to succeed (on a
    # descriptor reused by another file), nothing is published.
    for err in (error, None):
        try:
            end_commit(log, token, err)
            assert False, "end_commit published after a failure"
        except StorageError:
            pass
        assert log.durable_seq == 0


def test_an_eio_of_the_worker_fails_the_log_though_a_seal_published_durable_seq():
    # A seal under the worker synced (Linux reports a writeback error once: the seal's
    # fsync may return 0 after the worker's got EIO) and closed the worker's handle: only
    # a closed handle's error (ValueError, EBADF) is the seal's doing; EIO fails the log.
    if not _CPYTHON:
        return
    import errno

    from edgeline.errors import StorageError
    from edgeline.fastpath import begin_commit, end_commit

    for error, benign in ((ValueError("I/O operation on closed file"), True),
                          (OSError(errno.EBADF, "Bad file descriptor"), True),
                          (OSError(errno.EIO, "Input/output error"), False)):
        log = RingLog(_DIR + "e%d" % benign, storage=FaultStorage(), **_OPTS)
        log.append(b"r1", ts=1)
        token = begin_commit(log, 0)
        for i in range(6):  # seal the worker's segment: synced and closed under it
            log.append(b"s%d" % i, ts=1)
        assert log.durable_seq >= token[1] and log._tail is not token[0]
        if benign:
            end_commit(log, token, error)
            assert log.failure is None
        else:
            try:
                end_commit(log, token, error)
                assert False, "an EIO was taken for a seal"
            except StorageError:
                pass
            assert log.failure is not None
        del log


def test_split_commit_at_big_seqs_across_rotations():
    # Seqs past 2**32 and segments begun during the fsync (which rebase the log's
    # offsets, docs/design-alloc-free-32bit.md fix 3): end_commit publishes exactly what
    # begin_commit covered, and a reopen finds it all.
    if not _CPYTHON:
        return
    from edgeline.fastpath import begin_commit, end_commit, sync_commit
    from edgeline.logformat import pack_segment_header, segment_name
    from support import rmtree, tempdir

    start = 2 ** 32 - 3
    d = tempdir("bigsplit")
    with open(d + "/" + segment_name(start), "wb") as f:
        f.write(pack_segment_header(start, 0, _OPTS["segment_bytes"]))
    log = RingLog(d, **_OPTS)
    assert log.next_seq == start
    log.append(b"r0", ts=1)
    log.append(b"r1", ts=1)
    token = begin_commit(log, 0)
    assert token[1] == start + 1 and log.durable_seq == start - 1
    segs = log.segment_count
    for i in range(2):
        log.append(b"a%d" % i, ts=1)
    sync_commit(token)
    end_commit(log, token)
    assert log.durable_seq == start + 1
    token = begin_commit(log, 0)
    for i in range(8):  # seals and begins segments under the worker
        log.append(b"b%d" % i, ts=1)
    assert log.segment_count > segs + 1
    sealed = log.durable_seq  # the seals synced what they held
    assert sealed > token[1]
    try:
        sync_commit(token)  # its handle was sealed: synced and closed under it
        error = None
    except ValueError as e:
        error = e
    end_commit(log, token, error)
    assert log.durable_seq == sealed  # never moved back to the token's seq
    token = begin_commit(log, 0)
    sync_commit(token)
    end_commit(log, token)
    assert log.durable_seq == log.last_seq == start + 11
    log.close()
    log = RingLog(d, **_OPTS)
    assert log.last_seq == start + 11
    assert [r.seq for r in log.read(start + 9, 5)] == [start + 9, start + 10, start + 11]
    log.close()
    rmtree(d)
