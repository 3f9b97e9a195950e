"""DeepSeek-V3 / Kimi K2 configuration (HF ``DeepseekV3ForCausalLM`` ``config.json`` names) plus XT
training options (aux-loss-free bias speed, sequence-wise aux loss, multi-token prediction).

Reference: DeepSeek-AI, "DeepSeek-V3 Technical Report" (arXiv:2412.19437): MLA (§2.1.1), DeepSeekMoE
with sigmoid gating, node-limited (group) routing and auxiliary-loss-free balancing (§2.1.2),
complementary sequence-wise auxiliary loss (eq. 17-20), multi-token prediction (§2.2).
Kimi K2 (Moonshot AI, 2025) uses the same architecture at its own sizes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import msgspec

from xt.models.common.zoo_config import HFConfigMixin, check_common, hf_config_to_struct, read_hf_config

__all__ = ["DeepseekV3Config"]


class DeepseekV3Config(HFConfigMixin, msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """DeepSeek-V3 architecture (HF names) and XT training options.

    Architecture (as in HF ``config.json``): ``n_routed_experts`` (E), ``num_experts_per_tok`` (K),
    ``n_shared_experts`` (shared expert intermediate = ``n_shared_experts * moe_intermediate_size``),
    ``n_group``/``topk_group`` (group-limited routing: keep the ``topk_group`` groups whose top-2
    scores sum highest), ``routed_scaling_factor``, ``norm_topk_prob``, ``first_k_dense_replace``
    (that many leading layers use a dense MLP of ``intermediate_size``), MLA sizes ``q_lora_rank``
    (None: no query compression), ``kv_lora_rank``, ``qk_nope_head_dim``, ``qk_rope_head_dim``,
    ``v_head_dim``; ``rope_interleave`` (rope pairs are adjacent dims); ``rope_parameters`` (YaRN with
    ``mscale_all_dim`` also rescales the softmax).

    XT options (not in HF): ``bias_update_speed`` (gamma of the aux-loss-free rule; 0 disables it),
    ``seq_aux_loss_coef`` (alpha of the sequence-wise balance loss; 0 disables it), ``mtp_layers``
    (multi-token-prediction depth D; 0 = none) and ``mtp_loss_weight`` (lambda). ``to_hf_dict``
    writes D as HF's ``num_nextn_predict_layers``; a checkpoint folder's config reads it back as
    ``mtp_layers`` when the folder holds those depths' weights (:mod:`xt.models.deepseek_v3.mtp_depth`),
    an inline or ``hf_config`` config keeps ``mtp_layers`` as written (0 unless set).
    """

    HF_ARCHITECTURE: ClassVar[str] = "DeepseekV3ForCausalLM"
    HF_MODEL_TYPE: ClassVar[str] = "deepseek_v3"

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    moe_intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    n_routed_experts: int
    num_experts_per_tok: int
    num_key_value_heads: int | None = None
    n_shared_experts: int = 1
    routed_scaling_factor: float = 2.5
    kv_lora_rank: int = 512
    q_lora_rank: int | None = 1536
    qk_rope_head_dim: int = 64
    qk_nope_head_dim: int = 128
    v_head_dim: int = 128
    n_group: int = 1
    topk_group: int = 1
    first_k_dense_replace: int = 0
    norm_topk_prob: bool = True
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    rope_parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"rope_type": "default",
                                                                             "rope_theta": 10000.0})
    rope_interleave: bool = True
    attention_bias: bool = False
    num_nextn_predict_layers: int = 0
    eos_token_id: int | list[int] | None = None
    bias_update_speed: float = 0.001
    seq_aux_loss_coef: float = 0.0
    mtp_layers: int = 0
    mtp_loss_weight: float = 0.3

    def __post_init__(self) -> None:
        # MLA expands per-head keys and values from the latent: key/value heads = attention heads.
        self.num_key_value_heads = self.num_attention_heads
        check_common(self)
        E, K = self.n_routed_experts, self.num_experts_per_tok
        if not 0 < K <= E:
            raise ValueError(f"num_experts_per_tok={K} must be in [1, n_routed_experts={E}]")
        if self.n_group <= 0 or E % self.n_group:
            raise ValueError(f"n_group={self.n_group} must divide n_routed_experts={E}")
        if not 0 < self.topk_group <= self.n_group:
            raise ValueError(f"topk_group={self.topk_group} must be in [1, n_group={self.n_group}]")
        if self.n_group > 1 and E // self.n_group < 2:
            raise ValueError(f"group-limited routing needs >= 2 experts per group; n_routed_experts={E}, "
                             f"n_group={self.n_group}")
        if K > self.topk_group * (E // self.n_group):
            raise ValueError(f"num_experts_per_tok={K} exceeds the experts in topk_group={self.topk_group} groups")
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            raise ValueError(f"first_k_dense_replace={self.first_k_dense_replace} must be in "
                             f"[0, num_hidden_layers={self.num_hidden_layers}]")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim={self.qk_rope_head_dim} must be even")
        for name in ("bias_update_speed", "seq_aux_loss_coef", "mtp_loss_weight", "mtp_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def num_experts(self) -> int:
        """E (= ``n_routed_experts``)."""
        return self.n_routed_experts

    @property
    def qk_head_dim(self) -> int:
        """Query/key head dim ``qk_nope_head_dim + qk_rope_head_dim``."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @classmethod
    def from_hf(cls, d: dict[str, Any] | str | Path, **overrides: Any) -> "DeepseekV3Config":
        """From an HF ``config.json`` dict or path; ``overrides`` set XT options (e.g. ``mtp_layers=1``).

        Raises:
            ValueError: bad field values (naming the field), or a ``scoring_func``/``topk_method`` that
                is not DeepSeek-V3's (``sigmoid`` / ``noaux_tc``).
        """
        src = "config.json" if isinstance(d, dict) else str(d)
        d = dict(d if isinstance(d, dict) else read_hf_config(d))
        if d.get("scoring_func", "sigmoid") != "sigmoid":
            raise ValueError(f"{src}: scoring_func={d['scoring_func']!r} is not supported (DeepSeek-V3 uses 'sigmoid')")
        if d.get("topk_method", "noaux_tc") != "noaux_tc":
            raise ValueError(f"{src}: topk_method={d['topk_method']!r} is not supported (DeepSeek-V3 uses 'noaux_tc')")
        for k in ("n_group", "topk_group", "first_k_dense_replace", "q_lora_rank"):
            if k in d and d[k] is None and k != "q_lora_rank":
                d.pop(k)
        d.update(overrides)
        return hf_config_to_struct(cls, d, 10000.0, src)

    def _hf_extra(self, d: dict[str, Any]) -> dict[str, Any]:
        """Drop XT-only training options; MTP depth goes out as HF's ``num_nextn_predict_layers``."""
        for k in ("bias_update_speed", "seq_aux_loss_coef", "mtp_loss_weight"):
            d.pop(k)
        d["num_nextn_predict_layers"] = d.pop("mtp_layers")
        return d

