"""A persistent pool of gloo ranks that runs many test cases (spawning costs seconds; do it once).

The parent writes ``job-N.pt`` (a picklable spec); every rank runs ``fn(spec, ctx)`` where ``fn`` is
``module:function`` importable in the child (``spec["sys_path"]``, optional: folders put on the
child's ``sys.path`` first); rank 0 writes ``result-N.pt``; a rank that raises writes
``error-N-RANK.txt`` and exits (the pool is then broken and every later call fails fast). Results come
back through files, never a multiprocessing queue (large payloads deadlock: docs/architecture.md, Machines).
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp

_HERE = str(Path(__file__).resolve().parent)


def _worker(rank: int, world: int, root: str, backend: str = "gloo") -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    sys.path.insert(0, _HERE)
    import datetime

    import torch.distributed as dist
    if backend == "nccl":  # one GPU per rank (benchmarks/multi_gpu/run.py)
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"file://{root}/pg", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    state: dict = {}
    n = 0
    rootp = Path(root)
    while True:
        job = rootp / f"job-{n}.pt"
        nap = 0.001
        while not job.exists():  # back off to 50 ms while idle (other tests may run meanwhile)
            if (rootp / "stop").exists():
                dist.destroy_process_group()
                return
            time.sleep(nap)
            nap = min(0.05, nap * 1.5)
        try:
            spec = torch.load(job, weights_only=False)
            for path in spec.get("sys_path", ()):  # case modules outside tests/parallel (tests/rl)
                if path not in sys.path:
                    sys.path.insert(0, path)
            mod, fn = spec["fn"].split(":")
            result = getattr(importlib.import_module(mod), fn)(spec, state)
            if rank == 0:
                tmp = rootp / f".result-{n}.pt"
                torch.save(result, tmp)
                tmp.rename(rootp / f"result-{n}.pt")
        except BaseException:
            (rootp / f"error-{n}-{rank}.txt").write_text(traceback.format_exc())
            os._exit(1)
        n += 1


class Pool:
    """``Pool(world)`` spawns ``world`` gloo ranks; ``pool.run(spec)`` returns rank 0's result.
    ``Pool(world, backend="nccl")``: rank r on GPU r instead."""

    def __init__(self, world: int, backend: str = "gloo") -> None:
        self.world = world
        self.root = tempfile.mkdtemp(prefix=f"xt-pool{world}-")
        self.ctx = mp.start_processes(_worker, args=(world, self.root, backend), nprocs=world, join=False,
                                      start_method="spawn")
        self.n = 0
        self.broken: str | None = None

    def run(self, spec: dict, timeout: float = 180.0):
        if self.broken:
            raise RuntimeError(f"pool broken by an earlier case:\n{self.broken}")
        root = Path(self.root)
        tmp = root / f".job-{self.n}.pt"
        torch.save(spec, tmp)
        tmp.rename(root / f"job-{self.n}.pt")
        result = root / f"result-{self.n}.pt"
        t0 = time.time()
        while not result.exists():
            errs = sorted(root.glob(f"error-{self.n}-*.txt"))
            if errs or time.time() - t0 > timeout:
                time.sleep(0.5)
                msg = "\n".join(e.read_text() for e in sorted(root.glob(f"error-{self.n}-*.txt"))) or "timeout"
                self.broken = msg
                raise RuntimeError(f"case {self.n} failed on the workers:\n{msg}")
            time.sleep(0.003)
        out = torch.load(result, weights_only=False)
        result.unlink()  # only the parent reads it; jobs stay until close (a slow rank may not have read its own)
        self.n += 1
        return out

    def close(self) -> None:
        (Path(self.root) / "stop").write_text("")
        for p in self.ctx.processes:
            p.join(timeout=3)
            if p.is_alive():
                p.kill()
        shutil.rmtree(self.root, ignore_errors=True)  # the jobs hold models' weights: ~150 MB per pool


_SHARED: dict[int, Pool] = {}


def shared_pool(world: int) -> Pool:
    """The session's one gloo `Pool` of `world` ranks, started on first use and shared by every test
    directory that asks (tests/parallel's ``pools`` fixture, tests/rl's SP cases: one start each
    costs ~5-15 s on a 2-core CPU); closed by `close_shared_pools` (also at interpreter exit)."""
    if world not in _SHARED:
        if not _SHARED:
            import atexit
            atexit.register(close_shared_pools)
        _SHARED[world] = Pool(world)
    return _SHARED[world]


def close_shared_pools() -> None:
    """Close every `shared_pool` (idempotent)."""
    for pool in _SHARED.values():
        pool.close()
    _SHARED.clear()
