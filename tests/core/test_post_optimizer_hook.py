"""The engine calls a model's `post_optimizer_step(expert_load)` once per optimizer step, after
the optimizer, with the step's routed-slot counts (summed over ranks), and logs what it returns."""
from __future__ import annotations

import json

import torch
from torch import nn

from xt.core.config import CheckpointConfig, TrainConfig
from xt.core.engine import Trainer


class CountingModel(nn.Module):
    """A bigram LM that counts tokens per 'expert' (token id mod 4) like a router would."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.head = nn.Linear(8, 16)
        self.acc = torch.zeros(1, 4)
        self.calls = []

    def forward(self, input_ids, labels, **_):
        self.acc += torch.bincount(input_ids % 4, minlength=4).float()[None]
        logits = self.head(self.emb(input_ids))
        loss = nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
        return type("Out", (), {"loss_sum": loss, "aux_loss": None, "metrics": {}})()

    def expert_load(self):
        return self.acc

    def post_optimizer_step(self, load):
        self.calls.append((load.clone(), self.head.weight.detach().clone()))
        self.acc = torch.zeros(1, 4)
        return {"load_max": load.max()}


class Loader:
    def __init__(self):
        self.i = 0

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.i)
            ids = torch.randint(0, 16, (10,), generator=g)
            self.i += 1
            yield {"input_ids": ids, "labels": torch.roll(ids, -1)}

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, s):
        self.i = s["i"]


def test_hook_gets_step_load_after_optimizer(tmp_path):
    model = CountingModel()
    tr = Trainer(model, Loader(), TrainConfig(steps=3, micro_batches_per_step=2, out_dir=str(tmp_path), log_every=1, dtype="fp32"),
                 checkpoint=CheckpointConfig(save_final=False, hf_export=False))
    tr.fit()
    assert len(model.calls) == 3
    for step, (load, w) in enumerate(model.calls):
        ids = torch.cat([torch.randint(0, 16, (10,), generator=torch.Generator().manual_seed(2 * step + j))
                         for j in range(2)])
        assert torch.equal(load, torch.bincount(ids % 4, minlength=4).float()[None])
    # called after the optimizer step: the weights seen by step k's hook are those after k+1 updates,
    # so two consecutive hooks see different weights
    assert not torch.equal(model.calls[0][1], model.calls[1][1])
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["load_max"] for r in rows] == [float(c[0].max()) for c in model.calls]
