"""A board's uplink: its outboxes to the gateway over one plain TCP connection.

Theory of operation
-------------------
This is the blocking client a board's main.py runs (MicroPython; it also runs on
CPython). It moves bytes between a ``socket`` and one ``edgeline.sync.EdgeConnection``
(docs/spec/wire.md) and nothing else: it never reads a clock, sleeps or retries. Retry,
backoff and deep sleep are the caller's policy. What to send next and what the
gateway's marks mean are the core's rules, ``edgeline.sender`` (one ``TopicSender`` per
topic, the same the agent's uplink runs).

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
  never rewinds; the lost seqs are reported as a GAP with reason ``gateway_lost``, so
  the gateway's accounting is complete and the stream goes on;
* the gateway's mark is past the log's end (the log came back from an older copy; a
  wiped log has a new incarnation, which the HELLO names, and starts at mark 0):
  nothing of that topic is sent (the gateway would take its records for duplicates);
  the other topics sync, then ``sync_once`` raises ``UplinkError`` naming it;
* the gateway is from before log incarnations (wire version 1) and answers the HELLO
  with ERROR ``unsupported_version``: the board connects again speaking version 1
  (``wire_version`` says 1; edgeline_app prints it once). Every topic is then the
  gateway's legacy stream: a wiped log meets the mark-past-the-end rule above instead of
  being told apart. Version 2 is tried first at every connect, so an upgraded gateway
  gets it back by itself, at the cost of one extra connection per connect until then;
* a local storage failure (``StorageError`` from the log or the outbox) is not a
  network error: the socket is closed and the error itself propagates.

Cloud-to-edge topics: ``pull_once(topic, log)`` PULLs after ``log.last_seq`` and
appends each DATA with ``edgeline.inbox.append_data`` (committed before the next PULL,
which acknowledges it), until a DATA brings nothing new. ``log`` holds only the topic's
cloud records, so its seqs are theirs: a power cut at any point loses nothing the
gateway was told is held and doubles nothing (the next pull asks after what the log
holds). A full log (``reject``) keeps what fits; the rest waits at the gateway. The
gateway's ERROR ``unknown_topic`` (it does not serve the topic to this node) is an
``UplinkError``. A DATA is at most ``max_message_bytes`` (1 KB by default), so pulling
costs no more heap than sending.

One conversation: HELLO, AUTH (``connect``), then rounds of one message in flight: the
topic's next message (a GAP for lost seqs, else a BATCH of at most ``batch_records``
records / ``batch_bytes`` value bytes from ``outbox.peek``); the board waits for the ACK
and then ``outbox.ack``s it. Stop-and-wait keeps the heap flat: one batch, one small
read, one connection buffer. The defaults (8 records, 1 KB) are for a 64 KB heap, where
edgeline's modules take about 40 KB even run from flash: a 500-record sync then needs
about 58 KB of heap (16 records: about 64 KB). Boards with more RAM raise them. ``sync_once`` keeps the connection open for the next
call; ``close()`` ends it (before a deep sleep, say).
"""
import gc
import os

