"""An emulated Raspberry Pi Zero that loses power: QEMU's raspi0 machine booting Debian's
Raspberry Pi kernel, CPython 3.11 (armel) in an initramfs, and an ext4 SD card image.

    kernel.py       fetch the kernel, device tree and modules; patch the tree for QEMU
    cpio.py         write initramfs archives (newc)
    initramfs.py    busybox, the sysroot, the modules, and an init that runs one command
    sdcard.py       make the SD card image (mkfs.ext4 -d), check it (e2fsck -fn)
    machine.py      boot it (PiZero), read its serial console, cut its power (SIGKILL)
    edge_writer.py  the guest program: append to a RingLog, report durable seqs
    powercut.py     the power-cut scenario and its checks

The armel CPython sysroot comes from tools/qemu_user.py. Everything built is cached
under ~/.cache/edgeline/. ``python -m tools.pizero --help`` lists the commands;
docs/pizero-system.md has the figures.
"""
