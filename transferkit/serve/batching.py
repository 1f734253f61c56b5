"""Micro-batching: images of concurrent requests run together in one ONNX Runtime call.

A request's images are queued one by one, each with a future. One consumer task takes the first waiting
image, then keeps taking until ``max_batch`` images are collected or ``max_wait_ms`` has passed since the
first, and runs them as one batch in a dedicated worker thread (the event loop stays free to accept and
decode other requests meanwhile). Images that arrive while a batch runs wait in the queue and form the next
one, so under load batches fill up by themselves; an idle server adds at most ``max_wait_ms`` to a request.

The counters (:class:`BatchStats`) say how well it batches: session calls against images and requests.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["BatchStats", "MicroBatcher", "QueueFull"]


class QueueFull(Exception):
    """More images are waiting than the batcher accepts (the server is overloaded; retry later)."""


@dataclass
class BatchStats:
    """What the batcher has done since it was created."""

    requests: int = 0  # calls of submit()
    images: int = 0  # images run
    batches: int = 0  # session calls
    largest_batch: int = 0
    failed_batches: int = 0
    busy_s: float = 0.0  # time spent inside the session
    sizes: dict[int, int] = field(default_factory=dict)  # batch size -> how many batches had it

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean_batch"] = round(self.images / self.batches, 3) if self.batches else 0.0
        out["busy_s"] = round(self.busy_s, 3)
        out["sizes"] = {str(k): v for k, v in sorted(self.sizes.items())}
        return out


@dataclass
class _Item:
    image: np.ndarray  # uint8 [H, W, 3]
    future: asyncio.Future


class MicroBatcher:
    """Queue single images, run them in batches of up to ``max_batch`` through ``run_batch``.

    Args:
        run_batch: uint8 ``[N, H, W, 3]`` -> an array with one row per image (e.g. probabilities). Called in
            one worker thread, never concurrently with itself.
        max_batch: the most images per call.
        max_wait_ms: how long the first image of a batch waits for company.
        max_pending: the most images waiting at once; beyond it :meth:`submit` raises :class:`QueueFull`.
    """

    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], max_batch: int = 32, max_wait_ms: float = 5.0,
                 max_pending: int = 1024) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.max_pending = int(max_pending)
        self.stats = BatchStats()
        self._executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def _ensure_running(self) -> asyncio.Queue[_Item]:
        """Start the consumer in the running loop (again, if an earlier loop has gone: test clients make new ones)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._queue = asyncio.Queue()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferkit-session")
            self._task = loop.create_task(self._consume(self._queue), name="transferkit-batcher")
        assert self._queue is not None
        return self._queue

    async def submit(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Run ``images`` (each uint8 ``[H, W, 3]``) and return their output rows, in order."""
        queue = self._ensure_running()
        if queue.qsize() + len(images) > self.max_pending:
            raise QueueFull(f"{queue.qsize()} images are already waiting (limit {self.max_pending})")
        self.stats.requests += 1
        loop = asyncio.get_running_loop()
        items = [_Item(image, loop.create_future()) for image in images]
        for item in items:
            queue.put_nowait(item)
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _consume(self, queue: asyncio.Queue[_Item]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:  # everything already waiting joins without a wait
                    batch.append(queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = [item for item in batch if not item.future.done()]  # a cancelled request's images are dropped
            if batch:
                await self._run(batch, loop)

    async def _run(self, batch: list[_Item], loop: asyncio.AbstractEventLoop) -> None:
        images = np.stack([item.image for item in batch])
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, self.run_batch, images)
        except Exception as exc:  # noqa: BLE001 - the requests get the error, the batcher lives on
            self.stats.failed_batches += 1
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self.stats.busy_s += time.perf_counter() - started
        self.stats.batches += 1
        self.stats.images += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self.stats.sizes[len(batch)] = self.stats.sizes.get(len(batch), 0) + 1
        for item, row in zip(batch, outputs):
            if not item.future.done():
                item.future.set_result(row)

    async def close(self) -> None:
        """Stop the consumer (waiting requests are cancelled) and the worker thread."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, RuntimeError):
                pass
        if self._queue is not None:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.cancel()
        self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
