"""Tests of the power-cut storage model itself (emulator/faultfs.py), both runtimes."""
from emulator.faultfs import FaultStorage, PowerCut
from support import raises


def _write(fs, path, data, sync=False):
    f = fs.open_append(path)
    try:
        f.write(bytearray(data), len(data))
        if sync:
            f.sync()
    finally:
        f.close()


def _read(fs, path):
    f = fs.open_read(path)
    out = bytearray()
    buf = bytearray(7)  # small on purpose: several readinto calls
    while True:
        n = f.readinto(buf)
        if not n:
            break
        out.extend(buf[:n])
    f.close()
    return bytes(out)


def test_basic_interface():
    fs = FaultStorage()
    fs.makedirs("/d/e")
    assert fs.exists("/d") and fs.exists("/d/e")
    assert not fs.exists("/d/x")
    _write(fs, "/d/a", b"hello")
    _write(fs, "/d/a", b" world")
    assert fs.size("/d/a") == 11
    assert _read(fs, "/d/a") == b"hello world"
    assert fs.listdir("/d") == ["e", "a"]  # reverse sorted, on purpose
    assert fs.listdir("/d/e") == []
    f = fs.open_update("/d/a")
    f.seek(6)
    f.write(bytearray(b"WORLD!!"), 5)
    f.seek(0)
    buf = bytearray(20)
    mv = memoryview(buf)
    n = f.readinto(mv[2:])
    f.close()
    assert n == 11 and bytes(buf[2:13]) == b"hello WORLD"
    fs.rename("/d/a", "/d/b")
    assert not fs.exists("/d/a") and _read(fs, "/d/b") == b"hello WORLD"
    fs.remove("/d/b")
    assert not fs.exists("/d/b")
    fs.sync_dir("/d")


def test_errors():
    fs = FaultStorage()
    assert raises(OSError, fs.open_read, "/nope").args[0] == 2
    assert raises(OSError, fs.open_append, "/nodir/x").args[0] == 2
    assert raises(OSError, fs.remove, "/nope").args[0] == 2
    assert raises(OSError, fs.rename, "/nope", "/x").args[0] == 2
    assert raises(OSError, fs.size, "/nope").args[0] == 2
    assert raises(OSError, fs.listdir, "/nope").args[0] == 2
    fs.makedirs("/d")
    assert raises(OSError, fs.open_append, "/d").args[0] == 21
    _write(fs, "/d/f", b"x")
    r = fs.open_read("/d/f")
    assert raises(OSError, r.write, bytearray(b"y"), 1).args[0] == 9
    r.close()
    raises(ValueError, r.readinto, bytearray(1))
    a = fs.open_append("/d/f")
    raises(OSError, a.readinto, bytearray(1))
    a.close()


def test_open_update_of_new_file_and_gap_reads_zeros():
    fs = FaultStorage()
    f = fs.open_update("/c")
    f.seek(4)
    f.write(bytearray(b"ab"), 2)
    f.close()
    assert _read(fs, "/c") == b"\x00\x00\x00\x00ab"


def test_write_n_prefix_only():
    fs = FaultStorage()
    f = fs.open_append("/f")
    assert f.write(bytearray(b"abcdef"), 3) == 3
    f.write(memoryview(bytearray(b"XYZ")), 2)
    f.close()
    assert fs.contents("/f") == b"abcXY"


def test_durable_versus_current():
    fs = FaultStorage()
    f = fs.open_append("/f")
    f.write(bytearray(b"one"), 3)
    assert fs.contents("/f") == b"one"
    assert fs.contents("/f", durable=True) == b""
    f.sync()
    assert fs.contents("/f", durable=True) == b"one"
    f.write(bytearray(b"two"), 3)
    assert fs.contents("/f") == b"onetwo"
    assert fs.contents("/f", durable=True) == b"one"
    f.close()


def test_write_points_numbering():
    fs = FaultStorage()
    assert fs.write_points == 0
    fs.makedirs("/d")  # 1
    fs.makedirs("/d")  # exists: no point
    f = fs.open_append("/d/f")  # 2 (create)
    f.write(bytearray(b"a"), 1)  # 3
    f.sync()  # not a point
    f.close()
    g = fs.open_append("/d/f")  # exists: no point
    g.write(bytearray(b"b"), 1)  # 4
    g.close()
    r = fs.open_read("/d/f")
    r.readinto(bytearray(2))
    r.close()
    fs.exists("/d/f")
    fs.listdir("/d")
    fs.size("/d/f")
    fs.sync_dir("/d")
    fs.rename("/d/f", "/d/g")  # 5
    fs.truncate("/d/g", 1)  # 6
    fs.remove("/d/g")  # 7
    assert fs.write_points == 7


def _scenario(fs):
    # 1 makedirs, 2 create, 3 write, 4 write(+sync), 5 write (unsynced), 6 rename
    fs.makedirs("/d")
    f = fs.open_append("/d/f")
    f.write(bytearray(b"aaaa"), 4)
    f.write(bytearray(b"bbbb"), 4)
    f.sync()
    f.write(bytearray(b"cccc"), 4)
    fs.rename("/d/f", "/d/g")
    f.close()


