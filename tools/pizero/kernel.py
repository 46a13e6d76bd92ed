"""Debian's Raspberry Pi kernel for QEMU's raspi0: zImage, a patched device tree, the
ext4 modules, and a static busybox — fetched from Debian's archive once and cached.

Theory of operation
-------------------
Everything comes from ``:armel`` packages (Debian's ARMv6 port; ``armhf`` is ARMv7 and
does not run on the Pi Zero's arm1176): ``linux-image-rpi`` names the current
``linux-image-6.1.0-N-rpi``, whose package holds ``/boot/vmlinuz-*``, the device trees
and the modules; ``busybox-static`` gives the initramfs its shell and tools. ``apt-get
download`` fetches them, with the apt options tools/qemu_user.py uses for the armel
sysroot (``apt_options``), and ``dpkg-deb -x`` unpacks them; nothing is installed.

Two adjustments make the stock files boot under QEMU 7.2, and one makes them boot faster:

* The Pi Zero device tree's power-management node (``brcm,bcm2835-pm``) names two
  register blocks, ``pm`` and ``asb``. QEMU does not emulate the ASB, and the kernel's
  ``bcm2835_power_probe`` faults on it. The tree is decompiled with ``dtc``, the
  ``asb`` entry dropped from ``reg`` and ``reg-names``, and compiled back.
* ext4, jbd2, mbcache and crc16 are modules in this kernel, and mkfs.ext4's default
  ``metadata_csum`` needs the crc32c crypto driver, which the kernel would load through
  a modprobe the initramfs does not have. The initramfs carries those modules and loads
  them in dependency order (read from each module's ``.modinfo``) before mounting.
* The zImage is decompressed on the host, once, and wrapped in a U-Boot header that
  tells QEMU where to load it: the kernel's own decompressor costs seconds of emulated
  time at every boot. The kernel itself is unchanged.

The cache lives under ``~/.cache/edgeline/pizero-system/`` (``$XDG_CACHE_HOME`` is
honoured); each part is built into a temporary directory and renamed into place, so an
interrupted build leaves nothing that looks complete, and nothing is rebuilt while its
directory exists. Delete the directory to rebuild.
"""
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

KERNEL_META_PACKAGE = "linux-image-rpi"
BUSYBOX_PACKAGE = "busybox-static"
ARCH = "armel"
DTB_NAME = "bcm2835-rpi-zero.dtb"
# ext4 and what it needs at mount time; dependencies are added from .modinfo.
WANTED_MODULES = ("crc32c_generic", "ext4")
# Bumped when what ensure_kernel builds changes, so a stale cache is not used.
_KERNEL_BUILD = 1


class PiZeroError(Exception):
    """A one-line reason why the emulated Pi Zero could not be built or booted."""


def cache_root():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeline" / "pizero-system"


