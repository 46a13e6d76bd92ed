"""The simulated flash chip (emulator/flash.py) under MicroPython's littlefs2.

MicroPython only (run by tests/mp/micropython_test.py through tools/mptest.py); pytest
does not collect tests/mp. Imported by CPython it defines nothing.
"""
import sys

if sys.implementation.name == "micropython":
    import gc
    import os

    from emulator.flash import FlashBlockDevice, mount, umount

    _MNT = "/flash"
    _BS = 256
    _BC = 48  # 12 KB: a 64 KB heap holds the base image and a device or two

    def _new():
        dev = FlashBlockDevice(_BS, _BC)
        mount(dev, _MNT, mkfs=True)
        return dev

    def _put(path, data, mode="wb"):
        f = open(path, mode)
        f.write(data)
        f.flush()
        f.close()

    def _get(path):
        try:
            f = open(path, "rb")
        except OSError:
            return None
        try:
            return f.read()
        finally:
            f.close()

    def test_block_device_interface():
        dev = FlashBlockDevice(128, 4)
        assert dev.ioctl(4, 0) == 4 and dev.ioctl(5, 0) == 128
        assert dev.ioctl(1, 0) == 0 and dev.ioctl(3, 0) == 0
        buf = bytearray(8)
        dev.readblocks(1, buf)
        assert buf == b"\xff" * 8
        dev.writeblocks(1, b"abcd", 2)
        dev.readblocks(1, buf)
        assert buf == b"\xff\xffabcd\xff\xff"
        dev.readblocks(1, buf, 2)
        assert buf[:4] == b"abcd"
        assert dev.ioctl(6, 1) == 0
        dev.readblocks(1, buf)
        assert buf == b"\xff" * 8
        assert dev.writes == 1 and dev.erases == 1

    def test_cut_writes_half_then_drops():
        dev = FlashBlockDevice(128, 4, cut_after=2)
        dev.writeblocks(0, b"1111")
        try:
            dev.writeblocks(0, b"22222222", 8)
            assert False, "no cut"
        except OSError as e:
            assert e.args[0] == 5
        assert dev.cut and dev.writes == 2
        dev.writeblocks(0, b"3333", 16)  # dropped silently, no exception
        dev.ioctl(6, 0)  # erase dropped too
        assert dev.data[0:24] == b"1111" + b"\xff" * 4 + b"2222" + b"\xff" * 12
        img = dev.image()
        assert img == dev.data and img is not dev.data
        on = dev.power_on()
        assert on.data is dev.data and not on.cut and on.cut_after is None
        on.writeblocks(0, b"4444", 16)
        assert dev.data[16:20] == b"4444"

    def test_usable_with_heap_locked():
        # littlefs may call the device from GC finalisers, with the heap locked.
        import micropython

        dev = FlashBlockDevice(128, 4, cut_after=2)
        buf = bytearray(8)
        src = bytearray(b"abcdefgh")
        ok = 0
        micropython.heap_lock()
        try:
            dev.writeblocks(1, src)
            dev.readblocks(1, buf)
            dev.ioctl(6, 2)
            ok = 1
            dev.cut = True  # after a cut, writes are dropped without raising
            dev.writeblocks(1, src, 8)
            ok = 2
        finally:
            micropython.heap_unlock()
        assert ok == 2 and buf == src and dev.data[136:144] == b"\xff" * 8

    def test_mkfs_mount_write_read_remount():
        dev = _new()
        try:
            os.mkdir(_MNT + "/log")
            _put(_MNT + "/log/a", b"hello")
            _put(_MNT + "/log/a", b" world", "ab")
            os.rename(_MNT + "/log/a", _MNT + "/log/b")
            assert os.listdir(_MNT + "/log") == ["b"]
            assert _get(_MNT + "/log/b") == b"hello world"
        finally:
            umount(_MNT)
        dev2 = FlashBlockDevice(_BS, _BC, data=dev.image())
        mount(dev2, _MNT)
        try:
            assert _get(_MNT + "/log/b") == b"hello world"
        finally:
            umount(_MNT)

    _OLD_A = b"A" * 100
    _CHUNK = b"B" * 100
    _NEW_C = b"C" * 150

    def _sequence(done):
        # Three appends to an existing file, each committed by flush; then a new file
        # written and committed. `done` records each commit that returned.
        f = open(_MNT + "/a", "ab")
        try:
            for _ in range(3):
                f.write(_CHUNK)
                f.flush()
                done.append("a")
        finally:
            f.close()
        g = open(_MNT + "/c", "wb")
        done.append("c-created")
        try:
            g.write(_NEW_C)
            g.flush()
            done.append("c")
        finally:
            g.close()

    def _base_image():
        dev = _new()
        try:
            _put(_MNT + "/a", _OLD_A)
        finally:
            umount(_MNT)
        return dev.data

    def test_power_cut_at_every_write():
        base = _base_image()
        dev = FlashBlockDevice(_BS, _BC, data=bytearray(base))
        mount(dev, _MNT)
        done = []
        try:
            _sequence(done)
        finally:
            umount(_MNT)
        total = dev.writes
        assert total > 9 and done == ["a", "a", "a", "c-created", "c"]
        dev = None
        cuts = 0
        for k in range(1, total + 1):
            gc.collect()
            dev = FlashBlockDevice(_BS, _BC, data=bytearray(base), cut_after=k)
            mount(dev, _MNT)
            done = []
            try:
                _sequence(done)
            except OSError:
                pass
            umount(_MNT)
            assert dev.cut, "write %d was not cut" % k
            cuts += 1
            on = dev.power_on()
            dev = None
            gc.collect()
            mount(on, _MNT)
            try:
                a = _get(_MNT + "/a")
                c = _get(_MNT + "/c")
                # Each commit is atomic: a holds the old content plus the committed
                # appends, and at most the one being committed when the power went.
                n = done.count("a")
                assert a in (_OLD_A + _CHUNK * n, _OLD_A + _CHUNK * (n + 1)), (
                    "cut %d: a is %d bytes after %d commits" % (k, len(a), n))
                assert c in (None, b"", _NEW_C), "cut %d: c is %r" % (k, c)
                if "c" in done:
                    assert c == _NEW_C, "cut %d: committed file lost" % k
                # The file system still works after the cut.
                _put(_MNT + "/after", b"ok")
                assert _get(_MNT + "/after") == b"ok"
            finally:
                umount(_MNT)
            on = None
            gc.collect()
        assert cuts == total
