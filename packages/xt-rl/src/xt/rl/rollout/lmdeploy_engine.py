"""An LMDeploy rollout engine (extra ``xt-rl[lmdeploy]``) answering the rollout protocol
(`xt.rl.rollout.protocol`), written against LMDeploy's documented offline pipeline API:
``lmdeploy.pipeline(model_path, backend_config=PytorchEngineConfig(...))``, called as
``pipe(prompts, gen_config=[GenerationConfig(...), ...], do_preprocess=False)``, answering one
``Response`` per prompt (``token_ids``, ``logprobs``: per position a ``{token_id: logprob}`` dict,
``finish_reason``, ``input_token_len``).

**Not run here**: LMDeploy is not installed on the machines this was written on. The translation
between the protocol and LMDeploy's objects (`generation_kwargs`, `to_rollout_samples`) is tested
with a fake pipeline; the engine itself has not generated a token.

How the protocol maps onto LMDeploy:

- LMDeploy's ``GenerationConfig.n`` must be 1, so each prompt is sent ``request.n`` times, sample
  ``j`` of prompt ``i`` seeded ``random_seed = request.seed * 1_000_003 + i * request.n + j``;
  ``top_k = 0`` (LMDeploy's default is 50; the protocol has no top-k), ``logprobs = 1`` (the
  sampled token's log-prob is read from each position's dict), special tokens kept.
- Prompts are token ids in the protocol but text in the pipeline: they are decoded with the run's
  tokenizer and sent with ``do_preprocess=False`` (no second chat template). When LMDeploy counts
  another number of prompt tokens (``input_token_len``), the request fails: the trainer would
  otherwise train on other ids than were sampled from.
- LMDeploy leaves stop tokens out of ``token_ids``. With ``finish_reason = "stop"``, the one
  reported in the extra last log-prob position (a stop id) is put back as the response's last
  token; without such a position the sample is refused (the protocol's responses end with their
  stop token).
- Which distribution LMDeploy's log-probs are of (raw or after temperature / top-p) depends on its
  version and engine settings; the ``[rl.mismatch]`` metrics measure the gap to the trainer's.
- Routed experts are not returned (``routed_experts = None``): routing replay needs XT's engine.
- Weights: `LMDeployRolloutEngine.load_weights` asks the ``export(folder)`` callable for an HF folder
  of the current policy (e.g. `xt.models.save_pretrained`) and starts a new pipeline on it: the disk
  path, slow but within the documented API.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from xt.rl.rollout.protocol import RolloutRequest, RolloutResult, RolloutSample

__all__ = ["LMDeployRolloutEngine", "generation_kwargs", "to_rollout_samples", "SEED_STRIDE"]

#: sample seeds of one request: ``request.seed * SEED_STRIDE + flat index``
SEED_STRIDE = 1_000_003


def generation_kwargs(request: RolloutRequest) -> list[dict[str, Any]]:
    """The ``GenerationConfig`` fields of each flat sample of `request` (prompt-major, ``n`` per
    prompt; module docstring).

    Raises:
        ValueError: an empty request.
    """
    if not request.prompts or request.n < 1:
        raise ValueError("rollout request: need >= 1 prompt and n >= 1")
    sp = request.sampling
    out = []
    for i in range(len(request.prompts)):
        for j in range(request.n):
            out.append({"n": 1, "max_new_tokens": sp.max_new_tokens, "do_sample": sp.temperature > 0,
                        "temperature": sp.temperature if sp.temperature > 0 else 1.0, "top_p": sp.top_p,
                        "top_k": 0, "random_seed": request.seed * SEED_STRIDE + i * request.n + j,
                        "stop_token_ids": list(sp.stop_token_ids) or None, "logprobs": 1,
                        "skip_special_tokens": False})
    return out


def _sampled_log_prob(position: dict[int, float] | None, token: int, where: str) -> float:
    if not position or token not in position:
        raise ValueError(f"LMDeploy response {where}: no log-prob for the sampled token {token} "
                         f"(GenerationConfig.logprobs must be >= 1)")
    return float(position[token])


def to_rollout_samples(request: RolloutRequest, responses: Sequence[Any], weight_version: int) -> list[RolloutSample]:
    """The protocol's samples of LMDeploy ``Response`` objects, one per flat sample in order.

    Raises:
        ValueError: a count that does not match, a prompt LMDeploy tokenized to another length, a
            finish reason other than "stop" / "length", a missing log-prob, or a stop without its
            stop token (module docstring).
    """
    flat = [(i, p) for i, p in enumerate(request.prompts) for _ in range(request.n)]
    if len(responses) != len(flat):
        raise ValueError(f"LMDeploy answered {len(responses)} responses for {len(flat)} samples")
    stops = set(request.sampling.stop_token_ids)
    samples = []
    for k, ((i, prompt), r) in enumerate(zip(flat, responses)):
        where = f"{k} (prompt {i})"
        if r.input_token_len != len(prompt):
            raise ValueError(f"LMDeploy response {where}: the prompt has {r.input_token_len} tokens there but "
                             f"{len(prompt)} here: its tokenizer does not round-trip the prompt ids")
        reason = r.finish_reason
        if reason not in ("stop", "length"):
            raise ValueError(f"LMDeploy response {where}: finish_reason {reason!r} (want 'stop' or 'length')")
        ids = list(r.token_ids)
        positions = list(r.logprobs or [])
        lps = [_sampled_log_prob(positions[t] if t < len(positions) else None, tok, where)
               for t, tok in enumerate(ids)]
        if reason == "stop" and not (ids and ids[-1] in stops):
            extra = positions[len(ids)] if len(positions) > len(ids) else {}
            found = [t for t in extra if t in stops]
            if len(found) != 1:
                raise ValueError(f"LMDeploy response {where}: stopped, but its stop token is not reported "
                                 f"(token_ids leave it out and no log-prob position names one of {sorted(stops)})")
            ids.append(found[0])
            lps.append(float(extra[found[0]]))
        samples.append(RolloutSample(prompt_index=i, prompt_ids=list(prompt), response_ids=ids, log_probs=lps,
                                     finish_reason=reason, weight_version=weight_version))
    return samples


def _lmdeploy() -> Any:
    try:
        import lmdeploy
    except ImportError:
        from xt.core.errors import ConfigError
        raise ConfigError("rollout.engine = 'lmdeploy' needs LMDeploy: pip install 'xt-rl[lmdeploy]'",
                          key="rollout.engine") from None
    return lmdeploy


class LMDeployRolloutEngine:
    """Rollouts with an LMDeploy pipeline (module docstring).

    Args:
        model_path: the HF folder LMDeploy starts from.
        decode: ``prompt ids -> text`` (the run's tokenizer, special tokens kept).
        export: ``folder -> None`` writing the current policy as an HF folder (for `load_weights`);
            None refuses weight updates.
        backend_config: an LMDeploy engine config (default ``PytorchEngineConfig()``).
        pipeline_factory, gen_config_cls: LMDeploy's ``pipeline`` and ``GenerationConfig`` (tests pass fakes).
        weight_version: the version of the weights at `model_path`.

    Raises:
        xt.core.errors.ConfigError: LMDeploy is not installed (naming ``rollout.engine``).
    """

    def __init__(self, model_path: str | Path, decode: Callable[[list[int]], str], *,
                 export: Callable[[Path], None] | None = None, backend_config: Any = None,
                 pipeline_factory: Callable[..., Any] | None = None, gen_config_cls: type | None = None,
                 weight_version: int = 0) -> None:
        if pipeline_factory is None or gen_config_cls is None:
            lm = _lmdeploy()
            pipeline_factory = pipeline_factory or lm.pipeline
            gen_config_cls = gen_config_cls or lm.GenerationConfig
            if backend_config is None:
                backend_config = lm.PytorchEngineConfig()
        self.decode, self.export = decode, export
        self._factory, self._gen_cls, self._backend = pipeline_factory, gen_config_cls, backend_config
        self.weight_version = weight_version
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.pipe = self._start(str(model_path))

    def _start(self, path: str) -> Any:
        return self._factory(path, backend_config=self._backend)

    def generate(self, request: RolloutRequest) -> RolloutResult:
        """Sample ``request.n`` responses per prompt (prompt-major); see `RolloutRequest`.

        Raises:
            ValueError: an empty request, or a response that does not translate (`to_rollout_samples`).
        """
        configs = [self._gen_cls(**kw) for kw in generation_kwargs(request)]
        texts = [self.decode(list(p)) for p in request.prompts for _ in range(request.n)]
        t0 = time.perf_counter()
        responses = self.pipe(texts, gen_config=configs, do_preprocess=False)
        seconds = time.perf_counter() - t0
        return RolloutResult(samples=to_rollout_samples(request, responses, self.weight_version),
                             weight_version=self.weight_version, seconds=seconds, request_id=request.request_id)

    def load_weights(self, state_dict: Any, version: int) -> None:
        """Export the policy (``export``) to a fresh folder and restart the pipeline on it
        (`state_dict` is not used: the export writes the weights).

        Raises:
            RuntimeError: the engine has no ``export``.
        """
        if self.export is None:
            raise RuntimeError("LMDeployRolloutEngine.load_weights: no export callable to write the weights")
        new = tempfile.TemporaryDirectory(prefix="xt-lmdeploy-")
        self.export(Path(new.name))
        close = getattr(self.pipe, "close", None)
        if close is not None:
            close()
        self.pipe = self._start(new.name)
        if self._tmp is not None:
            self._tmp.cleanup()
        self._tmp = new
        self.weight_version = version
