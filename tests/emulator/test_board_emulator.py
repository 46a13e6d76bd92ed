"""The emulated board (emulator/ptyboard.py) against the real mpremote CLI and raw bytes.

Every test starts ``python -m emulator.ptyboard`` as a process: a pseudo-terminal serving
MicroPython's REPL, the unix port with a board's heap behind it, a littlefs2 flash
image. mpremote connects to the pty as to a USB board.
"""
import hashlib
import os
import random
import sys
import time

import pytest

from emuboard import ROOT, EmulatedBoard, Terminal, mpremote, need_board_tools  # noqa: E402

sys.path.insert(0, ROOT)
from emulator.ptyboard import needs_more_input  # noqa: E402


@pytest.fixture
def board(tmp_path):
    b = EmulatedBoard(tmp_path, "--heap", "64k")
    yield b
    b.stop()


def test_mpremote_file_system_commands(board, tmp_path):
    port = board.port
    assert mpremote(port, "fs", "ls").stdout.strip() == "ls :"  # a blank image, formatted at first boot
    data = bytes(range(256)) * 9 + b"tail"  # every byte value, several 256-byte chunks
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    mpremote(port, "fs", "mkdir", ":lib", "+", "fs", "cp", str(src), ":lib/blob.bin")
    ls = mpremote(port, "fs", "ls", ":lib").stdout
    assert "%12d blob.bin" % len(data) in ls
    assert hashlib.sha256(data).hexdigest() in mpremote(port, "fs", "sha256sum", ":lib/blob.bin").stdout
    # copying it again is skipped by its hash, computed on the board (hashlib)
    assert "Up to date: lib/blob.bin" in mpremote(port, "fs", "cp", str(src), ":lib/blob.bin").stdout
    back = tmp_path / "back.bin"
    mpremote(port, "fs", "cp", ":lib/blob.bin", str(back))
    assert back.read_bytes() == data
    mpremote(port, "fs", "cp", str(src), ":x.bin", "+", "fs", "rm", ":x.bin")
    assert "x.bin" not in mpremote(port, "fs", "ls").stdout
    gone = mpremote(port, "fs", "cat", ":nothing.txt", check=False)
    assert gone.returncode == 1 and "No such file or directory" in gone.stderr
    mpremote(port, "fs", "rm", ":lib/blob.bin", "+", "fs", "rmdir", ":lib")
    assert mpremote(port, "fs", "ls").stdout.strip() == "ls :"
    # the board's own view: littlefs2 at /, a board's sys.path, no host files
    out = mpremote(port, "exec", "import os, sys; print(os.listdir('/'), sys.path, os.statvfs('/')[0:3])").stdout
    assert out.strip() == "[] ['', '.frozen', '/lib'] (4096, 4096, 64)"


def test_mpremote_exec_errors_and_resume(board):
    port = board.port
    assert mpremote(port, "exec", "print(6 * 7)").stdout == "42\n"
    bad = mpremote(port, "exec", "x = 1\n1 / 0", check=False)
    assert bad.returncode == 1
    # the board's traceback: the user's code only, nothing of the emulator
    assert bad.stdout == ('Traceback (most recent call last):\n  File "<stdin>", line 2, in <module>\n'
                          "ZeroDivisionError: divide by zero\n")
    syntax = mpremote(port, "exec", "def f(:", check=False)
    assert syntax.returncode == 1 and "SyntaxError" in syntax.stdout
    # one mpremote session keeps the REPL's globals; `resume` keeps them across sessions;
    # a plain connection soft-resets the board first (mpremote's default)
    assert mpremote(port, "exec", "kept = 5", "+", "exec", "print(kept)").stdout == "5\n"
    assert mpremote(port, "resume", "exec", "print(kept + 1)").stdout == "6\n"
    assert "NameError" in mpremote(port, "exec", "print(kept)", check=False).stdout


