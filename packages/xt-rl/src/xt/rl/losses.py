"""Policy-gradient losses as engine `Loss` objects: PPO-clip (dual clip, clip-higher) and GSPO,
with an optional KL term and train/rollout mismatch correction.

Shape legend: T tokens of a micro-batch, D its sequences.

Per loss token t of sequence i, with advantage ``A_t``, log-ratio ``λ_t`` and ``ρ_t = exp(λ_t)``:

    l_t = w_t · max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε_low, 1 + ε_high))          (PPO-clip)
    l_t = min(l_t, −c A_t)  where A_t < 0                                       (dual clip)
    l_t += β · k(log π_t, log π_ref,t)                                          (KL in the loss)

and the step objective is ``aggregate(l)`` (`xt.rl.aggregate`), plus the model's ``aux_loss / (M · world)``.

- **PPO-clip** (Schulman et al. 2017, "Proximal Policy Optimization Algorithms"):
  ``λ_t = log π(y_t) − log π_old(y_t)``.
- **Clip-higher** (DAPO, Yu et al. 2025): ``ε_high > ε_low`` lets low-probability tokens grow.
- **Dual clip** (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL"): a
  negative-advantage token's loss is bounded by ``−c A_t`` (c > 1) however large its ratio.
- **GSPO** (Zheng et al. 2025, "Group Sequence Policy Optimization"): one length-normalised ratio
  per sequence, ``s_i = exp((1/n_i) Σ_{t∈i} (log π − log π_old))``, clipped as above. It is written
  in the paper's token form ``λ_t = sg[log s_i] + log π(y_t) − sg[log π(y_t)]`` (value ``log s_i``,
  gradient that of ``log π(y_t)``), so that with ``aggregation = "seq_mean_token_mean"`` the value
  and gradient are exactly those of ``−(1/S) Σ_i min(s_i A_i, clip(s_i) A_i)``.
- ``w_t``: the mismatch weight (`xt.rl.mismatch`; 1 when off), no gradient.
- ``k``: the KL estimator (`xt.rl.kl`), when ``rl.kl_coef > 0`` and ``rl.kl_in = "loss"``.

``log π`` comes from `xt.models.common.head_loss.token_log_probs` on a ``return_hidden=True``
forward at ``rl.temperature`` (never ``[T, V]`` logits). Without ``old_log_probs`` in the batch the
update is on-policy: ``π_old = sg[π]`` (ratio 1, the plain policy gradient).

**Metrics** (global token means over the step's loss tokens, summed by the engine over
micro-batches and ranks): ``policy_loss`` (the aggregated ``w · pg`` part), ``clip_frac_low``
(``A < 0`` and ``ρ < 1 − ε_low``: gradient cut by the clip), ``clip_frac_high`` (``A > 0`` and
``ρ > 1 + ε_high``), ``dual_clip_frac``, ``ratio_mean``, ``ratio_abs_dev`` (mean ``|ρ − 1|``),
``entropy`` (nats, if ``rl.entropy_metric``), ``kl`` (the estimator's mean, with
``ref_log_probs``), and with ``rollout_log_probs``: ``tis_weight_mean``, ``tis_capped_frac``,
``mismatch_masked_frac``, ``mismatch_kl_k1`` / ``mismatch_kl_k3`` (estimates of
``KL(π_rollout ‖ π_old)``).

**Ulysses SP** (``parallel.sp_size > 1``): each micro-batch is an SP slice and `PolicyLoss` is given
the `xt.rl.seq_parallel.SequenceShards`; the whole-sequence sums (``n_i``, GSPO's ``log s_i``, the
sequence-level mismatch ratio) are added over the SP group without gradient, everything else is per
token, so values, gradients and metrics are those of ``sp_size = 1`` (`xt.rl.seq_parallel`).

The ratio's exponent is clamped at 80 (``ρ ≤ e^80``) so that float32 never overflows; tokens
beyond it are far outside any clip range.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

from xt.core.engine.objective import LossContext
from xt.models.common.head_loss import token_log_probs
from xt.rl.aggregate import aggregate, step_totals, token_mean
from xt.rl.batch import RL_KEYS, loss_token_mask, segment_sum
from xt.rl.config import RLConfig
from xt.rl.kl import kl_estimate
from xt.rl.mismatch import mismatch_weights
from xt.rl.seq_parallel import SeqReduce, SequenceShards, index_of, whole

__all__ = ["Surrogate", "clipped_surrogate", "ppo_log_ratio", "gspo_log_ratio", "PolicyLoss",
           "policy_model_inputs", "forward_log_probs"]

_MAX_LOG_RATIO = 80.0


class Surrogate(NamedTuple):
    """Result of `clipped_surrogate`, all ``[T]``.

    Attributes:
        loss: per-token loss (the negated clipped objective), float, differentiable.
        ratio: ``ρ_t`` (detached).
        clipped_low, clipped_high, dual_clipped: bool, where each bound cut the gradient.
    """
    loss: torch.Tensor
    ratio: torch.Tensor
    clipped_low: torch.Tensor
    clipped_high: torch.Tensor
    dual_clipped: torch.Tensor


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, *, eps_low: float = 0.2,
                      eps_high: float = 0.2, dual_clip: float = 0.0) -> Surrogate:
    """The per-token PPO-clip loss with clip-higher and dual clip (module docstring).

    Args:
        log_ratio: ``[T]`` float ``λ_t`` (differentiable), from `ppo_log_ratio` or `gspo_log_ratio`.
        advantages: ``[T]`` float ``A_t`` (no gradient is taken through them).
        eps_low, eps_high: clip range ``[1 − eps_low, 1 + eps_high]`` (``rl.clip_eps_low/high``).
        dual_clip: c > 1, or 0 for none (``rl.dual_clip``).

    Returns:
        `Surrogate`, in ``log_ratio``'s dtype (float32 at least).

    Raises:
        ValueError: shapes that differ, or a clip range outside ``0 < eps_low < 1``, ``eps_high > 0``,
            ``dual_clip`` 0 or > 1.
    """
    if log_ratio.shape != advantages.shape:
        raise ValueError(f"clipped_surrogate: log_ratio {tuple(log_ratio.shape)} and advantages "
                         f"{tuple(advantages.shape)} differ in shape")
    if not (0 < eps_low < 1 and eps_high > 0 and (dual_clip == 0 or dual_clip > 1)):
        raise ValueError(f"clipped_surrogate: need 0 < eps_low < 1, eps_high > 0 and dual_clip 0 or > 1; got "
                         f"{eps_low!r}, {eps_high!r}, {dual_clip!r} (rl.clip_eps_low, rl.clip_eps_high, rl.dual_clip)")
    dtype = torch.promote_types(log_ratio.dtype, torch.float32)
    adv = advantages.detach().to(dtype)
    ratio = log_ratio.to(dtype).clamp(max=_MAX_LOG_RATIO).exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    r = ratio.detach()
    clipped_low = (adv < 0) & (r < 1.0 - eps_low)
    clipped_high = (adv > 0) & (r > 1.0 + eps_high)
    dual = torch.zeros_like(clipped_low)
    if dual_clip:
        bound = -adv * dual_clip
        dual = (adv < 0) & (loss.detach() > bound)
        loss = torch.where(dual, bound, loss)
    return Surrogate(loss, r, clipped_low, clipped_high, dual)


def ppo_log_ratio(log_probs: torch.Tensor, old_log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[T]`` ``log π − log π_old`` on ``mask`` tokens, 0 elsewhere (differentiable in ``log_probs``)."""
    return torch.where(mask, log_probs - old_log_probs.detach().to(log_probs.dtype), 0.0)


