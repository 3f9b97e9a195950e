"""`Engine`'s step API: the default loss is today's objective to the bit, a custom loss gets the
gradients of its own objective, and `forward` returns the training forward's outputs without grad."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from xt.core.config import OptimConfig, ScheduleConfig, TrainConfig
from xt.core.distributed import LocalDistContext
from xt.core.engine import Engine, LossContext, TokenMeanLoss, build_optimizer
from xt.core.engine.compute_weights import ComputeWeights
from xt.core.engine.loss import count_label_tokens, micro_batch_objective
from xt.core.engine.precision import Precision

from xtcore_tiny import IGNORE, StatefulLoader, TinyLM

torch.set_num_threads(1)
CPU = torch.device("cpu")
BF16 = Precision(name="bf16", autocast_dtype=torch.bfloat16, reason="bf16 (test)")


def _batches(n=3, seed=7):
    loader = StatefulLoader(seed=seed)
    return [next(loader) for _ in range(n)]


def _engine(model, precision=None, weight_cast="per_step"):
    return Engine(model, build_optimizer(model, OptimConfig(lr=1e-2)), precision=precision,
                  weight_cast=weight_cast)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _old_forward_backward(model, mbs, autocast_dtype=None, weights=None):
    """The engine's loop before the step API, written out: count, then per micro-batch forward
    (autocast, compute copies swapped in) and backward of `micro_batch_objective`."""
    dist = LocalDistContext()
    tokens = dist.all_reduce_sum(count_label_tokens(mbs, CPU))
    loss_acc = torch.zeros((), dtype=torch.float32)
    swap = weights.swapped() if weights is not None else torch.enable_grad()
    with swap:
        for i, mb in enumerate(mbs):
            dist.set_grad_sync(model, i == len(mbs) - 1)
            with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out = model(**mb)
            micro_batch_objective(out, tokens, len(mbs), dist.world_size).backward()
            loss_acc += out.loss_sum.detach().float()
    return (loss_acc.double() / max(int(tokens), 1)).float()


@pytest.mark.parametrize("precision", [None, BF16], ids=["fp32", "bf16-per-step"])
@pytest.mark.parametrize("aux", [0.0, 0.1])
def test_default_loss_reproduces_todays_gradients_bit_for_bit(precision, aux):
    torch.manual_seed(0)
    model = TinyLM(aux_coef=aux)
    ref = copy.deepcopy(model)
    mbs = _batches()
    ref_weights = ComputeWeights(ref, torch.bfloat16) if precision else None
    ref_loss = _old_forward_backward(ref, mbs, precision and torch.bfloat16, ref_weights)
    engine = _engine(model, precision)
    assert (engine.compute_weights is not None) == (precision is not None)
    stats = engine.forward_backward(mbs)
    got, want = _grads(model), _grads(ref)
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert torch.equal(stats.loss, ref_loss)
    # the default passed explicitly is the same objective
    model.zero_grad(set_to_none=True)
    engine.forward_backward(mbs, loss=TokenMeanLoss())
    for name, g in _grads(model).items():
        assert torch.equal(g, want[name]), name
    assert (stats.aux_loss is not None) == bool(aux)
    expect = float(stats.loss) + (float(stats.aux_loss) if aux else 0.0)
    assert float(stats.objective) == pytest.approx(expect, rel=1e-6)


class PolicyGradientLoss:
    """A token-level policy-gradient loss on per-token log-probs, as an RL driver would plug in:
    ``-sum(A_t * log p(y_t)) / N_global`` over label tokens; advantages ride in the batch but are
    kept from the model; a global sequence count comes from `totals`."""

    def model_inputs(self, batch):
        return {k: v for k, v in batch.items() if k != "advantages"}

    def totals(self, micro_batches):
        return {"sequences": torch.tensor(sum(len(mb["cu_seqlens"]) - 1 for mb in micro_batches))}

    def __call__(self, out, batch, ctx: LossContext):
        labels = batch["labels"]
        mask = labels != IGNORE
        logp = torch.log_softmax(out.logits.float(), -1).gather(-1, labels.clamp(min=0)[:, None])[:, 0]
        objective = -(batch["advantages"] * logp * mask).sum() / ctx.global_tokens.clamp(min=1)
        seq_share = torch.tensor(len(batch["cu_seqlens"]) - 1.0, dtype=torch.float64) / ctx.totals["sequences"]
        return objective, {"pg": objective.detach(), "seq_share": seq_share, "mb": torch.tensor(1.0)}


def test_custom_loss_gets_the_gradients_of_its_own_objective():
    torch.manual_seed(1)
    model = TinyLM()
    ref = copy.deepcopy(model).double()
    mbs = _batches(3, seed=11)
    gen = torch.Generator().manual_seed(5)
    for mb in mbs:
        mb["advantages"] = torch.randn(mb["input_ids"].shape, generator=gen)
    engine = _engine(model)
    stats = engine.forward_backward(mbs, loss=PolicyGradientLoss())

    # the objective written out by hand, all micro-batches in one graph, float64
    labels = torch.cat([mb["labels"] for mb in mbs])
    n = int((labels != IGNORE).sum())
    total = 0.0
    for mb in mbs:
        logits = ref(**{k: v for k, v in mb.items() if k != "advantages"}).logits
        logp = F.log_softmax(logits, -1).gather(-1, mb["labels"].clamp(min=0)[:, None])[:, 0]
        total = total - (mb["advantages"].double() * logp * (mb["labels"] != IGNORE)).sum() / n
    total.backward()
    total = total.detach()
    for name, p in ref.named_parameters():
        g = dict(model.named_parameters())[name].grad
        assert float((g.double() - p.grad).norm() / p.grad.norm()) <= 1e-5, name
    assert float(stats.objective) == pytest.approx(float(total), rel=1e-5)
    assert float(stats.loss_metrics["pg"]) == pytest.approx(float(total), rel=1e-5)
    assert float(stats.loss_metrics["seq_share"]) == pytest.approx(1.0, rel=1e-12)  # summed shares
    assert float(stats.loss_metrics["mb"]) == 3.0 and stats.loss_metrics["mb"].dtype == torch.float64
    assert stats.loss is not None and stats.loss_tokens == n  # CE still measured from loss_sum


def test_loss_may_return_a_bare_tensor_and_bad_returns_name_the_loss():
    torch.manual_seed(2)
    model = TinyLM()
    engine = _engine(model)
    mbs = _batches(2)
    stats = engine.forward_backward(mbs, loss=lambda out, batch, ctx: out.loss_sum / ctx.global_tokens)
    assert stats.loss_metrics == {} and float(stats.objective) == pytest.approx(float(stats.loss), rel=1e-6)

    def vector(out, batch, ctx):
        return out.logits.sum(-1)

    with pytest.raises(TypeError, match="vector must return a floating scalar tensor"):
        engine.forward_backward(mbs, loss=vector)
    with pytest.raises(TypeError, match="scalar tensor or \\(tensor, metrics\\)"):
        engine.forward_backward(mbs, loss=lambda out, batch, ctx: 1.0)
    with pytest.raises(TypeError, match="metrics must be a mapping"):
        engine.forward_backward(mbs, loss=lambda out, batch, ctx: (out.loss_sum, [1]))


class Recording(TokenMeanLoss):
    """The default loss, keeping a detached copy of every output it sees."""

    def __init__(self):
        self.outs = []

    def __call__(self, out, batch, ctx):
        self.outs.append((out.loss_sum.detach().clone(), out.logits.detach().clone()))
        return super().__call__(out, batch, ctx)


@pytest.mark.parametrize("precision", [None, BF16], ids=["fp32", "bf16-per-step"])
def test_forward_equals_the_training_forward_without_grad(precision):
    torch.manual_seed(3)
    model = TinyLM(aux_coef=0.1)
    engine = _engine(model, precision)
    mbs = _batches(3)
    outs = engine.forward(mbs)
    assert all(p.grad is None for p in model.parameters())
    rec = Recording()
    engine.forward_backward(mbs, loss=rec)
    assert len(outs) == len(rec.outs) == 3
    for out, (loss_sum, logits) in zip(outs, rec.outs):
        assert not out.loss_sum.requires_grad and not out.logits.requires_grad
        assert torch.equal(out.loss_sum, loss_sum) and torch.equal(out.logits, logits)
    if precision is not None:  # the bf16 copies were swapped in: not what fp32 weights give
        plain = [model(**mb).logits.detach() for mb in mbs]
        assert not all(torch.equal(a.logits.float(), b) for a, b in zip(outs, plain))


def test_forward_training_flag_sets_and_restores_the_mode():
    torch.manual_seed(4)
    model = TinyLM(dropout=0.5)
    engine = _engine(model)
    mbs = _batches(1)
    a = engine.forward(mbs, training=False)[0].logits
    b = engine.forward(mbs, training=False)[0].logits
    assert torch.equal(a, b) and model.training  # eval: no dropout; train mode restored
    c = engine.forward(mbs)[0].logits  # mode kept (train): dropout active
    assert not torch.equal(a, c)
    model.eval()
    engine.forward(mbs, training=True)
    assert not model.training


def test_from_config_matches_the_trainer_recipe():
    torch.manual_seed(5)
    model = TinyLM()
    train = TrainConfig(steps=10, dtype="fp32", max_grad_norm=0.5, nonfinite_grad="skip")
    engine = Engine.from_config(model, train, OptimConfig(lr=1e-3), ScheduleConfig(warmup_steps=2))
    assert engine.autocast_dtype is None and engine.compute_weights is None
    assert engine.max_grad_norm == 0.5 and engine.nonfinite_grad == "skip"
    assert engine.scheduler.get_last_lr()[0] == pytest.approx(1e-3 / 2)  # warmup step 1 of 2
    with pytest.raises(ValueError, match="nonfinite_grad"):
        Engine(model, engine.optimizer, nonfinite_grad="ignore")
    with pytest.raises(TypeError, match="no parameters"):
        Engine(torch.nn.Identity(), engine.optimizer)
