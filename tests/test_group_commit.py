"""GroupCommit: requests that queue behind a running group go together in the next one."""

import threading
import time

import pytest

from loyalty_api.transactions import GroupCommit


class Recorder:
    """A run_group that records its groups; the first group can be held until released."""

    def __init__(self, fail_on=()):
        self.groups: list[list] = []
        self.first_started = threading.Event()
        self.release_first = threading.Event()
        self.fail_on = set(fail_on)
        self.lock = threading.Lock()

    def __call__(self, items):
        with self.lock:
            self.groups.append(list(items))
            first = len(self.groups) == 1
        if first:
            self.first_started.set()
            assert self.release_first.wait(10)
        if self.fail_on & set(items):
            raise RuntimeError(f"cannot apply {sorted(self.fail_on & set(items))}")
        return [item * 10 for item in items]


def submit_in_threads(group_commit, items):
    """Submit each item from its own thread; return {item: result or exception}."""
    outcomes = {}

    def worker(item):
        try:
            outcomes[item] = group_commit.submit(item)
        except BaseException as err:  # noqa: BLE001 - the test looks at what each caller got
            outcomes[item] = err

    threads = [threading.Thread(target=worker, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    return threads, outcomes


def wait_queued(group_commit, count):
    deadline = time.monotonic() + 10
    while len(group_commit._queue) < count:
        assert time.monotonic() < deadline, "requests did not queue"
        time.sleep(0.005)


def test_a_lone_request_runs_at_once_in_its_own_group():
    recorder = Recorder()
    recorder.release_first.set()
    group_commit = GroupCommit(recorder, lambda: 10)
    assert group_commit.submit(7) == 70
    assert group_commit.submit(8) == 80
    assert recorder.groups == [[7], [8]]


def test_requests_queued_behind_a_running_group_go_together_next():
    recorder = Recorder()
    group_commit = GroupCommit(recorder, lambda: 10)
    first, first_outcome = submit_in_threads(group_commit, [1])
    assert recorder.first_started.wait(5)
    rest, outcomes = submit_in_threads(group_commit, [2, 3, 4, 5])
    wait_queued(group_commit, 4)
    recorder.release_first.set()
    for thread in first + rest:
        thread.join(10)
    assert recorder.groups[0] == [1]
    assert sorted(recorder.groups[1]) == [2, 3, 4, 5]
    assert len(recorder.groups) == 2
    assert first_outcome == {1: 10}
    assert outcomes == {2: 20, 3: 30, 4: 40, 5: 50}


def test_groups_are_at_most_max_size_and_keep_arrival_order():
    recorder = Recorder()
    group_commit = GroupCommit(recorder, lambda: 2)
    first, _ = submit_in_threads(group_commit, [0])
    assert recorder.first_started.wait(5)
    threads = []
    for item in range(1, 6):  # one at a time, so the queue order is known
        more, _ = submit_in_threads(group_commit, [item])
        threads += more
        wait_queued(group_commit, item)
    recorder.release_first.set()
    for thread in first + threads:
        thread.join(10)
    assert recorder.groups == [[0], [1, 2], [3, 4], [5]]


def test_a_failed_group_runs_each_request_alone_so_only_the_bad_one_fails():
    recorder = Recorder(fail_on={3})
    group_commit = GroupCommit(recorder, lambda: 10)
    first, _ = submit_in_threads(group_commit, [1])
    assert recorder.first_started.wait(5)
    rest, outcomes = submit_in_threads(group_commit, [2, 3, 4])
    wait_queued(group_commit, 3)
    recorder.release_first.set()
    for thread in first + rest:
        thread.join(10)
    assert outcomes[2] == 20 and outcomes[4] == 40
    assert isinstance(outcomes[3], RuntimeError)
    assert sorted(recorder.groups[1]) == [2, 3, 4]
    assert sorted(map(tuple, recorder.groups[2:])) == [(2,), (3,), (4,)]


def test_a_lone_failure_is_raised_to_its_caller_and_the_next_request_still_runs():
    recorder = Recorder(fail_on={1})
    recorder.release_first.set()
    group_commit = GroupCommit(recorder, lambda: 10)
    with pytest.raises(RuntimeError):
        group_commit.submit(1)
    assert group_commit.submit(2) == 20


def test_the_leader_answers_without_waiting_for_the_next_group():
    started_second, release_second = threading.Event(), threading.Event()
    calls = []

    def run_group(items):
        calls.append(list(items))
        if len(calls) == 1:
            time.sleep(0.05)  # time for the second request to queue behind this group
        else:
            started_second.set()
            assert release_second.wait(10)
        return items

    group_commit = GroupCommit(run_group, lambda: 10)
    first, first_outcome = submit_in_threads(group_commit, ["a"])
    time.sleep(0.01)
    second, second_outcome = submit_in_threads(group_commit, ["b"])
    first[0].join(5)
    assert first_outcome == {"a": "a"}  # answered while the second group is still running
    assert started_second.wait(5)
    release_second.set()
    second[0].join(5)
    assert second_outcome == {"b": "b"}


def _hold_first_group_then(group_commit_run, queued=2):
    """Run a GroupCommit whose first group is held until `queued` more requests wait behind
    it; return the outcomes of the leader (0) and of the queued requests (1..queued)."""
    release = threading.Event()
    calls = []

    def run_group(items):
        calls.append(list(items))
        if len(calls) == 1:
            assert release.wait(10)
            return [item * 10 for item in items]
        return group_commit_run(items, calls)

    group_commit = GroupCommit(run_group, lambda: 10)
    first, outcomes = submit_in_threads(group_commit, [0])
    deadline = time.monotonic() + 10
    while not calls:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    rest, more = submit_in_threads(group_commit, list(range(1, queued + 1)))
    wait_queued(group_commit, queued)
    release.set()
    for thread in first + rest:
        thread.join(10)
    assert not any(thread.is_alive() for thread in first + rest), "a request was left waiting"
    return group_commit, {**outcomes, **more}, calls


def test_a_group_giving_the_wrong_number_of_results_fails_and_each_request_runs_alone():
    def run(items, calls):
        return [item * 10 for item in items][:1]  # one result, whatever the group's size

    group_commit, outcomes, calls = _hold_first_group_then(run)
    assert outcomes == {0: 0, 1: 10, 2: 20}
    assert calls[1] == [1, 2] and sorted(calls[2:]) == [[1], [2]]
    assert group_commit.submit(3) == 30  # and the group commit is not stuck


def test_a_failing_size_setting_runs_requests_one_by_one():
    def broken():
        raise ValueError("not a number")

    group_commit = GroupCommit(lambda items: [item * 10 for item in items], broken)
    threads, outcomes = submit_in_threads(group_commit, [1, 2, 3])
    for thread in threads:
        thread.join(10)
    assert outcomes == {1: 10, 2: 20, 3: 30}
    assert not group_commit._busy and group_commit._queue == []


def test_an_interrupt_in_a_group_is_raised_not_swallowed_and_the_others_run_alone():
    def run(items, calls):
        if len(items) > 1:
            raise KeyboardInterrupt
        return [item * 10 for item in items]

    _, outcomes, calls = _hold_first_group_then(run)
    assert outcomes[0] == 0
    leader, follower = calls[1]
    assert isinstance(outcomes[leader], KeyboardInterrupt) and outcomes[follower] == follower * 10
    assert [follower] in calls[2:] and [leader] not in calls[2:]  # the interrupted leader is not rerun
