"""``train.weight_cast = "per_step"`` (bf16 compute copies, `xt.core.engine.compute_weights`) against
the previous recipe ``"per_use"`` (autocast alone) on every family, through the engine's `Trainer`.

Both give the matmuls the same bf16 weights (the same round-to-nearest cast, made once per step
instead of once per use) and add the same bf16 weight gradients into fp32 ``.grad``: one step's
loss and gradients are equal (to the last bit on CPU, measured), except the LM head's gradient,
rounded to bf16 once per micro-batch under copies. Three AdamW steps then agree within bf16
tolerance. The machinery itself (swap, tied weights, refresh, hooks) is tested in fp16/fp32 in
tests/core/test_compute_weights.py.
"""
from __future__ import annotations

import pytest
import torch

from xt.core.config import CheckpointConfig, OptimConfig, ScheduleConfig, TrainConfig
from xt.core.engine import Trainer
from xt.core.distributed import LocalDistContext
from xt.core.engine.compute_weights import ComputeWeights, eligible_parameters
from xt.core.engine.step import forward_backward
from xt.models import build_model
from xt.models.common.linear import Linear
from zoo_helpers import VOCAB, hf_config, pack, random_docs, rel_err

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])]
ARCHS = ["qwen3_moe", "llama_tied", "gpt_oss", "deepseek_v3"]
BF16_TOL = 1e-2  # rel: far above what the two recipes differ by (0 measured), far below a wrong recipe


class _Loader:
    """Fixed micro-batches, resumable (the Trainer's loader contract)."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def __iter__(self):
        while self.i < len(self.batches):
            self.i += 1
            yield self.batches[self.i - 1]

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, s):
        self.i = s["i"]


def _cfg(arch: str) -> dict:
    if arch == "qwen3_moe":
        import transformers as tf

        return tf.Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_experts=8,
                                 num_experts_per_tok=2, moe_intermediate_size=16, norm_topk_prob=True,
                                 router_aux_loss_coef=0.01).to_dict()
    return hf_config(arch).to_dict()


def _model(arch: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(_cfg(arch), device=device)
    with torch.no_grad():  # non-trivial biases and norms, so their (fp32-kept) paths are exercised
        g = torch.Generator().manual_seed(3)
        for name, p in model.named_parameters():
            if p.ndim == 1 or name.endswith("bias"):
                p.copy_(torch.rand(p.shape, generator=g).to(device) * 0.5 + (1.0 if "norm" in name else -0.25))
    return model


def _run(arch: str, weight_cast: str, device: str, tmp_path) -> tuple[list[dict], dict[str, torch.Tensor], Trainer]:
    model = _model(arch, device)
    batches = [pack(random_docs(lengths, seed=s)) for s, lengths in
               enumerate([[20, 12], [7, 25], [32], [16, 16], [5, 27], [30, 2]])]
    train = TrainConfig(steps=3, micro_batches_per_step=2, dtype="bf16", weight_cast=weight_cast,
                        out_dir=str(tmp_path / weight_cast), log_every=100)
    trainer = Trainer(model, _Loader(batches), train, OptimConfig(lr=1e-2), ScheduleConfig(warmup_steps=0),
                      CheckpointConfig(save_final=False, hf_export=False))
    metrics = []
    it = iter(trainer.loader)
    for _ in range(3):
        metrics.append(trainer.train_step(trainer._draw(it)))
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    return metrics, weights, trainer


def _first_step(arch: str, device: str, weight_cast: str):
    model = _model(arch, device)
    batches = [pack(random_docs([20, 12], seed=0)), pack(random_docs([7, 25], seed=1))]
    weights = ComputeWeights(model) if weight_cast == "per_step" else None
    stats = forward_backward(model, batches, LocalDistContext(), torch.device(device), torch.bfloat16, weights)
    return stats, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, model


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS)
def test_per_step_gradients_are_autocast_gradients(arch, device):
    """One step of two micro-batches: the same loss and the same fp32 gradients as autocast alone.

    Allowed to differ by one bf16 rounding of a micro-batch's dW where the copies' path adds an
    unrounded fp32 dW into the master gradient (`ComputeWeights.grad_master`) while autocast rounds
    each micro-batch's dW to bf16 first: the LM head (fused loss), every bias-free linear layer
    (`xt.kernels.linear`) and, on CUDA, the routed experts' weights (the Triton k-grouped kernel, from
    the second micro-batch on)."""
    ref, ref_g, _ = _first_step(arch, device, "per_use")
    new, new_g, model = _first_step(arch, device, "per_step")
    assert float(new.loss) == pytest.approx(float(ref.loss), rel=1e-6)
    assert set(new_g) == set(ref_g)
    head = {n for n, p in model.named_parameters() if n.endswith("lm_head.weight")}
    head |= {f"{m}.weight" for m, mod in model.named_modules() if isinstance(mod, Linear) and mod.bias is None}
    if device == "cuda":
        head |= {n for n, p in model.named_parameters() if ".experts." in n and p.ndim == 3}
    for name, g in ref_g.items():
        assert new_g[name].dtype == torch.float32, name
        tol = 2.0 ** -8 if name in head else 1e-6
        assert rel_err(new_g[name], g) <= tol, (name, rel_err(new_g[name], g))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ARCHS)
def test_per_step_trains_like_per_use(arch, device, tmp_path):
    """Three AdamW steps through `Trainer`: losses and gradient norms within bf16 tolerance, masters fp32."""
    ref_m, _, ref_t = _run(arch, "per_use", device, tmp_path)
    new_m, new_w, new_t = _run(arch, "per_step", device, tmp_path)
    assert ref_t.compute_weights is None
    assert new_t.compute_weights is not None and new_t.compute_weights.num_tensors > 0
    assert all(w.dtype == torch.float32 for w in new_w.values())
    for a, b in zip(ref_m, new_m):
        for key in ("loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=BF16_TOL), (key, a[key], b[key])
        if a["aux_loss"] is not None:
            assert b["aux_loss"] == pytest.approx(a["aux_loss"], rel=BF16_TOL, abs=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_copies_leave_out_embeddings_routers_and_biases(arch):
    model = build_model(_cfg(arch), device="cpu")
    chosen = {id(p) for p in eligible_parameters(model)}
    names = {n for n, p in model.named_parameters() if id(p) in chosen}
    assert names, "no weight would be copied"
    for n, p in model.named_parameters():
        fp32_module = "gate" in n.split(".")[-2:-1] or n.endswith("router.weight")
        if id(p) in chosen:
            assert p.ndim >= 2 and "embed" not in n and not n.endswith("bias") and not fp32_module, n
        elif p.ndim >= 2 and "embed" not in n and not n.endswith("bias") and not fp32_module:
            raise AssertionError(f"{n} {tuple(p.shape)} should have been copied")
