"""The soak of a board profile: records appended to a RingLog on littlefs2 over a simulated
flash chip, synced to a real gateway through the board's uplink, with power cuts.

MicroPython only; tests/firmware/test_mcu_profiles.py runs it from the .mpy tree with a
board profile's heap (boards/<name>/profile.json) and starts the gateway
(`edgeline gateway --tcp`). pytest does not collect it (no test_ functions).

What one run does: boot after boot -- one MicroPython process each, so every boot
starts on a fresh heap, as a board does after a reset -- until the log holds ``records``
records and the gateway has acknowledged them all; ``main(cfg)`` runs one boot and prints
the state the next one needs (what returned while the power was on, the schedule's
position). A boot mounts the chip, reopens the log and the outbox (recovering from the
last cut), checks the invariants below, connects the uplink (BoardUplink reconciles the
cursor with the gateway's marks) and then alternates: append a sensor's chunk of records
(committed every ``group_records`` by the log's group commit), sync a few rounds.

Power cuts come from a seeded schedule spread over the whole run: each time the log
passes the next of ``cuts`` evenly spaced seqs, a cut is armed to fall 1..2*``cut_span``
block writes later (uniform), so cuts land in every kind of write -- appends and group
commits, segment seal and creation, reclaiming acknowledged segments, cursor writes; one
armed cut in four waits for the next segment creation or removal instead, and at one
boot in six a cut falls within its first 12 writes, in recovery's own writes (truncating
a torn tail, the reconnect's cursor catch-up). A cut programs half of the block write it
hits, fails it with EIO and drops every later write (emulator/flash.py); whatever was
running gets an error (a call that swallowed it does not count as returned either) and
the process ends: the board is reset, its socket gone. The chip keeps its bytes.

Invariants after every cut (all counted from calls that returned while the power was on):

* every durable record is there: ``last_seq >= durable``, each record after the cursor
  reads back with its exact value, nothing corrupt, no unacknowledged record evicted;
* the cursor never rewinds: ``acked_returned <= outbox.acked <= acked_attempted``, and
  never passes the log's end;
* appending continues at ``last_seq + 1`` (a seq is never reused: the uplink refuses a
  gateway mark past the log's end, which would end the run with an error).

The gateway side (every seq 1..records stored exactly once with its value, none lost) is
checked by the host test through the gateway's HTTP API.

Heap: the chip's bytes live in a host file (flashfile.FileBlockDevice, the board's flash), and
the program gets exactly the profile's heap (see main). Live heap (``gc.collect();
gc.mem_alloc()``) is sampled after each append chunk and sync round, when a batch has been
encoded, when a message has been decoded, on every 16th block write (inside littlefs
operations), and after each recovery; the peak over all boots is the board's high-water.
"""
import gc
import sys