from edgeline import sync
from edgeline.errors import EdgelineError, LocalProtocolError, LogFull, RemoteProtocolError
from edgeline.sender import ACKNOWLEDGE, TopicSender

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_RECV_BYTES = const(256)  # an ACK is ~10 bytes, a WELCOME ~100 plus its marks

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

    # The wire version the last connection spoke: 1 with a gateway from before
    # incarnations (docs/boards.md). A class attribute: no RAM per board until it changes.
    wire_version = sync.VERSION

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
        self._senders = [TopicSender(name, topics[name][1]) for name in topics]
        self._nonce_source = nonce_source if nonce_source is not None else os.urandom
        # Anything with getaddrinfo(host, port, 0, SOCK_STREAM), SOCK_STREAM and socket()
        # whose sockets have settimeout, connect, sendall, recv, close: the socket module,
        # or on CircuitPython an adapter over socketpool (boards/circuitpython-pico-w).
        self._socket_module = socket_module if socket_module is not None else _socket
        if self._socket_module is None:
            raise UplinkError("no socket module on this firmware: pass socket_module")
        self._sock = None
        self._conn = None
        self._out = bytearray()  # the messages sent (send_into)

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
            version = None  # this side's own (2) first; 1 if the gateway refuses it
            while True:
                sm = self._socket_module
                addr = sm.getaddrinfo(self.host, self.port, 0, sm.SOCK_STREAM)[0][-1]
                s = sm.socket()
                self._sock = s
                s.settimeout(self.timeout_s)
                s.connect(addr)
                self._conn = sync.EdgeConnection(self.node_id, self.key, self._nonce_source, self.max_message_bytes)
                topics = self.topics
                if version is None:
                    # each topic's log incarnation: the gateway dedupes per (node, topic, incarnation)
                    hello = sync.Hello(incarnations={name: topics[name][0].incarnation for name in topics})
                else:
                    hello = sync.Hello(version=1)  # no incarnations: every topic is its legacy stream
                self._send(hello)
                hello = None
                ev = self._next()
                if type(ev) is sync.Challenge:
                    break
                if version is not None or type(ev) is not sync.Error or ev.code != sync.ERR_UNSUPPORTED_VERSION:
                    raise self._unexpected(ev, "CHALLENGE")
                # A gateway from before incarnations (wire version 1), which has closed
                # this connection: a new one speaking its version. Asked again at every
                # connect, so an upgraded gateway gets version 2 back by itself.
                ev = None
                self.close()
                version = 1
            if version is not None or self.wire_version != sync.VERSION:
                # an instance attribute only once a gateway has refused version 2
                self.wire_version = sync.VERSION if version is None else version
            self._send(sync.Auth())
            self._expect(sync.Welcome)
            self._reconcile(self._conn.marks)
        except Exception as e:  # noqa: BLE001 - closed, then one line (or the storage error)
            self._fail(e, "connect")

    def _reconcile(self, marks):
        # Where each topic resumes: acknowledge what the gateway already holds; never
        # rewind (edgeline.sender).
        for s in self._senders:
            if s.welcome(marks.get(s.name, 0)) == ACKNOWLEDGE:
                self._ack(s.outbox, s.mark)

    def close(self):
        """Close the connection (if any). Safe to call at any time."""
        s = self._sock
        self._sock = None
        self._conn = None
        self._out = bytearray()  # the last message's memory goes too
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
                for s in self._senders:
                    if rounds >= max_rounds:
                        break
                    n = self._round(s)
                    if n >= 0:
                        sent = True
                        rounds += 1
                        moved += n
                if not sent:
                    break
            for s in self._senders:
                if s.stalled is not None:
                    raise UplinkError(s.stalled)
        except Exception as e:  # noqa: BLE001
            self._fail(e, "sync")
        return moved

    def _round(self, s):
        # One message for this topic and its ACK: the seqs acknowledged, -1 if nothing owed.
        limit = self.batch_records
        cap = self._conn.peer_max_batch_records
        if cap is not None and cap < limit:
            limit = cap
        ev = s.next_message(limit, self.batch_bytes)
        if ev is None:
            return -1
        outbox = s.outbox
        before = outbox.acked
        self._send(ev)
        ev = None
        if s.on_ack(self._wait_ack(s.name)) == ACKNOWLEDGE:
            self._ack(outbox, s.mark)
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
                    got += self._append_data(log, data)
                except LogFull:
                    break  # what fitted is committed; the rest waits at the gateway
                if log.last_seq < data.first_seq + len(data.entries) - 1:
                    break  # a drop_newest log refused one: the same, without the exception
                data = None
        except Exception as e:  # noqa: BLE001
            self._fail(e, "pull")
        return got

    def _append_data(self, log, data):
        # A separate method so a test can cut power right before it. Imported here: only
        # a board that pulls a cloud-to-edge topic needs edgeline.inbox, so the others do
        # not hold it in RAM (sizes.py measures RAM at rest).
        from edgeline.inbox import append_data

        return append_data(log, data)

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
        # Every message is encoded into one buffer, reused (send_into): no bytes object
        # per message; the view is sent before the next message is made.
        self._sock.sendall(self._conn.send_into(event, self._out))

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
                for s in self._senders:  # an ACK of another topic: nothing of it is in flight
                    if s.name == ev.topic and s.on_ack(ev.seq) == ACKNOWLEDGE:
                        self._ack(s.outbox, s.mark)
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
        # storage and configuration errors propagate as they are. A MemoryError is a
        # failed round too: on a board's small heap a message or a read can find no block
        # big enough (the heap fragments), and the producer must not die of it. Closing
        # drops the connection's buffers; the caller retries later, as after a network
        # error, and the gateway's marks make the resend exact (a cursor write cut by it
        # is a cut like any other).
        self.close()
        if isinstance(e, UplinkError):
            raise e
        if isinstance(e, MemoryError):
            e = None
            gc.collect()
            raise UplinkError("%s: out of memory, connection closed to free it" % doing)
        if isinstance(e, OSError):
            raise UplinkError("%s to %s:%s failed: %s" % (doing, self.host, self.port, _os_error(e)))
        if isinstance(e, RemoteProtocolError):
            raise UplinkError("%s: gateway broke the protocol: %s" % (doing, e))
        if isinstance(e, LocalProtocolError):
            raise UplinkError("%s: cannot send: %s" % (doing, e))
        raise e
