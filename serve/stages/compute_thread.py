"""One compute thread per stage replica: all of its torch work (load, warm-up, requests) runs there.

Why one thread, always the same: torch's CPU ops run on GNU OpenMP, which keeps a team of worker
threads for each thread that calls into it. A replica that warmed up on its main thread and then ran
requests through `asyncio.to_thread` had two teams; once libgomp manages more threads than there are
cores it "throttles": workers stop spinning at barriers and sleep on a futex after ~100 spins, so
every op of every step pays wake-ups. Measured on 2 cores (`bench/compare.py`, Denoiser replica):
~4,000 voluntary context switches per second per compute thread against ~0 in-process, and a denoise
25% slower than the same model in-process. One calling thread keeps one team, as in-process.

It also means a replica computes one thing at a time (a batch, a decode, a preview), which is what
the cores can do anyway: concurrent calls queue here, in order, instead of oversubscribing them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class ComputeThread:
    def __init__(self, name: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"compute-{name}")

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` there and wait (for a replica's constructor: loading and warm-up)."""
        return self._pool.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` there without blocking the event loop. Cancelling the await does not stop a
        call that has started (as with `asyncio.to_thread`); one still queued is skipped."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