def test_cut_numbering_each_point():
    full = FaultStorage()
    _scenario(full)
    assert full.write_points == 6
    kinds = ("makedirs", "create", "write", "write", "write", "rename")
    for n in range(1, 7):
        fs = FaultStorage(cut_at=n)
        raises(PowerCut, _scenario, fs)
        assert fs.dead and fs.write_points == n
        assert fs.cut.startswith("cut at write point %d: %s " % (n, kinds[n - 1])), fs.cut
    fs = FaultStorage(cut_at=7)
    _scenario(fs)
    assert not fs.dead and fs.cut is None


def test_dead_after_cut():
    fs = FaultStorage()
    _write(fs, "/f", b"abc", sync=True)
    r = fs.open_read("/f")
    fs.cut_at = fs.write_points + 1
    f = fs.open_append("/f")
    raises(PowerCut, f.write, bytearray(b"x"), 1)
    raises(PowerCut, f.write, bytearray(b"x"), 1)
    raises(PowerCut, f.sync)
    raises(PowerCut, f.close)
    raises(PowerCut, r.readinto, bytearray(3))
    raises(PowerCut, r.seek, 0)
    raises(PowerCut, fs.exists, "/f")
    raises(PowerCut, fs.listdir, "/")
    raises(PowerCut, fs.size, "/f")
    raises(PowerCut, fs.open_read, "/f")
    raises(PowerCut, fs.makedirs, "/x")
    raises(PowerCut, fs.remove, "/f")
    raises(PowerCut, fs.sync_dir, "/")
    # The cut is not an OSError: core code catching OSError cannot swallow it.
    assert not isinstance(PowerCut("x"), OSError)
    # A crash brings the device back.
    fs2 = fs.crash("lost")
    assert not fs2.dead and fs2.write_points == 0 and fs2.cut_at is None
    assert _read(fs2, "/f") == b"abc"


def _cut_write_state():
    # durable "AAAA", unsynced "BBBB", then a write "CCCCCC" that is cut.
    fs = FaultStorage()
    f = fs.open_append("/f")
    f.write(bytearray(b"AAAA"), 4)
    f.sync()
    f.write(bytearray(b"BBBB"), 4)
    fs.cut_at = fs.write_points + 1
    raises(PowerCut, f.write, bytearray(b"CCCCCC"), 6)
    return fs


def test_crash_torn():
    fs = _cut_write_state()
    assert fs.crash("torn").contents("/f") == b"AAAABBBBCCC"
    assert fs.crash("torn", torn_bytes=0).contents("/f") == b"AAAABBBB"
    assert fs.crash("torn", torn_bytes=5).contents("/f") == b"AAAABBBBCCCCC"
    assert fs.crash("torn", torn_bytes=-1).contents("/f") == b"AAAABBBBCCCCC"
    assert fs.crash("torn", torn_bytes=99).contents("/f") == b"AAAABBBBCCCCCC"
    fs.torn_bytes = 1
    assert fs.crash("torn").contents("/f") == b"AAAABBBBC"


def test_crash_lost():
    fs = _cut_write_state()
    after = fs.crash("lost")
    assert after.contents("/f") == b"AAAA"
    assert after.contents("/f", durable=True) == b"AAAA"


def test_crash_reorder_subsets():
    fs = FaultStorage()
    f = fs.open_update("/f")
    f.write(bytearray(b"0123456789"), 10)
    f.sync()
    for i in range(8):
        f.seek(i)
        f.write(bytearray(b"x"), 1)
    seen = {}
    for seed in range(40):
        got = fs.crash("reorder", seed=seed).contents("/f")
        assert len(got) == 10
        for i in range(8):
            assert got[i] in (b"0123456789"[i], ord("x"))
        assert got[8:] == b"89"
        seen[got] = True
    assert len(seen) > 10  # really a variety of subsets
    # deterministic for a given seed
    assert fs.crash("reorder", seed=3).contents("/f") == fs.crash(
        "reorder", seed=3).contents("/f")


def test_crash_reorder_hole_reads_zeros():
    fs = FaultStorage()
    f = fs.open_append("/f")
    f.write(bytearray(b"aa"), 2)
    f.write(bytearray(b"bb"), 2)
    outcomes = {}
    for seed in range(40):
        outcomes[fs.crash("reorder", seed=seed).contents("/f")] = True
    assert b"" in outcomes and b"aa" in outcomes and b"aabb" in outcomes
    assert b"\x00\x00bb" in outcomes


def test_crash_without_cut():
    fs = FaultStorage()
    _write(fs, "/f", b"abc")
    assert fs.crash("torn").contents("/f") == b"abc"
    assert fs.crash("lost").contents("/f") == b""
    assert fs.exists("/f")  # crash() leaves the original alone
    raises(ValueError, fs.crash, "melt")


def test_metadata_ops_durable_when_returned():
    fs = FaultStorage()
    fs.makedirs("/a/b")
    _write(fs, "/a/b/new", b"")
    _write(fs, "/a/b/gone", b"x", sync=True)
    fs.remove("/a/b/gone")
    after = fs.crash("lost")
    assert after.exists("/a/b") and after.exists("/a/b/new")
    assert not after.exists("/a/b/gone")


