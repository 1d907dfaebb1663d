"""Micro-batching: images from concurrent requests are scored together, one forward pass per batch.

Request handlers :meth:`~MicroBatcher.submit` decoded images and await the futures; worker threads take
up to ``max_batch`` waiting images (waiting at most ``max_wait_s`` for more once one has arrived), run
the pipeline once, and resolve each future. The model never runs on the event loop, and an image whose
request gave up (timeout) is dropped before it is scored.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from PIL import Image

from detector.result import ProvenanceResult
from detector.scoring import Batch


@dataclass
class _Item:
    path: str
    image: Image.Image
    future: Future
    arrived: float


class MicroBatcher:
    def __init__(
        self,
        score_batch: Callable[[Batch], list[ProvenanceResult]],
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        workers: int = 1,
    ):
        self.score_batch = score_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.workers = workers
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopped = False
        self.batches = 0
        self.images = 0
        self.largest_batch = 0

    def start(self) -> None:
        self._stopped = False
        for n in range(self.workers):
            thread = threading.Thread(target=self._loop, name=f"score-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads = []
        while self._queue:
            self._queue.popleft().future.cancel()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, items: Sequence[tuple[str, Image.Image]]) -> list[Future]:
        """Queue images (path, decoded RGB image); one future per image resolves to its result."""
        now = time.monotonic()
        futures = [Future() for _ in items]
        with self._cond:
            if self._stopped:
                raise RuntimeError("the batcher is stopped")
            for (path, image), future in zip(items, futures, strict=True):
                self._queue.append(_Item(path, image, future, now))
            self._cond.notify_all()
        return futures

    def _take(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            deadline = self._queue[0].arrived + self.max_wait_s
            while len(self._queue) < self.max_batch and not self._stopped:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = []
            while self._queue and len(batch) < self.max_batch:
                item = self._queue.popleft()
                if item.future.set_running_or_notify_cancel():  # False: its request gave up
                    batch.append(item)
            return batch

    def _loop(self) -> None:
        while True:
            items = self._take()
            if items is None:
                return
            if not items:
                continue
            try:
                results = self.score_batch(Batch([i.path for i in items], [i.image for i in items]))
            except BaseException as exc:  # the pipeline isolates per-image failures; this is a bug
                for item in items:
                    item.future.set_exception(exc)
                continue
            with self._cond:
                self.batches += 1
                self.images += len(items)
                self.largest_batch = max(self.largest_batch, len(items))
            for item, result in zip(items, results, strict=True):
                item.future.set_result(result)
