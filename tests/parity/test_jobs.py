"""Flax runs side by side (parity.jobs, --flax-jobs): the order of results, one worker running nothing
ahead, failures, the per-thread compile meter, and a harness run whose verdicts and numbers do not depend
on the number of jobs."""

from __future__ import annotations

import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parity.checkpoint import ParityInputError
from parity.jobs import FlaxJobs
from parity.options import flax_jobs
from parity.timing import CompileMeter


def test_results_come_back_by_key_from_worker_threads():
    seen = []
    with FlaxJobs(2) as jobs:
        for k in ("a", "b", "c"):
            jobs.submit(k, lambda k=k: (seen.append(threading.current_thread().name), k * 2)[1])
        assert [jobs.result(k) for k in ("c", "a", "b")] == ["cc", "aa", "bb"]
    assert seen and all(name.startswith("flax-job") for name in seen)


def test_one_worker_runs_nothing_ahead_and_stays_in_the_calling_thread():
    ran = []
    jobs = FlaxJobs(1)
    jobs.submit("x", lambda: ran.append(threading.get_ident()) or 7)
    time.sleep(0.05)
    assert ran == []                      # not started before its result is asked for
    assert jobs.result("x") == 7 and ran == [threading.get_ident()]
    jobs.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_job_raises_where_its_result_is_asked_for(workers):
    with FlaxJobs(workers) as jobs:
        jobs.submit("ok", lambda: 1)
        jobs.submit("bad", lambda: 1 / 0)
        assert jobs.result("ok") == 1
        with pytest.raises(ZeroDivisionError):
            jobs.result("bad")
        jobs.submit("again", lambda: 2)
        with pytest.raises(ValueError, match="already submitted"):
            jobs.submit("again", lambda: 3)


def test_close_drops_jobs_not_started():
    started = []
    gate = threading.Event()
    jobs = FlaxJobs(2)
    for k in range(6):
        jobs.submit(k, lambda k=k: (started.append(k), gate.wait(5)))
    time.sleep(0.1)
    threading.Timer(0.3, gate.set).start()
    jobs.close()                        # cancels the four waiting jobs, then waits for the two running ones
    assert sorted(started) == [0, 1]


def test_flax_jobs_option():
    import os

    cores = max(1, min(4, os.cpu_count() or 1))
    assert flax_jobs(3, mesh=False) == 3
    assert flax_jobs(3, mesh=True) == 1          # a mesh's programs are never run side by side
    assert flax_jobs(None, mesh=False, on_cpu=True, n_params=30_000) == cores        # test-sized: compile-bound
    assert flax_jobs(None, mesh=False, on_cpu=True, n_params=140_000_000) == 1       # BART-base on a CPU
    assert flax_jobs(None, mesh=False, on_cpu=False, n_params=140_000_000) == cores  # on a GPU: compiling
    assert flax_jobs(2, mesh=False, on_cpu=True, n_params=140_000_000) == 2
    with pytest.raises(ParityInputError, match="--flax-jobs 0"):
        flax_jobs(0, mesh=False)


def test_compile_meter_counts_only_its_own_thread():
    def compile_one(n):
        jax.jit(lambda x: jnp.sin(x) * n + 1.0).lower(np.zeros((3, n), np.float32)).compile()

    other = []
    with CompileMeter() as meter:
        t = threading.Thread(target=lambda: other.append(CompileMeter().__enter__()) or compile_one(5)
                             or other[0].__exit__(None, None, None))
        t.start()
        t.join()
        before = meter.programs
        jax.jit(lambda x: jnp.cos(x) * 3.0).lower(np.zeros((2, 7), np.float32)).compile()
    assert before == 0 and meter.programs == 1
    assert other[0].programs == 1


def test_harness_gives_the_same_numbers_with_one_job_or_several(tmp_path):
    from test_harness import save_checkpoint  # the demo's quick config, as a transformers checkpoint

    from parity.harness import Options, run_parity

    path = save_checkpoint(tmp_path / "ckpt", head="lm")
    base = dict(heads=("lm",), dtypes=("float32", "bfloat16"), cases=("right_padding", "fully_padded_row"),
                batch_size=2, seq_len=8, steps=2)
    one = run_parity(path, opts=Options(flax_jobs=1, **base)).report
    two = run_parity(path, opts=Options(flax_jobs=2, **base)).report
    assert one.passed and two.passed
    rows = lambda r: [(res.name, res.metrics.max_abs_err) for col in r.columns for res in col.results]  # noqa: E731
    a, b = rows(one), rows(two)
    assert len(a) == len(b) > 20
    assert all(x[0] == y[0] and (x[1] == y[1] or (np.isnan(x[1]) and np.isnan(y[1]))) for x, y in zip(a, b))
    assert two.environment.extra["flax_jobs"].startswith("2: ")
    assert one.environment.extra["flax_jobs"].startswith("1: ")
    assert one.environment.extra["gold"] == "PyTorch reference in float64 on cpu"