def test_rename_atomic_at_cut():
    fs = FaultStorage()
    _write(fs, "/old", b"old", sync=True)
    _write(fs, "/tmp", b"new", sync=True)
    fs.cut_at = fs.write_points + 1
    raises(PowerCut, fs.rename, "/tmp", "/old")
    for mode in ("torn", "lost", "reorder"):
        after = fs.crash(mode)
        assert after.contents("/old") == b"old" and after.contents("/tmp") == b"new"
    fs = FaultStorage()
    _write(fs, "/old", b"old", sync=True)
    _write(fs, "/tmp", b"new", sync=True)
    fs.rename("/tmp", "/old")
    after = fs.crash("lost")
    assert after.contents("/old") == b"new" and not after.exists("/tmp")


def test_rename_keeps_unsynced_writes_volatile():
    fs = FaultStorage()
    _write(fs, "/tmp", b"dur", sync=True)
    _write(fs, "/tmp", b"+vol")
    fs.rename("/tmp", "/dst")
    assert fs.crash("lost").contents("/dst") == b"dur"
    assert fs.crash("torn").contents("/dst") == b"dur+vol"


def test_handle_follows_inode_across_rename():
    fs = FaultStorage()
    f = fs.open_append("/a")
    fs.rename("/a", "/b")
    f.write(bytearray(b"hi"), 2)
    f.sync()
    f.close()
    assert fs.contents("/b") == b"hi"
    assert fs.crash("lost").contents("/b") == b"hi"


def test_remove_atomic_at_cut():
    fs = FaultStorage()
    _write(fs, "/f", b"data", sync=True)
    fs.cut_at = fs.write_points + 1
    raises(PowerCut, fs.remove, "/f")
    assert fs.crash("lost").contents("/f") == b"data"


def test_create_cut_leaves_no_file():
    fs = FaultStorage(cut_at=1)
    raises(PowerCut, fs.open_append, "/f")
    assert not fs.crash("torn").exists("/f")


def test_truncate_makes_prefix_durable():
    fs = FaultStorage()
    f = fs.open_append("/f")
    f.write(bytearray(b"abcdef"), 6)  # never synced
    f.close()
    fs.truncate("/f", 4)
    assert fs.contents("/f") == b"abcd"
    assert fs.crash("lost").contents("/f") == b"abcd"
    fs.truncate("/f", 6)  # extending reads zeros
    assert fs.crash("lost").contents("/f") == b"abcd\x00\x00"


def test_truncate_atomic_at_cut():
    fs = FaultStorage()
    _write(fs, "/f", b"abcdef", sync=True)
    fs.cut_at = fs.write_points + 1
    raises(PowerCut, fs.truncate, "/f", 2)
    assert fs.crash("torn").contents("/f") == b"abcdef"


def test_snapshot_independent():
    fs = _cut_write_state()
    snap = fs.snapshot()
    assert snap.dead and snap.write_points == fs.write_points
    assert snap.crash("torn").contents("/f") == b"AAAABBBBCCC"
    assert snap.crash("lost").contents("/f") == b"AAAA"
    live = FaultStorage()
    _write(live, "/f", b"one", sync=True)
    copy = live.snapshot()
    _write(live, "/f", b"two", sync=True)
    live.remove("/f")
    assert copy.contents("/f") == b"one" and copy.contents("/f", durable=True) == b"one"
    _write(copy, "/g", b"x")
    assert not live.exists("/g")


def test_crash_again_during_recovery():
    fs = _cut_write_state()
    after = fs.crash("torn")
    # "recovery": truncate the torn tail, then rewrite it; cut at each point of it.
    for n in (1, 2):
        rec = after.snapshot()
        rec.cut_at = n
        try:
            rec.truncate("/f", 8)
            f = rec.open_append("/f")
            f.write(bytearray(b"DD"), 2)
            f.sync()
            f.close()
            assert False, "not cut"
        except PowerCut:
            pass
        again = rec.crash("lost")
        got = again.contents("/f")
        assert got == (b"AAAABBBBCCC" if n == 1 else b"AAAABBBB"), got
    assert after.contents("/f") == b"AAAABBBBCCC"


def test_full_disk():
    fs = FaultStorage(full_at_bytes=10)
    f = fs.open_append("/f")
    f.write(bytearray(b"12345678"), 8)
    e = raises(OSError, f.write, bytearray(b"abc"), 3)
    assert e.args[0] == 28
    assert not isinstance(e, PowerCut)
    assert fs.contents("/f") == b"12345678"
    f.write(bytearray(b"ab"), 2)
    assert fs.size("/f") == 10
    g = fs.open_update("/f")  # overwriting in place needs no new space
    g.write(bytearray(b"zz"), 2)
    g.close()
    f.close()
    assert raises(OSError, fs.truncate, "/f", 11).args[0] == 28
    fs.remove("/f")
    _write(fs, "/g", b"0123456789")
    assert not fs.dead
