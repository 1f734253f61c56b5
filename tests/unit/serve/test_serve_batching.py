"""The micro-batcher on its own: batches fill up to max_batch, every image gets its own row back, errors reach
the requests that were in the failing batch and the batcher keeps working."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from transferkit.serve.batching import MicroBatcher, QueueFull


def _image(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, dtype=np.uint8)


class Recorder:
    """run_batch stand-in: returns each image's value (so order can be checked) and records the batch sizes."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.delay, self.fail_on = delay, fail_on

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.sizes.append(len(images))
        time.sleep(self.delay)
        if self.fail_on is not None and (images[:, 0, 0, 0] == self.fail_on).any():
            raise RuntimeError("session failed")
        return images[:, 0, 0, :1].astype(np.float32)


def test_concurrent_submissions_share_calls_and_get_their_own_rows():
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch=4, max_wait_ms=200)

    async def main() -> list[list[np.ndarray]]:
        try:
            return await asyncio.gather(*(batcher.submit([_image(i)]) for i in range(10)))
        finally:
            await batcher.close()

    results = asyncio.run(main())
    assert [float(rows[0][0]) for rows in results] == list(range(10))
    assert recorder.sizes == [4, 4, 2]
    assert batcher.stats.batches == 3 and batcher.stats.images == 10 and batcher.stats.requests == 10
    assert batcher.stats.largest_batch == 4
    assert recorder.threads and "MainThread" not in recorder.threads  # the session runs off the event loop


def test_a_lone_image_waits_at_most_max_wait():
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_batch=32, max_wait_ms=30)

    async def main() -> float:
        started = time.perf_counter()
        await batcher.submit([_image(1)])
        elapsed = time.perf_counter() - started
        await batcher.close()
        return elapsed

    assert asyncio.run(main()) < 1.0
    assert recorder.sizes == [1]


def test_images_arriving_during_a_batch_form_the_next_one():
    recorder = Recorder(delay=0.2)
    batcher = MicroBatcher(recorder, max_batch=16, max_wait_ms=0)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit([_image(0)]))
        await asyncio.sleep(0.05)  # the first batch (one image) is running now
        rest = [batcher.submit([_image(i)]) for i in range(1, 7)]
        await asyncio.gather(first, *rest)
        await batcher.close()

    asyncio.run(main())
    assert recorder.sizes == [1, 6]


def test_a_multi_image_request_keeps_its_order_across_batches():
    batcher = MicroBatcher(Recorder(), max_batch=3, max_wait_ms=5)

    async def main() -> list[np.ndarray]:
        rows = await batcher.submit([_image(i) for i in range(8)])
        await batcher.close()
        return rows

    assert [float(r[0]) for r in asyncio.run(main())] == list(range(8))


def test_a_failing_batch_fails_its_requests_only_and_the_batcher_goes_on():
    batcher = MicroBatcher(Recorder(fail_on=13), max_batch=8, max_wait_ms=0)

    async def main() -> tuple[BaseException, list[np.ndarray]]:
        with pytest.raises(RuntimeError, match="session failed"):
            await batcher.submit([_image(13)])
        rows = await batcher.submit([_image(5)])
        await batcher.close()
        return rows

    assert float(asyncio.run(main())[0][0]) == 5.0
    assert batcher.stats.failed_batches == 1 and batcher.stats.batches == 1


def test_too_many_waiting_images_are_refused():
    batcher = MicroBatcher(Recorder(delay=0.3), max_batch=1, max_wait_ms=0, max_pending=3)

    async def main() -> None:
        running = [asyncio.ensure_future(batcher.submit([_image(0)]))]
        await asyncio.sleep(0.05)  # it runs
        running += [asyncio.ensure_future(batcher.submit([_image(i)])) for i in range(1, 4)]
        await asyncio.sleep(0.01)  # three wait: the limit
        assert batcher.pending == 3
        with pytest.raises(QueueFull):
            await batcher.submit([_image(9)])
        await asyncio.gather(*running)
        await batcher.close()

    asyncio.run(main())


def test_it_restarts_in_a_new_event_loop():
    """Test clients run each session in a fresh loop; the batcher follows instead of hanging."""
    batcher = MicroBatcher(Recorder(), max_batch=2, max_wait_ms=0)
    for value in (1, 2):
        rows = asyncio.run(batcher.submit([_image(value)]))
        assert float(rows[0][0]) == value
    asyncio.run(batcher.close())


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"max_wait_ms": -1}])
def test_bad_settings_are_refused(kwargs: dict):
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), **kwargs)
