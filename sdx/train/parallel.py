"""Independent trainings run side by side: each in a worker process with its share of the CPU threads, its
output in a log file of its own. Small models use one core poorly (a tiny CLIP gains little from a second
thread), so on a CPU the main job's five models finish sooner two or more at a time than one after another."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from tqdm.auto import tqdm


@dataclass(frozen=True)
class TrainingJob:
    """One training: `kind` picks train_vit.py or train_clip.py, `argv` its command line."""

    name: str
    kind: Literal["vit", "clip"]
    argv: tuple[str, ...]


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, which `taskset` and containers narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_workers(n_jobs: int) -> int:
    """One process per CPU up to the number of jobs; one on a GPU machine (the trainings would share its memory)."""
    import torch  # heavy: only when the job runs

    return 1 if torch.cuda.is_available() else max(1, min(n_jobs, cpu_count()))


def _train(job: TrainingJob) -> tuple[dict[str, Any], float]:
    """(the trainer's result, its wall seconds)."""
    from sdx.train import clip as train_clip  # heavy (transformers): in the process that trains
    from sdx.train import vit as train_vit

    start = time.perf_counter()
    return (train_vit.main if job.kind == "vit" else train_clip.main)(list(job.argv)), time.perf_counter() - start


def _worker_init(threads: int) -> None:
    import torch  # heavy: in the worker only

    torch.set_num_threads(threads)


def _train_logged(job: TrainingJob, log_path: str) -> tuple[dict[str, Any], float]:
    """In a worker: `job` with the process's stdout and stderr (file descriptors 1 and 2, so every handler and
    progress bar that writes there) sent to `log_path`; (its result, its wall seconds)."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(log_path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    try:
        return _train(job)
    except BaseException:
        traceback.print_exc()  # into the log; the parent re-raises the exception itself
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def run_trainings(jobs: Sequence[TrainingJob], workers: int, log_dir: Path) -> dict[str, tuple[dict, float]]:
    """{name: (result, wall seconds)} of every job. One worker: in this process, one job after another, output
    on the console. More: that many spawned processes sharing this process's CPUs, the jobs started in the given
    order (put the longest first), each one's output in LOG_DIR/<name>.log; the first failure stops the rest and
    raises, naming the job and its log."""
    if workers <= 1:
        return {job.name: _train(job) for job in jobs}
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, cpu_count() // workers)
    print(f"training {len(jobs)} models, {workers} at a time ({threads} thread(s) each); "
          f"progress in {log_dir}/<name>.log", flush=True)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(_train_logged, job, str(log_dir / f"{job.name}.log")): job for job in jobs}
        return _collect(futures, pool, log_dir)


def _collect(futures: dict[Future, TrainingJob], pool: ProcessPoolExecutor, log_dir: Path) -> dict:
    out, pending = {}, set(futures)
    with tqdm(total=len(futures), desc="models trained", unit="model") as bar:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job = futures[future]
                if future.exception() is not None:
                    pool.shutdown(cancel_futures=True)
                    raise RuntimeError(f"training {job.name!r} failed: {future.exception()!r}; its output: "
                                       f"{log_dir / job.name}.log") from future.exception()
                out[job.name] = future.result()
                bar.update()
                bar.write(f"  {job.name}: done in {out[job.name][1]:.0f} s ({log_dir / job.name}.log)")
    return {job.name: out[job.name] for job in futures.values()}
