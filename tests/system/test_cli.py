"""The `edgeline` CLI: the demo (a real SIGKILL), log inspection, one-line errors."""
import json
import os
import subprocess
import sys

from edgeline import codec
from edgeline.log import RingLog
from edgeline.outbox import Outbox

EXE = os.path.join(os.path.dirname(sys.executable), "edgeline")


def run(*args):
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=120)


def test_demo_loses_nothing_acknowledged(tmp_path):
    proc = run("demo", "--json", "--seconds", "1.0", "--dir", str(tmp_path / "log"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is True
    assert result["durable_lost"] == 0 and result["corrupt_returned"] == 0
    assert result["survived_last_seq"] >= result["durable_acknowledged"] > 0
    assert result["next_seq"] == result["survived_last_seq"] + 1
    assert result["uplink_acked"] >= result["uplink_acked_before_kill"]
    # the demo's log is left where asked and is a valid log
    lg = RingLog(str(tmp_path / "log"), segment_bytes=16384, budget_bytes=256 * 1024)
    assert lg.last_seq == result["next_seq"]
    lg.close()


def test_log_stat_and_read(tmp_path):
    d = str(tmp_path / "t")
    lg = RingLog(d, segment_bytes=4096, budget_bytes=65536)
    for i in range(10):
        lg.append(codec.dumps({"i": i}), ts=i << 16, key=b"k%d" % i if i % 2 else None)
    ob = Outbox(lg, "uplink")
    ob.ack(4)
    lg.close()
    proc = run("log", "stat", d, "--json")
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["last_seq"] == 10 and st["consumers"]["uplink"]["acked"] == 4
    assert st["consumers"]["uplink"]["owes"] == 6
    assert st["incarnation"] == RingLog(d, segment_bytes=4096, budget_bytes=65536).incarnation.hex() != "0" * 16
    proc = run("log", "read", d, "--from", "9")
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [x["seq"] for x in lines] == [9, 10]
    assert lines[0]["value"] == {"i": 8} and lines[1]["key"] == "k9"
    proc = run("log", "stat", d)
    assert "last_seq" in proc.stdout and "consumer uplink" in proc.stdout


def test_errors_are_one_line(tmp_path):
    proc = run("log", "stat", str(tmp_path / "missing"))
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgeline: error:") and "not a log directory" in err[0]
    assert "Traceback" not in proc.stderr
