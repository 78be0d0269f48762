"""Opaque, time-ordered identifiers generated in the application.

Ids are made before the INSERT so that multi-row inserts need no RETURNING round trip,
and they sort by creation time, which keyset pagination ("newest first") relies on.
"""

import os
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_PAIRS = [first + second for first in _ALPHABET for second in _ALPHABET]  # 10 bits -> 2 digits
_lock = threading.Lock()
_last_ms = 0
_last_random = 0


def encode_ulid(milliseconds: int, randomness: int) -> str:
    """Return the 26 Crockford base32 digits of a 48-bit time and 80 random bits.

    A purchase makes a dozen ids (lot, ledger entries, purchase): two digits per table
    lookup, on values that fit a machine word, take a quarter of the time of a digit per
    divmod of the whole number.
    """
    pair, high, low = _PAIRS, randomness >> 40, randomness & 0xFF_FFFF_FFFF
    return (pair[milliseconds >> 40] + pair[(milliseconds >> 30) & 1023] + pair[(milliseconds >> 20) & 1023]
            + pair[(milliseconds >> 10) & 1023] + pair[milliseconds & 1023]
            + pair[high >> 30] + pair[(high >> 20) & 1023] + pair[(high >> 10) & 1023] + pair[high & 1023]
            + pair[low >> 30] + pair[(low >> 20) & 1023] + pair[(low >> 10) & 1023] + pair[low & 1023])


def new_id() -> str:
    """Return a 26-character ULID; monotonic within the process even inside one millisecond."""
    global _last_ms, _last_random
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms <= _last_ms:
            now_ms = _last_ms
            _last_random += 1
        else:
            _last_ms = now_ms
            _last_random = int.from_bytes(os.urandom(10), "big") >> 1  # headroom for increments
        return encode_ulid(now_ms, _last_random)
