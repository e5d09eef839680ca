"""A micro-batcher: callers from any thread or task hand in items, one worker thread runs them
through the model in batches.

One thread owns the model, so concurrent callers never share a forward pass's state, and
callers that arrive together are served by one batched forward instead of a queue of single
ones. Each caller gets its own Future back: results cannot cross between callers.
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
        max_wait_s: float = 0.002,
        name: str = "qwen3guard-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: deque[tuple[T, Future[R]]] = deque()
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
            self._queue.extend(zip(items, futures))
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
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return None
            # Give callers arriving at the same moment a chance to share this batch.
            if len(self._queue) < self.max_batch and self.max_wait_s > 0:
                self._cond.wait(timeout=self.max_wait_s)
            batch = []
            while self._queue and len(batch) < self.max_batch:
                item, fut = self._queue.popleft()
                if fut.set_running_or_notify_cancel():
                    batch.append((item, fut))
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
