"""The one-process orchestration of `xt rl` (``orchestrator.kind = "local"``): every part of the loop
in the calling process, the rollout engine on the trained model itself.

`LocalRun` and `xt.rl.cluster.RayRun` answer the same small interface, which is all `xt rl` uses:
``rollout`` / ``reward`` / ``trainer`` (what `xt.rl.loop.grpo.GRPOLoop` drives), ``step``
(optimizer steps done), ``load`` / ``save`` (checkpoints, the same files in both), ``export_hf``,
``describe`` and ``close``.
"""
from __future__ import annotations

import functools

from pathlib import Path
from typing import Any

import torch

from xt.models import save_pretrained
from xt.parallel.config import ParallelConfig
from xt.parallel.export import exporter
from xt.parallel.layout import describe_layout
from xt.rl.loop.build import build_policy, load_policy, save_policy
from xt.rl.loop.grpo import RewardWorker
from xt.rl.rewards import RewardPool
from xt.rl.rollout import XTRolloutEngine
from xt.rl.rollout.precision import policy_precision

__all__ = ["LocalRun", "describe_policy", "policy_rollout"]


def describe_policy(parts: Any, device: torch.device, parallel: ParallelConfig | None = None,
                    rollout: Any = None) -> dict[str, Any]:
    """What the run banner prints of a built policy: model class, parameters, device, routing
    replay ("on" / "off" / "n/a (dense)"), the engine's precision summary, the trainer's layout
    (`xt.parallel.describe_layout` of ``cfg.parallel``) and, given the rollout engine on this
    policy, its precision (``rollout_precision``; an engine without one computes in its own)."""
    tr = parts.trainer
    out = {"model": type(parts.model).__name__, "params": sum(p.numel() for p in parts.model.parameters()),
           "device": str(device), "replay": "on" if tr.routing_replay else "off" if tr.is_moe else "n/a (dense)",
           "precision": parts.engine.precision_summary,
           "layout": describe_layout(parallel or ParallelConfig(), parts.dist, parts.model)}
    if rollout is not None:
        prec = getattr(rollout, "precision", None)
        out["rollout_precision"] = prec.summary if prec is not None else "the rollout engine's own"
    return out


def policy_rollout(parts: Any, rollout: Any) -> XTRolloutEngine:
    """XT's rollout engine on the policy model itself (one process, Ray colocated), computing in
    ``rollout.dtype``: "train" under the policy engine's `Engine.compute_context` (its own bf16
    compute copies), "fp32" on the fp32 weights (`xt.rl.rollout.precision.policy_precision`).

    Args:
        parts: the built policy (`xt.rl.loop.build.PolicyParts`).
        rollout: the ``[rollout]`` section (``dtype``, ``max_batch_sequences``, ``cuda_graph``).
    """
    return XTRolloutEngine(parts.model, max_batch_sequences=rollout.max_batch_sequences,
                           precision=policy_precision(parts.engine, rollout.dtype), cuda_graph=rollout.cuda_graph)


def _lmdeploy_engine(cfg: Any, model: torch.nn.Module, tokenizer: Any) -> Any:
    """An `LMDeployRolloutEngine` on ``model.init_from``; each weight update re-exports the policy
    (`save_pretrained`) with the tokenizer files of ``init_from`` beside it."""
    import shutil

    from xt.rl.rollout.lmdeploy_engine import LMDeployRolloutEngine
    src = Path(cfg.model.init_from)

    def export(folder: Path) -> None:
        save_pretrained(model, folder)
        for f in src.iterdir():
            if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens")) or f.suffix == ".jinja"):
                shutil.copy2(f, folder / f.name)

    return LMDeployRolloutEngine(src, lambda ids: tokenizer.decode(ids, skip_special_tokens=False), export=export)


class LocalRun:
    """Trainer, colocated rollout engine and reward pool in this process (module docstring).

    Args:
        cfg: the `xt rl` config (sections ``model`` ... ``rl``, ``rollout``).
        device: where the model lives.
        tokenizer: the run's tokenizer (``rollout.engine = "lmdeploy"`` sends prompts as its text).
    """

    def __init__(self, cfg: Any, device: torch.device, tokenizer: Any = None) -> None:
        self.cfg, self.device = cfg, device
        self.parts = build_policy(cfg, device)
        if cfg.rollout.engine == "lmdeploy":
            self.rollout: Any = _lmdeploy_engine(cfg, self.parts.model, tokenizer)
        else:
            self.rollout = policy_rollout(self.parts, cfg.rollout)
        self.parts.state.rollout = self.rollout
        self.trainer = self.parts.trainer
        self._pool = RewardPool.from_config(cfg.rl.reward)
        self.reward = RewardWorker(self._pool)

    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return self.parts.engine.step

    def load(self, path: Path, prompts: Any, extra: dict[str, Any] | None = None) -> None:
        """Resume from checkpoint `path` (policy, optimizer, engine, weight version, `prompts`,
        the `extra` `Stateful`s, RNG)."""
        load_policy(self.parts, path, prompts, extra)
        if self.cfg.rollout.engine == "lmdeploy":  # its own copy of the weights: export the restored ones
            self.rollout.load_weights(None, self.parts.trainer.weight_version)

    def save(self, out_dir: Path, prompts: Any, keep_last: int, extra: dict[str, Any] | None = None) -> Path:
        """Checkpoint the run (with the `extra` `Stateful`s); returns the ``step-N`` folder."""
        return save_policy(self.parts, out_dir, prompts, keep_last, extra)

    def export_hf(self, path: Path) -> None:
        """Write the policy as an HF folder (`xt.models.save_pretrained`, files of at most
        ``checkpoint.hf_max_shard_size``; streamed from every rank of a laid-out trainer through
        `xt.parallel.exporter`)."""
        write = functools.partial(save_pretrained, max_shard_size=self.cfg.checkpoint.hf_max_shard_size)
        exporter(write, self.parts.dist)(self.parts.model, path)

    def describe(self) -> dict[str, Any]:
        """`describe_policy` of the policy."""
        return describe_policy(self.parts, self.device, getattr(self.cfg, "parallel", None), self.rollout)

    def close(self) -> None:
        """Stop the reward pool and remove the replay hook."""
        self.trainer.close()
        self._pool.close()
