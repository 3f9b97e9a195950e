"""The ``[rl]`` config section: advantage estimator, policy loss, KL, aggregation, mismatch
correction, DAPO's data-side options and the reward function.

Every choice is a field with a default; `__post_init__` rejects bad values and inconsistent
combinations with a `ConfigFieldError` naming the field, so a TOML file reports ``rl.clip_eps_low``
(or ``rl.mismatch.tis_cap``) with its file and line. The usual recipes:

| recipe | fields |
|---|---|
| GRPO (Shao et al. 2024) | the defaults (``advantage = "grpo"``, ``kl_coef = 0.04`` for its KL) |
| Dr.GRPO (Liu et al. 2025) | ``advantage = "dr_grpo"``, ``aggregation = "constant"``, ``max_response_tokens = L`` |
| DAPO (Yu et al. 2025) | ``clip_eps_high = 0.28``, ``dynamic_sampling = true``, ``[rl.overlong]`` ``buffer_tokens``, ``max_response_tokens`` |
| GSPO (Zheng et al. 2025) | ``policy_loss = "gspo"``, ``aggregation = "seq_mean_token_mean"``, ``clip_eps_low = 3e-4``, ``clip_eps_high = 4e-4`` |
| RLOO (Ahmadian et al. 2024) | ``advantage = "rloo"`` |
| TIS (Yao et al. 2025) | ``[rl.mismatch]`` ``tis = "token"``, ``tis_cap = 2`` |
"""
from __future__ import annotations

import math
import re
from typing import Literal

from xt.core.config import ConfigStruct, require
from xt.rl.rewards.registry import BUILTIN_REWARDS

__all__ = ["RLConfig", "MismatchConfig", "OverlongConfig", "RewardConfig"]

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def _num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class MismatchConfig(ConfigStruct):
    """``[rl.mismatch]``: train/rollout mismatch correction (`xt.rl.mismatch`; Yao et al. 2025).

    Needs ``rollout_log_probs`` in the batch when either part is on.

    Attributes:
        tis: truncated importance sampling "off" | "token" | "sequence".
        tis_cap: C, the cap of the importance weight, > 0 (the paper uses 2).
        mask: masking of extreme ratios "off" | "token" | "sequence" (sequence: geometric mean).
        mask_low, mask_high: kept ratios ``[mask_low, mask_high]``, ``0 <= low <= 1 <= high``.
    """

    tis: Literal["off", "token", "sequence"] = "off"
    tis_cap: float = 2.0
    mask: Literal["off", "token", "sequence"] = "off"
    mask_low: float = 0.5
    mask_high: float = 2.0

    @property
    def enabled(self) -> bool:
        """True when TIS or masking is on."""
        return self.tis != "off" or self.mask != "off"

    def __post_init__(self) -> None:
        require(_num(self.tis_cap) and self.tis_cap > 0, "tis_cap", f"must be a number > 0, got {self.tis_cap!r}")
        require(_num(self.mask_low) and 0 <= self.mask_low <= 1, "mask_low",
                f"must be in [0, 1], got {self.mask_low!r}")
        require(isinstance(self.mask_high, (int, float)) and self.mask_high >= 1, "mask_high",
                f"must be >= 1 (inf allowed), got {self.mask_high!r}")


class OverlongConfig(ConfigStruct):
    """``[rl.overlong]``: DAPO's overlong reward shaping and filtering (`xt.rl.dapo`; Yu et al. 2025).

    Attributes:
        buffer_tokens: L_cache, the soft-punishment zone before ``rl.max_response_tokens``; 0 = off.
        penalty: factor of the length penalty (at most ``-penalty`` reward), >= 0.
        filter: mask truncated responses out of the loss (overlong filtering).
    """

    buffer_tokens: int = 0
    penalty: float = 1.0
    filter: bool = False

    def __post_init__(self) -> None:
        require(self.buffer_tokens >= 0, "buffer_tokens", f"must be >= 0 (0 = off), got {self.buffer_tokens}")
        require(_num(self.penalty) and self.penalty >= 0, "penalty", f"must be a number >= 0, got {self.penalty!r}")


