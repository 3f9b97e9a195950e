"""Named extra state with 2 gloo ranks: each rank saves and restores its own (rank-local) state, a
resumed data-parallel run equals the uninterrupted one, and ranks that pass different names all
get the same `CheckpointError` instead of a hang or a checkpoint that cannot be loaded."""
import io
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rich.console import Console

from xt.core.checkpoint import save_checkpoint
from xt.core.config import CheckpointConfig, OptimConfig, TrainConfig
from xt.core.engine import Trainer
from xt.core.errors import CheckpointError

from xtcore_gloo import GlooDataParallel
from xtcore_tiny import AdaptiveCoef, CoefLM, StatefulLoader

pytestmark = pytest.mark.dist
N, M, WORLD = 2, 2, 2


def _trainer(out_dir, rank, ctx):
    torch.manual_seed(0)
    coef = AdaptiveCoef()  # fed by this rank's data: its state differs between the ranks
    tr = Trainer(CoefLM(coef), StatefulLoader(seed=rank),
                 TrainConfig(steps=N + M, micro_batches_per_step=2, out_dir=str(out_dir), dtype="fp32", seed=3),
                 OptimConfig(lr=1e-2), checkpoint=CheckpointConfig(every_steps=N, keep_last=0, hf_export=False),
                 dist=ctx, console=Console(file=io.StringIO()), extra_state={"coef": coef})
    return tr, coef


def _state(tr, coef):
    return {"coef": coef.state_dict(), "skipped": tr.engine.skipped_steps,
            "params": {n: p.detach().clone() for n, p in tr.model.named_parameters()}}


def _worker(rank, tmp):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=WORLD)
    try:
        ctx = GlooDataParallel()
        full, full_coef = _trainer(f"{tmp}/full", rank, ctx)
        full.fit()
        resumed = {}
        first, _ = _trainer(f"{tmp}/split", rank, ctx)
        first.fit(until_step=N)
        resumed["at_save"] = first.extra_state["coef"].state_dict()
        second, coef = _trainer(f"{tmp}/split", rank, ctx)
        second.fit(resume="auto")
        errors = []
        for names in ({"a": coef} if rank == 0 else {"b": coef}, {"a": coef} if rank == 0 else {}):
            try:
                save_checkpoint(f"{tmp}/bad", 1, second.model, second.optimizer, None, second.loader, ctx,
                                extra_state=names)
            except CheckpointError as e:
                errors.append(str(e))
        torch.save({"full": _state(full, full_coef), "resumed": _state(second, coef), "errors": errors,
                    **resumed}, f"{tmp}/rank-{rank}.out")
    finally:
        dist.destroy_process_group()


def test_two_ranks_save_and_restore_their_own_extra_state(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    out = [torch.load(tmp_path / f"rank-{r}.out", weights_only=False) for r in range(WORLD)]
    for r, o in enumerate(out):
        assert o["resumed"]["coef"]["history"] == o["full"]["coef"]["history"], r
        assert torch.equal(o["resumed"]["coef"]["ema"], o["full"]["coef"]["ema"]), r
        for name, p in o["full"]["params"].items():
            assert torch.equal(o["resumed"]["params"][name], p), (r, name)
        assert len(o["errors"]) == 2 and all("ranks [1] differ from rank 0" in e for e in o["errors"]), o["errors"]
    assert out[0]["full"]["coef"]["history"] != out[1]["full"]["coef"]["history"]  # rank-local state
    ck = tmp_path / "split" / "checkpoints" / f"step-{N}"
    saved = [torch.load(ck / f"rank-{r}.pt", weights_only=True)["extra"] for r in range(WORLD)]
    for r in range(WORLD):
        assert saved[r]["coef"]["history"] == out[r]["at_save"]["history"]
        assert saved[r]["engine"]["step"] == N
    assert json.loads((ck / "meta.json").read_text())["extra_state"] == ["coef", "engine", "settings"]
    assert not (tmp_path / "bad" / "checkpoints").exists()  # refused before anything was written
