"""A board's uplink: its outboxes to the gateway over one plain TCP connection.

Theory of operation
-------------------
This is the blocking client a board's main.py runs (MicroPython; it also runs on
CPython). It moves bytes between a ``socket`` and one ``edgeline.sync.EdgeConnection``
(docs/spec/wire.md) and nothing else: it never reads a clock, sleeps or retries. Retry,
backoff and deep sleep are the caller's policy.

Failure modes first, then what is guaranteed:

* the network drops, the gateway restarts, a read times out (``timeout_s``): the
  socket is closed and ``UplinkError`` (one line) is raised; nothing is acknowledged
  that the gateway has not made durable, so the next ``sync_once`` resends from the
  outbox cursor and the gateway skips what it already holds (W1);
* the board loses power between the gateway's ACK and the cursor write: on the next
  connection WELCOME carries the gateway's marks, and the outbox is acknowledged up to
  them before anything is sent, so nothing is stored twice and nothing is skipped;
* the gateway sends ERROR or garbage: ``UplinkError`` naming the error; ``internal``
  (the gateway could not store) is worth retrying later, the others need an operator;
* the gateway's mark for a topic is behind the outbox cursor (the gateway lost data
  this node already had acknowledged, e.g. it was restored from a backup): the cursor
  never rewinds; the lost seqs are reported as a GAP with reason ``gateway_lost`` (as
  the agent does), so the gateway's accounting is complete and the stream goes on;
* the gateway's mark is past the log's end (the log was wiped and its seqs restarted):
  ``UplinkError`` — records the gateway would take for duplicates are not sent into it;
* a local storage failure (``StorageError`` from the log or the outbox) is not a
  network error: the socket is closed and the error itself propagates.

Cloud-to-edge topics: ``pull_once(topic, log)`` PULLs after ``log.last_seq`` and
stores each DATA with ``edgeline.sync.store_data`` (committed before the next PULL,
which acknowledges it), until a DATA brings nothing new. ``log`` holds only the topic's
cloud records, so its seqs are theirs: a power cut at any point loses nothing the
gateway was told is held and doubles nothing (the next pull asks after what the log
holds). A full log (``reject``) keeps what fits; the rest waits at the gateway. The
gateway's ERROR ``unknown_topic`` (it does not serve the topic to this node) is an
``UplinkError``. A DATA is at most ``max_message_bytes`` (1 KB by default), so pulling
costs no more heap than sending.

One conversation: HELLO, AUTH (``connect``), then rounds of one message in flight:
a GAP when ``outbox.gap()`` names lost seqs, else a BATCH of at most ``batch_records``
records / ``batch_bytes`` value bytes from ``outbox.peek``; the board waits for the ACK
and then ``outbox.ack``s it. Stop-and-wait keeps the heap flat: one batch, one small
read, one connection buffer. The defaults (8 records, 1 KB) are for a 64 KB heap, where
edgeline's modules take about 40 KB even run from flash: a 500-record sync then needs
about 58 KB of heap (16 records: about 64 KB). Boards with more RAM raise them. ``sync_once`` keeps the connection open for the next
call; ``close()`` ends it (before a deep sleep, say).
"""
import os

from edgeline import sync
from edgeline.errors import EdgelineError, LocalProtocolError, LogFull, RemoteProtocolError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_RECV_BYTES = const(256)  # an ACK is ~10 bytes, a WELCOME ~100 plus its marks
GATEWAY_LOST = "gateway_lost"  # GAP reason: seqs the gateway acknowledged, then lost

try:
    import socket as _socket
except ImportError:  # CircuitPython (socketpool, passed in as socket_module) or no network stack
    _socket = None



def _os_error(e):
    # MicroPython's OSError carries only an errno; name the usual ones.
    code = e.args[0] if e.args else None
    if type(code) is not int or len(e.args) > 1:
        return str(e)
    if code in (11, 110):  # EAGAIN (a read past SO_RCVTIMEO), ETIMEDOUT
        return "timed out"
    name = _ERRNO_NAMES.get(code)
    return name if name else "errno %d" % code


_ERRNO_NAMES = {104: "connection reset", 111: "connection refused", 113: "no route to host",
                32: "broken pipe", -2: "host not found", -202: "host not found"}


class UplinkError(EdgelineError):
    """The uplink failed (network, gateway error, protocol); one line. Retry later."""


