"""Opaque, time-ordered identifiers generated in the application.

Ids are made before the INSERT so that multi-row inserts need no RETURNING round trip,
and they sort by creation time, which keyset pagination ("newest first") relies on.
"""

import os
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_lock = threading.Lock()
_last_ms = 0
_last_random = 0


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


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
        return _encode(now_ms, 10) + _encode(_last_random, 16)
