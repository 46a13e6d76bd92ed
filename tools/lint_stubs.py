"""Check every module, name and attribute core/ uses against the boards' firmware stubs.

    python tools/lint_stubs.py --install        # once: fetch each target's stubs (make venv does it)
    python tools/lint_stubs.py [--target T] [PATH ...]   # default PATH: core/edgeline

The MicroPython unix port that runs our tests has more than a board's firmware: a call that
works in CI can be missing on an RP2040, an ESP32 or under CircuitPython. This lint reads
core/ with ``ast`` and checks each use against the type stubs published for each target:

* ``rp2``   -- micropython-rp2-stubs (firmware of the Pico W) + micropython-stdlib-stubs
* ``esp32`` -- micropython-esp32-stubs (ESP32_GENERIC firmware) + micropython-stdlib-stubs
* ``circuitpython`` -- circuitpython-stubs (+ the supplement below)

A problem prints one line, ``FILE:LINE: module.name is missing on TARGET (stubs)``, and
the exit status is 1.

What counts as a use: ``import m``, ``from m import n``, and ``m.n`` where ``m`` is a name
bound to an imported module. Imports inside ``try`` blocks are modelled as the
interpreter runs them: a missing module or ``from``-name raises ImportError, a missing
attribute AttributeError; if a handler of the ``try`` catches the first such failure, its
body is checked instead (so a fallback chain passes when one branch exists on the
target), otherwise the failure is reported. Code a target never runs is skipped: a branch
of ``if FLAG`` / ``if not FLAG`` where FLAG is a module-level
``sys.implementation.name in (...)`` test, evaluated per target, and a branch of
``if hasattr(m, "name")`` for an imported module m, evaluated by the target's stubs.
Function bodies are checked where their ``def`` runs, but a failure inside one is never
caught by a ``try`` around the ``def``.

Where the stubs' truth comes from, per layer:

* a port package's own modules (``time.pyi``, ``binascii.pyi``, ``vfs.pyi`` ...) are
  generated from the firmware itself: every name in them exists;
* ``micropython-stdlib-stubs`` (``os``, ``sys``, ``struct``, ``collections``, ``io`` ...)
  is typeshed's CPython stubs with MicroPython's documentation merged in. Only the
  names MicroPython documents -- those carrying a docstring or ``@mp_available`` -- are
  taken as present; typeshed's bare entries (``os.fsync``, ``struct.Struct``) are CPython's;
* ``circuitpython-stubs`` leaves out the modules named like CPython's (its build drops
  array, math, os, random, struct, sys, ssl, time so type checkers use typeshed's) and
  never had MicroPython's extmod ones (binascii, collections, gc). For those,
  ``CIRCUITPYTHON_SUPPLEMENT`` below lists CircuitPython 10's names, each module with the
  source file that defines it; the lint refuses to run if the stubs ever start shipping
  one of them (the stubs then win and the entry must go).

The stubs are installed one directory per target (``--install``; default
``<sys.prefix>/edgeline-stubs/TARGET``, or ``$EDGELINE_STUBS_DIR/TARGET``), not into the
virtualenv's site-packages: the MicroPython port packages all ship the same top-level
files (``time.pyi``, ``machine.pyi`` ...), so a second port installed beside the first
would overwrite it. Files are located through ``importlib.metadata`` and checked against
their RECORD hashes before they are read.
"""
import ast
import base64
import hashlib
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_STDLIB = "micropython-stdlib-stubs==1.29.0.post2"

# target: implementation name (sys.implementation.name), pinned requirements, and the
# stub layers in lookup order: (distribution, path patterns, which names count).
TARGETS = {
    "rp2": {
        "impl": "micropython",
        "requires": ["micropython-rp2-stubs==1.29.0.post1", _STDLIB],
        "layers": [
            ("micropython-rp2-stubs", ("{m}.pyi", "{m}/__init__.pyi"), "all"),
            ("micropython-stdlib-stubs", ("stdlib/{m}.pyi", "stdlib/{m}/__init__.pyi"), "documented"),
        ],
    },
    "esp32": {
        "impl": "micropython",
        "requires": ["micropython-esp32-stubs==1.29.0.post1", _STDLIB],
        "layers": [
            ("micropython-esp32-stubs", ("{m}.pyi", "{m}/__init__.pyi"), "all"),
            ("micropython-stdlib-stubs", ("stdlib/{m}.pyi", "stdlib/{m}/__init__.pyi"), "documented"),
        ],
    },
    "circuitpython": {
        "impl": "circuitpython",
        "requires": ["circuitpython-stubs==10.3.1"],
        "layers": [
            ("circuitpython-stubs", ("{m}-stubs/__init__.pyi",), "all"),
        ],
    },
}

