"""XT RL: the algorithmic core of policy-gradient training with verifiable rewards.

Modules (import them directly; this package imports nothing, so reward workers start fast):
    xt.rl.config       RLConfig: the [rl] section ([rl.mismatch], [rl.overlong], [rl.reward])
    xt.rl.advantages   grpo_advantages, dr_grpo_advantages, rloo_advantages, group_advantages
    xt.rl.losses       PolicyLoss (engine Loss: PPO-clip, dual clip, clip-higher, GSPO, KL, TIS),
                       forward_log_probs (old/ref log-probs), clipped_surrogate, ppo_log_ratio,
                       gspo_log_ratio
    xt.rl.aggregate    token_mean / seq_mean_token_mean / constant aggregation, step_totals
    xt.rl.kl           kl_estimate (k1, k2, k3), sequence_kl, kl_penalized_rewards
    xt.rl.mismatch     truncated importance sampling and ratio masking (train/rollout mismatch)
    xt.rl.dapo         dynamic_sampling, overlong_penalty, overlong_keep
    xt.rl.batch        the RL micro-batch: pack_samples, RL_KEYS, sequence helpers
    xt.rl.seq_parallel Ulysses SP in the trainer: SequenceShards (slices, whole-sequence sums)
    xt.rl.rewards      RewardPool, math-verify and reasoning-gym rewards, user reward functions
"""
