# The sync session's per-record work on a board, bytes allocated per record, run under
# both MicroPython ports (bench_mp32.py --sync): 32-bit WebAssembly and 64-bit unix.
#
#   main([LIB_DIR, LOG_DIR, BATCHES])   prints one JSON line
#
# build: the edge's BATCH from records peek returned (batch_from_records + send: the
#        message's bytes), per record, 16 records of 64 bytes a batch, hybrid-clock ts.
# build_view: the same with send_into a reused buffer (what a board's uplink does: no
#        bytes object per message).
# apply: the edge's DATA from the gateway (receive_data + next_event: decode, then
#        inbox.append_data into a log, sync none), per record.
# Measured as mp32_worker's: gc.mem_alloc() around the loop, collector off, after warm-up.
import gc
import sys

EPOCH_MS = 1733600000000
KEY = bytes(range(0x20, 0x40))
NODE = "node-1"
N = 16


def _nonce_e(n):
    return bytes(range(0xC0, 0xC0 + n))


def _nonce_g(n):
    return bytes(range(0xD0, 0xD0 + n))


def _deliver(src, dst, ev, NEED_DATA):
    dst.receive_data(src.send(ev))
    got = dst.next_event()
    assert got is not NEED_DATA
    return got


def main(argv):
    lib, path, batches = argv[0], argv[1], int(argv[2])
    sys.path.insert(0, lib)
    from edgeline.inbox import append_data
    from edgeline.log import RingLog
    from edgeline.outbox import Outbox
    from edgeline.sync import (NEED_DATA, Auth, Batch, Challenge, Data, EdgeConnection, GatewayConnection,
                               Hello, Pull, Welcome, batch_from_records)
    import os
    try:
        os.mkdir(path)
    except OSError:
        pass
    e = EdgeConnection(NODE, KEY, _nonce_e)
    g = GatewayConnection({NODE: KEY}.get, _nonce_g)
    _deliver(e, g, Hello(), NEED_DATA)
    _deliver(g, e, Challenge(), NEED_DATA)
    _deliver(e, g, Auth(), NEED_DATA)
    _deliver(g, e, Welcome(marks={"temp": 0}), NEED_DATA)

    # build
    lg = RingLog(path + "/up", segment_bytes=1 << 20, budget_bytes=1 << 30, sync="none")
    v = bytes(range(64))
    base = EPOCH_MS << 16
    for i in range(N * (batches + 1)):
        lg.append(v, base + i)
    lg.flush()
    ob = Outbox(lg, "uplink")
    groups = []
    while True:
        recs = ob.peek(N, 1 << 16)
        if not recs:
            break
        groups.append(recs)
        ob.ack(recs[-1].seq)
    e.send(batch_from_records("temp", groups[0]))  # warm-up
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    for recs in groups[1:]:
        e.send(batch_from_records("temp", recs))
    a1 = gc.mem_alloc()
    gc.enable()
    build = (a1 - a0) / (N * (len(groups) - 1))
    out = bytearray()
    e.send_into(batch_from_records("temp", groups[0]), out)  # warm-up
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    for recs in groups[1:]:
        e.send_into(batch_from_records("temp", recs), out)
    a1 = gc.mem_alloc()
    gc.enable()
    build_view = (a1 - a0) / (N * (len(groups) - 1))
    groups = None

    # apply
    msgs = []
    seq = 1
    for b in range(batches + 1):
        e.send(Pull("cmd", seq - 1, N))
        entries = [[i, None, v] for i in range(N)]
        msgs.append(g.send(Data("cmd", seq, base + seq, entries)))
        seq += N
    down = RingLog(path + "/down", segment_bytes=1 << 20, budget_bytes=1 << 30, sync="none")

    def one(m):
        e.receive_data(m)
        ev = e.next_event()
        append_data(down, ev)

    one(msgs[0])
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    for m in msgs[1:]:
        one(m)
    a1 = gc.mem_alloc()
    gc.enable()
    apply = (a1 - a0) / (N * batches)
    ok = down.last_seq == N * (batches + 1)
    print('{"maxsize": %d, "build": %.1f, "build_view": %.1f, "apply": %.1f, "ok": %s}'
          % (sys.maxsize, build, build_view, apply, "true" if ok else "false"))
