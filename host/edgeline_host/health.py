"""Health that tells the truth: ``ok | degraded | failing`` and the reasons why.

Shared by the agent (``/v1/health``, ``edgeline edge health``), the gateway (its
``/healthz`` and ``edgeline gateway health``) and the board status lines.

Theory of operation
-------------------
Health is computed, never stored: each service gathers its *facts* (how long the uplink
has failed, the gateway's refusal, corrupt records per topic, storage against budget,
free disk, whether its lock is still held, failed topics, store errors, refused nodes)
and hands them to the rule functions below. Each rule returns a list of ``Reason``s
(empty when the fact is fine); ``summarize`` gives the overall status -- the worst
severity of the reasons, ``ok`` when there are none.

* ``degraded``: the service works but something needs a look before data is lost or
  late (the uplink has failed longer than its threshold, corrupt records were skipped,
  storage nearly full).
* ``failing``: data cannot flow or cannot be kept without someone acting (the gateway
  refuses this node's key, a log failed a write, the data directory's lock was lost).

A reason is ``{"code", "severity", "line"}``: a stable code for scripts, the severity
it contributes, and one human line. The exit codes of the CLI's health commands are
``EXIT_CODES`` (0 ok, 1 degraded, 2 failing) and ``EXIT_UNREACHABLE`` (3).
"""

OK = "ok"
DEGRADED = "degraded"
FAILING = "failing"
_RANK = {OK: 0, DEGRADED: 1, FAILING: 2}
EXIT_CODES = {OK: 0, DEGRADED: 1, FAILING: 2}
EXIT_UNREACHABLE = 3

# The defaults of edge.yaml's health section (docs/config.md).
UPLINK_FAILING_S = 300
STORAGE_FULL_RATIO = 0.9
MIN_FREE_DISK_BYTES = 64 * 1024 * 1024

# Gateway ERROR codes (wire.md) that mean the gateway refuses this node's credentials.
AUTH_REFUSALS = ("bad_proof", "unknown_node")


def reason(code, severity, line):
    return {"code": code, "severity": severity, "line": line}


def summarize(reasons):
    """``{"status", "reasons"}``: the worst severity of ``reasons``, ok without any."""
    status = OK
    for r in reasons:
        if _RANK[r["severity"]] > _RANK[status]:
            status = r["severity"]
    return {"status": status, "reasons": list(reasons)}


def exit_code(status):
    return EXIT_CODES[status]