def test_soft_reset_keeps_the_flash_and_runs_boot_and_main(board, tmp_path):
    port = board.port
    (tmp_path / "boot.py").write_text("f = open('boots.txt', 'a')\nf.write('b')\nf.close()\n")
    (tmp_path / "main.py").write_text("f = open('mains.txt', 'a')\nf.write('m')\nf.close()\nprint('main says hi')\n")
    mpremote(port, "fs", "cp", str(tmp_path / "boot.py"), ":boot.py", "+", "fs", "cp", str(tmp_path / "main.py"),
             ":main.py")
    # mpremote's soft reset is from the raw REPL: boot.py runs, main.py does not
    mpremote(port, "soft-reset")
    counts = "print(open('boots.txt').read(), open('mains.txt').read() if 'mains.txt' in __import__('os').listdir() else '')"
    before = mpremote(port, "resume", "exec", counts).stdout.split()
    assert before == ["b"]  # (`fs cp` soft-reset the board before boot.py was there)
    # Ctrl-D at the friendly prompt: "MPY: soft reboot", boot.py, main.py, the banner
    t = Terminal(port)
    try:
        t.send(b"\r\x03\x02")
        t.until(b"information.\r\n>>> ")
        t.send(b"\x04")
        out = t.until(b">>> ")
    finally:
        t.close()
    assert b"MPY: soft reboot\r\nmain says hi\r\nMicroPython " in out
    assert b'Type "help()" for more information.\r\n>>> ' in out
    assert mpremote(port, "resume", "exec", counts).stdout.split() == ["bb", "m"]


def test_mpremote_reset_is_a_hard_reset_that_runs_main(board, tmp_path):
    port = board.port
    (tmp_path / "main.py").write_text("f = open('mains.txt', 'a')\nf.write('m')\nf.close()\n")
    mpremote(port, "fs", "cp", str(tmp_path / "main.py"), ":main.py")
    mpremote(port, "reset")  # machine.reset(): the interpreter is killed, the board boots
    # Wait for the friendly REPL's prompt, which comes after main.py: an mpremote that
    # connected sooner would interrupt main.py (Ctrl-C into the raw REPL) before it wrote.
    t = Terminal(port, timeout=30)
    try:
        t.until(b">>> ")
    finally:
        t.close()
    out = mpremote(port, "resume", "exec", "import os; print('mains.txt' in os.listdir())").stdout
    assert out.strip() == "True"


def test_raw_paste_flow_control_and_mpremote_run(board, tmp_path):
    t = Terminal(board.port)
    try:
        t.raw()
        t.send(b"\x05A\x01")
        assert t.ser.read(2) == b"R\x01"  # raw-paste supported
        assert t.ser.read(2) == b"\x80\x00"  # a 128-byte window, and a second one free:
        assert t.ser.read(1) == b"\x01"
        code = b"".join(b"x%d = %d\n" % (i, i) for i in range(60)) + b"print(sum([x0, x59]))\n"
        assert len(code) > 3 * 128
        credits, sent = 256, 0
        while sent < len(code):
            while credits == 0:
                assert t.ser.read(1) == b"\x01"  # the board took another window
                credits += 128
            n = min(credits, len(code) - sent)
            t.send(code[sent:sent + n])
            sent += n
            credits -= n
        t.send(b"\x04")
        t.until(b"\x04")  # the board saw the end
        assert t.until(b"\x04>") == b"59\n\x04\x04>"
    finally:
        t.close()
    script = tmp_path / "script.py"
    script.write_text("".join("v%d = %d\n" % (i, i) for i in range(150)) + "print('total', v0 + v149)\n")
    assert mpremote(board.port, "run", str(script)).stdout == "total 149\n"


def test_ctrl_c_interrupts_running_code_as_on_a_board(board):
    t = Terminal(board.port)
    try:
        t.raw()
        t.send(b"import time\nn = 0\nwhile True:\n    n += 1\n\x04")
        t.until(b"OK")
        time.sleep(0.3)
        t.send(b"\x03")
        assert t.until(b"\x04>").endswith(b"\x04Traceback (most recent call last):\n  File \"<stdin>\", line 4, in "
                                          b"<module>\nKeyboardInterrupt: \n\x04>")
        out, _ = t.exec_raw(b"print(n > 0)")
        assert out == b"True\n"
        t.send(b"time.sleep(30)\x04")  # a blocking call ends at once too
        t.until(b"OK")
        time.sleep(0.2)
        start = time.monotonic()
        t.send(b"\x03")
        assert b"KeyboardInterrupt" in t.until(b"\x04>")
        assert time.monotonic() - start < 10
        # with Ctrl-C switched off, the code reads it as a byte; the next program has it on again
        t.send(b"import micropython, sys\nmicropython.kbd_intr(-1)\nprint(sys.stdin.buffer.read(1))\x04")
        t.until(b"OK")
        time.sleep(0.2)
        t.send(b"\x03")
        assert t.until(b"\x04>").startswith(b"b'\\x03'\n\x04")
        t.send(b"while True:\n    pass\n\x04")
        t.until(b"OK")
        time.sleep(0.2)
        t.send(b"\x03")
        assert b"KeyboardInterrupt" in t.until(b"\x04>")
    finally:
        t.close()


