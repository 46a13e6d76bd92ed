"""The parts of tools/pizero/ that need no QEMU: the cpio writer, the device-tree patch,
module ordering, the kernel unwrapping, the guest program run natively, and the checks
the power-cut test applies (fed consoles that must fail them)."""
import io
import lzma
import os
import shlex
import stat
import struct
import sys
import zlib

import pytest
from integration import need_binary

from tools.pizero import edge_writer, kernel
from tools.pizero.cpio import CpioWriter
from tools.pizero.initramfs import boot_archive
from tools.pizero.kernel import PiZeroError
from tools.pizero.powercut import BootLog, check_recovered


def read_newc(data):
    """[(name, mode, rdev, mtime, data)] of a newc archive, checking its framing."""
    out = []
    off = 0
    while True:
        assert off % 4 == 0
        assert data[off:off + 6] == b"070701", "bad magic at %d" % off
        f = [int(data[off + 6 + 8 * i:off + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[off + 110:off + 110 + namesize]
        assert name.endswith(b"\0")
        name = name[:-1].decode()
        off += 110 + namesize
        off += -off % 4
        body = data[off:off + filesize]
        off += filesize
        off += -off % 4
        if name == "TRAILER!!!":
            assert data[off:].strip(b"\0") == b""
            return out
        assert f[2] == 0 and f[3] == 0, "entries are owned by root"
        out.append((name, f[1], (f[9], f[10]), f[5], body))


def test_cpio_entries_parents_first_root_owned_and_aligned():
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.file("a/b/c.txt", b"hello", 0o640, mtime=1234)
    w.symlink("a/link", "b/c.txt")
    w.chardev("dev/console", 5, 1)
    w.file("x", b"")
    w.close()
    entries = read_newc(buf.getvalue())
    names = [e[0] for e in entries]
    assert names == ["a", "a/b", "a/b/c.txt", "a/link", "dev", "dev/console", "x"]
    by = {e[0]: e for e in entries}
    assert stat.S_ISDIR(by["a/b"][1])
    assert stat.S_IMODE(by["a/b/c.txt"][1]) == 0o640 and by["a/b/c.txt"][4] == b"hello"
    assert by["a/b/c.txt"][3] == 1234
    assert stat.S_ISLNK(by["a/link"][1]) and by["a/link"][4] == b"b/c.txt"
    assert stat.S_ISCHR(by["dev/console"][1]) and by["dev/console"][2] == (5, 1)


def test_cpio_tree_keeps_modes_mtimes_and_symlinks(tmp_path):
    src = tmp_path / "root"
    (src / "usr" / "lib").mkdir(parents=True)
    (src / "usr" / "lib" / "m.py").write_text("x = 1\n")
    os.utime(str(src / "usr" / "lib" / "m.py"), (1000, 2000))
    (src / "usr" / "bin").mkdir()
    (src / "usr" / "bin" / "tool").write_bytes(b"#!x")
    os.chmod(str(src / "usr" / "bin" / "tool"), 0o755)
    os.symlink("usr/lib", str(src / "lib"))  # a symlink to a directory stays a symlink
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.tree(str(src))
    w.close()
    by = {e[0]: e for e in read_newc(buf.getvalue())}
    assert by["usr/lib/m.py"][3] == 2000 and by["usr/lib/m.py"][4] == b"x = 1\n"
    assert stat.S_IMODE(by["usr/bin/tool"][1]) == 0o755
    assert stat.S_ISLNK(by["lib"][1]) and by["lib"][4] == b"usr/lib"


def test_cpio_output_is_read_by_gnu_cpio(tmp_path):
    import subprocess

    need_binary("cpio", "GNU cpio reads the initramfs writer's output (apt-get install cpio)")

    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.file("etc/hello", b"hi\n")
    w.close()
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=buf.getvalue(), stdout=subprocess.PIPE, check=True)
    assert listing.stdout.decode().split() == ["etc", "etc/hello"]


PM_NODE = """/dts-v1/;
/ {
	soc {
		watchdog@7e100000 {
			compatible = "brcm,bcm2835-pm\\0brcm,bcm2835-pm-wdt";
			#power-domain-cells = <0x01>;
			reg = <0x7e100000 0x114 0x7e00a000 0x24>;
			reg-names = "pm\\0asb";
			system-power-controller;
		};
		rng@7e104000 {
			compatible = "brcm,bcm2835-rng";
			reg = <0x7e104000 0x10>;
		};
	};
};
"""


def test_drop_reg_entry_removes_the_asb_block_only():
    out = kernel.drop_reg_entry(PM_NODE, "brcm,bcm2835-pm", "asb")
    assert "reg = <0x7e100000 0x114>;" in out
    assert 'reg-names = "pm";' in out
    assert "reg = <0x7e104000 0x10>;" in out  # the other node is untouched
    assert kernel.drop_reg_entry(out, "brcm,bcm2835-pm", "asb") == out  # idempotent
    with pytest.raises(PiZeroError):
        kernel.drop_reg_entry(PM_NODE, "brcm,bcm2711-pm", "asb")


def test_patch_dtb_round_trip(tmp_path):
    need_binary("dtc", "the device tree compiler checks the patched DTB (apt-get install device-tree-compiler)")
    src = tmp_path / "in.dtb"
    kernel.run_tool(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(src), "-"], "test", input=PM_NODE.encode())
    kernel.patch_dtb(src, tmp_path / "out.dtb")
    dts = kernel.run_tool(["dtc", "-q", "-I", "dtb", "-O", "dts", str(tmp_path / "out.dtb")], "test").decode()
    assert "0x7e00a000" not in dts and "asb" not in dts and "0x7e100000 0x114" in dts
    with pytest.raises(PiZeroError, match="no asb"):
        kernel.patch_dtb(tmp_path / "out.dtb", tmp_path / "again.dtb")


def _fake_module(path, depends):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF junk\0license=GPL\0depends=%s\0intree=Y\0" % depends.encode())


def test_module_load_order_follows_depends_and_skips_builtins(tmp_path):
    k = tmp_path / "kernel"
    _fake_module(k / "fs" / "ext4" / "ext4.ko", "jbd2,mbcache,crc16")
    _fake_module(k / "fs" / "jbd2" / "jbd2.ko", "")
    _fake_module(k / "fs" / "mbcache.ko", "")
    _fake_module(k / "crypto" / "crc32c_generic.ko", "")
    (tmp_path / "modules.builtin").write_text("kernel/lib/crc16.ko\n")
    order = kernel.module_load_order(tmp_path, ("crc32c_generic", "ext4"))
    assert order == ["kernel/crypto/crc32c_generic.ko", "kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko",
                     "kernel/fs/ext4/ext4.ko"]
    _fake_module(k / "a.ko", "b")
    _fake_module(k / "b.ko", "a")
    with pytest.raises(PiZeroError, match="cycle"):
        kernel.module_load_order(tmp_path, ("a",))
    with pytest.raises(PiZeroError, match="not found"):
        kernel.module_load_order(tmp_path, ("vfat",))


def test_decompress_zimage_finds_the_payload_past_a_decoy_magic():
    payload = os.urandom(1 << 10) * 1500  # > 1 MiB
    stub = b"decompressor code" + b"\xfd7zXZ\x00" + b"more code"  # the xz magic as a constant
    image = stub + lzma.compress(payload, format=lzma.FORMAT_XZ) + b"\0" * 60
    assert kernel.decompress_zimage(image) == payload
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    gz = z.compress(payload) + z.flush()
    assert kernel.decompress_zimage(b"\x1f\x8b\x08 decoy" + gz) == payload
    with pytest.raises(PiZeroError):
        kernel.decompress_zimage(b"no payload here" * 100)


def test_uimage_header_loads_at_0x8000_with_valid_crcs():
    body = b"kernel image" * 100
    u = kernel.uimage(body)
    fields = struct.unpack(">IIIIIIIBBBB32s", u[:64])
    magic, hcrc, _, size, load, entry, dcrc, os_, arch, type_, comp, _ = fields
    assert (magic, size, load, entry, os_, arch, type_, comp) == (0x27051956, len(body), 0x8000, 0x8000, 5, 2, 2, 0)
    assert dcrc == zlib.crc32(body) and u[64:] == body
    assert hcrc == zlib.crc32(u[:4] + b"\0\0\0\0" + u[8:64])


def test_boot_archive_carries_core_the_files_and_the_command(tmp_path):
    data = boot_archive(["python3", "/edgeline/w.py", "--dir", "/sd/a b"], {"/edgeline/w.py": b"print(1)\n"})
    by = {e[0]: e for e in read_newc(data)}
    assert by["edgeline/run.sh"][4].decode().strip() == shlex.join(["python3", "/edgeline/w.py", "--dir", "/sd/a b"])
    assert by["edgeline/w.py"][4] == b"print(1)\n"
    assert "edgeline/core/edgeline/log.py" in by
    if sys.version_info[:2] == (3, 11):  # the guest's bytecode: precompiled on the host
        pyc = by["edgeline/core/edgeline/__pycache__/log.cpython-311.pyc"][4]
        assert struct.unpack("<I", pyc[4:8])[0] & 0b11 == 0b01  # hash-based, unchecked


# ---------------------------------------------------------------------- the checks


def _console(seqs, acks=(), resume_acks=(), fs=("EXT4-fs (mmcblk0): recovery complete",), corrupt=0,
             tamper=None, extra=()):
    lines = ["@EL init fs " + m for m in fs] + ["@EL opening"]
    last = max(seqs) if seqs else 0
    lines.append("@EL open first=1 last=%d durable=%d segments=1 corrupt=%d open_ms=1.0" % (last, last, corrupt))
    for s in seqs:
        ts, key, value = edge_writer.record(s)
        if tamper == s:
            value = value[:-1] + bytes([value[-1] ^ 1])
        lines.append("@EL rec %d %d %s %s" % (s, ts, "-" if key is None else key.hex(), value.hex()))
    lines.append("@EL dumped n=%d corrupt=%d read_ms=1.0" % (len(seqs), corrupt))
    lines += ["@EL ack %d %d.0" % (s, s) for s in resume_acks]
    return BootLog(lines + list(extra))


def test_check_recovered_passes_a_good_recovery():
    assert check_recovered(_console(range(1, 11), resume_acks=(11, 12)), list(range(1, 11)), 1) == []
    # one record durable but not yet acknowledged when the power went: allowed
    assert check_recovered(_console(range(1, 12), resume_acks=(12,)), list(range(1, 11)), 1) == []


@pytest.mark.parametrize("boot, acked, slack, problem", [
    (_console(range(1, 9)), range(1, 11), 1, "acknowledged records lost"),
    (_console([1, 2, 4, 5]), range(1, 6), 1, "does not hold exactly"),
    (_console(range(1, 11), tamper=7), range(1, 11), 1, "wrong contents"),
    (_console(range(1, 11), corrupt=1), range(1, 11), 1, "corrupt"),
    (_console(range(1, 11), extra=["@EL warn segment x: skipped"]), range(1, 11), 1, "warned"),
    (_console(range(1, 14)), range(1, 11), 1, "allowed up to 11"),
    (_console(range(1, 11), fs=("EXT4-fs (mmcblk0): mounted",)), range(1, 11), 1, "not cut"),
    (_console(range(1, 11), resume_acks=(10, 11)), range(1, 11), 1, "not at last + 1"),
    (_console(range(1, 11), resume_acks=(11, 13)), range(1, 11), 1, "not consecutive"),
    (BootLog(["@EL init error no /dev/mmcblk0"]), range(1, 3), 1, "did not open"),
])
def test_check_recovered_names_each_failure(boot, acked, slack, problem):
    problems = check_recovered(boot, list(acked), slack)
    assert any(problem in p for p in problems), problems


def test_bootlog_ignores_a_line_cut_by_the_power_cut():
    b = BootLog(["@EL ack 1 0.0", "@EL ack 2 1.0", "@EL ack 3 2.0 <cut>", "@EL ack 1"])
    assert b.acked == [1, 2]


def test_edge_writer_natively(tmp_path, capsys):
    """The guest program on the host's CPython: what it acknowledges, it reads back."""
    d = str(tmp_path / "log")
    assert edge_writer.main(["--dir", d, "--sync", "group", "--group", "4", "--append", "10", "--close"]) == 0
    first = BootLog(capsys.readouterr().out.splitlines())
    assert first.acked == list(range(1, 11)) and first.closed_last == 10
    assert edge_writer.main(["--dir", d, "--dump", "--append", "3", "--close"]) == 0
    second = BootLog(["@EL init fs EXT4-fs (mmcblk0): recovery complete"] + capsys.readouterr().out.splitlines())
    assert check_recovered(second, first.acked, 0) == []
    assert second.acked == [11, 12, 13]
    with pytest.raises(SystemExit):
        edge_writer.main(["--dir", d, "--sync", "every", "--unsafe-ack"])