# CircuitPython 10 (a full build, as on the Feather RP2040) for the modules
# circuitpython-stubs does not describe. Names are those of each module's globals table.
CIRCUITPYTHON_SUPPLEMENT = {
    # shared-bindings/os/__init__.c
    "os": ("chdir getcwd getenv listdir mkdir remove rename rmdir sep stat statvfs sync "
           "uname unlink urandom utime"),
    # shared-bindings/time/__init__.c: no ticks_ms/ticks_diff (supervisor.ticks_ms is in the stubs)
    "time": "localtime mktime monotonic monotonic_ns sleep struct_time time",
    # shared-bindings/struct/__init__.c: no Struct class
    "struct": "calcsize pack pack_into unpack unpack_from",
    # py/modsys.c with CircuitPython's configuration
    "sys": ("argv byteorder exit implementation maxsize modules path platform "
            "print_exception stderr stdin stdout version version_info"),
    # extmod/modbinascii.c; crc32 needs CIRCUITPY_ZLIB, on in full builds
    "binascii": "a2b_base64 b2a_base64 crc32 hexlify unhexlify",
    # py/modcollections.c; OrderedDict and deque are on in full builds
    "collections": "OrderedDict deque namedtuple",
    # py/modgc.c
    "gc": "collect disable enable isenabled mem_alloc mem_free",
}

# Modules of the core that only CPython loads, so the lint does not check them. Each
# entry says why; the lint checks the claim: importing one where a board would run the
# import is itself a problem.
CPYTHON_ONLY = {
    "edgeline.fastpath": "the CPython fast paths of the log (append, batch fill, segment "
                         "read); log.py imports it only under `if not _SMALL`, and boards "
                         "run log.py's own allocation-free paths",
}


class LintError(Exception):
    """The lint could not run (stubs missing or tampered with); one line."""


# ------------------------------------------------------------------ stubs


def stubs_dir(target, base=None):
    base = base or os.environ.get("EDGELINE_STUBS_DIR") or os.path.join(sys.prefix, "edgeline-stubs")
    return os.path.join(base, target)


def _dist_versions(path):
    import importlib.metadata as md

    return {d.metadata["Name"].lower(): d for d in md.distributions(path=[path])}


def install(targets, base=None, quiet=True):
    """pip-install each target's pinned stubs into its own directory (skipped when present)."""
    for t in targets:
        d = stubs_dir(t, base)
        have = _dist_versions(d) if os.path.isdir(d) else {}
        want = [r.split("==") for r in TARGETS[t]["requires"]]
        if all(n in have and have[n].version == v for n, v in want):
            continue
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--upgrade", "--target", d]
        if quiet:
            cmd.append("--quiet")
        subprocess.run(cmd + TARGETS[t]["requires"], check=True)


def _record_hash(data):
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


class Stubs:
    """The names each module has on one target, read from its stub distributions."""

    def __init__(self, target, base=None):
        self.target = target
        spec = TARGETS[target]
        self.impl = spec["impl"]
        d = stubs_dir(target, base)
        dists = _dist_versions(d) if os.path.isdir(d) else {}
        self._layers = []
        labels = []
        for name, patterns, rule in spec["layers"]:
            dist = dists.get(name)
            if dist is None:
                raise LintError(
                    "stubs for %s not found in %s: run `python tools/lint_stubs.py --install` (make venv does)" % (target, d)
                )
            files = {str(p): p for p in (dist.files or ())}
            self._layers.append((dist, files, patterns, rule))
            labels.append("%s %s" % (name, dist.version))
        self.label = ", ".join(labels)
        self._supplement = CIRCUITPYTHON_SUPPLEMENT if target == "circuitpython" else {}
        self._cache = {}
        for m in self._supplement:
            if self._find(m) is not None:
                raise LintError(
                    "circuitpython-stubs now describes module %r: remove it from CIRCUITPYTHON_SUPPLEMENT" % m
                )

    def _find(self, module):
        rel = module.replace(".", "/")
        for dist, files, patterns, rule in self._layers:
            for pat in patterns:
                p = files.get(pat.format(m=rel))
                if p is not None:
                    return dist, p, rule
        return None

    def names(self, module):
        """The set of names module has on this target, or None if it has no such module."""
        if module in self._cache:
            return self._cache[module]
        self._cache[module] = set()  # a star-import cycle ends here
        found = self._find(module)
        if found is None:
            names = set(self._supplement[module].split()) if module in self._supplement else None
        else:
            dist, p, rule = found
            with open(dist.locate_file(p), "rb") as f:
                data = f.read()
            if p.hash is not None and _record_hash(data) != p.hash.value:
                raise LintError("%s: %s does not match its RECORD hash (overwritten?)" % (dist.metadata["Name"], p))
            try:
                names, stars = stub_names(ast.parse(data, str(p)), rule == "documented")
            except SyntaxError:
                if rule == "documented":
                    raise
                # Stubs may use syntax newer than this Python (circuitpython-stubs has
                # PEP 695 generics: `def const[T](...)`); their top-level names still
                # read off the lines.
                names, stars = _stub_names_by_line(data.decode("utf-8"))
            for m in stars:
                names |= self.names(m) or set()
        self._cache[module] = names
        return names


