"""Helpers shared by the core tests; they run under CPython and MicroPython alike."""
import os

_counter = [0]

try:
    _urandom = os.urandom
except AttributeError:  # MicroPython's WebAssembly port (the 32-bit lane) has none
    import random

    def _urandom(n):
        return bytes(random.getrandbits(8) for _ in range(n))


def _rmtree(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        p = path + "/" + name
        try:
            os.listdir(p)
            is_dir = True
        except OSError:
            is_dir = False
        if is_dir:
            _rmtree(p)
        else:
            os.remove(p)
    os.rmdir(path)


def tempdir(tag="t"):
    """Make a fresh empty directory under /tmp and return its path."""
    _counter[0] += 1
    rnd = _urandom(4)
    suffix = "".join("%02x" % b for b in rnd)
    path = "/tmp/edgeline-test-%s-%d-%s" % (tag, _counter[0], suffix)
    _rmtree(path)
    os.mkdir(path)
    return path


rmtree = _rmtree


def raises(exc_type, fn, *args, **kwargs):
    """Assert that fn(*args, **kwargs) raises exc_type; return the exception."""
    try:
        fn(*args, **kwargs)
    except exc_type as e:
        return e
    raise AssertionError("%s not raised" % exc_type.__name__)


def value_of(seq):
    """The value the tests store under seq: derived from it, so reads can be checked."""
    return b"value-%d-" % seq + bytes([seq % 251]) * (seq % 7)


def fill(log, n, ts0=1000):
    """Append n records whose values are value_of(their seq); return the seqs."""
    seqs = []
    for i in range(n):
        seqs.append(log.append(value_of(log.next_seq), ts=(ts0 + i) << 16))
    return seqs


def check_contiguous(log, first, last):
    """Assert the log holds exactly seqs first..last with value_of values."""
    seq = first
    while seq <= last:
        recs = log.read(seq, 20)
        assert recs, "nothing read at %d" % seq
        for r in recs:
            assert r.seq == seq, (r.seq, seq)
            assert r.value == value_of(seq), seq
            seq += 1
            if seq > last:
                break


class Warnings:
    """A warn callback that remembers what it was told."""

    def __init__(self):
        self.lines = []

    def __call__(self, msg):
        self.lines.append(msg)
