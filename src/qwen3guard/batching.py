"""A micro-batcher: callers from any thread or task hand in items, one worker thread runs them
through the model in batches.

One thread owns the model, so concurrent callers never share a forward pass's state, and
callers that arrive together are served by one batched forward instead of a queue of single
ones. Each caller gets its own Future back: results cannot cross between callers.

Batching by the queue, not by a timer. When the worker is free it takes what is queued at once:
a request that is alone goes to the model without waiting for company (batching never costs a
lone caller anything), and what arrives while a batch runs waits for that batch only and then
goes as the next batch, as many as ``max_batch`` (and ``max_batch_cost``) allow. Under load the
batches grow by themselves, since everything queued during one generate goes in the next.

Fairness. Each ``submit_many`` call is one request, and batches are filled round-robin over the
requests waiting, one item at a time, a request not served yet first: a request of forty windows
does not queue ahead of one that arrives after it; the later one rides in the next batch. With ``cost`` and
``max_batch_cost`` a batch is also capped by its padded cost (the largest item's cost times the
rows; e.g. tokens), so one batch of long items cannot hold the model for long: an item that does
not fit keeps its turn for the next batch.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

from .errors import GuardUnavailableError

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 16,
        name: str = "qwen3guard-batcher",
        cost: Callable[[T], int] | None = None,
        max_batch_cost: int | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_batch_cost is not None and (cost is None or max_batch_cost < 1):
            raise ValueError("max_batch_cost needs a cost function and must be >= 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self._cost = cost
        self.max_batch_cost = max_batch_cost
        # One queue per request (submit_many call), served round-robin; requests not served yet
        # wait in ``_fresh`` and go before those that have been (in arrival order).
        self._groups: deque[deque[tuple[T, Future[R]]]] = deque()
        self._fresh: deque[deque[tuple[T, Future[R]]]] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        self.batches_run = 0  # how many forward batches ran (for metrics and tests)

    def submit(self, item: T) -> Future[R]:
        return self.submit_many([item])[0]

    def submit_many(self, items: Sequence[T]) -> list[Future[R]]:
        futures: list[Future[R]] = [Future() for _ in items]
        with self._cond:
            if self._closed:
                raise GuardUnavailableError("the guard has been closed")
            if futures:
                self._fresh.append(deque(zip(items, futures)))
                self._queued += len(futures)
            self._cond.notify()
        return futures

    def run(self, items: Sequence[T]) -> list[R]:
        """Run items and wait for all of them (sync callers)."""
        return [f.result() for f in self.submit_many(items)]

    async def arun(self, items: Sequence[T]) -> list[R]:
        """Run items without blocking the event loop (async callers)."""
        futures = self.submit_many(items)
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    def _take(self) -> list[tuple[T, Future[R]]] | None:
        with self._cond:
            while not self._queued and not self._closed:
                self._cond.wait()
            if not self._queued:
                return None
            # No timer: what is queued now goes now (alone, if it is alone); what arrives
            # while this batch runs is the next batch.
            return self._fill()

    def _fill(self) -> list[tuple[T, Future[R]]]:
        """One batch, round-robin over the requests; called with the lock held."""
        batch: list[tuple[T, Future[R]]] = []
        widest = 0
        skipped: list[deque[tuple[T, Future[R]]]] = []  # their next item did not fit
        self._groups.extendleft(reversed(self._fresh))
        self._fresh.clear()
        while self._groups and len(batch) < self.max_batch:
            group = self._groups.popleft()
            item, fut = group[0]
            if not fut.cancelled() and self.max_batch_cost is not None and batch:
                assert self._cost is not None
                width = max(widest, self._cost(item))
                if width * (len(batch) + 1) > self.max_batch_cost:
                    skipped.append(group)
                    continue
            group.popleft()
            self._queued -= 1
            if fut.set_running_or_notify_cancel():
                batch.append((item, fut))
                if self._cost is not None:
                    widest = max(widest, self._cost(item))
            if group:
                self._groups.append(group)  # the next request's turn
        self._groups.extendleft(reversed(skipped))  # they go first next time
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:
                continue
            try:
                results = self._run_batch([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch returned {len(results)} results for {len(batch)} items")
            except BaseException as exc:  # delivered to every caller of this batch
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            finally:
                self.batches_run += 1
            for (_, fut), res in zip(batch, results):
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
