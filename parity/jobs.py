"""The Flax runs of one head, started ahead in worker threads while the main thread runs PyTorch.

A Flax run of a (head, dtype) is mostly tracing and XLA compiling on a CPU, and XLA compiles a program
on about one core; the PyTorch runs and the comparison run in the main thread. `FlaxJobs` starts every
dtype's Flax run of a head at once (at most `workers` at a time) and hands their results over in the
order the main thread asks for them. With one worker nothing runs ahead: each run starts when its result
is asked for, in the calling thread, exactly as a plain loop would (and holds no result in advance).
JAX's configuration contexts are per thread, so a job sets its own (`jax.default_matmul_precision`).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable


class FlaxJobs:
    def __init__(self, workers: int):
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="flax-job") if workers > 1 else None
        self._jobs: dict = {}

    def submit(self, key, fn: Callable[[], object]) -> None:
        """Start `fn` (in a worker when there are several; otherwise when `result(key)` asks for it)."""
        if key in self._jobs:
            raise ValueError(f"FlaxJobs: job {key!r} already submitted")
        self._jobs[key] = self._pool.submit(fn) if self._pool is not None else fn

    def result(self, key):
        """The job's result (waiting for it); its exception, if it raised."""
        job = self._jobs.pop(key)
        return job.result() if isinstance(job, Future) else job()

    def close(self) -> None:
        """Drop the jobs not started yet and wait for the running ones (a failure elsewhere stops the run)."""
        self._jobs.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "FlaxJobs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
