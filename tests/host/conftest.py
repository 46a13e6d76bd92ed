"""Host tests share one process: put the sync protocol back on the core's CBOR codec
after each test (a Gateway or an Uplink switches the whole process to cbor2)."""
import pytest

from edgeline import codec, sync


@pytest.fixture(autouse=True)
def _core_codec_after_each_test():
    yield
    sync.use_codec(codec.dumps, codec.decode_prefix)