def test_interrupts_racing_the_end_of_the_code(board):
    # A Ctrl-C that lands as the code ends, or in the emulator's own steps after it,
    # must never wedge the REPL nor cost a byte of the protocol.
    t = Terminal(board.port)
    rnd = random.Random(7)
    seen = set()
    try:
        t.raw()
        for i in range(150):
            t.send(b"for i in range(%d): pass\nprint('done')\x04" % rnd.randint(0, 3000))
            time.sleep(rnd.random() * 0.004)
            t.send(b"\x03")
            out = t.until(b"\x04>")
            seen.add("interrupted" if b"KeyboardInterrupt" in out else "done")
            assert out.startswith(b"OK") and (b"KeyboardInterrupt" in out or out.endswith(b"done\n\x04\x04>")), out
            assert t.exec_raw(b"print(%d)" % i) == (b"%d\n" % i, b"")
    finally:
        t.close()
    assert "emulator.ptyboard:" not in board.errors()  # no reboot, no unknown message


def test_interrupts_during_flash_writes_leave_littlefs_intact(board):
    # littlefs runs the flash driver (Python here) from C: a Ctrl-C there must wait for
    # the block operation, as on a board whose driver is C.
    t = Terminal(board.port)
    rnd = random.Random(11)
    try:
        t.raw()
        for i in range(40):
            t.send(b"f = open('t%d.bin', 'wb')\nfor i in range(60):\n    f.write(b'x' * 700)\n    f.flush()\n"
                   b"f.close()\x04" % (i % 3))
            time.sleep(rnd.random() * 0.05)
            t.send(b"\x03")
            out = t.until(b"\x04>")
            assert b"OSError" not in out, out
            out, err = t.exec_raw(b"f = None\nimport gc, os\ngc.collect()\ng = open('ok.txt', 'w')\ng.write('%d')\ng.close()\n"
                                  b"print(open('ok.txt').read(), sorted(os.listdir()))" % i)
            assert err == b"" and out.startswith(b"%d [" % i), (out, err)
            if i % 10 == 9:
                t.send(b"\x04")  # soft reset: the file system is mounted afresh
                t.until(b"raw REPL; CTRL-B to exit\r\n>")
    finally:
        t.close()


def test_friendly_repl(board):
    t = Terminal(board.port)
    try:
        t.send(b"\r\x03\x02")
        assert t.until(b"information.\r\n>>> ").endswith(b'; a board (emulated) with 64 KiB heap\r\n'
                                                          b'Type "help()" for more information.\r\n>>> ')
        t.send(b"'ready'\r")  # (the boot's own banner may have come first)
        t.until(b"'ready'\r\n>>> ")
        t.send(b"1 + 2\r")
        assert t.until(b">>> ") == b"1 + 2\r\n3\r\n>>> "
        # auto-indent, as MicroPython's readline: a block ends at an empty line
        t.send(b"for i in range(2):\r")
        assert t.until(b"...     ") == b"for i in range(2):\r\n...     "
        t.send(b"print(i * 10)\r\r\r\r")  # the body, then Enter on two auto-indents and an empty line
        assert t.until(b">>> ").endswith(b"\r\n0\r\n10\r\n>>> ")
        t.send(b"abc\x7f\x7f\x7fx = [1,\r")  # backspace, then a continued bracket
        t.until(b"... ")
        t.send(b"2]\rx\r")
        assert t.until(b"[1, 2]\r\n>>> ")
        t.send(b"\x05")  # paste mode
        t.until(b"=== ")
        t.send(b"a = 1\rb = 2\rprint(a + b)\r\x04")
        assert t.until(b">>> ").endswith(b"\r\n3\r\n>>> ")
        t.send(b"undefined_name\r")
        assert t.until(b">>> ").endswith(b"NameError: name 'undefined_name' isn't defined\r\n>>> ")
        t.send(b"\x1b[A")  # history
        assert t.until(b"undefined_name").endswith(b"\x1b[Kundefined_name")
    finally:
        t.close()