class RewardConfig(ConfigStruct):
    """``[rl.reward]``: the reward function and its process pool (`xt.rl.rewards`).

    Attributes:
        function: a built-in name (``"math_verify"``, ``"reasoning_gym"``) or an import path
            ``"pkg.module:function"`` of ``fn(completion: str, sample: dict) -> float``.
        workers: worker processes, >= 1.
        timeout_s: seconds one call may take before its worker is killed, > 0.
        timeout_reward: the reward of a call that timed out (NaN allowed: the advantages then
            exclude the sample).
        error_reward: the reward of a call that raised; unset = raise `RewardError`.
    """

    function: str = "math_verify"
    workers: int = 2
    timeout_s: float = 10.0
    timeout_reward: float = 0.0
    error_reward: float | None = None

    def __post_init__(self) -> None:
        require(self.function in BUILTIN_REWARDS or bool(_IMPORT_PATH.match(self.function)), "function",
                f"must be one of {sorted(BUILTIN_REWARDS)} or an import path 'pkg.module:function', "
                f"got {self.function!r}")
        require(self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")
        require(_num(self.timeout_s) and self.timeout_s > 0, "timeout_s", f"must be a number > 0, got {self.timeout_s!r}")


class RLConfig(ConfigStruct):
    """``[rl]``: the algorithm of a policy-gradient run (module docstring for recipes).

    Attributes:
        advantage: "grpo" | "dr_grpo" | "rloo" (`xt.rl.advantages`).
        scale_by_std: GRPO divides by the group std; false keeps mean-centred advantages.
        std_eps: added to GRPO's std, reward units, >= 0.
        nonfinite_reward: "exclude" (advantage 0, left out of its group) or "raise".
        policy_loss: "ppo_clip" (token ratio) | "gspo" (sequence ratio) (`xt.rl.losses`).
        clip_eps_low, clip_eps_high: the ratio is clipped to ``[1 − low, 1 + high]``; high > low is
            DAPO's clip-higher. ``0 < low < 1``, ``high > 0``.
        dual_clip: Ye et al. 2020's bound ``c`` on the loss of negative-advantage tokens; 0 = off, else > 1.
        aggregation: "token_mean" | "seq_mean_token_mean" | "constant" (`xt.rl.aggregate`).
        max_response_tokens: the generation budget L; needed (> 0) by "constant" and overlong shaping.
        temperature: of the rollout; log-probs are computed at it, > 0.
        kl_coef: weight of the KL to the reference policy, >= 0 (0 = no KL term; needs
            ``ref_log_probs`` otherwise).
        kl_estimator: "k1" | "k2" | "k3" (`xt.rl.kl`).
        kl_in: "loss" (per token, differentiable) | "reward" (subtracted from the reward).
        entropy_metric: compute the policy entropy for the ``entropy`` metric (a little extra work).
        dynamic_sampling: DAPO's filter of groups whose rewards are all equal (`xt.rl.dapo`).
        mismatch, overlong, reward: the subsections.
    """

    advantage: Literal["grpo", "dr_grpo", "rloo"] = "grpo"
    scale_by_std: bool = True
    std_eps: float = 1e-6
    nonfinite_reward: Literal["exclude", "raise"] = "exclude"
    policy_loss: Literal["ppo_clip", "gspo"] = "ppo_clip"
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip: float = 0.0
    aggregation: Literal["token_mean", "seq_mean_token_mean", "constant"] = "token_mean"
    max_response_tokens: int = 0
    temperature: float = 1.0
    kl_coef: float = 0.0
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    kl_in: Literal["loss", "reward"] = "loss"
    entropy_metric: bool = True
    dynamic_sampling: bool = False
    mismatch: MismatchConfig = MismatchConfig()
    overlong: OverlongConfig = OverlongConfig()
    reward: RewardConfig = RewardConfig()

    def __post_init__(self) -> None:
        require(_num(self.std_eps) and self.std_eps >= 0, "std_eps", f"must be a number >= 0, got {self.std_eps!r}")
        require(_num(self.clip_eps_low) and 0 < self.clip_eps_low < 1, "clip_eps_low",
                f"must be in (0, 1), got {self.clip_eps_low!r}")
        require(_num(self.clip_eps_high) and self.clip_eps_high > 0, "clip_eps_high",
                f"must be a number > 0, got {self.clip_eps_high!r}")
        require(_num(self.dual_clip) and (self.dual_clip == 0 or self.dual_clip > 1), "dual_clip",
                f"must be 0 (off) or > 1 (Ye et al. use 3), got {self.dual_clip!r}")
        require(self.max_response_tokens >= 0, "max_response_tokens", f"must be >= 0, got {self.max_response_tokens}")
        require(self.aggregation != "constant" or self.max_response_tokens > 0, "max_response_tokens",
                "must be > 0 (the generation budget, Dr.GRPO's constant normaliser) when aggregation = 'constant'")
        require(self.advantage != "dr_grpo" or self.aggregation == "constant", "aggregation",
                "must be 'constant' with advantage = 'dr_grpo' (Dr.GRPO drops the length normaliser; "
                f"got {self.aggregation!r}); for mean-centred GRPO advantages with another aggregation "
                "use advantage = 'grpo' with scale_by_std = false")
        require(self.overlong.buffer_tokens == 0 or 0 < self.overlong.buffer_tokens <= self.max_response_tokens,
                "max_response_tokens", f"must be >= overlong.buffer_tokens ({self.overlong.buffer_tokens}) "
                f"for overlong shaping, got {self.max_response_tokens}")
        require(_num(self.temperature) and self.temperature > 0, "temperature",
                f"must be a number > 0, got {self.temperature!r}")
        require(_num(self.kl_coef) and self.kl_coef >= 0, "kl_coef", f"must be a number >= 0, got {self.kl_coef!r}")