def _is_doc(node):
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _mp_available(decorators):
    for d in decorators:
        f = d.func if isinstance(d, ast.Call) else d
        if (isinstance(f, ast.Name) and f.id == "mp_available") or (isinstance(f, ast.Attribute) and f.attr == "mp_available"):
            return True
    return False


def stub_names(tree, documented_only):
    """(names, star-imported modules) defined by a stub module.

    documented_only: count a name only if MicroPython documents it (a docstring, an
    attribute docstring after an assignment, or ``@mp_available``)."""
    names = set()
    stars = []

    def walk(body):
        for i, n in enumerate(body):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not documented_only or (n.body and _is_doc(n.body[0])) or _mp_available(n.decorator_list):
                    names.add(n.name)
            elif isinstance(n, (ast.Assign, ast.AnnAssign)):
                targets = [n.target] if isinstance(n, ast.AnnAssign) else n.targets
                if not documented_only or (i + 1 < len(body) and _is_doc(body[i + 1])):
                    for t in targets:
                        if isinstance(t, ast.Name):
                            names.add(t.id)
            elif isinstance(n, ast.If):
                walk(n.body)
                walk(n.orelse)
            elif isinstance(n, ast.Try):
                walk(n.body)
                for h in n.handlers:
                    walk(h.body)
                walk(n.orelse)
            elif isinstance(n, ast.ImportFrom) and not n.level:
                for a in n.names:
                    if a.name == "*":
                        stars.append(n.module)
                    elif a.asname == a.name and not documented_only:  # PEP 484 re-export
                        names.add(a.name)

    walk(tree.body)
    return names, stars


import re

_TOP_NAME = re.compile(r"^(?:async\s+def|def|class)\s+([A-Za-z_]\w*)|^([A-Za-z_]\w*)\s*[:=]")
_STAR = re.compile(r"^from\s+([\w.]+)\s+import\s+\*")


def _stub_names_by_line(text):
    names = set()
    stars = []
    for line in text.splitlines():
        m = _TOP_NAME.match(line)
        if m:
            names.add(m.group(1) or m.group(2))
            continue
        m = _STAR.match(line)
        if m:
            stars.append(m.group(1))
    return names, stars


# ------------------------------------------------------------------ the code under check


class Use:
    """One use: module (and name) at file:line; exc is what a miss raises."""

    __slots__ = ("file", "line", "module", "name", "exc", "catchable", "why")

    def __init__(self, file, line, module, name, exc, catchable=True, why=None):
        self.file = file
        self.line = line
        self.module = module
        self.name = name
        self.exc = exc
        self.catchable = catchable
        self.why = why

    def uncaught(self):
        return Use(self.file, self.line, self.module, self.name, self.exc, False, self.why)


