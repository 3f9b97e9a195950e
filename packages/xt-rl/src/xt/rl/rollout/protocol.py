"""The rollout engine protocol: typed messages (msgspec) between the RL driver and a rollout engine.

Shape legend: L MoE layers, T_i = prompt + response tokens of sample i, K top-k.

A driver sends a :class:`RolloutRequest` (prompt token ids, samples per prompt, :class:`SamplingParams`,
a seed) and gets a :class:`RolloutResult`: per sample the prompt and response ids, the log-probability
of each response token **under the distribution it was drawn from** (temperature and top-p applied),
why it stopped, the experts every MoE layer routed each token to (``[L, T_i, K]``, for routing replay:
`xt.models.common.routing_replay`) and the weight version that produced it. The messages are plain
msgspec structs, so they cross a process or a Ray actor boundary as msgpack bytes
(:func:`encode` / :func:`decode`); tensors travel as :class:`IntArray` (raw little-endian bytes).

Any engine with ``generate(request) -> RolloutResult``, ``load_weights(state_dict, version)`` and a
``weight_version`` attribute fits (:class:`RolloutEngine`); XT's own KV-cache generation is
`xt.rl.rollout.xt_engine.XTRolloutEngine`.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping, Protocol, runtime_checkable

import msgspec
import torch

__all__ = ["SamplingParams", "IntArray", "RolloutRequest", "RolloutSample", "RolloutResult", "RolloutEngine",
           "encode", "decode"]

_DTYPES = {"int16": torch.int16, "int32": torch.int32, "int64": torch.int64}


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to sample.

    Attributes:
        max_new_tokens: response budget per sample, >= 1.
        temperature: > 0 for sampling; 0 = greedy.
        top_p: nucleus mass in (0, 1]; 1 = off.
        stop_token_ids: a sample ends after emitting one of these (finish reason ``"stop"``).
    """
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: list[int] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams: temperature must be >= 0 and top_p in (0, 1]; got "
                             f"{self.temperature}, {self.top_p}")


class IntArray(msgspec.Struct, frozen=True, kw_only=True):
    """An integer tensor as bytes: ``dtype`` name, ``shape`` and little-endian ``data``."""
    dtype: Literal["int16", "int32", "int64"]
    shape: list[int]
    data: bytes

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "IntArray":
        """Pack an integer tensor; values are stored as int16 when they fit (expert ids do), else int32/int64."""
        t = t.detach().cpu()
        if t.numel() and (int(t.min()) < -(2 ** 15) or int(t.max()) >= 2 ** 15):
            name = "int32" if int(t.max()) < 2 ** 31 and int(t.min()) >= -(2 ** 31) else "int64"
        else:
            name = "int16"
        return cls(dtype=name, shape=list(t.shape), data=t.to(_DTYPES[name]).contiguous().numpy().tobytes())

    def to_tensor(self) -> torch.Tensor:
        """The int64 tensor of ``shape``."""
        flat = torch.frombuffer(bytearray(self.data), dtype=_DTYPES[self.dtype]) if self.data else \
            torch.zeros(0, dtype=_DTYPES[self.dtype])
        return flat.to(torch.int64).reshape(self.shape)


class RolloutRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A batch of prompts to sample from.

    Attributes:
        prompts: token ids of each prompt (chat prompts rendered with `xt.data.chat.encode_chat_prompt`).
        n: samples per prompt (the GRPO group size), >= 1; results are prompt-major.
        sampling: :class:`SamplingParams`.
        seed: the sampling RNG's seed (same request + same weights + same seed = same samples).
        record_experts: also return each sample's routed experts (MoE models).
        request_id: the caller's tag, echoed back.
    """
    prompts: list[list[int]]
    sampling: SamplingParams
    n: int = 1
    seed: int = 0
    record_experts: bool = False
    request_id: str = ""


class RolloutSample(msgspec.Struct, frozen=True, kw_only=True):
    """One sampled response.

    Attributes:
        prompt_index: index into the request's prompts.
        prompt_ids, response_ids: token ids (the stop token is the response's last when emitted).
        log_probs: per response token, its float log-probability under the processed distribution.
        finish_reason: ``"stop"`` (a stop token) or ``"length"`` (the budget).
        routed_experts: ``[L, len(prompt_ids) + len(response_ids), K]`` expert ids, or None (not
            recorded, or a dense model).
        weight_version: the engine's weight version when it sampled.
    """
    prompt_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    log_probs: list[float]
    finish_reason: Literal["stop", "length"]
    weight_version: int
    routed_experts: IntArray | None = None


class RolloutResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a :class:`RolloutRequest`.

    Attributes:
        samples: ``len(prompts) * n`` samples, prompt-major.
        weight_version: the engine's weight version.
        seconds: wall time of the generation.
        request_id: echoed from the request.
    """
    samples: list[RolloutSample]
    weight_version: int
    seconds: float
    request_id: str = ""

    @property
    def response_tokens(self) -> int:
        """Total response tokens."""
        return sum(len(s.response_ids) for s in self.samples)


@runtime_checkable
class RolloutEngine(Protocol):
    """What the RL driver needs of a rollout engine (module docstring)."""

    weight_version: int

    def generate(self, request: RolloutRequest) -> RolloutResult: ...

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None: ...


def encode(msg: Any) -> bytes:
    """msgpack bytes of a protocol message."""
    return msgspec.msgpack.encode(msg)


def decode(data: bytes, kind: type) -> Any:
    """The message of type `kind` in `data` (raises `msgspec.ValidationError` on a mismatch)."""
    return msgspec.msgpack.decode(data, type=kind)
