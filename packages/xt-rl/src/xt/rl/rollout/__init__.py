"""Rollout engines: the protocol (`xt.rl.rollout.protocol`) and XT's KV-cache engine (`xt.rl.rollout.xt_engine`)."""
from xt.rl.rollout.protocol import (IntArray, RolloutEngine, RolloutRequest, RolloutResult, RolloutSample,
                                    SamplingParams, decode, encode)
from xt.rl.rollout.xt_engine import XTRolloutEngine

__all__ = ["IntArray", "RolloutEngine", "RolloutRequest", "RolloutResult", "RolloutSample", "SamplingParams",
           "XTRolloutEngine", "decode", "encode"]
