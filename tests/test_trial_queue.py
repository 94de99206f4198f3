"""The files through which a sweep hands trials to warm SLURM workers (launchers.trial_queue), without a
cluster: each trial is taken by one worker only, a lease that is not renewed expires on the sweep's own
clock, a worker whose lease was given away cannot renew it, and results are read back whole."""

from __future__ import annotations

import multiprocessing
import os
import time

from launchers.trial_queue import Heartbeats, TrialQueue


def take_all(sweep_dir, worker, out) -> None:
    queue = TrialQueue(sweep_dir)
    taken = []
    while (claim := queue.claim(worker)) is not None:
        taken.append(claim.number)
    out.put((worker, taken))


def test_each_pending_trial_is_taken_by_one_worker_only(tmp_path):
    queue = TrialQueue(tmp_path)
    queue.create()
    for number in range(200):
        queue.put(number, [f"optimizer.lr={number}"])
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    workers = [context.Process(target=take_all, args=(tmp_path, f"job_{i}", out)) for i in range(4)]
    for process in workers:
        process.start()
    taken = dict(out.get(timeout=60) for _ in workers)
    for process in workers:
        process.join(10)
    every = sorted(number for numbers in taken.values() for number in numbers)
    assert every == list(range(200))
    # each one holds the lease of what it took, under its own name
    assert sorted((n, w) for n, w, _ in queue.leases()) == sorted((n, w) for w, ns in taken.items() for n in ns)


def test_a_lease_expires_after_its_silence_on_the_sweeps_clock(tmp_path, monkeypatch):
    queue = TrialQueue(tmp_path)
    queue.create()
    queue.put(0, ["a=1"])
    claim = queue.claim("job_1")
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    beats = Heartbeats()
    assert beats.silent_for(claim.path) == 0.0
    clock[0] += 30
    assert beats.silent_for(claim.path) == 30
    # renewed (its mtime moves, whatever the worker's clock says): silent again from now
    os.utime(claim.path, ns=(1, 1))
    assert beats.silent_for(claim.path) == 0.0
    clock[0] += 61
    assert beats.silent_for(claim.path) == 61
    assert queue.give_back(claim.path)
    assert beats.silent_for(claim.path) is None and queue.unclaimed() == [0]
    # the worker that held it finds its lease gone: it cannot renew it and must stop
    assert not queue.renew(claim)
    # the next worker takes it, with the same overrides
    again = queue.claim("job_2")
    assert (again.number, again.overrides) == (0, ["a=1"])


def test_a_finished_trial_is_not_given_back_and_its_result_reads_back_whole(tmp_path):
    queue = TrialQueue(tmp_path)
    queue.create()
    queue.put(3, ["b=2"])
    claim = queue.claim("job_1")
    assert queue.where(3) == "running"
    payload = (("completed", {"val/acc": 0.5}), "/some/run", 123, [], {"cfg": None})
    queue.finish(claim, payload)
    assert queue.where(3) == "done" and queue.results() == [3]
    assert queue.read_result(3) == payload
    assert not queue.give_back(claim.path)  # finished meanwhile: nothing to give back
    assert queue.unclaimed() == [] and queue.leases() == []
    # a failed result that a resumed sweep runs again is kept aside, never deleted
    queue.set_aside(3)
    assert queue.where(3) is None and len(list(queue.done.glob("3.pkl.*.old"))) == 1


def test_a_released_trial_goes_back_to_pending(tmp_path):
    queue = TrialQueue(tmp_path)
    queue.create()
    queue.put(1, ["c=3"])
    queue.put(0, ["c=2"])
    claim = queue.claim("job_1")
    assert claim.number == 0  # the lowest number first
    queue.release(claim)
    assert queue.unclaimed() == [0, 1] and queue.leases() == []
