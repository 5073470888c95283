"""The in-flight count the batcher and the AOTInductor routing decide on."""

from __future__ import annotations

import threading

from serving.in_flight import InFlight


def test_in_flight_counter_counts_other_calls_across_threads() -> None:
    counter = InFlight()
    entered, release = threading.Barrier(3), threading.Event()
    seen: list[int] = []

    def call() -> None:
        with counter as others:
            seen.append(others)
            entered.wait()
            release.wait()

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    entered.wait()  # both calls are inside
    with counter as others:
        assert others == 2
    release.set()
    for t in threads:
        t.join()
    assert sorted(seen) == [0, 1]
    with counter as others:
        assert others == 0  # every exit counted out


def test_begin_and_end_apart() -> None:
    calls = InFlight()
    assert calls.begin() == 0 and calls.begin() == 1 and calls.count == 2
    calls.end()
    assert calls.count == 1
    with calls as others:
        assert others == 1 and calls.count == 2
    assert calls.count == 1
