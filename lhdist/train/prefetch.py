"""The loop's batches, read ahead: a background thread reads, shards and pins the next batches
while the step runs; the host->device copy is then asynchronous, so it neither waits for the
previous step's kernels nor stalls the next one's launch.

The loader is only ever touched by that thread, in its own order, so the batches are exactly the
loader's. `state_dict()` is the loader's position after the last batch *handed out* (not after
the ones read ahead), so a checkpoint resumes where the training really is.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

Batch = tuple[torch.Tensor, torch.Tensor]
_POLL_S = 0.1  # how often a blocked reader checks whether it was stopped


def _read_ahead(loader, prepare, out: queue.Queue, stop: threading.Event, device) -> None:
    """Thread body: (prepared batch, loader state after it) into `out` until stopped; an error
    is handed over in place of a batch, for the consumer to raise."""
    if device.type == "cuda":
        # Pinning talks to CUDA: on this rank's device, not a new context on device 0.
        torch.cuda.set_device(device)
    while not stop.is_set():
        try:
            item: Any = (prepare(next(loader)), loader.state_dict())
        except BaseException as error:  # noqa: BLE001 (re-raised in the consumer's thread)
            item = error
        while not stop.is_set():
            try:
                out.put(item, timeout=_POLL_S)
                break
            except queue.Full:
                continue
        if isinstance(item, BaseException):
            return


def _host_side(prepare: Callable[[Batch], Batch], pin: bool, batch: Batch) -> Batch:
    input_ids, labels = prepare(batch)
    if pin:  # page-locked: the host->device copy can run asynchronously
        input_ids, labels = input_ids.pin_memory(), labels.pin_memory()
    return input_ids, labels


class BatchPrefetcher(Iterator[Batch]):
    """(input_ids, labels) on `device`, from `loader` through `prepare` (CPU: shard this rank's
    tokens), `depth` batches ahead; depth 0 reads in the caller's thread (no thread at all)."""

    def __init__(
        self,
        loader,
        prepare: Callable[[Batch], Batch],
        device: torch.device,
        depth: int,
    ) -> None:
        self.loader, self.prepare, self.device, self.depth = loader, prepare, device, depth
        self.state = loader.state_dict()
        self.stop = threading.Event()
        self.thread = None
        if depth > 0:
            pin = device.type == "cuda"
            self.queue: queue.Queue = queue.Queue(maxsize=depth)
            self.thread = threading.Thread(
                target=_read_ahead,
                # The thread holds no reference to self: a dropped prefetcher stops it (__del__).
                args=(loader, functools.partial(_host_side, prepare, pin), self.queue, self.stop,
                      device),
                name="lhdist-prefetch",
                daemon=True,
            )  # fmt: skip
            self.thread.start()

    def __next__(self) -> Batch:
        if self.thread is None:
            input_ids, labels = self.prepare(next(self.loader))
            self.state = self.loader.state_dict()
            return input_ids.to(self.device), labels.to(self.device)
        item = self.queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        (input_ids, labels), self.state = item
        # From pinned memory this is queued on the current stream and returns at once; the
        # caching host allocator keeps the pinned block until the copy has run.
        non_blocking = self.device.type == "cuda"
        return (
            input_ids.to(self.device, non_blocking=non_blocking),
            labels.to(self.device, non_blocking=non_blocking),
        )

    def state_dict(self) -> dict[str, Any]:
        """The loader's state after the last batch returned by `__next__`."""
        return dict(self.state)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=5 * _POLL_S + 1)

    def __del__(self) -> None:
        self.stop.set()
