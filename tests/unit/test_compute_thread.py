"""The stage replicas' compute thread: one thread for everything, in order, off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time

from serve.stages.compute_thread import ComputeThread


def test_every_call_runs_on_the_same_thread_which_is_not_the_callers():
    compute = ComputeThread("test")
    loaded_on = compute.call(threading.get_ident)  # as a replica's constructor loads and warms up

    async def requests():
        return await asyncio.gather(*(compute.run(threading.get_ident) for _ in range(5)))

    assert set(asyncio.run(requests())) == {loaded_on} != {threading.get_ident()}


def test_calls_run_one_at_a_time_in_order_and_the_loop_stays_free():
    compute = ComputeThread("test")
    log: list[str] = []

    def work(name: str) -> str:
        log.append(f"start {name}")
        time.sleep(0.05)
        log.append(f"end {name}")
        return name

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        tick = asyncio.ensure_future(ticker())
        results = await asyncio.gather(compute.run(work, "a"), compute.run(work, "b"))
        tick.cancel()
        return results, ticks

    results, ticks = asyncio.run(main())
    assert results == ["a", "b"]
    assert log == ["start a", "end a", "start b", "end b"]
    assert ticks >= 5  # the event loop ran while the work did


def test_a_cancelled_call_that_has_not_started_is_skipped():
    compute = ComputeThread("test")
    ran: list[str] = []
    release = threading.Event()

    async def main():
        first = asyncio.ensure_future(compute.run(release.wait))
        second = asyncio.ensure_future(compute.run(ran.append, "second"))
        await asyncio.sleep(0.05)
        second.cancel()
        await asyncio.sleep(0.01)  # the cancel reaches the executor's queue on the loop's next turn
        release.set()
        await first
        await compute.run(ran.append, "third")

    asyncio.run(main())
    assert ran == ["third"]