def run_tool(argv, what, cwd=None, input=None):
    """Run a host tool; its stdout, or PiZeroError naming ``what`` with the tool's last words."""
    try:
        p = subprocess.run(argv, cwd=cwd, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise PiZeroError("%s: %s is not installed" % (what, argv[0])) from None
    if p.returncode != 0:
        err = (p.stderr or p.stdout).decode(errors="replace").strip().splitlines()
        last = [line for line in err if not line.startswith("W: Download is performed unsandboxed")]
        raise PiZeroError("%s: %s exited with %d: %s" % (what, argv[0], p.returncode, (last or ["no output"])[-1]))
    return p.stdout


_apt_opts = None


def apt_options():
    """apt options for ``:armel`` packages. tools/qemu_user.py decides, as for the
    sysroot: the host's package lists when it has the architecture enabled (CI), else
    lists fetched once into a private apt state in the cache, leaving the host's apt and
    dpkg configuration alone."""
    global _apt_opts
    if _apt_opts is None:
        from tools import qemu_user

        try:
            _apt_opts = qemu_user._apt_options(None, ARCH)
        except qemu_user.QemuUserError as e:
            raise PiZeroError("%s packages: %s" % (ARCH, e)) from None
    return _apt_opts


def apt_download(packages, dest):
    """``apt-get download`` of ``name:armel`` packages into ``dest``; the .deb paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = ["%s:%s" % (p, ARCH) for p in packages]
    run_tool(["apt-get", "download"] + apt_options() + names, "downloading %s" % " ".join(names), cwd=str(dest))
    debs = []
    for p in packages:
        found = sorted(dest.glob("%s_*_%s.deb" % (p, ARCH)))
        if not found:
            raise PiZeroError("apt-get download left no %s_*_%s.deb in %s" % (p, ARCH, dest))
        debs.append(found[-1])
    return debs


def resolve_kernel_package():
    """The versioned package the meta-package depends on, e.g. linux-image-6.1.0-50-rpi."""
    out = run_tool(["apt-cache"] + apt_options() + ["depends", "%s:%s" % (KERNEL_META_PACKAGE, ARCH)],
                   "resolving the Pi kernel")
    m = re.search(r"Depends: (linux-image-[0-9][^\s:]*-rpi)\b", out.decode())
    if not m:
        raise PiZeroError("apt knows no %s:%s (%s)" % (KERNEL_META_PACKAGE, ARCH, out.decode().strip()[:200]))
    return m.group(1)


def _build_into(final, build):
    """Run build(tmp_dir) and rename tmp_dir to final; keep an existing final."""
    final = Path(final)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".building-", dir=str(final.parent)))
    os.chmod(str(tmp), 0o755)
    try:
        build(tmp)
        try:
            os.rename(str(tmp), str(final))
        except OSError:
            if not final.is_dir():  # not a concurrent builder winning the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(str(tmp), ignore_errors=True)
    return final


# ---------------------------------------------------------------------- device tree

def _node_span(dts, compatible):
    """(start, end) of the body of the node whose compatible list contains `compatible`."""
    m = re.search(r'compatible = "[^;]*?\b%s(\\0|")' % re.escape(compatible), dts)
    if not m:
        return None
    start = dts.rfind("{", 0, m.start()) + 1
    depth = 1
    i = start
    while depth:
        c = dts[i]
        depth += c == "{"
        depth -= c == "}"
        i += 1
    return start, i - 1


def drop_reg_entry(dts, compatible, reg_name):
    """dts source with entry `reg_name` removed from the node's reg and reg-names."""
    span = _node_span(dts, compatible)
    if span is None:
        raise PiZeroError("device tree has no %s node" % compatible)
    body = dts[span[0]:span[1]]
    names_m = re.search(r'\n(\s*)reg-names = "([^;]*)";', body)
    reg_m = re.search(r"\n(\s*)reg = <([^>]*)>;", body)
    if not names_m or not reg_m:
        raise PiZeroError("the %s node has no reg/reg-names" % compatible)
    names = names_m.group(2).split("\\0")
    if reg_name not in names:
        return dts  # nothing to drop (a tree already patched)
    cells = reg_m.group(2).split()
    if len(cells) % len(names):
        raise PiZeroError("the %s node's reg does not split into %d entries" % (compatible, len(names)))
    per = len(cells) // len(names)
    i = names.index(reg_name)
    del cells[i * per:(i + 1) * per]
    del names[i]
    body = body.replace(reg_m.group(0), "\n%sreg = <%s>;" % (reg_m.group(1), " ".join(cells)), 1)
    body = body.replace(names_m.group(0), '\n%sreg-names = "%s";' % (names_m.group(1), "\\0".join(names)), 1)
    return dts[:span[0]] + body + dts[span[1]:]


def patch_dtb(src, dest):
    """Compile `src` (a .dtb) to `dest` without the ASB block QEMU lacks."""
    dts = run_tool(["dtc", "-q", "-I", "dtb", "-O", "dts", str(src)], "decompiling %s" % src).decode()
    patched = drop_reg_entry(dts, "brcm,bcm2835-pm", "asb")
    if patched == dts:
        raise PiZeroError("%s has no asb register entry to remove: an unexpected device tree" % src)
    run_tool(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(dest), "-"], "compiling the patched device tree",
             input=patched.encode())
    check = run_tool(["dtc", "-q", "-I", "dtb", "-O", "dts", str(dest)], "checking the patched tree").decode()
    if drop_reg_entry(check, "brcm,bcm2835-pm", "asb") != check:
        raise PiZeroError("the patched device tree still names the asb block")


# ---------------------------------------------------------------------- the kernel image

# Physical address the ARM kernel runs from: RAM base (0 on the BCM2835) + TEXT_OFFSET.
_KERNEL_LOAD_ADDR = 0x8000


def decompress_zimage(zimage):
    """The uncompressed kernel (``Image``) inside a self-decompressing ARM ``zImage``.

    The payload sits after the decompressor's own code; the first offset bearing an xz or
    gzip magic that decompresses to the end is it (the decompressor also contains the
    magic as a constant, which fails to decompress)."""
    for magic, opener in ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gzip")):
        off = zimage.find(magic)
        while off >= 0:
            try:
                if opener == "xz":
                    d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
                else:
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                image = d.decompress(zimage[off:])
                if d.eof and len(image) > 1 << 20:
                    return image
            except (lzma.LZMAError, zlib.error):
                pass
            off = zimage.find(magic, off + 1)
    raise PiZeroError("no xz or gzip kernel payload found in the zImage")


