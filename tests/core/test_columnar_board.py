"""A board's batch through the columnar encoding (docs/spec/columnar.md, K4): 100 of the
demo's sensor records, encoded and decoded within the heap of the smallest board the core
claims. A file of its own, small, so that the MicroPython lanes (tests/firmware, tests/mp's
64 KB floor with the code in ROMFS) run it with nothing else of the tests in the heap."""
from edgeline import codec
from edgeline.columnar import decode, encode

TS0 = 1700000000000 << 16


def sensor_value(n):
    # {"sensor": "temp-<n % 4>", "value": 20.00 .. 24.99, "unit": "C", "n": n}, keys in
    # this order on every runtime (a dict's order differs on MicroPython)
    out = bytearray(b"\xa4")
    for part in ("sensor", "temp-%d" % (n % 4), "value", round(20 + ((n * 7919) % 500) / 100.0, 2),
                 "unit", "C", "n", n):
        out += codec.dumps(part)
    return bytes(out)


def test_a_batch_of_100_sensor_records_is_8x_smaller_than_json():
    # The target at batch 100; JSON is what one such record costs as
    # {"seq":..,"ts":..,"key":null,"value":{...}} (about 110 bytes).
    n = 100
    recs = [None] * n  # one allocation: a grown list needs more of a board's heap
    for i in range(n):
        recs[i] = (1000 + i, TS0 + ((1000 * i) << 16), None, sensor_value(i))
    one_json = len('{"seq":1000,"ts":111411200000000000,"key":null,"value":'
                   '{"sensor":"temp-0","value":22.37,"unit":"C","n":0}}')
    data = encode(recs)
    assert len(data) * 8 <= one_json * n, (len(data), one_json * n)
    recs = None  # a board sends what it encoded; the gateway decodes: one batch at a time
    back = decode(data)
    assert len(back) == n
    for i in range(n):
        assert back[i] == (1000 + i, TS0 + ((1000 * i) << 16), None, sensor_value(i)), i
