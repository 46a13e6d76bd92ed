"""dirlock.py: one process per data directory; a dead holder never blocks."""
import os
import signal
import subprocess
import sys

import pytest

from edgeline_host.dirlock import LOCK_NAME, DirInUse, DirLock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "core"), os.path.join(ROOT, "host")]))


def test_second_lock_is_refused_with_one_line_naming_the_holder(tmp_path):
    d = str(tmp_path / "data")
    first = DirLock.for_dir(d).acquire()
    with pytest.raises(DirInUse) as e:
        DirLock.for_dir(d).acquire()
    msg = str(e.value)
    assert msg.startswith("%s is in use by pid %d (started " % (d, os.getpid())), msg
    assert msg.endswith("); stop it first") and "\n" not in msg
    first.release()
    DirLock.for_dir(d).acquire().release()  # released: free again
    assert os.path.exists(os.path.join(d, LOCK_NAME))  # the file stays (never deleted)


def test_refused_lock_touches_nothing(tmp_path):
    d = str(tmp_path / "data")
    lock = DirLock.for_dir(d).acquire()
    before = open(os.path.join(d, LOCK_NAME)).read()
    with pytest.raises(DirInUse):
        DirLock.for_dir(d).acquire()
    assert open(os.path.join(d, LOCK_NAME)).read() == before
    assert sorted(os.listdir(d)) == [LOCK_NAME]
    lock.release()


def test_sigkilled_holder_never_blocks(tmp_path):
    d = str(tmp_path / "data")
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time\n"
                               "from edgeline_host.dirlock import DirLock\n"
                               "lock = DirLock.for_dir(sys.argv[1]).acquire()\n"
                               "print('locked', flush=True)\n"
                               "time.sleep(600)\n", d], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DirInUse) as e:
            DirLock.for_dir(d).acquire()
        assert "pid %d" % holder.pid in str(e.value)
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        lock = DirLock.for_dir(d).acquire()  # the stale LOCK file (its pid dead) does not block
        assert '"pid": %d' % os.getpid() in open(os.path.join(d, LOCK_NAME)).read()
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_lock_lost_when_the_file_is_deleted_or_replaced(tmp_path):
    d = str(tmp_path / "data")
    path = os.path.join(d, LOCK_NAME)
    lock = DirLock.for_dir(d).acquire()
    assert not lock.lock_lost()
    os.remove(path)
    assert lock.lock_lost()
    other = DirLock.for_dir(d).acquire()  # what lock_lost warns of: a second holder
    assert lock.lock_lost() and not other.lock_lost()
    other.release()
    lock.release()
    lock2 = DirLock.for_dir(d).acquire()
    with open(path + ".new", "w") as f:
        f.write("{}\n")
    os.replace(path + ".new", path)
    assert lock2.lock_lost()
    lock2.release()
    assert not lock2.lock_lost()  # holding nothing: nothing to lose


def test_holder_that_has_not_written_yet(tmp_path):
    d = str(tmp_path / "data")
    os.makedirs(d)
    import fcntl

    fd = os.open(os.path.join(d, LOCK_NAME), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(DirInUse) as e:
            DirLock.for_dir(d).acquire()
        assert str(e.value) == "%s is in use by another process; stop it first" % d
    finally:
        os.close(fd)