def test_continuation_rule_is_micropythons():
    assert not needs_more_input("x = 1")
    assert needs_more_input("if x:")  # a compound statement goes on until an empty line
    assert needs_more_input("if x:\n    y = 1")
    assert not needs_more_input("if x:\n    y = 1\n")
    assert not needs_more_input("  if x:")  # only from column 0, as MicroPython
    assert not needs_more_input("ifx = 3")
    assert needs_more_input("x = [1,") and not needs_more_input("x = [1,\n2]")
    assert needs_more_input('s = """a') and not needs_more_input('s = """a\nb"""')
    assert not needs_more_input('print("(")') and needs_more_input("x = 1 + \\")
    assert needs_more_input("@decorator")


def test_the_boards_heap_and_frozen_modules(tmp_path):
    need_board_tools()
    from edgeline_host.firmware import build
    from edgeline_host.firmware.profiles import load_profile

    frozen = str(tmp_path / "edgeline.romfs")  # the library as the ESP32's firmware freezes it
    build.build_romfs_image(load_profile("esp32"), frozen)
    b = EmulatedBoard(tmp_path, "--profile", "esp32", "--frozen", frozen, flash_size=None)
    try:
        out = mpremote(b.port, "exec", "import gc, sys\ngc.collect()\nprint(gc.mem_free())\n"
                       "try:\n    bytearray(115000)\nexcept MemoryError:\n    print('MemoryError')\n"
                       "a = bytearray(100000)\nprint(len(a), sys.path)").stdout.split(None, 3)
        imported = mpremote(b.port, "exec", "import edgeline_app, edgeline.log\nprint(edgeline.log.__file__)").stdout
    finally:
        b.stop()
    heap = 111936  # boards/esp32/profile.json
    assert heap - 2048 < int(out[0]) <= heap  # the frozen image and the emulator take none of it
    assert out[1:3] == ["MemoryError", "100000"]
    assert out[3].strip() == "['', '.frozen', '/rom', '/rom/lib', '/lib']"
    assert imported.strip() == "/rom/edgeline/log.mpy"  # run in place from the image
    assert os.path.getsize(tmp_path / "flash.img") == 2 * 1024 * 1024  # the profile's partition


def test_power_cut_keeps_what_was_written(board):
    port = board.port
    mpremote(port, "exec", "f = open('a.txt', 'w'); f.write('kept'); f.close()")
    board.power_cut()
    time.sleep(1)
    assert mpremote(port, "exec", "print(open('a.txt').read())").stdout == "kept\n"
    assert "power cut" in board.errors()


def test_bad_invocations_are_one_line(tmp_path):
    need_board_tools()
    import subprocess

    def run(*args):
        p = subprocess.run([sys.executable, "-m", "emulator.ptyboard"] + list(args), cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, p.stderr
        return lines[0]

    flash = str(tmp_path / "f.img")
    assert "give --profile NAME or --heap SIZE" in run("--flash", flash)
    assert "unknown profile 'nope'; known: " in run("--profile", "nope", "--flash", flash)
    assert "runs circuitpython; the emulated board runs MicroPython" in run("--profile", "circuitpython-pico-w",
                                                                            "--flash", flash)
    assert "does not exist; give --flash-size" in run("--heap", "64k", "--flash", flash)
    assert "not a size" in run("--heap", "lots", "--flash", flash, "--flash-size", "64k")
    assert "not a whole number of 4096-byte blocks" in run("--heap", "64k", "--flash", flash, "--flash-size", "5000")
    (tmp_path / "small.img").write_bytes(b"\xff" * 8192)
    assert "is 8192 bytes, not the 65536 asked for" in run("--heap", "64k", "--flash", str(tmp_path / "small.img"),
                                                           "--flash-size", "64k")
    assert "micropython exited while booting" in run("--heap", "2k", "--flash", flash, "--flash-size", "64k")
    assert "no such file: %s" % (tmp_path / "none.romfs") in run("--heap", "64k", "--flash", flash, "--frozen",
                                                                 str(tmp_path / "none.romfs"))
