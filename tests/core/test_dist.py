"""The DistContext protocol with 2 gloo ranks: a data-parallel run equals one process that sees
both ranks' micro-batches in one step (global token count, summed gradients, aux scaling), and
checkpoints write one loader/RNG file per rank."""
import io
import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rich.console import Console

from xt.core.config import CheckpointConfig, OptimConfig, TrainConfig
from xt.core.engine import Trainer, read_metrics

from xtcore_gloo import GlooDataParallel
from xtcore_tiny import StatefulLoader, TinyLM

pytestmark = pytest.mark.dist
STEPS, MICRO, WORLD = 3, 2, 2


class Interleaved:
    """Single-process view of the same data: per step, rank 0's micro-batches then rank 1's."""

    def __init__(self):
        self.loaders = [StatefulLoader(seed=r) for r in range(WORLD)]
        self.order = (r for _ in range(STEPS) for r in range(WORLD) for _ in range(MICRO))

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.loaders[next(self.order)])

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _trainer(out_dir, loader, micro, dist_ctx=None):
    torch.manual_seed(0)
    return Trainer(TinyLM(aux_coef=0.1), loader,
                   TrainConfig(steps=STEPS, micro_batches_per_step=micro, out_dir=str(out_dir), dtype="fp32"),
                   OptimConfig(lr=1e-2), checkpoint=CheckpointConfig(hf_export=False),
                   dist=dist_ctx, console=Console(file=io.StringIO()))


def _worker(rank, tmp):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=WORLD)
    try:
        tr = _trainer(f"{tmp}/dp", StatefulLoader(seed=rank), MICRO, GlooDataParallel())
        tr.fit()
        params = {n: p.detach().tolist() for n, p in tr.model.named_parameters()}
        with open(f"{tmp}/params-{rank}.json", "w") as f:
            json.dump(params, f)
    finally:
        dist.destroy_process_group()


def test_two_rank_data_parallel_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    ref = _trainer(tmp_path / "single", Interleaved(), MICRO * WORLD)
    ref.fit()
    dp = read_metrics(tmp_path / "dp" / "metrics.jsonl")
    single = read_metrics(tmp_path / "single" / "metrics.jsonl")
    for a, b in zip(dp, single, strict=True):
        for key in ("loss", "aux_loss", "grad_norm", "num_tokens", "loss_tokens"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
    p0 = json.loads((tmp_path / "params-0.json").read_text())
    p1 = json.loads((tmp_path / "params-1.json").read_text())
    assert p0 == p1  # replicas stay identical
    for name, p in ref.model.named_parameters():
        assert torch.allclose(torch.tensor(p0[name]), p.detach(), rtol=0, atol=1e-6), name
    ck = tmp_path / "dp" / "checkpoints" / f"step-{STEPS}"
    states = [torch.load(ck / f"rank-{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [s["loader"]["index"] for s in states] == [STEPS * MICRO] * WORLD
    assert json.loads((ck / "meta.json").read_text())["world_size"] == WORLD
