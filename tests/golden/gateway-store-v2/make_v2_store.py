"""How edgeline-gateway.db (a schema-2 store) was written: with the gateway store of commit
ed1d32b, the last of schema 2, saved as /tmp/i9_oldstore.py; run with PYTHONPATH=core:host.
Never rerun over the golden file: it is the old format, which today's code no longer writes."""
import sys, os, sqlite3
sys.path.insert(0, "/tmp")
import i9_oldstore as old  # store.py of commit ed1d32b (schema 2): git show ed1d32b:host/edgeline_host/gateway/store.py > /tmp/i9_oldstore.py
from edgeline.sync import Batch, Gap, CLOUD_ORIGIN
out = sys.argv[1]
if os.path.exists(out):
    os.remove(out)
st = old.GatewayStore(out)
assert st._db.execute("PRAGMA user_version").fetchone()[0] == 2
T0 = 1700000000000 << 16
def ents(first, n, tag):
    return [[i * 65536, b"k%d" % (first + i) if (first + i) % 2 else None, b"%s%d" % (tag, first + i)] for i in range(n)]
st.commit([("edge-1", Batch("telemetry", 1, T0, ents(1, 5, b"t")))], 1700000001000)
st.commit([("edge-1", Gap("telemetry", 6, 8, "evicted"))], 1700000002000)
st.commit([("edge-1", Batch("telemetry", 9, T0 + (9 << 16), ents(9, 2, b"t")))], 1700000003000)
st.commit([("edge-2", Batch("telemetry", 1, T0, ents(1, 3, b"u")))], 1700000004000)
st.commit([(CLOUD_ORIGIN, old.Publish("config", [(T0, b"rate", b"\x0a"), (T0 + 1, None, b"\x0b")]))], 1700000005000)
st.commit([("edge-1", old.Delivered("config", 2))], 1700000006000)
st._db.execute("PRAGMA journal_mode=DELETE")
st.close()
print(os.path.getsize(out))
