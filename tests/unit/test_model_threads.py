"""The model's passes run on the first free thread, so lone passes stay on one warm thread."""

from __future__ import annotations

import threading

from backends.flag.threads import FirstFreeThreads


def test_consecutive_lone_passes_run_on_one_thread() -> None:
    threads = FirstFreeThreads(2, thread_name_prefix="t")
    release = threading.Event()
    try:
        # Two passes at once once, so that both threads exist and idle.
        both = [threads.submit(release.wait, 5) for _ in range(2)]
        release.set()
        assert all(f.result(timeout=5) for f in both)
        names = {
            threads.submit(lambda: threading.current_thread().name).result() for _ in range(50)
        }
    finally:
        release.set()
        threads.shutdown()
    # A ThreadPoolExecutor(2) hands each to whichever idle thread wakes first.
    assert names == {"t-0_0"}


def test_a_pass_while_another_runs_takes_the_second_thread() -> None:
    threads = FirstFreeThreads(2, thread_name_prefix="t")
    release = threading.Event()
    try:
        running = threads.submit(lambda: (release.wait(5), threading.current_thread().name)[1])
        second = threads.submit(lambda: threading.current_thread().name).result(timeout=5)
        release.set()
        assert (running.result(timeout=5), second) == ("t-0_0", "t-1_0")
        # Both idle again: the next lone pass goes back to the first thread.
        assert threads.submit(lambda: threading.current_thread().name).result() == "t-0_0"
    finally:
        release.set()
        threads.shutdown()


def test_when_all_are_busy_a_pass_queues_on_the_shortest_queue() -> None:
    threads = FirstFreeThreads(2, thread_name_prefix="t")
    release = threading.Event()
    try:
        held = [threads.submit(release.wait, 5) for _ in range(3)]
        fourth = threads.submit(lambda: threading.current_thread().name)
        release.set()
        assert all(f.result(timeout=5) for f in held)
        # Thread 0 had two waiting (the 1st and 3rd), thread 1 one: the 4th went to 1.
        assert fourth.result(timeout=5) == "t-1_0"
    finally:
        release.set()
        threads.shutdown()
