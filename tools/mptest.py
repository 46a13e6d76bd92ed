# Tiny test runner for MicroPython (and CPython): runs the plain `test_*` functions of
# the test files named on the command line, the same files pytest collects.
#
#   python tools/mpbuild.py build/mpy          # compile core + tests to .mpy
#   micropython -X heapsize=64k tools/mptest.py --path build/mpy tests/core/test_log.py
#
# --path DIR puts DIR first on sys.path (the compiled tree); -kNAME runs only tests whose
# name contains NAME.
# Prints one line per failure and ends with "N passed, N failed"; exits 1 on failure.
import sys

try:
    import gc
except ImportError:
    gc = None


def _dirname(path):
    i = path.rfind("/")
    return path[:i] if i > 0 else "."


def _modname(path):
    name = path[path.rfind("/") + 1:]
    return name[:-3] if name.endswith(".py") else name


def _import_compact(name):
    # Loading modules leaves their code scattered over the heap with small holes between.
    # Holding one large block while importing keeps the code above it; freed afterwards,
    # it is one contiguous free region for the tests (a common trick in a board's main.py).
    # The block starts at a quarter of the free heap and shrinks until the import fits.
    # A quarter, not more: the first attempt must fit, because a failed one leaves the
    # modules it loaded scattered where the next attempt needs contiguous room (with
    # 40 %, tests/core/test_sync.py at 64 KB passed or failed by the length of a
    # temporary directory's name; a quarter passes at every heap from 62 KB up).
    if not gc:
        return __import__(name)
    gc.collect()
    size = gc.mem_free() // 4
    while True:
        ballast = None
        if size >= 2048:
            try:
                ballast = bytearray(size)
            except MemoryError:
                pass
        try:
            mod = __import__(name)
        except MemoryError:
            if ballast is None:
                raise
            ballast = None
            gc.collect()
            size //= 2
            continue
        ballast = None
        gc.collect()
        return mod


def _parse(argv):
    only = None
    verbose = False
    files = []
    front = []
    args = argv[1:]
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("-k"):
            only = a[2:]
        elif a == "-v":
            verbose = True
        elif a == "--path":
            i += 1
            front.append(args[i])
        else:
            files.append(a)
        i += 1
    if not front:
        # Run from source: the repository's folders, found from this file's place.
        here = _dirname(argv[0])
        root = _dirname(here) if here != "." else ".."
        front = [root, root + "/tests/core", root + "/core"]
    for p in front:
        sys.path.insert(0, p)
    return only, verbose, files


def _run_test(path, n, fn, verbose, counts):
    if gc:
        gc.collect()
    try:
        fn()
        counts[0] += 1
        if verbose and gc:
            gc.collect()
            print("ok %s (free %d)" % (n, gc.mem_free()))
    except Exception as e:  # noqa: BLE001 - a runner reports everything
        counts[1] += 1
        print("FAILED %s::%s: %s: %s" % (path, n, type(e).__name__, e))
        if hasattr(sys, "print_exception"):
            sys.print_exception(e)
        else:
            import traceback
            traceback.print_exc()


def _tests(files, only):
    # Yields (path, name, function), importing each file when its turn comes.
    for path in files:
        d = _dirname(path)
        if d not in sys.path:
            sys.path.append(d)
        mod = _import_compact(_modname(path))
        names = sorted(n for n in dir(mod) if n.startswith("test_"))
        for n in names:
            if only and only not in n:
                continue
            yield path, n, getattr(mod, n)


def _summary(counts):
    print("%d passed, %d failed" % (counts[0], counts[1]))
    return 1 if counts[1] else 0


def main(argv):
    only, verbose, files = _parse(argv)
    counts = [0, 0]
    for path, n, fn in _tests(files, only):
        _run_test(path, n, fn, verbose, counts)
    return _summary(counts)


# Stepwise, for a host that must regain control between tests: MicroPython's WebAssembly
# port collects garbage only when its JavaScript host's call into it returns
# (tools/mp32/run.mjs). start(argv) takes main's arguments; each step() runs one test and
# returns; after the last, step() raises SystemExit with main's exit status.
_state = []


def start(argv):
    only, verbose, files = _parse(argv)
    _state[:] = [_tests(files, only), verbose, [0, 0]]


def step():
    tests, verbose, counts = _state
    try:
        path, n, fn = next(tests)
    except StopIteration:
        sys.exit(_summary(counts))
    _run_test(path, n, fn, verbose, counts)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
