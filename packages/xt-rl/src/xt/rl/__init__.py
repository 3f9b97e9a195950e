"""XT RL: the algorithmic core of policy-gradient training with verifiable rewards.

Modules (import them directly; this package imports nothing, so reward workers start fast):
    xt.rl.advantages   grpo_advantages, dr_grpo_advantages, rloo_advantages, group_advantages
    xt.rl.dapo         dynamic_sampling, overlong_penalty, overlong_keep
    xt.rl.rewards      RewardPool, math-verify and reasoning-gym rewards, user reward functions
"""