def _flag_value(node, flags, impl):
    """True/False if node is a board flag or its negation, else None."""
    if isinstance(node, ast.Name) and node.id in flags:
        return impl in flags[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        v = _flag_value(node.operand, flags, impl)
        return None if v is None else not v
    return None


def _impl_test(node):
    """The implementation names a `sys.implementation.name in (...)` test accepts, or None."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1):
        return None
    left = node.left
    if not (isinstance(left, ast.Attribute) and left.attr == "name" and isinstance(left.value, ast.Attribute)
            and left.value.attr == "implementation" and isinstance(left.value.value, ast.Name)
            and left.value.value.id == "sys"):
        return None
    op, right = node.ops[0], node.comparators[0]
    if isinstance(op, ast.In) and isinstance(right, (ast.Tuple, ast.List, ast.Set)):
        vals = [e.value for e in right.elts if isinstance(e, ast.Constant)]
        return set(vals) if len(vals) == len(right.elts) else None
    if isinstance(op, ast.Eq) and isinstance(right, ast.Constant):
        return {right.value}
    return None


class Module:
    """One parsed source file of the package under check."""

    def __init__(self, path, source, package="edgeline"):
        self.path = path
        self.package = package
        self.tree = ast.parse(source, self.path)
        self.flags = {}  # board flag name -> implementation names it is true on
        for n in self.tree.body:
            if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
                accepted = _impl_test(n.value)
                if accepted is not None:
                    self.flags[n.targets[0].id] = accepted

    def _absolute(self, node):
        if not node.level:
            return node.module or ""
        base = self.package
        return base + "." + node.module if node.module else base

    def _internal(self, module):
        return module == self.package or module.startswith(self.package + ".")

    def uses_of(self, stmt, env):
        """Uses in one simple statement, in source order; imports also bind names in env
        (name -> module), which attribute reads are resolved with."""
        out = []
        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                kind = "internal" if self._internal(a.name) else "ImportError"
                out.append(Use(self.path, stmt.lineno, a.name, None, kind))
                if a.asname:
                    env[a.asname] = a.name
                elif "." not in a.name:
                    env[a.name] = a.name
            return out
        if isinstance(stmt, ast.ImportFrom):
            mod = self._absolute(stmt)
            for a in stmt.names:
                if self._internal(mod):
                    sub = mod + "." + a.name if stmt.level and not stmt.module else mod
                    out.append(Use(self.path, stmt.lineno, sub, None, "internal"))
                else:
                    out.append(Use(self.path, stmt.lineno, mod, a.name, "ImportError"))
                env.pop(a.asname or a.name, None)
            return out
        for n in ast.walk(stmt):
            if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in env
                    and isinstance(n.ctx, ast.Load)):
                out.append(Use(self.path, n.lineno, env[n.value.id], n.attr, "AttributeError"))
            elif isinstance(n, (ast.Assign, ast.AnnAssign)):
                for t in n.targets if isinstance(n, ast.Assign) else [n.target]:
                    if isinstance(t, ast.Name):
                        env.pop(t.id, None)
        out.sort(key=lambda u: u.line)
        return out


def _catches(handler, exc):
    t = handler.type
    if t is None:
        return True
    types = t.elts if isinstance(t, ast.Tuple) else [t]
    for e in types:
        name = e.id if isinstance(e, ast.Name) else getattr(e, "attr", None)
        if name in (exc, "Exception", "BaseException"):
            return True
    return False


class Checker:
    """Runs a module's statements on one target in the abstract: which imports and
    attribute reads fail, following try/except, board flags and name bindings."""

    def __init__(self, stubs):
        self.stubs = stubs

    def missing(self, use):
        """A one-line reason if use fails on this target, else None."""
        if use.exc == "internal":
            if use.module in CPYTHON_ONLY:
                return "%s is CPython-only (CPYTHON_ONLY) but imported where %s would run it" % (use.module, self.stubs.target)
            return None
        names = self.stubs.names(use.module)
        if names is None:
            return "module %s is missing on %s (%s)" % (use.module, self.stubs.target, self.stubs.label)
        if use.name is not None and use.name not in names:
            return "%s.%s is missing on %s (%s)" % (use.module, use.name, self.stubs.target, self.stubs.label)
        return None

    def module(self, mod):
        """Every failure of importing mod and of calling its functions, in order."""
        env = {}
        self._deferred = []
        fails = self.block(mod, mod.tree.body, env)
        # Functions run after the module's top level: with its final bindings. A failure
        # in one is never caught by a try around its def.
        while self._deferred:
            body, fenv = self._deferred.pop(0)
            fails += [u.uncaught() for u in self.block(mod, body, dict(fenv))]
        return fails

    def block(self, mod, stmts, env):
        fails = []
        for s in stmts:
            fails.extend(self.stmt(mod, s, env))
        return fails

    def stmt(self, mod, s, env):
        impl = self.stubs.impl
        if isinstance(s, ast.If):
            v = _flag_value(s.test, mod.flags, impl)
            if v is None:
                v = self._hasattr_value(s.test, env)
            fails = self.exprs(mod, s.test, env)
            if v is None or v:
                fails += self.block(mod, s.body, env)
            if v is None or not v:
                fails += self.block(mod, s.orelse, env)
            return fails
        if isinstance(s, ast.Try):
            body = self.block(mod, s.body, env)
            if not body:
                return self.block(mod, s.orelse, env) + self.block(mod, s.finalbody, env)
            first = body[0]
            if first.catchable:
                for h in s.handlers:
                    if _catches(h, first.exc):
                        return self.block(mod, h.body, env) + self.block(mod, s.finalbody, env)
            return body + self.block(mod, s.finalbody, env)
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
            fails = []
            for d in s.decorator_list + s.args.defaults + [d for d in s.args.kw_defaults if d is not None]:
                fails += self.exprs(mod, d, env)
            env.pop(s.name, None)
            self._deferred.append((s.body, env))  # the module's env: its final state at call time
            return fails
        if isinstance(s, ast.ClassDef):
            fails = []
            for b in s.bases:
                fails += self.exprs(mod, b, env)
            env.pop(s.name, None)
            return fails + self.block(mod, s.body, env)
        if isinstance(s, (ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith)):
            fails = []
            for field in ("iter", "test"):
                if getattr(s, field, None) is not None:
                    fails += self.exprs(mod, getattr(s, field), env)
            for item in getattr(s, "items", ()):
                fails += self.exprs(mod, item.context_expr, env)
            return fails + self.block(mod, s.body, env) + self.block(mod, getattr(s, "orelse", []), env)
        return self._fails(mod.uses_of(s, env))

    def _hasattr_value(self, node, env):
        """True/False if node is `hasattr(m, "name")` (or its negation) for an imported
        module m, as it evaluates on this target; else None."""
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            v = self._hasattr_value(node.operand, env)
            return None if v is None else not v
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hasattr"
                and len(node.args) == 2 and isinstance(node.args[0], ast.Name) and node.args[0].id in env
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            return None
        names = self.stubs.names(env[node.args[0].id])
        return names is not None and node.args[1].value in names

    def exprs(self, mod, node, env):
        return self._fails(mod.uses_of(ast.Expr(value=node), env))

    def _fails(self, uses):
        out = []
        for u in uses:
            why = self.missing(u)
            if why is not None:
                u.why = why
                out.append(u)
        return out


def _package_files(path):
    """(file path, module name) of a package directory or single files."""
    if os.path.isdir(path):
        pkg = os.path.basename(os.path.normpath(path))
        for name in sorted(os.listdir(path)):
            if name.endswith(".py"):
                mod = pkg if name == "__init__.py" else pkg + "." + name[:-3]
                yield os.path.join(path, name), mod, pkg
    else:
        yield path, None, "edgeline"


def lint_source(source, stubs_list, filename="<source>", package="edgeline"):
    """Problems (one line each) of one source text on each Stubs in stubs_list."""
    mod = Module(filename, source, package=package)
    out = []
    seen = set()
    for stubs in stubs_list:
        for u in Checker(stubs).module(mod):
            line = "%s:%d: %s" % (u.file, u.line, u.why)
            if line not in seen:
                seen.add(line)
                out.append(line)
    return out


def lint_paths(paths, stubs_list):
    """(problems, summary) for the files of paths (packages or single files)."""
    problems = []
    files = 0
    for p in paths:
        for path, modname, pkg in _package_files(p):
            if modname in CPYTHON_ONLY:
                continue
            with open(path, encoding="utf-8") as f:
                source = f.read()
            problems += lint_source(source, stubs_list, os.path.relpath(path, ROOT), package=pkg)
            files += 1
    summary = "%d files checked against %s" % (files, "; ".join("%s (%s)" % (s.target, s.label) for s in stubs_list))
    return problems, summary


def main(argv):
    args = list(argv)
    targets = []
    do_install = False
    paths = []
    while args:
        a = args.pop(0)
        if a == "--install":
            do_install = True
        elif a == "--target":
            t = args.pop(0) if args else ""
            if t not in TARGETS:
                print("lint_stubs: unknown target %r (one of %s)" % (t, ", ".join(TARGETS)))
                return 2
            targets.append(t)
        elif a.startswith("-"):
            print("usage: python tools/lint_stubs.py [--install] [--target rp2|esp32|circuitpython]... [PATH ...]")
            return 2
        else:
            paths.append(a)
    targets = targets or list(TARGETS)
    if do_install:
        install(targets)
        if not paths:
            return 0
    paths = paths or [os.path.join(ROOT, "core", "edgeline")]
    try:
        stubs_list = [Stubs(t) for t in targets]
        problems, summary = lint_paths(paths, stubs_list)
    except LintError as e:
        print("lint_stubs: %s" % e)
        return 2
    for p in problems:
        print(p)
    print("lint_stubs: %s: %d problem%s" % (summary, len(problems), "" if len(problems) == 1 else "s"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
