"""AES's forward cipher (FIPS-197) in Python, for runtimes whose firmware has no AES.

edgeline.e2e builds CTR mode from a block cipher with cryptolib's ECB interface
(``encrypt(block, out=None)``); MicroPython's ``cryptolib`` and CircuitPython's ``aesio``
are that cipher in C. Where neither exists (CPython without the host module, the
WebAssembly port of the 32-bit test lane) this module is: encryption only, since CTR
never decrypts a block. The S-box is computed at first use, not stored as a literal.
Slow (tens of microseconds a block on CPython, milliseconds on a board), never on a
path that has a native AES: e2e imports it only when it must.
"""
from edgeline.errors import ConfigError

_SBOX = []


def _sbox():
    if not _SBOX:
        s = bytearray(256)
        p = q = 1
        while True:  # p runs over GF(2^8)* by multiplying by 3, q over its inverses
            p = p ^ ((p << 1) & 0xFF) ^ (0x1B if p & 0x80 else 0)
            q ^= q << 1
            q ^= q << 2
            q ^= q << 4
            q &= 0xFF
            if q & 0x80:
                q ^= 0x09
            x = q ^ (((q << 1) | (q >> 7)) & 0xFF) ^ (((q << 2) | (q >> 6)) & 0xFF)
            x ^= (((q << 3) | (q >> 5)) & 0xFF) ^ (((q << 4) | (q >> 4)) & 0xFF)
            s[p] = x ^ 0x63
            if p == 1:
                break
        s[0] = 0x63
        _SBOX.append(bytes(s))
    return _SBOX[0]


def _xtime(b):
    return ((b << 1) ^ 0x1B) & 0xFF if b & 0x80 else b << 1


class SoftAES:
    """AES-128/256 forward cipher in Python, with cryptolib's ECB interface."""

    def __init__(self, key, mode=1):
        if mode != 1 or len(key) not in (16, 32):
            raise ConfigError("SoftAES does ECB (mode 1) with a 16- or 32-byte key")
        s = _sbox()
        nk = len(key) // 4
        self._rounds = nk + 6
        w = bytearray(key)
        rcon = 1
        i = nk
        while i < 4 * (self._rounds + 1):
            t = w[-4:]
            if i % nk == 0:
                t = bytearray((s[t[1]] ^ rcon, s[t[2]], s[t[3]], s[t[0]]))
                rcon = _xtime(rcon)
            elif nk > 6 and i % nk == 4:
                t = bytearray((s[t[0]], s[t[1]], s[t[2]], s[t[3]]))
            for j in range(4):
                w.append(w[-4 * nk] ^ t[j])
            i += 1
        self._w = bytes(w)

    def encrypt(self, block, out=None):
        s = _sbox()
        w = self._w
        a = bytearray(16)
        for i in range(16):
            a[i] = block[i] ^ w[i]
        r = 1
        while r <= self._rounds:
            # SubBytes and ShiftRows: byte (row, col) is a[4 * col + row]
            b = bytearray(16)
            for c in range(4):
                for row in range(4):
                    b[4 * c + row] = s[a[4 * ((c + row) & 3) + row]]
            if r < self._rounds:  # MixColumns
                for c in range(4):
                    x0, x1, x2, x3 = b[4 * c], b[4 * c + 1], b[4 * c + 2], b[4 * c + 3]
                    t = x0 ^ x1 ^ x2 ^ x3
                    b[4 * c] = x0 ^ t ^ _xtime(x0 ^ x1)
                    b[4 * c + 1] = x1 ^ t ^ _xtime(x1 ^ x2)
                    b[4 * c + 2] = x2 ^ t ^ _xtime(x2 ^ x3)
                    b[4 * c + 3] = x3 ^ t ^ _xtime(x3 ^ x0)
            k = 16 * r
            for i in range(16):
                a[i] = b[i] ^ w[k + i]
            r += 1
        if out is None:
            return bytes(a)
        out[:] = a
        return out