if sys.implementation.name == "micropython":

    _dumps = None

    def _value(seq):
        # A sensor reading as the board encodes it: [seq, celsius]. Checked byte for byte.
        return _dumps([seq, (seq % 4000) * 0.01])

    class _Rng:
        # xorshift32: the same schedule on every run of a seed.
        def __init__(self, seed):
            self.s = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1

        def below(self, n):
            s = self.s
            s ^= (s << 13) & 0xFFFFFFFF
            s ^= s >> 17
            s ^= (s << 5) & 0xFFFFFFFF
            self.s = s
            return s % n

    class _Peak:
        def __init__(self, base):
            self.base = base
            self.peak = 0
            self.samples = 0

        def sample(self):
            gc.collect()
            a = gc.mem_alloc()
            self.samples += 1
            if a > self.peak:
                self.peak = a

    _peak = None
    _op = ["mount"]  # the storage operation running (names what a cut interrupted)

    def main(cfg):
        global _peak
        # The host gives the process more heap than the profile's (the GC's tables take
        # a share of -X heapsize); a pad at the bottom takes the surplus, so exactly the
        # profile's heap_bytes are left for everything from here on. A ROMFS image below
        # (code in flash) does not count.
        # The flash emulator's erased block is allocated here, before the count: a
        # board's block device driver (C) has no such buffer in the heap.
        from flashfile import erased_block

        gc.collect()
        before = gc.mem_alloc()
        erased_block(cfg["block_bytes"])
        gc.collect()
        harness = gc.mem_alloc() - before
        used = gc.mem_alloc() - cfg["rom_bytes"] - harness
        surplus = gc.mem_free() - (cfg["heap_bytes"] - used)
        if surplus < 0:
            raise MemoryError("the process heap is %d bytes short of the profile's" % -surplus)
        pad = bytearray(surplus - 64) if surplus > 64 else None
        gc.collect()
        outside = gc.mem_alloc() - used  # the pad, the erased block (and a ROMFS image): not the board's RAM
        _peak = _Peak(outside)
        state = _run(cfg)
        gc.collect()
        heap = gc.mem_alloc() + gc.mem_free() - outside
        print("STATE %r" % (state,))
        print("SOAK peak_heap=%d heap=%d samples=%d" % (_peak.peak - outside, heap, _peak.samples))
        pad = None

    def _run(cfg):
        global _dumps
        from binascii import unhexlify

        from edgeline import codec, sync
        from edgeline.errors import EdgelineError
        from edgeline.log import RingLog
        from edgeline.outbox import Outbox
        from edgeline.storage import FileStorage
        from emulator.flash import mount, umount
        from flashfile import FileBlockDevice
        import uplink

        _dumps = codec.dumps

        class SampledFlash(FileBlockDevice):
            # Samples the heap inside file-system operations, and names the storage
            # operation a cut interrupted.
            cut_op = None
            recovered = False

            def writeblocks(self, n, buf, off=0):
                try:
                    FileBlockDevice.writeblocks(self, n, buf, off)
                except OSError:
                    self.cut_op = _op[0]
                    raise
                if not self.cut and not (self.writes & 15):
                    _peak.sample()

        class Handle:
            # A storage handle that labels what its writes are for.
            def __init__(self, h, kind):
                self.h = h
                self.kind = kind

            def write(self, buf, n):
                _op[0] = self.kind + " write"
                self.h.write(buf, n)

            def sync(self):
                _op[0] = self.kind + " commit"
                self.h.sync()

            def seek(self, pos):
                self.h.seek(pos)

            def readinto(self, buf):
                return self.h.readinto(buf)

            def close(self):
                _op[0] = self.kind + " close"
                self.h.close()

        class LabelledStorage(FileStorage):
            def _target(self, op):
                # A cut aimed at this operation: within its first 4 block writes.
                if target[0] == op:
                    target[0] = None
                    dev.cut_after = dev.writes + 1 + rng.below(4)

            def open_append(self, path):
                _op[0] = "segment create"
                self._target("create")
                return Handle(FileStorage.open_append(self, path), "segment")

            def open_update(self, path):
                _op[0] = "cursor create"
                return Handle(FileStorage.open_update(self, path), "cursor")

            def remove(self, path):
                _op[0] = "segment remove"
                self._target("remove")
                FileStorage.remove(self, path)

            def truncate(self, path, size):
                _op[0] = "tail truncate"
                FileStorage.truncate(self, path, size)

            def makedirs(self, path):
                _op[0] = "mkdir/stat"
                FileStorage.makedirs(self, path)

        class Uplink(uplink.BoardUplink):
            # Records every cursor write: attempted, and returned with the power on.
            def _ack(self, outbox, seq):
                st = self.st
                if seq > st["acked_max"]:
                    st["acked_max"] = seq
                uplink.BoardUplink._ack(self, outbox, seq)
                if not self.dev.cut and seq > st["acked_ret"]:
                    st["acked_ret"] = seq

            def _send(self, event):
                if type(event) is sync.Gap:  # records lost on the board: the host test fails
                    print("GAP %d..%d %s boot %d" % (event.first, event.last, event.reason, boots))
                data = self._conn.send(event)
                _peak.sample()
                self._sock.sendall(data)

            def _next(self):
                ev = uplink.BoardUplink._next(self)
                _peak.sample()
                return ev

        bs = cfg["block_bytes"]
        bc = cfg["fs_bytes"] // bs
        state = cfg["state"]
        first = state is None
        if first:  # the first power-on: a blank chip, formatted
            state = {"durable": 0, "acked_ret": 0, "acked_max": 0, "cuts_left": cfg["cuts"], "rng": 0,
                     "next_at": 0, "boots": 0, "appended": 0, "writes": 0, "phases": {}, "done": False}
        dev = SampledFlash(cfg["flash_path"], bs, bc, create=first)
        _op[0] = "mount"
        mount(dev, "/flash", mkfs=first)
        opts = {
            "segment_bytes": cfg["segment_bytes"], "budget_bytes": cfg["budget_bytes"],
            "full_policy": "drop_oldest", "sync": "group", "group_records": cfg["group_records"],
        }
        total = cfg["records"]
        span = cfg["cut_span"]
        spacing = total // (cfg["cuts"] + 1) if cfg["cuts"] else total + 1
        rng = _Rng(cfg["seed"])
        if first:
            state["next_at"] = spacing // 2
        else:
            rng.s = state["rng"]
        st = state
        target = [None]  # "create"/"remove": the armed cut waits for that operation
        phases = state["phases"]
        if state["done"]:
            # After the last boot, a last one only checks: every record there, all acked.
            lg = RingLog("/flash/telemetry", storage=FileStorage(), warn=print, **opts)
            ob = Outbox(lg, "uplink")
            _check(lg, ob, st, state["boots"] + 1)
            assert lg.last_seq == total and ob.acked == total, (lg.last_seq, ob.acked, total)
            ob.close()
            lg.close()
            umount("/flash")
            dev.close()
            print("CUTS %s" % ", ".join("%s %d" % (k, phases[k]) for k in sorted(phases)))
            print("DONE records=%d appended=%d boots=%d cuts=%d block_writes=%d acked=%d"
                  % (total, state["appended"], state["boots"], cfg["cuts"] - state["cuts_left"],
                     state["writes"], st["acked_ret"]))
            return state
        state["boots"] += 1
        boots = state["boots"]
        key = unhexlify(cfg["key_hex"])
        armed = False
        if state["cuts_left"] and rng.below(6) == 0:
            # A cut in recovery: the boot's first block writes (truncating a torn tail,
            # removing a leftover, the reconnect's cursor catch-up).
            dev.cut_after = dev.writes + 1 + rng.below(12)
            armed = True
        lg = ob = up = None
        try:
            lg = RingLog("/flash/telemetry", storage=LabelledStorage(), warn=print, **opts)
            ob = Outbox(lg, "uplink")
            _alive(dev)
            _check(lg, ob, st, boots)
            _peak.sample()
            up = Uplink(cfg["node"], key, cfg["host"], cfg["port"], {"telemetry": (lg, ob)},
                        batch_records=cfg["batch_records"], batch_bytes=cfg["batch_bytes"])
            up.st = st
            up.dev = dev
            up.connect()
            _alive(dev)
            dev.recovered = True
            while lg.last_seq < total or ob.acked < lg.last_seq:
                if state["cuts_left"] and not armed and lg.last_seq >= state["next_at"] and rng.below(2):
                    _arm(dev, rng, span, target)
                    armed = True
                    state["next_at"] += spacing
                n = total - lg.last_seq
                if n > cfg["chunk"]:
                    n = cfg["chunk"]
                for _ in range(n):
                    seq = lg.last_seq + 1
                    if lg.append(_value(seq), ts=seq << 16) != seq:
                        raise AssertionError("append did not return seq %d" % seq)
                    state["appended"] += 1
                    _alive(dev)
                    if lg.durable_seq > st["durable"]:
                        st["durable"] = lg.durable_seq
                _peak.sample()
                if state["cuts_left"] and not armed and lg.last_seq >= state["next_at"]:
                    # The next cut, somewhere in the next 2*span block writes (from here
                    # or from the next chunk's appends): appends and their group
                    # commits, rotation, the sync's cursor writes, segment reclaiming.
                    _arm(dev, rng, span, target)
                    armed = True
                    state["next_at"] += spacing
                up.sync_once(cfg["rounds"])
                _alive(dev)
                if lg.durable_seq > st["durable"]:
                    st["durable"] = lg.durable_seq
                _peak.sample()
            up.close()
            lg.close()
            _alive(dev)
            state["done"] = True
        except (OSError, EdgelineError) as e:
            if not dev.cut:
                raise  # not our power cut: a real failure
            what = dev.cut_op if dev.recovered else "recovery:" + dev.cut_op
            phases[what] = phases.get(what, 0) + 1
            state["cuts_left"] -= 1
            # Power off: this process ends (the board resets; its socket goes with it).
            # Close what is open first, so no finaliser writes to the dead chip later.
            for x in (up, ob, lg):
                if x is not None:
                    try:
                        x.close()
                    except Exception:
                        pass
        state["writes"] += dev.writes
        state["rng"] = rng.s
        umount("/flash")
        dev.close()
        return state

    def _arm(dev, rng, span, target):
        # One armed cut in four waits for the next segment creation (rotation) or removal
        # (reclaiming an acknowledged segment) and falls in its first block writes: they
        # are few among the appends' writes, and a uniform draw would rarely hit them.
        r = rng.below(8)
        if r < 2:
            target[0] = "create" if r == 0 else "remove"
            # should that operation not come soon (no removal before the budget is
            # full), the cut falls anyway, as any other
            dev.cut_after = dev.writes + 1 + rng.below(2 * span)
        else:
            dev.cut_after = dev.writes + 1 + rng.below(2 * span)

    def _alive(dev):
        # A call during which the power went does not count as returned, even if it
        # swallowed the error: the boot ends here.
        if dev.cut:
            raise OSError(5)

    def _check(lg, ob, st, boot):
        where = "boot %d" % boot
        last = lg.last_seq
        assert last >= st["durable"], "%s: durable record lost: last %d < durable %d" % (where, last, st["durable"])
        assert st["acked_ret"] <= ob.acked <= st["acked_max"], (
            "%s: cursor %d outside [%d, %d]" % (where, ob.acked, st["acked_ret"], st["acked_max"]))
        assert ob.acked <= last, "%s: cursor %d past the log's end %d" % (where, ob.acked, last)
        assert lg.first_seq <= ob.acked + 1, "%s: unacknowledged records %d..%d gone" % (where, ob.acked + 1, lg.first_seq - 1)
        seq = ob.acked + 1
        while seq <= last:
            recs = lg.read(seq, 16, 2048)
            assert recs, "%s: nothing readable at %d (last %d)" % (where, seq, last)
            for r in recs:
                assert r.seq == seq and r.value == _value(seq), "%s: record %d wrong: %r" % (where, seq, r)
                seq += 1
        assert lg.corrupt == 0 and lg.evicted == 0, (where, lg.corrupt, lg.evicted)
