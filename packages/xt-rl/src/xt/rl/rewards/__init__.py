"""Rewards of RL samples: built-in verifiers, user functions by import path, a process pool.

Public API (no torch, no optional dependency imported here):
    RewardPool(function, *, workers, timeout_s, timeout_reward, error_reward)   (xt.rl.rewards.pool)
        .score(completions, samples) -> RewardResults(rewards, status, errors);  .close()
    load_reward_fn(spec), reward_fn_path(spec), BUILTIN_REWARDS, RewardError    (xt.rl.rewards.registry)
    math_verify_reward(completion, sample)          xt.rl.rewards.math_answers (extra [math])
    reasoning_gym_samples(task, size, seed), reasoning_gym_reward(completion, sample)
                                                    xt.rl.rewards.gym_tasks (extra [gym])
    tagged_answer(completion, tag="answer")         xt.rl.rewards.answers
"""
from xt.rl.rewards.pool import RewardPool, RewardResults
from xt.rl.rewards.registry import BUILTIN_REWARDS, RewardError, load_reward_fn, reward_fn_path

__all__ = ["BUILTIN_REWARDS", "RewardError", "RewardPool", "RewardResults", "load_reward_fn", "reward_fn_path"]
