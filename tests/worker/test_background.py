import threading
import time

import pytest

from worker.background import SerialBackground
from contract.errors import ErrorCode, JobError


def test_calls_run_in_order_off_the_callers_thread_while_the_caller_goes_on():
    done, threads = [], set()
    release = threading.Event()

    def work(i):
        if i == 0:
            release.wait(5)  # the caller must get past submit while this runs
        threads.add(threading.get_ident())
        done.append(i)

    with SerialBackground(depth=2) as bg:
        bg.submit(work, 0)
        bg.submit(work, 1)
        assert done == []  # both accepted while the first still runs
        release.set()
        for i in range(2, 6):
            bg.submit(work, i)
    assert done == [0, 1, 2, 3, 4, 5]
    assert threads and threading.get_ident() not in threads


def test_depth_bounds_the_waiting_calls():
    running = threading.Event()
    release = threading.Event()
    waiting_at_submit = []

    def slow(i):
        running.set()
        release.wait(5)

    bg = SerialBackground(depth=1)
    bg.submit(slow, 0)
    running.wait(5)
    bg.submit(slow, 1)  # one running, one waiting: the limit
    t = threading.Thread(target=lambda: (bg.submit(slow, 2), waiting_at_submit.append(time.monotonic())))
    t.start()
    time.sleep(0.2)
    assert waiting_at_submit == []  # a third call blocks until the first finishes
    release.set()
    t.join(5)
    assert waiting_at_submit
    bg.drain()


def test_an_error_in_the_background_reaches_the_caller_and_later_calls_are_dropped():
    ran = []

    def fail(_):
        raise JobError(ErrorCode.E_FFMPEG, "encoder failed")

    bg = SerialBackground(depth=4)
    bg.submit(fail, 0)
    time.sleep(0.1)
    with pytest.raises(JobError) as err:
        bg.submit(ran.append, 1)  # the earlier failure surfaces at the next submit
    assert err.value.code is ErrorCode.E_FFMPEG

    with pytest.raises(JobError):
        with SerialBackground(depth=4) as bg2:
            bg2.submit(fail, 0)
            bg2.submit(ran.append, 1)  # queued behind the failure: dropped at drain
    assert ran == []


def test_the_blocks_own_error_wins_and_the_running_call_finishes_first():
    finished = []

    def slow(i):
        time.sleep(0.2)
        finished.append(i)

    with pytest.raises(KeyError):
        with SerialBackground(depth=3) as bg:
            bg.submit(slow, 0)
            bg.submit(slow, 1)
            time.sleep(0.05)
            raise KeyError("generation failed")
    assert finished == [0]  # 0 was running and finished before the exit returned; 1 never started


def test_negative_depth_is_refused():
    with pytest.raises(ValueError):
        SerialBackground(depth=-1)
