"""The import structure of the product, read from the source (issue 8).

* no module of ``edgeline_host.agent`` imports ``edgeline_host.gateway``, nor the reverse:
  what both need lives in the shared modules (jsonrecords, nodekeys, yamlfile,
  transports);
* no import cycle anywhere in host/ (function-level imports included: a cycle hidden
  inside a function is still a knot a reader has to untie);
* transports import neither the agent nor the gateway (a gateway end takes the gateway
  duck-typed);
* core/ imports nothing outside core/ (it runs on the boards);
* nothing under host/ imports emulator/, tools/ or tests/ (the product runs from a plain
  ``pip install``);
* importing the edge agent does not load sqlite3 (the gateway's store).

The graph is built from every module's AST, so it sees imports that a run would only
reach on some path.
"""
import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = os.path.join(ROOT, "host")
CORE = os.path.join(ROOT, "core")
OUTSIDE_PRODUCT = ("emulator", "tools", "tests", "mpbuild", "faultproxy", "httpproxy")


def modules(base):
    """{dotted module name: path} of every .py under ``base``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames
                       if not d.startswith(".") and d != "__pycache__" and not d.endswith(".egg-info")]
        for f in filenames:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), base)[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            if rel:
                out[".".join(rel)] = os.path.join(dirpath, f)
    return out


def imports(name, path):
    """The absolute names ``name`` imports anywhere in its file (module level or inside
    functions), each as written: ``a.b`` for ``import a.b``, ``a.b.c`` for ``from a.b
    import c`` (c may be a module or a name in a.b)."""
    is_package = path.endswith("__init__.py")
    package = name if is_package else name.rpartition(".")[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                mod = base + ("." + node.module if node.module else "")
            else:
                mod = node.module
            out.add(mod)
            out.update(mod + "." + a.name for a in node.names if a.name != "*")
    return out


def graph(mods):
    """{module: set of modules of ``mods`` it imports}; importing ``a.b.c`` also imports
    its packages ``a`` and ``a.b``, which are edges too."""
    g = {}
    for name, path in mods.items():
        deps = set()
        for imp in imports(name, path):
            parts = imp.split(".")
            for i in range(1, len(parts) + 1):
                cand = ".".join(parts[:i])
                if cand in mods and cand != name:
                    deps.add(cand)
        g[name] = deps
    return g


def cycles(g):
    """The strongly connected components of ``g`` with more than one module (Tarjan)."""
    index = {}
    low = {}
    stack = []
    on = set()
    out = []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def without_packages(g):
    """The graph without the edges from a module to the packages that contain it: a
    package's ``__init__`` runs first whatever imports its module, so that edge is no
    dependency of the module's own."""
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in g.items()}


HOST_MODULES = modules(HOST)
HOST_GRAPH = without_packages(graph(HOST_MODULES))


def test_the_graph_sees_function_level_and_relative_imports():
    g = HOST_GRAPH
    assert "edgeline_host.transports.http" in g["edgeline_host.agent.uplink"]  # relative, module level
    assert "edgeline_host.agent.mqtt_ingest" in g["edgeline_host.agent.service"]  # relative, inside a function
    assert "edgeline_host.gateway.service" in g["edgeline_host.cli"]  # absolute, inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_agent_and_gateway_do_not_import_each_other():
    bad = []
    for m, deps in HOST_GRAPH.items():
        for side, other in (("edgeline_host.agent", "edgeline_host.gateway"),
                            ("edgeline_host.gateway", "edgeline_host.agent")):
            if m == side or m.startswith(side + "."):
                bad += ["%s imports %s" % (m, d) for d in sorted(deps) if d == other or d.startswith(other + ".")]
    assert not bad, bad


def test_transports_import_neither_agent_nor_gateway():
    bad = ["%s imports %s" % (m, d) for m, deps in HOST_GRAPH.items() if m.startswith("edgeline_host.transports")
           for d in sorted(deps) if d.startswith(("edgeline_host.agent", "edgeline_host.gateway"))]
    assert not bad, bad


def test_no_import_cycle_in_host():
    assert cycles(HOST_GRAPH) == []


def test_core_imports_nothing_outside_core():
    core = modules(CORE)
    # MicroPython's own modules (the u-names are its fallbacks for the standard library),
    # and the firmware's AES (MicroPython's cryptolib, CircuitPython's aesio: edgeline.e2e)
    allowed_outside = {"micropython", "machine", "uos", "utime", "ustruct", "ubinascii", "uhashlib", "uerrno",
                       "ucollections", "uio", "ujson", "uzlib", "cryptolib", "aesio"}
    bad = []
    for name, path in core.items():
        for imp in imports(name, path):
            top = imp.split(".")[0]
            if top == "edgeline" or top in allowed_outside or top in sys.stdlib_module_names:
                continue
            bad.append("%s imports %s" % (name, imp))
    assert not bad, bad


def test_host_imports_nothing_of_emulator_tools_or_tests():
    bad = set()
    for name, path in HOST_MODULES.items():
        for imp in imports(name, path):
            if imp.split(".")[0] in OUTSIDE_PRODUCT:
                bad.add(name)
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):  # code that changes sys.path (not text that a board runs)
            if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                    and node.value.id == "sys"):
                bad.add(name)  # putting the checkout on the path is importing from it
    assert not bad, sorted(bad)


def test_importing_the_edge_agent_loads_no_sqlite3():
    code = ("import sys, edgeline_host.agent.service, edgeline_host.agent.uplink, edgeline_host.agent.mqtt_ingest; "
            "assert 'sqlite3' not in sys.modules, 'sqlite3 loaded'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
