"""Weight initialisation and routing statistics shared by the model families.

Every family initialises through :func:`init_rules` (one :class:`~xt.core.seeded_init.InitRule` per
parameter and persistent buffer, by qualified name) and :func:`init_model_`, which draws each
tensor from the model's base seed chunk by chunk (:mod:`xt.core.seeded_init`). The same rules
let xt.parallel initialise only a rank's shards of a model built on the meta device, with the
values a single process gets (docs/architecture.md, Meta-device construction).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from xt.core.seeded_init import InitRule, draw_init_seed, init_rows_
from xt.models.common.norm import RMSNorm

__all__ = ["expert_load_fractions", "init_rules", "init_model_", "seeded_build", "SeededInit", "InitRule"]


def expert_load_fractions(stats: Sequence) -> torch.Tensor:
    """``[L_moe, E]`` share of each layer's routed slots that went to each expert (rows sum to 1;
    an empty layer is all zeros). `stats` are the routers' outputs with ``tokens_per_expert [E]``."""
    load = torch.stack([s.tokens_per_expert for s in stats]).float()
    return load / load.sum(dim=1, keepdim=True).clamp(min=1)


def init_rules(model: nn.Module, std: float) -> dict[str, InitRule]:
    """The :class:`InitRule` of every parameter and persistent buffer of `model`, by qualified name.

    A module that defines ``xt_init_rules(std) -> {local name: InitRule}`` states its own (experts,
    routers, attention sinks); otherwise ``nn.Linear`` / ``nn.Embedding`` weights are normal(0,
    `std`) (HF ``initializer_range``) with zero biases, and :class:`RMSNorm` weights are one.
    Tied parameters appear once, under their first name (``named_parameters`` order).

    Raises:
        TypeError: a parameter or persistent buffer no rule covers (a module to teach its init).
    """
    rules: dict[str, InitRule] = {}
    for prefix, m in model.named_modules():
        own = m.xt_init_rules(std) if hasattr(m, "xt_init_rules") else {}
        if isinstance(m, (nn.Linear, nn.Embedding)):
            own = {"weight": InitRule("normal", std), "bias": InitRule("zeros"), **own}
        elif isinstance(m, RMSNorm):
            own = {"weight": InitRule("ones"), **own}
        local = [n for n, _ in m.named_parameters(recurse=False)]
        local += [n for n, _ in m.named_buffers(recurse=False) if n not in m._non_persistent_buffers_set]
        for n in local:
            if n not in own:
                raise TypeError(f"no init rule for {type(m).__name__}.{n} ({prefix}.{n}); give "
                                f"{type(m).__name__} an xt_init_rules(std) method")
            rules[f"{prefix}.{n}" if prefix else n] = own[n]
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    return {n: r for n, r in rules.items() if n in names}


@torch.no_grad()
def init_model_(model: nn.Module, rules: dict[str, InitRule], base_seed: int) -> None:
    """Fill every (non-meta, full) parameter and buffer named in `rules` from `base_seed` in place
    (:func:`xt.core.seeded_init.init_rows` over all rows). Meta tensors are skipped: a model built
    on the meta device is initialised after materialisation (``xt.parallel.materialize_``)."""
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    for name, rule in rules.items():
        t = tensors[name]
        if t.is_meta:
            continue
        init_rows_(t, rule, name, tuple(t.shape), 0, base_seed)


@contextlib.contextmanager
def seeded_build(model: nn.Module) -> Iterator[None]:
    """Build a model's submodules inside this block, then initialise it from one base seed.

    On entry: one draw from the global CPU generator gives ``model.xt_init_seed``
    (:func:`xt.core.seeded_init.draw_init_seed`), then the CPU (and any initialised CUDA) RNG
    state is saved, so the submodules' own default inits do not move the global generators and a
    meta build leaves them exactly as an eager one. On exit the state is restored; call
    ``model.reset_parameters()`` afterwards (the family's rules and :func:`init_model_`).
    """
    model.xt_init_seed = draw_init_seed()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield


class SeededInit:
    """Mixin of the families' causal LMs: ``init_rules()`` and ``reset_parameters()`` from
    ``self.init_std`` (HF ``initializer_range``) and ``self.xt_init_seed`` (set by :func:`seeded_build`)."""

    init_std: float
    xt_init_seed: int

    def init_rules(self) -> dict[str, InitRule]:
        """Every parameter's and persistent buffer's rule, by qualified name (:func:`init_rules`):
        Linear/Embedding/experts/router weights (and GPT-OSS's sinks and router bias) normal(0,
        init_std), other biases and DeepSeek's balancing bias 0, norms 1."""
        return init_rules(self, self.init_std)

    def reset_parameters(self) -> None:
        """Initialise every parameter from ``xt_init_seed`` by :meth:`init_rules` (meta tensors are skipped)."""
        init_model_(self, self.init_rules(), self.xt_init_seed)