class BoardUplink:
    """BoardUplink(node_id, key, host, port, topics) with topics {name: (RingLog, Outbox)}.

    ``sync_once(max_rounds)`` connects if needed and sends until nothing is pending or
    ``max_rounds`` messages were acknowledged; it returns how many seqs were
    acknowledged (records and reported gaps). ``pending`` is what the outboxes still owe.
    """

    def __init__(self, node_id, key, host, port, topics, batch_records=8, batch_bytes=1024,
                 max_message_bytes=1024, timeout_s=10, nonce_source=None, socket_module=None):
        self.node_id = node_id
        self.key = key
        self.host = host
        self.port = port
        self.topics = topics
        self.batch_records = batch_records
        self.batch_bytes = batch_bytes
        self.max_message_bytes = max_message_bytes
        self.timeout_s = timeout_s
        self._behind = {}  # topic -> the gateway's mark, when it is behind the cursor
        self._nonce_source = nonce_source if nonce_source is not None else os.urandom
        # Anything with getaddrinfo(host, port, 0, SOCK_STREAM), SOCK_STREAM and socket()
        # whose sockets have settimeout, connect, sendall, recv, close: the socket module,
        # or on CircuitPython an adapter over socketpool (boards/circuitpython-pico-w).
        self._socket_module = socket_module if socket_module is not None else _socket
        if self._socket_module is None:
            raise UplinkError("no socket module on this firmware: pass socket_module")
        self._sock = None
        self._conn = None

    @property
    def connected(self):
        return self._conn is not None

    @property
    def pending(self):
        n = 0
        for name in self.topics:
            n += self.topics[name][1].depth
        return n

    # ------------------------------------------------------------------ connection

    def connect(self):
        """Open the socket, authenticate, reconcile the outboxes with the marks."""
        self.close()
        try:
            sm = self._socket_module
            addr = sm.getaddrinfo(self.host, self.port, 0, sm.SOCK_STREAM)[0][-1]
            s = sm.socket()
            self._sock = s
            s.settimeout(self.timeout_s)
            s.connect(addr)
            self._conn = sync.EdgeConnection(self.node_id, self.key, self._nonce_source, self.max_message_bytes)
            self._send(sync.Hello())
            self._expect(sync.Challenge)
            self._send(sync.Auth())
            self._expect(sync.Welcome)
            self._reconcile(self._conn.marks)
        except Exception as e:  # noqa: BLE001 - closed, then one line (or the storage error)
            self._fail(e, "connect")

    def _reconcile(self, marks):
        # Acknowledge what the gateway already holds; never rewind (wire.md, Conversation).
        self._behind = {}
        for name in self.topics:
            outbox = self.topics[name][1]
            mark = marks.get(name, 0)
            if mark > outbox.log.last_seq:
                raise UplinkError("topic %s: the gateway holds up to seq %d but this log ends at %d"
                                  " (log wiped?); not sending seqs it would drop" % (name, mark, outbox.log.last_seq))
            if mark < outbox.acked:
                self._behind[name] = mark  # _round reports mark+1..cursor as lost first
            else:
                self._ack(outbox, mark)

    def close(self):
        """Close the connection (if any). Safe to call at any time."""
        s = self._sock
        self._sock = None
        self._conn = None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass

    # ------------------------------------------------------------------ sync

    def sync_once(self, max_rounds=64):
        """Send until nothing is pending or max_rounds messages were acknowledged.
        Returns the number of seqs acknowledged; raises UplinkError (socket closed)."""
        if self._conn is None:
            self.connect()
        moved = 0
        rounds = 0
        try:
            while rounds < max_rounds:
                sent = False
                for name in self.topics:
                    if rounds >= max_rounds:
                        break
                    n = self._round(name, self.topics[name][1])
                    if n >= 0:
                        sent = True
                        rounds += 1
                        moved += n
                if not sent:
                    break
        except Exception as e:  # noqa: BLE001
            self._fail(e, "sync")
        return moved

    def _round(self, name, outbox):
        # One message for this topic and its ACK: the seqs acknowledged, -1 if nothing owed.
        before = outbox.acked
        g = outbox.gap()
        behind = self._behind.get(name)
        if behind is not None:
            self._send(sync.Gap(name, behind + 1, before, GATEWAY_LOST))
            last = before
        elif g is not None:
            self._send(sync.Gap(name, g[0], g[1], outbox.gap_reason(g[0])))
            last = g[1]
        else:
            limit = self.batch_records
            cap = self._conn.peer_max_batch_records
            if cap is not None and cap < limit:
                limit = cap
            recs = outbox.peek(limit, self.batch_bytes)
            if not recs:
                return -1
            self._send(sync.batch_from_records(name, recs))
            last = recs[-1].seq
            recs = None
        seq = self._wait_ack(name)
        if seq > last:
            raise UplinkError("topic %s: the gateway acknowledged %d, past the %d sent" % (name, seq, last))
        if seq < last:
            # The gateway's mark is below what this message continues from: it lost
            # records this node already had acknowledged (the cursor never rewinds), or
            # it did not take our gateway_lost GAP.
            if behind is not None or seq < before:
                if behind is not None:
                    raise UplinkError("topic %s: the gateway acknowledged %d after a gateway_lost GAP up to %d"
                                      % (name, seq, last))
                self._behind[name] = seq  # report the loss in the next round
                return 0
            raise UplinkError("topic %s: the gateway acknowledged %d, not %d" % (name, seq, last))
        if behind is not None:
            del self._behind[name]
        self._ack(outbox, seq)
        return outbox.acked - before

    def _ack(self, outbox, seq):
        # The cursor write; a separate method so a test can cut power right before it.
        outbox.ack(seq)

    def pull_once(self, topic, log, max_rounds=64):
        """Pull cloud-to-edge ``topic`` into ``log`` (a log of its cloud records only)
        until nothing new comes, the log is full, or ``max_rounds`` DATA were stored.
        Returns how many records were stored; raises UplinkError (socket closed)."""
        if self._conn is None:
            self.connect()
        got = 0
        try:
            for _ in range(max_rounds):
                self._send(sync.Pull(topic, log.last_seq, self.batch_records))
                data = self._wait_data(topic)
                if not data.entries:
                    break
                try:
                    got += self._store(log, data)
                except LogFull:
                    break  # what fitted is committed; the rest waits at the gateway
                if log.last_seq < data.first_seq + len(data.entries) - 1:
                    break  # a drop_newest log refused one: the same, without the exception
                data = None
        except Exception as e:  # noqa: BLE001
            self._fail(e, "pull")
        return got

    def _store(self, log, data):
        # store_data; a separate method so a test can cut power right before it.
        return sync.store_data(log, data)

    def _wait_data(self, topic):
        while True:
            ev = self._next()
            cls = type(ev)
            if cls is sync.Data and ev.topic == topic:
                return ev
            if cls is not sync.Ack:
                raise self._unexpected(ev, "DATA")

    # ------------------------------------------------------------------ bytes

    def _send(self, event):
        data = self._conn.send(event)
        self._sock.sendall(data)

    def _next(self):
        # The next event from the gateway, reading from the socket as needed.
        conn = self._conn
        while True:
            try:
                ev = conn.next_event()
            except RemoteProtocolError:
                owed = conn.pending_error_bytes()
                if owed:
                    try:
                        self._sock.sendall(owed)
                    except OSError:
                        pass
                raise
            if ev is not sync.NEED_DATA:
                return ev
            # recv, not readinto: a MicroPython stream's readinto waits until the whole
            # buffer is filled. One small bytes object per read (an ACK is ~10 bytes).
            conn.receive_data(self._sock.recv(_RECV_BYTES))

    def _expect(self, cls):
        ev = self._next()
        if type(ev) is not cls:
            raise self._unexpected(ev, cls.__name__.upper())
        return ev

    def _wait_ack(self, topic):
        while True:
            ev = self._next()
            cls = type(ev)
            if cls is sync.Ack:
                if ev.topic == topic:
                    return ev.seq
                entry = self.topics.get(ev.topic)
                if entry is not None and ev.seq <= entry[0].last_seq:
                    self._ack(entry[1], ev.seq)
            elif cls is not sync.Data:  # DATA answers a PULL, which this uplink never sends
                raise self._unexpected(ev, "ACK")

    def _unexpected(self, ev, wanted):
        cls = type(ev)
        if cls is sync.Error:
            name = sync.ERROR_NAMES[ev.code] if ev.code < len(sync.ERROR_NAMES) else "?"
            text = ev.message if ev.message.startswith(name) else name + ": " + ev.message
            return UplinkError("gateway sent ERROR " + text)
        if cls is sync.ConnectionClosed:
            return UplinkError("gateway closed the connection while %s was due" % wanted)
        return UplinkError("gateway sent %s while %s was due" % (cls.__name__.upper(), wanted))

    def _fail(self, e, doing):
        # Close, then one line: network and protocol errors become UplinkError; local
        # storage and configuration errors propagate as they are.
        self.close()
        if isinstance(e, UplinkError):
            raise e
        if isinstance(e, OSError):
            raise UplinkError("%s to %s:%s failed: %s" % (doing, self.host, self.port, _os_error(e)))
        if isinstance(e, RemoteProtocolError):
            raise UplinkError("%s: gateway broke the protocol: %s" % (doing, e))
        if isinstance(e, LocalProtocolError):
            raise UplinkError("%s: cannot send: %s" % (doing, e))
        raise e