def gspo_log_ratio(log_probs: torch.Tensor, old_log_probs: torch.Tensor, mask: torch.Tensor,
                   seq: torch.Tensor, num_seqs: int, seq_reduce: SeqReduce | None = None) -> torch.Tensor:
    """``[T]`` GSPO's token-form log-ratio ``sg[log s_i] + log π_t − sg[log π_t]`` (module docstring).

    Args:
        log_probs, old_log_probs: ``[T]``; mask: ``[T]`` bool loss tokens.
        seq, num_seqs: the sequence of each token (`xt.rl.batch.sequence_index`).
        seq_reduce: under Ulysses SP, sums the SP ranks' per-sequence partials (both sums of
            ``log s_i`` are without gradient; `xt.rl.seq_parallel`).
    """
    diff = ppo_log_ratio(log_probs, old_log_probs, mask).detach()
    n_i = whole(segment_sum(mask.to(diff.dtype), seq, num_seqs), seq_reduce).clamp(min=1)
    log_s = (whole(segment_sum(diff, seq, num_seqs), seq_reduce) / n_i)[seq]
    return torch.where(mask, log_s + log_probs - log_probs.detach(), 0.0)


def policy_model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The model's keyword arguments for an RL micro-batch: the batch without `xt.rl.batch.RL_KEYS`,
    with ``return_hidden=True`` (the loss owns the head: docs/contracts.md, Model forward)."""
    return {**{k: v for k, v in batch.items() if k not in RL_KEYS}, "return_hidden": True}


def _per_token(batch: Mapping[str, Any], key: str, n: int, why: str) -> torch.Tensor:
    if key not in batch or batch[key] is None:
        raise KeyError(f"the RL batch has no {key!r} [T] ({why}; xt.rl.batch)")
    value = torch.as_tensor(batch[key]).reshape(-1)
    if value.numel() != n:
        raise ValueError(f"batch[{key!r}] has {value.numel()} elements but labels have {n} (xt.rl.batch)")
    return value


class PolicyLoss:
    """The policy-gradient objective of an `RLConfig`, as an engine `Loss` (module docstring).

    ``engine.forward_backward(micro_batches, PolicyLoss(cfg))``: each micro-batch is an RL batch
    (`xt.rl.batch`) with ``advantages``, and ``old_log_probs`` / ``ref_log_probs`` /
    ``rollout_log_probs`` / ``loss_mask`` as the config needs. `model_inputs` calls the model
    with ``return_hidden=True`` and without those keys; `totals` counts the step's loss tokens
    and sequences for the aggregation.

    Args:
        config: the ``[rl]`` section (``policy_loss``, clip range, dual clip, aggregation,
            ``max_response_tokens``, temperature, KL, ``entropy_metric``, ``mismatch``).
        sp: the SP group when the micro-batches are Ulysses slices (`xt.rl.seq_parallel`), else None.

    Raises (when called):
        KeyError: a batch key the config needs is missing (named, with the config field).
        TypeError: the model output has no ``hidden`` / ``head_weight``.
        ValueError: per-token tensors whose length is not the labels'.
    """

    def __init__(self, config: RLConfig = RLConfig(), sp: SequenceShards | None = None) -> None:
        if not isinstance(config, RLConfig):
            raise TypeError(f"PolicyLoss needs an xt.rl.config.RLConfig, got {type(config).__name__}")
        self.config = config
        self.sp = sp

    def model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The model's keyword arguments (`policy_model_inputs`)."""
        return policy_model_inputs(batch)

    def totals(self, micro_batches: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """This rank's loss tokens and sequences (`xt.rl.aggregate.step_totals`)."""
        return step_totals(micro_batches, self.sp)

    def __call__(self, out: Any, batch: Mapping[str, Any], ctx: LossContext):
        cfg = self.config
        labels = batch["labels"].reshape(-1)
        n = labels.numel()
        lp = token_log_probs(out, labels, temperature=cfg.temperature, return_entropy=cfg.entropy_metric)
        logp = lp.log_probs
        mask = loss_token_mask(batch)
        seq, num_seqs = index_of(batch, self.sp)
        reduce = self.sp.sum if self.sp is not None else None
        adv = _per_token(batch, "advantages", n, "the policy gradient's advantages").to(logp.dtype)
        old = (_per_token(batch, "old_log_probs", n, "").to(logp.dtype) if batch.get("old_log_probs") is not None
               else logp.detach())
        if cfg.policy_loss == "gspo":
            log_ratio = gspo_log_ratio(logp, old, mask, seq, num_seqs, reduce)
        else:
            log_ratio = ppo_log_ratio(logp, old, mask)
        sur = clipped_surrogate(log_ratio, adv, eps_low=cfg.clip_eps_low, eps_high=cfg.clip_eps_high,
                                dual_clip=cfg.dual_clip)
        totals = ctx.totals
        metrics: dict[str, torch.Tensor] = {}
        pg = sur.loss
        rollout = batch.get("rollout_log_probs")
        if cfg.mismatch.enabled or rollout is not None:
            rollout = _per_token(batch, "rollout_log_probs", n, "needed by rl.mismatch.tis / rl.mismatch.mask")
            mm = cfg.mismatch
            mw = mismatch_weights(old, rollout, mask, seq, num_seqs, tis=mm.tis, tis_cap=mm.tis_cap,
                                  mask_level=mm.mask, mask_low=mm.mask_low, mask_high=mm.mask_high,
                                  seq_reduce=reduce)
            if cfg.mismatch.enabled:
                pg = pg * mw.weights.to(pg.dtype)
            x = mw.log_ratio.double()
            metrics.update(tis_weight_mean=token_mean(mw.weights.double(), mask, totals),
                           tis_capped_frac=token_mean(mw.capped.double(), mask, totals),
                           mismatch_masked_frac=token_mean(mw.masked.double(), mask, totals),
                           mismatch_kl_k1=token_mean(-x, mask, totals),
                           mismatch_kl_k3=token_mean(torch.expm1(x) - x, mask, totals))
        agg = dict(seq=seq, num_seqs=num_seqs, totals=totals, mode=cfg.aggregation,
                   max_response_tokens=cfg.max_response_tokens, seq_reduce=reduce)
        policy = aggregate(pg, mask, **agg)
        objective = policy
        ref = batch.get("ref_log_probs")
        needs_ref = cfg.kl_coef > 0 and cfg.kl_in == "loss"
        if needs_ref or ref is not None:
            ref = _per_token(batch, "ref_log_probs", n, "needed by rl.kl_coef > 0 with rl.kl_in = 'loss'")
            kl = kl_estimate(logp, ref.to(logp.dtype), cfg.kl_estimator)
            if needs_ref:
                objective = objective + cfg.kl_coef * aggregate(kl, mask, **agg)
            metrics["kl"] = token_mean(kl.detach().double(), mask, totals)
        aux = getattr(out, "aux_loss", None)
        if aux is not None:
            objective = objective + aux / (ctx.num_micro_batches * ctx.world_size)
        r = sur.ratio.double()
        metrics.update(policy_loss=policy.detach().double(),
                       clip_frac_low=token_mean(sur.clipped_low.double(), mask, totals),
                       clip_frac_high=token_mean(sur.clipped_high.double(), mask, totals),
                       ratio_mean=token_mean(r, mask, totals),
                       ratio_abs_dev=token_mean((r - 1).abs(), mask, totals))
        if cfg.dual_clip:
            metrics["dual_clip_frac"] = token_mean(sur.dual_clipped.double(), mask, totals)
        if lp.entropy is not None:
            metrics["entropy"] = token_mean(lp.entropy.detach().double(), mask, totals)
        return objective, metrics

    def __repr__(self) -> str:
        c = self.config
        sp = f", sp={self.sp.size}" if self.sp is not None else ""
        return (f"PolicyLoss({c.policy_loss}, eps=({c.clip_eps_low}, {c.clip_eps_high}), "
                f"aggregation={c.aggregation}, kl={c.kl_coef if c.kl_in == 'loss' else 0}{sp})")


def forward_log_probs(engine: Any, micro_batches: Sequence[Mapping[str, Any]], *,
                      temperature: float = 1.0) -> list[torch.Tensor]:
    """Per-token ``log π(labels[t])`` of each RL micro-batch under the engine's model, without grad:
    the batch's ``old_log_probs`` (the policy before this step's updates) or ``ref_log_probs``
    (an engine holding the reference policy).

    Runs `xt.core.engine.Engine.forward` (the training forward's precision and compute weights)
    with ``return_hidden=True`` and without the RL keys, then `token_log_probs` at `temperature`
    under `Engine.compute_context` (the LM head in that precision too, as `forward_backward` runs
    the loss).

    Args:
        engine: an `Engine` (anything with ``forward(micro_batches)``).
        micro_batches: RL micro-batches (`xt.rl.batch`).
        temperature: the rollout's (``rl.temperature``).

    Returns:
        One ``[T]`` float32 tensor per micro-batch (on the model's device), 0 on positions without a label.
    """
    outs = engine.forward([policy_model_inputs(mb) for mb in micro_batches])
    region = getattr(engine, "compute_context", contextlib.nullcontext)
    with torch.no_grad(), region():  # the head in the forward's precision, as in PolicyLoss
        return [token_log_probs(o, _on_device_of(mb["labels"], o), temperature=temperature).log_probs
                for o, mb in zip(outs, micro_batches)]


def _on_device_of(labels: torch.Tensor, out: Any) -> torch.Tensor:
    """The host batch's labels on the device of the output's hidden states (GPU engines)."""
    hidden = getattr(out, "hidden", None)
    return labels.to(hidden.device) if isinstance(hidden, torch.Tensor) else labels
