"""What a worker process does first: tie its life to its driver's, before anything heavy is imported.

Used by the local executor's run workers (:mod:`harness.orchestration.executors`) and by the complete
stage's MILP workers (:mod:`harness.certification.cascade`).

This module imports nothing of the harness and nothing heavy (tqdm only), so that a spawned worker unpickles its
initializer, and runs it, within a fraction of a second of its start; torch and the harness are
imported afterwards, with the first job (seconds), by when a worker whose driver dies already ends with it.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from tqdm import tqdm

#: How often a local worker checks that the process that started it is still alive (seconds).
PARENT_POLL_S = 0.2


def init_worker(threads: int | None, parent: int | None = None) -> None:
    """A local worker: its torch threads, Ctrl-C left to its driver, and its end when the driver ends.

    A worker must not outlive the invoking process (``parent``, its pid), however that one ends (SIGKILL,
    the OOM killer, a closed laptop lid): an orphan would keep ~1 GB and, idle, sleep forever, since it
    holds the write end of its own task queue and so never sees end-of-file. Two mechanisms, because
    neither is reliable alone:

    - ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (Linux): the kernel kills the worker the moment its parent
      dies, even while the worker is deep in a C kernel. But it can only be set once the worker runs
      Python: a parent killed before (the spawned interpreter's start, a fraction of a second, since this
      module is light) has already been replaced by init (or a subreaper) as the worker's parent, and the
      signal would never come. And it fires when the *thread* that forked the worker ends, not the
      process: ``ProcessPoolExecutor`` forks spawn workers from the thread that calls ``submit``
      (:meth:`harness.orchestration.executors.LocalExecutor.execute`'s, which outlives the pool: its
      ``with`` block joins the workers), so an early signal cannot happen there; a replacement worker
      forked by the pool's manager thread (only with ``max_tasks_per_child``, not used) would be the
      case to watch.
    - A daemon thread that compares ``os.getppid()`` with ``parent`` every :data:`PARENT_POLL_S`
      seconds: reparenting is what the kernel does when a parent dies, on every POSIX system, and the
      new parent (init or a subreaper) never has the dead parent's pid. It covers the window before
      ``prctl`` (checked once at once) and systems without ``prctl``; it needs the GIL, which torch
      releases in its kernels, so it answers within a fraction of a second in practice.

    The worker ends with SIGKILL in both cases: the kernel releases its run's ``flock`` claim whatever
    the way it dies, and the temporary file of a write it was in is removed by the next claim.

    SIGINT is ignored: Ctrl-C reaches the whole process group, and the driver stops the workers itself
    (:meth:`~harness.orchestration.executors.LocalExecutor.execute`), records their runs as interrupted
    and prints one message, instead of one KeyboardInterrupt traceback per worker.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the watch thread alone
    if parent is None:
        parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGKILL)

    if os.getppid() != parent:  # the driver died before prctl above could take effect
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    # tqdm's default lock is a multiprocessing RLock: a named semaphore that a worker ended by a signal
    # never unregisters, so multiprocessing's resource tracker warns of a "leaked semaphore" per worker
    # on every Ctrl-C. A worker's bars (disabled off a terminal anyway) need only a thread lock.
    tqdm.set_lock(threading.RLock())
    if threads:  # results on the CPU depend on the thread count (harness.orchestration.jobs.set_threads)
        import torch

        torch.set_num_threads(threads)
