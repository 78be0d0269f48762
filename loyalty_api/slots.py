"""How many of a web worker's threads run requests at once.

A worker holds more requests than it runs: many threads (`cli.DEFAULT_THREADS`) so that
single purchases can wait together for its group commit (`transactions.GroupCommit`).
But 16 threads all running Python share one interpreter lock, and a thread woken by its
database answer waits for the lock behind the others: balance reads' p99 went from ~15 to
~24 ms. So a request runs in one of a few slots; a thread that only waits for another
thread's work (a purchase waiting for its group) gives its slot up meanwhile and takes one
again before it goes on. With 4 slots the reads' p99 came back to ~18 ms, and purchases at a
fixed 500/s answered faster too (p99 24-25 ms against 32-34 ms, pairs in the same minutes).
With 2 (the default since), fewer threads wait for the lock still: purchases 10-20 % faster
and reads' p99 8-10 ms against 11-13 ms with 4 (bench/README.md). One would stop groups from
forming: a group's leader holds its slot through the transaction, so no purchase could be
read and parsed to join the next group meanwhile (groups of 1, 385 purchases/s).

A thread waiting for a slot has begun nothing (it holds no connection and no row lock) or is
done with its group (committed): no slot holder can be waiting for it, so slots cannot
deadlock with the database.
"""

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_held = threading.local()


class FairSlots:
    """A counting semaphore that hands a released slot to the longest waiter.

    threading.Semaphore lets the releasing thread take the slot straight back (for its next
    request) before the waiter it woke gets to run; that waiter then waits again, at the back.
    Measured with it, the slots changed nothing for the reads' tail.
    """

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._free = max(1, size)
        self._waiting: deque[threading.Lock] = deque()

    def acquire(self) -> None:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            handed = threading.Lock()
            handed.acquire()
            self._waiting.append(handed)
        try:
            handed.acquire()  # released by the thread that hands its slot over
        except BaseException:
            # Interrupted while waiting: leave the line, or pass on a slot handed over
            # meanwhile; a slot handed to a thread that left would be lost for good.
            with self._lock:
                handed_over = handed not in self._waiting
                if not handed_over:
                    self._waiting.remove(handed)
            if handed_over:
                self.release()
            raise

    def release(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._free += 1


class RequestSlots:
    """WSGI middleware: each request of this process runs in one of `size` slots."""

    def __init__(self, app: Callable, size: int) -> None:
        self.app = app
        self.slots = FairSlots(size)

    def __call__(self, environ, start_response):
        self.slots.acquire()
        _held.slots = self.slots
        try:
            # The body is produced here, in the slot (the service streams nothing); the server
            # sends it afterwards.
            return self.app(environ, start_response)
        finally:
            # Not held if the request gave its slot up and was stopped before it had one again.
            if _held.slots is self.slots:
                _held.slots = None
                self.slots.release()


@contextmanager
def slot_given_up() -> Iterator[None]:
    """Wait without the calling thread's slot, if it holds one (a web worker's request), and
    take one again before going on. Elsewhere (the tests' client, the CLI) nothing changes."""
    slots = getattr(_held, "slots", None)
    if slots is None:
        yield
        return
    _held.slots = None
    slots.release()
    try:
        yield
    finally:
        slots.acquire()
        _held.slots = slots