def uimage(image, name="edgeline pizero"):
    """`image` behind a 64-byte U-Boot legacy header (ARM, Linux, uncompressed, loaded
    and entered at 0x8000): QEMU places such a kernel where it says, while a raw Image
    would land at QEMU's default offset, where an ARM kernel cannot run."""
    def header(hcrc):
        return struct.pack(">IIIIIIIBBBB32s", 0x27051956, hcrc, 0, len(image), _KERNEL_LOAD_ADDR,
                           _KERNEL_LOAD_ADDR, zlib.crc32(image), 5, 2, 2, 0, name.encode()[:31])
    return header(zlib.crc32(header(0))) + image


# ---------------------------------------------------------------------- modules

def modinfo(path):
    """The .modinfo key=value strings of a kernel module, as a dict of lists."""
    with open(path, "rb") as f:
        data = f.read()
    info = {}
    for s in data.split(b"\0"):
        for key in (b"depends=", b"alias=", b"name=", b"softdep="):
            if s.startswith(key) and s.isascii():
                info.setdefault(key[:-1].decode(), []).append(s[len(key):].decode())
    return info


def module_load_order(moddir, wanted):
    """Relative paths of the modules in `wanted` and their dependencies, each after
    everything it depends on. Built-in modules are left out."""
    moddir = Path(moddir)
    builtin = set()
    bpath = moddir / "modules.builtin"
    if bpath.exists():
        builtin = {Path(line.strip()).stem for line in bpath.read_text().splitlines() if line.strip()}
    by_name = {}
    for ko in (moddir / "kernel").rglob("*.ko"):
        by_name.setdefault(ko.stem.replace("-", "_"), ko)
    order = []
    visiting = set()

    def visit(name):
        name = name.replace("-", "_")
        if name in builtin or any(p.endswith("/" + name + ".ko") for p in order):
            return
        if name in visiting:
            raise PiZeroError("module dependency cycle at %s" % name)
        ko = by_name.get(name)
        if ko is None:
            raise PiZeroError("kernel module %s not found under %s" % (name, moddir))
        visiting.add(name)
        for dep in ",".join(modinfo(ko).get("depends", [""])).split(","):
            if dep:
                visit(dep)
        visiting.discard(name)
        order.append(str(ko.relative_to(moddir)))

    for name in wanted:
        visit(name)
    return order


# ---------------------------------------------------------------------- the parts

def ensure_kernel(cache=None):
    """Directory holding ``uImage`` (the kernel, decompressed), ``pizero.dtb`` (patched), ``modules/<ver>/...``,
    ``modules.order`` (load order, one path per line) and ``version``."""
    cache = Path(cache) if cache is not None else cache_root()
    tag = "-".join(("b%d" % _KERNEL_BUILD,) + WANTED_MODULES)
    existing = sorted(cache.glob("kernel-linux-image-*-rpi." + tag))
    if existing:
        return existing[-1]
    package = resolve_kernel_package()

    def build(tmp):
        (deb,) = apt_download([package], tmp / "debs")
        root = tmp / "root"
        run_tool(["dpkg-deb", "-x", str(deb), str(root)], "unpacking %s" % deb.name)
        vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise PiZeroError("%s holds no /boot/vmlinuz-*" % deb.name)
        version = vmlinuz[-1].name[len("vmlinuz-"):]
        # Decompressed here once: the zImage's own decompressor would spend 3-5 s of
        # emulated time on it at every boot.
        (tmp / "uImage").write_bytes(uimage(decompress_zimage(vmlinuz[-1].read_bytes())))
        dtbs = list(root.glob("usr/lib/linux-image-*/" + DTB_NAME)) + list(root.glob("usr/lib/linux-image-*/*/" + DTB_NAME))
        if not dtbs:
            raise PiZeroError("%s holds no %s" % (deb.name, DTB_NAME))
        patch_dtb(dtbs[0], tmp / "pizero.dtb")
        moddir = root / "lib" / "modules" / version
        order = module_load_order(moddir, WANTED_MODULES)
        for rel in order:
            dst = tmp / "modules" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(str(moddir / rel), str(dst))
        (tmp / "modules.order").write_text("".join(rel + "\n" for rel in order))
        (tmp / "version").write_text(version + "\n")
        shutil.rmtree(str(root))
        shutil.rmtree(str(tmp / "debs"))

    return _build_into(cache / ("kernel-%s.%s" % (package, tag)), build)


def ensure_busybox(cache=None):
    """Path of a static ARMv5 busybox (runs on the arm1176)."""
    cache = Path(cache) if cache is not None else cache_root()

    def build(tmp):
        (deb,) = apt_download([BUSYBOX_PACKAGE], tmp / "debs")
        run_tool(["dpkg-deb", "-x", str(deb), str(tmp / "root")], "unpacking %s" % deb.name)
        shutil.copyfile(str(tmp / "root" / "bin" / "busybox"), str(tmp / "busybox"))
        os.chmod(str(tmp / "busybox"), 0o755)
        shutil.rmtree(str(tmp / "root"))
        shutil.rmtree(str(tmp / "debs"))

    return _build_into(cache / "busybox", build) / "busybox"
