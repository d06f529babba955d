"""Admission: which generations a gateway replica takes on, decided from live figures.

Per route the controller knows the images admitted here and not yet finished (the work ahead of
a new request) and the route's throughput as this replica sees it: images finished per second of
busy time (time with work in flight), over the last `window` completions. A new request's queue
wait is estimated as the work ahead divided by that throughput. Past the route's budget
(`max_queue_wait_s`) the request is refused at once: 503 with a Retry-After of the time until the
work ahead fits the budget again, plus a random share of up to one budget so that clients
refused together come back spread out. Until a route has finished enough requests to measure (a cold
start), at most `cold_start_images` images are in flight on it.

Throughput is measured over busy time, so idle periods do not dilute it. Measured at light load it
underestimates what batching gives under load (the estimate is then cautious) and rises as batches
fill. With several gateway replicas each sees its share of the work and of the throughput, so the
ratio, the wait, is the same.

Admitted requests also carry a deadline to start, `drop_after` × the budget (default 1): the
generation service drops a request whose denoising has not started by then (the same 503) rather
than leaving it queued, so an admitted request finishes within the budget plus its own service.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from serve.config import AdmissionConfig
from serve.errors import Overloaded


@dataclass
class _RouteLoad:
    inflight_images: int = 0
    busy_s: float = 0.0  # seconds with work in flight, all told
    marked_at: float | None = None  # when busy_s was last brought up to date
    done: deque = field(default_factory=deque)  # (busy_s at completion, images)


@dataclass(frozen=True)
class Estimate:
    ahead_images: int
    throughput: float | None  # images per busy second; None before enough completions
    wait_s: float | None  # ahead / throughput


class Ticket:
    """One admitted generation: `started()` when its denoising starts, `finish(ok)` at the end."""

    def __init__(self, admission: Admission, route: str, images: int, drop_after_s: float | None,
                 estimate: Estimate) -> None:
        self.admission, self.route, self.images = admission, route, images
        self.drop_after_s = drop_after_s  # dropped if its denoising has not started by then
        self.estimate = estimate  # the route's figures when it was admitted
        self.is_started = False
        self._open = True

    def started(self) -> None:
        self.is_started = True

    def finish(self, ok: bool) -> None:
        if self._open:
            self._open = False
            self.admission._finish(self, ok)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(exc_type is None)


class Admission:
    def __init__(self, config: AdmissionConfig, budgets: dict[str, float | None] | None = None,
                 on_shed: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, jitter: Callable[[], float] = random.random) -> None:
        self.config = config
        self.jitter = jitter  # in [0, 1): spreads Retry-After
        self.budgets = budgets or {}
        self.on_shed = on_shed or (lambda route, reason: None)
        self.clock = clock
        self.loads: dict[str, _RouteLoad] = {}
        self.inflight = 0  # generations in this replica, every route
        self.draining = False

    # --- the decision ---------------------------------------------------------------------------

    def admit(self, route: str, images: int, shed: bool = True) -> Ticket:
        """A ticket for `images` on `route`, or Overloaded (503 + Retry-After). With `shed` False
        (queued jobs, which wait their turn in the job store) the work is counted, never refused."""
        estimate = self.estimate(route)
        if shed:
            self._check(route, images, estimate)
        load = self._load(route)
        load.inflight_images += images
        self.inflight += 1
        budget = self.budget(route) if shed else None
        drop_after = None if budget is None else budget * self.config.drop_after
        return Ticket(self, route, images, drop_after, estimate)

    def _check(self, route: str, images: int, estimate: Estimate) -> None:
        config = self.config
        if self.draining:
            self._refuse(route, "draining", "this server is shutting down; retry", config.drain_retry_after_s)
        if config.max_inflight and self.inflight >= config.max_inflight:
            self._refuse(route, "max_inflight", "the server is busy; retry later", self.retry_after(route))
        budget = self.budget(route)
        if budget is None:
            return
        if estimate.wait_s is None:
            if estimate.ahead_images + images > config.cold_start_images:
                self._refuse(route, "cold_start", f"route {route} is busy; retry later", 1.0)
        elif estimate.wait_s > budget:
            # Come back once the excess work is done, spread over up to one budget more, so that
            # the clients refused together do not all return together.
            retry = estimate.wait_s - budget + self.jitter() * budget
            self._refuse(route, "estimate",
                         f"route {route} is busy: about {estimate.wait_s:.0f} s of work is queued ahead "
                         f"(the limit is {budget:g} s); retry later", retry)

    def _refuse(self, route: str, reason: str, message: str, retry_after_s: float) -> None:
        self.on_shed(route, reason)
        raise Overloaded(message, retry_after_s=max(1.0, math.ceil(retry_after_s)))

    def queue_timeout(self, ticket: Ticket) -> Overloaded:
        """The error for an admitted request still queued past its budget (counted as shed)."""
        self.on_shed(ticket.route, "queue_timeout")
        return Overloaded(f"route {ticket.route} could not start this request within {ticket.drop_after_s:g} s; "
                          "retry later", retry_after_s=max(1.0, math.ceil(self.retry_after(ticket.route))))

    # --- figures --------------------------------------------------------------------------------

    def budget(self, route: str) -> float | None:
        return self.budgets.get(route, self.config.max_queue_wait_s)

    def estimate(self, route: str) -> Estimate:
        load = self._load(route)
        self._advance(load)
        throughput = self._throughput(load)
        wait = load.inflight_images / throughput if throughput else None
        return Estimate(load.inflight_images, throughput, wait)

    def retry_after(self, route: str) -> float:
        """When to come back: the time the work ahead needs, at least a second."""
        wait = self.estimate(route).wait_s
        return max(1.0, wait if wait is not None else 1.0)

    def _throughput(self, load: _RouteLoad) -> float | None:
        done = load.done
        if len(done) < self.config.min_samples:
            return None
        # Images finished after the first sample, over the busy time between it and now.
        images = sum(count for _, count in list(done)[1:])
        busy = load.busy_s - done[0][0]
        return images / busy if busy > 0 else None

    # --- bookkeeping ----------------------------------------------------------------------------

    def _load(self, route: str) -> _RouteLoad:
        return self.loads.setdefault(route, _RouteLoad())

    def _advance(self, load: _RouteLoad) -> None:
        now = self.clock()
        if load.marked_at is not None and load.inflight_images > 0:
            load.busy_s += now - load.marked_at
        load.marked_at = now

    def _finish(self, ticket: Ticket, ok: bool) -> None:
        load = self._load(ticket.route)
        self._advance(load)
        load.inflight_images -= ticket.images
        self.inflight -= 1
        if ok:  # failed and cancelled work says nothing about throughput
            load.done.append((load.busy_s, ticket.images))
            while len(load.done) > self.config.window:
                load.done.popleft()
