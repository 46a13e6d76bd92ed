"""Topic keys for end-to-end encryption, kept in files by the operator (docs/spec/e2e.md,
"Key management"): create, rotate, revoke, list.

Theory of operation
-------------------
A topic's keys live in one file, ``<dir>/<topic dirname>.e2e.json`` (the topic's name
escaped as a log directory's, docs/spec/log.md), mode 0600, never on the gateway:

    {"format": 1, "topic": "pos/sales",
     "keys": [{"id": 1, "state": "retired", "key": "<64 hex>"},
              {"id": 2, "state": "active",  "key": "<64 hex>"}]}

``create`` makes key id 1, active. ``rotate`` makes the next id (highest + 1) active and
retires the one before: writers seal under the active key, readers keep the retired ones
for the records sealed before (E11). ``revoke`` marks an id revoked: nothing is sealed
under it again; it stays in the file so old records stay readable to whoever the
operator gives it, until ``revoke --purge`` drops its bytes. Every change is written to a
temporary file, synced and renamed over the old one, so a crash leaves the old file or
the new one. Distribution to nodes over a cloud-to-edge topic is later (the spec's
design); these files are what it will read.

A key's bytes are never printed: ``list`` shows ids and states.
"""
import json
import os
import secrets

from edgeline.e2e import MAX_KEY_ID, SECRET_BYTES
from edgeline.errors import ConfigError
from edgeline.store import topic_dirname

from .e2ecrypto import TopicKeys

FORMAT = 1
STATES = ("active", "retired", "revoked")


def path_for(key_dir, topic):
    return os.path.join(key_dir, topic_dirname(topic) + ".e2e.json")


def load(key_dir, topic):
    """The topic's key file as a dict; ConfigError (one line) if missing or malformed."""
    path = path_for(key_dir, topic)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise ConfigError("no keys for topic %r in %s (edgeline key topic create)" % (topic, key_dir)) from None
    except (OSError, ValueError) as e:
        raise ConfigError("%s: cannot read it (%s)" % (path, e)) from None
    _check(doc, topic, path)
    return doc


def _check(doc, topic, path):
    bad = "%s: not a topic key file of format %d" % (path, FORMAT)
    if (not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("topic") != topic
            or not isinstance(doc.get("keys"), list)):
        raise ConfigError(bad)
    ids = set()
    for k in doc["keys"]:
        if (not isinstance(k, dict) or not isinstance(k.get("id"), int) or not 1 <= k["id"] <= MAX_KEY_ID
                or k.get("state") not in STATES or k["id"] in ids):
            raise ConfigError(bad)
        if k.get("key") is not None:
            try:
                if len(bytes.fromhex(k["key"])) != SECRET_BYTES:
                    raise ValueError
            except (TypeError, ValueError):
                raise ConfigError("%s: key id %d is not %d bytes of hex" % (path, k["id"], SECRET_BYTES)) from None
        elif k["state"] != "revoked":
            raise ConfigError(bad)
        ids.add(k["id"])
    if sum(1 for k in doc["keys"] if k["state"] == "active") > 1:
        raise ConfigError("%s: more than one active key" % path)


def _write(key_dir, topic, doc):
    os.makedirs(key_dir, 0o700, exist_ok=True)
    path = path_for(key_dir, topic)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), 0o600)
        json.dump(doc, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(key_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def _new_key(key_id):
    return {"id": key_id, "state": "active", "key": secrets.token_hex(SECRET_BYTES)}


def create(key_dir, topic):
    """Key id 1 for a topic that has no key file; returns the file's path."""
    topic_dirname(topic)  # refuses names no log could have
    if os.path.exists(path_for(key_dir, topic)):
        raise ConfigError("topic %r has keys already (rotate them instead)" % topic)
    return _write(key_dir, topic, {"format": FORMAT, "topic": topic, "keys": [_new_key(1)]})


def rotate(key_dir, topic):
    """A new active key (the next id); the active one before is retired. Returns the id."""
    doc = load(key_dir, topic)
    new_id = max(k["id"] for k in doc["keys"]) + 1 if doc["keys"] else 1
    if new_id > MAX_KEY_ID:
        raise ConfigError("topic %r has used every key id" % topic)
    for k in doc["keys"]:
        if k["state"] == "active":
            k["state"] = "retired"
    doc["keys"].append(_new_key(new_id))
    _write(key_dir, topic, doc)
    return new_id


def revoke(key_dir, topic, key_id, purge=False):
    """Mark key_id revoked (purge: and forget its bytes). Returns the active id left, or None."""
    doc = load(key_dir, topic)
    for k in doc["keys"]:
        if k["id"] == key_id:
            k["state"] = "revoked"
            if purge:
                k["key"] = None
            break
    else:
        raise ConfigError("topic %r has no key id %d" % (topic, key_id))
    _write(key_dir, topic, doc)
    return active_id(doc)


def active_id(doc):
    for k in doc["keys"]:
        if k["state"] == "active":
            return k["id"]
    return None


def topic_keys(key_dir, topic):
    """(TopicKeys of every key whose bytes the file holds, the active id or None): what a
    reader opens envelopes with and a writer seals under."""
    doc = load(key_dir, topic)
    secrets_by_id = {k["id"]: bytes.fromhex(k["key"]) for k in doc["keys"] if k.get("key")}
    return TopicKeys(topic, secrets_by_id), active_id(doc)


def describe(key_dir, topic):
    """[(id, state)] of the topic's keys, oldest first; never the bytes."""
    return [(k["id"], k["state"] + ("" if k.get("key") else ", purged")) for k in load(key_dir, topic)["keys"]]
