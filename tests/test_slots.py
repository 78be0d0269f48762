"""Request slots: a few of a web worker's threads run requests; parked ones give their slot up."""

import threading
import time

from loyalty_api import slots as slots_module
from loyalty_api.slots import FairSlots, RequestSlots
from loyalty_api.transactions import GroupCommit
from tests.test_group_commit import Recorder, wait_queued


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.002)


def waiting(slots: FairSlots, count: int):
    return lambda: len(slots._waiting) == count


def test_a_released_slot_goes_to_the_longest_waiter_not_back_to_the_releaser():
    slots = FairSlots(1)
    slots.acquire()
    order, threads = [], []
    for name in ("a", "b", "c"):  # one at a time, so the queue order is known
        def take(name=name):
            slots.acquire()
            order.append(name)
            slots.release()

        thread = threading.Thread(target=take)
        thread.start()
        threads.append(thread)
        wait_until(waiting(slots, len(threads)), "the thread did not wait")
    slots.release()
    slots.acquire()  # the releaser comes back at once: it queues behind the three
    order.append("releaser")
    slots.release()
    for thread in threads:
        thread.join(5)
    assert order == ["a", "b", "c", "releaser"]


def test_slots_let_at_most_size_requests_run_and_all_finish():
    running, most, lock, gate = [0], [0], threading.Lock(), threading.Event()

    def app(environ, start_response):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        assert gate.wait(10)
        with lock:
            running[0] -= 1
        start_response("200 OK", [])
        return [b"ok"]

    middleware = RequestSlots(app, 2)
    bodies = []
    threads = [threading.Thread(target=lambda: bodies.append(middleware({}, lambda *a: None)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    # Two run (held at the gate), six wait for a slot; then all go through.
    wait_until(waiting(middleware.slots, 6), "the other requests did not wait for a slot")
    assert running[0] == 2
    gate.set()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    assert bodies == [[b"ok"]] * 8
    assert most[0] == 2


def test_a_waiter_stopped_while_waiting_leaves_the_line_and_loses_no_slot():
    slots = FairSlots(1)
    slots.acquire()
    stopped = []

    class Stop(BaseException):
        pass

    real_lock = threading.Lock

    class InterruptedLock:  # the waiter's hand-over lock, whose wait is interrupted
        def __init__(self):
            self.lock, self.calls = real_lock(), 0

        def acquire(self):
            self.calls += 1
            if self.calls == 2:
                raise Stop
            return self.lock.acquire()

        def release(self):
            self.lock.release()

    threading_module = slots_module.threading
    slots_module.threading = type("T", (), {"Lock": InterruptedLock})
    try:
        try:
            slots.acquire()
        except Stop:
            stopped.append(True)
    finally:
        slots_module.threading = threading_module
    assert stopped and not slots._waiting
    slots.release()  # the holder's slot is free again, not handed to the thread that left
    slots.acquire()
    slots.release()
    assert slots._free == 1


def test_purchases_waiting_for_their_group_give_their_slot_up():
    """With two slots, the leader holds one while its group runs; the others go through the
    second one by one, each giving it up while it waits: all queue for the next group.
    Holding it, one follower would queue and the rest would wait for the slot."""
    recorder = Recorder()
    group_commit = GroupCommit(recorder, lambda: 10)

    def app(environ, start_response):
        result = group_commit.submit(environ["item"])
        start_response("200 OK", [])
        return [result]

    middleware = RequestSlots(app, 2)
    results = {}

    def request(item):
        results[item] = middleware({"item": item}, lambda *a: None)

    threads = [threading.Thread(target=request, args=(1,))]
    threads[0].start()
    assert recorder.first_started.wait(5)  # the leader runs its group, in the one slot
    for item in (2, 3, 4):
        thread = threading.Thread(target=request, args=(item,))
        thread.start()
        threads.append(thread)
    wait_queued(group_commit, 3)
    recorder.release_first.set()
    for thread in threads:
        thread.join(10)
    assert recorder.groups[0] == [1] and sorted(recorder.groups[1]) == [2, 3, 4]
    assert results == {1: [10], 2: [20], 3: [30], 4: [40]}