def _duration(s):
    s = int(s)
    if s < 120:
        return "%d s" % s
    if s < 7200:
        return "%d min" % (s // 60)
    return "%.1f h" % (s / 3600.0)


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024.0


# ---------------------------------------------------------------------------- rules


def uplink_failing(failing_for_s, threshold_s, last_error=None):
    """The uplink has failed every attempt for ``failing_for_s`` seconds (None: it is
    not failing): degraded once that reaches ``threshold_s``."""
    if failing_for_s is None or failing_for_s < threshold_s:
        return []
    line = "uplink failing for %s (threshold %s)" % (_duration(failing_for_s), _duration(threshold_s))
    if last_error:
        line += ": %s" % last_error
    return [reason("uplink_failing", DEGRADED, line)]


def auth_refused(code, line=None):
    """The gateway refused this node's credentials (``code`` one of AUTH_REFUSALS; None:
    not refused): failing, nothing can be sent until the keys agree."""
    if code is None:
        return []
    what = {"bad_proof": "the gateway refuses this node's key (bad_proof): the key in the gateway's keys file "
                         "is not this node's key",
            "unknown_node": "the gateway does not know this node (unknown_node): add it to the gateway's keys file"}
    text = what.get(code, "the gateway refuses this node (%s)" % code)
    if line:
        text += " -- %s" % line
    return [reason("auth_refused", FAILING, text)]


def corrupt_records(counts):
    """``counts``: {topic: corrupt records the log skipped}; degraded when any."""
    bad = sorted((t, n) for t, n in counts.items() if n)
    if not bad:
        return []
    return [reason("corrupt_records", DEGRADED, "%d corrupt record(s) skipped in %s" % (
        sum(n for _, n in bad), ", ".join("%s (%d)" % (t, n) for t, n in bad)))]


def storage_nearly_full(used_bytes, budget_bytes, ratio=STORAGE_FULL_RATIO):
    """The store uses more than ``ratio`` of its budget: degraded (eviction or refusal next)."""
    if not budget_bytes or used_bytes <= ratio * budget_bytes:
        return []
    return [reason("storage_full", DEGRADED, "storage %s of %s (%d%%, over %d%%)" % (
        _size(used_bytes), _size(budget_bytes), 100 * used_bytes // budget_bytes, round(100 * ratio)))]


def disk_low(free_bytes, floor_bytes):
    """The file system holding the data has less than ``floor_bytes`` free (None: unknown)."""
    if free_bytes is None or not floor_bytes or free_bytes >= floor_bytes:
        return []
    return [reason("disk_low", DEGRADED, "only %s free on the data directory's disk (floor %s)" % (
        _size(free_bytes), _size(floor_bytes)))]


def lock_lost(check):
    """``check``: a callable returning True when the data directory's lock was lost
    (dirlock's ``lock_lost``), or None when there is no lock to check. Failing: another
    process may be writing the same logs."""
    if check is None:
        return []
    try:
        lost = check()
    except Exception as e:  # noqa: BLE001 - a check that cannot tell is a lost lock
        return [reason("lock_lost", FAILING, "cannot check the data directory's lock: %s" % e)]
    if not lost:
        return []
    return [reason("lock_lost", FAILING, "the data directory's lock was lost: another process may write the same logs")]


def failed_topics(names):
    """Topics whose log failed a write (and stopped): failing."""
    if not names:
        return []
    return [reason("topic_failed", FAILING, "log failed a write: %s" % ", ".join(names))]


def store_errors(failures_in_window, window_s, last_error=None, failing_now=False):
    """The gateway's store failed ``failures_in_window`` commits in the last ``window_s``:
    degraded; failing while the last commit failed (``failing_now``: none has succeeded
    since, edges are being refused)."""
    if failing_now:
        return [reason("store_failing", FAILING, "the store's last commit failed: %s" % (last_error or "?"))]
    if not failures_in_window:
        return []
    line = "%d store commit(s) failed in the last %s" % (failures_in_window, _duration(window_s))
    if last_error:
        line += ": %s" % last_error
    return [reason("store_errors", DEGRADED, line)]


def refused_nodes(refusals, window_s):
    """``refusals``: {node: reason code} of nodes the gateway refused in the last
    ``window_s``: degraded (those nodes cannot deliver; their keys need fixing)."""
    if not refusals:
        return []
    return [reason("nodes_refused", DEGRADED, "refused in the last %s: %s" % (
        _duration(window_s), ", ".join("%s (%s)" % (n, refusals[n]) for n in sorted(refusals))))]


def lines(h):
    """Human lines of a health answer: the status, then one per reason."""
    out = [h["status"]]
    for r in h.get("reasons", ()):
        out.append("%s: %s [%s]" % (r["severity"], r["line"], r["code"]))
    return out


# ---------------------------------------------------------------------------- boards


def board_reasons(status=None, lines=()):
    """The reasons a MicroPython board is not ok, from what the host can read of it,
    without a byte more of the board's RAM: ``status`` (``edgeline board status``: per
    topic sizes and ``corrupt`` counts, the storage budget) and ``lines`` the board
    printed while it ran (its status lines: ``edgeline: sync failed: gateway sent ERROR
    bad_proof: ...``, the log's ``corrupt data in segment ... records a..b are lost``).
    The board knows no wall-clock duration of an outage: a failing uplink shows as its
    retry lines, not as ``uplink_failing``."""
    reasons = []
    refused = None
    corrupt = {}
    for line in lines:
        if "ERROR bad_proof" in line or "ERROR unknown_node" in line:
            refused = ("bad_proof" if "bad_proof" in line else "unknown_node", line)
        elif line.startswith("ACKED") or line.startswith("edgeline: done"):
            refused = None  # an exchange went through since
        if "has a corrupt header" in line:  # a whole segment unreadable: at least one record
            i = line.find("log ")
            name = line[i + 4:].split(":", 1)[0].rstrip("/").rsplit("/", 1)[-1] if i >= 0 else "?"
            corrupt[name] = corrupt.get(name, 0) + 1
        if "corrupt data in segment" in line and "records " in line:
            try:
                first, last = line.rsplit("records ", 1)[1].split(" ", 1)[0].split("..")
                i = line.find("log ")  # "edgeline warning: log <dir>: corrupt data ..."
                name = line[i + 4:].split(":", 1)[0].rstrip("/").rsplit("/", 1)[-1] if i >= 0 else "?"
                corrupt[name] = corrupt.get(name, 0) + int(last) - int(first) + 1
            except (ValueError, IndexError):
                corrupt["?"] = corrupt.get("?", 0) + 1
    if refused is not None:
        reasons += auth_refused(refused[0], refused[1])
    if status:
        topics = status.get("topics") or {}
        for name, t in topics.items():
            if t.get("corrupt"):
                corrupt[name] = corrupt.get(name, 0) + t["corrupt"]
        used = sum(t.get("size_bytes", 0) for t in topics.values())
        reasons += storage_nearly_full(used, status.get("storage_budget_bytes") or 0)
    reasons += corrupt_records(corrupt)
    return reasons
