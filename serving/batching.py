"""Server-side batching: concurrent requests to one servable run as one model call, as with TF Serving's
`--enable_batching`.

Requests join the open batch of their signature (and input shapes); a batch runs when it reaches
`max_batch_size` rows, when `batch_timeout_micros` have passed since its first request, or at once when a
batch thread is free and the timeout is 0. So under load the batches fill while the threads are busy, and
one model call serves many requests. A batch may be padded up to the next of `allowed_batch_sizes` by
repeating its first row; the padding rows' outputs are dropped.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import threading
import time
from collections.abc import Callable, Mapping

import grpc
import numpy as np

from serving.config import BatchingOptions
from serving.errors import ServingError, invalid_argument
from serving.fair_executor import WorkerThreads, settle

RunBatch = Callable[[str, Mapping[str, np.ndarray]], dict[str, np.ndarray]]
Outputs = dict[str, np.ndarray]
OnDone = Callable[[Outputs | None, BaseException | None], None]

QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"


class _Task:
    """One request's rows, and whom to hand its share of the batch's outputs (or the batch's error):
    `on_done` runs in the batch thread, or in `loop` when the request waits in an event loop."""

    def __init__(
        self,
        inputs: Mapping[str, np.ndarray],
        size: int,
        on_done: OnDone,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.inputs = inputs
        self.size = size
        self.on_done = on_done
        self.loop = loop


class _Batch:
    def __init__(self, key: tuple, signature_name: str, timeout_seconds: float) -> None:
        self.key = key
        self.signature_name = signature_name
        self.deadline = time.monotonic() + timeout_seconds
        self.tasks: list[_Task] = []
        self.size = 0
        self.closed = False  # full, or followed by a newer batch of the same key: it runs as it is


class BatchScheduler(WorkerThreads):
    """Merges concurrent `submit` calls into batches run by `options.num_batch_threads` threads; after
    `close()` (which runs what is queued) requests run unbatched in the caller's thread.

    Args:
        run_batch: runs a signature on a whole batch; every output must keep the batch as dimension 0.
        options: TF Serving's batching parameters.
        name: names the batch threads.
    """

    def __init__(self, run_batch: RunBatch, options: BatchingOptions, name: str = "batch") -> None:
        self._run_batch = run_batch
        self.options = options
        self._queue: collections.deque[_Batch] = collections.deque()
        self._open: dict[tuple, _Batch] = {}
        self.batches_run = 0  # model calls made, and the requests they served: for tests and monitoring
        self.requests_run = 0
        super().__init__(options.num_batch_threads, name)

    def submit(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> Outputs:
        """Runs `inputs` (checked inputs of the signature, batch first) within a batch; blocks until done.

        Raises:
            ServingError: INVALID_ARGUMENT for a request larger than `max_batch_size` rows; UNAVAILABLE
                when `max_enqueued_batches` batches are already waiting.
        """
        done = threading.Event()
        result: list = []

        def on_done(outputs: Outputs | None, error: BaseException | None) -> None:
            result.extend((outputs, error))
            done.set()

        self._enqueue(signature_name, inputs, on_done)
        done.wait()
        outputs, error = result
        if error is not None:
            raise error
        return outputs

    async def submit_async(self, signature_name: str, inputs: Mapping[str, np.ndarray]) -> Outputs:
        """`submit` for an event loop: the loop goes on serving while the batch fills and runs."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._enqueue(signature_name, inputs, functools.partial(settle, future), loop)
        return await future

    def _enqueue(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        on_done: OnDone,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        size = _batch_size(inputs)
        limit = self.options.max_batch_size
        if size > limit:
            raise invalid_argument(f"Task size {size} is larger than maximum input batch size {limit}")
        task = _Task(inputs, size, on_done, loop)
        key = (
            signature_name,
            *sorted((alias, value.dtype.str, value.shape[1:]) for alias, value in inputs.items()),
        )
        with self._condition:
            if not self._closing:
                batch = self._open.get(key)
                if batch is None or batch.size + size > limit:
                    if batch is not None:
                        batch.closed = True
                    if len(self._queue) >= self.options.max_enqueued_batches:
                        raise ServingError(grpc.StatusCode.UNAVAILABLE, QUEUE_FULL)
                    batch = _Batch(key, signature_name, self.options.batch_timeout_micros / 1e6)
                    self._queue.append(batch)
                    self._open[key] = batch
                batch.tasks.append(task)
                batch.size += size
                if batch.size == limit:
                    batch.closed = True
                    del self._open[key]
                self._condition.notify()
                return
        self._run_tasks(signature_name, [task])  # closing: run it here, unbatched

    # -- batch threads ----------------------------------------------------------------------------

    def _next_batch(self) -> _Batch | None:
        """Waits for a batch that is due; None once closing with nothing left."""
        with self._condition:
            while True:
                now = time.monotonic()
                for batch in self._queue:
                    if batch.closed or batch.deadline <= now or self._closing:
                        self._queue.remove(batch)
                        if self._open.get(batch.key) is batch:
                            del self._open[batch.key]
                        return batch
                if self._closing:
                    return None
                wait = min((batch.deadline for batch in self._queue), default=None)
                self._condition.wait(None if wait is None else max(wait - now, 0.0))

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run_tasks(batch.signature_name, batch.tasks)

    def _run_tasks(self, signature_name: str, tasks: list[_Task]) -> None:
        """Runs the tasks as one batch and hands each its rows of the outputs, or the error to all."""
        try:
            outputs = self._run(signature_name, tasks)
        except BaseException as error:  # every waiting request must hear of it
            _hand_over([(task, None, error) for task in tasks])
            return
        with self._condition:
            self.batches_run += 1
            self.requests_run += len(tasks)
        shares, offset = [], 0
        for task in tasks:
            shares.append(
                (task, {alias: value[offset : offset + task.size] for alias, value in outputs.items()}, None)
            )
            offset += task.size
        _hand_over(shares)

    def _run(self, signature_name: str, tasks: list[_Task]) -> Outputs:
        size = sum(task.size for task in tasks)
        padded = _padded_size(size, self.options.allowed_batch_sizes)
        inputs = {}
        for alias in tasks[0].inputs:
            parts = [task.inputs[alias] for task in tasks]
            if padded > size:
                parts.append(np.repeat(parts[0][:1], padded - size, axis=0))
            inputs[alias] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        outputs = self._run_batch(signature_name, inputs)
        for alias, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != padded:
                raise ServingError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"Batched output tensor {alias}'s 0th dimension does not equal the batch size {padded}",
                )
        return outputs


def _hand_over(results: list[tuple[_Task, Outputs | None, BaseException | None]]) -> None:
    """Gives each task its result: in this thread, or with one wake-up per event loop for all its tasks."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = collections.defaultdict(list)
    for task, outputs, error in results:
        if task.loop is None:
            task.on_done(outputs, error)
        else:
            by_loop[task.loop].append((task.on_done, outputs, error))
    for loop, settles in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, settles)
        except RuntimeError:  # the loop has closed (server stopped): nobody waits any more
            pass


def _settle_all(settles: list) -> None:
    for on_done, outputs, error in settles:
        on_done(outputs, error)


def _batch_size(inputs: Mapping[str, np.ndarray]) -> int:
    if any(value.ndim == 0 for value in inputs.values()):
        raise invalid_argument("Batching Run() input tensors must have at least one dimension")
    sizes = {value.shape[0] for value in inputs.values()}
    if len(sizes) != 1:
        raise invalid_argument("Batching session Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


def _padded_size(size: int, allowed: tuple[int, ...]) -> int:
    return next((allowed_size for allowed_size in allowed if allowed_size >= size), size)
