"""`xt.rl.rewards`: math-verify and reasoning-gym rewards on known answers (correct, wrong,
malformed), and the process pool: user functions by import path, per-call timeouts (the worker is
killed and replaced), errors, dead workers, stdout noise, and the main-thread guarantee."""
from __future__ import annotations

import threading
import time

import pytest

from xt.rl.rewards import RewardError, RewardPool, load_reward_fn
from xt.rl.rewards.answers import tagged_answer

USER = "rl_reward_fns:by_kind"


def test_tagged_answer():
    assert tagged_answer("think <answer> 1 </answer> then <answer>42</answer>") == "42"
    assert tagged_answer("<answer>a\nb</answer>") == "a\nb" and tagged_answer("none") is None
    with pytest.raises(ValueError, match="tag"):
        tagged_answer("x", tag="a b")


def test_math_verify_reward_on_known_answers():
    pytest.importorskip("math_verify")
    from xt.rl.rewards.math_answers import math_verify_reward

    half = {"answer": "\\frac{1}{2}"}
    assert math_verify_reward("so the answer is \\boxed{0.5}", half) == 1.0
    assert math_verify_reward("<answer>2/4</answer>", half) == 1.0
    assert math_verify_reward("\\boxed{\\frac{1}{3}}", half) == 0.0  # wrong
    assert math_verify_reward("I am not sure", half) == 0.0  # no answer
    assert math_verify_reward("\\boxed{", half) == 0.0  # malformed
    assert math_verify_reward("<answer>x^2 + 1</answer>", {"answer": "1 + x^2"}) == 1.0
    with pytest.raises(ValueError, match="cannot parse the reference"):
        math_verify_reward("1", {"answer": ""})
    # off the main thread math-verify's signal timeouts are turned off instead of raising
    got = []
    t = threading.Thread(target=lambda: got.append(math_verify_reward("\\boxed{0.5}", half)))
    t.start(), t.join()
    assert got == [1.0]


@pytest.mark.parametrize("task", ["basic_arithmetic", "countdown", "gsm_symbolic"])
def test_reasoning_gym_tasks_generate_offline_and_score(task):
    pytest.importorskip("reasoning_gym")
    from xt.rl.rewards.gym_tasks import reasoning_gym_reward, reasoning_gym_samples

    samples = reasoning_gym_samples(task, size=3, seed=11)
    assert samples == reasoning_gym_samples(task, size=3, seed=11)  # seeded
    for s in samples:
        assert s["question"] and s["metadata"]["source_dataset"] == task
        assert reasoning_gym_reward(f"reasoning...<answer>{s['answer']}</answer>", s) == 1.0
        assert reasoning_gym_reward("<answer>-123456789</answer>", s) < 1.0  # wrong
        assert reasoning_gym_reward(str(s["answer"]), s) < 1.0  # malformed: no answer tags


def test_load_reward_fn_names_the_field():
    assert load_reward_fn(USER).__name__ == "by_kind"
    with pytest.raises(RewardError, match="rl.reward.function.*cannot import 'no_such_module'"):
        load_reward_fn("no_such_module:f")
    with pytest.raises(RewardError, match="has no attribute 'missing'"):
        load_reward_fn("rl_reward_fns:missing")
    with pytest.raises(RewardError, match="not a function"):
        load_reward_fn("rl_reward_fns:NOT_CALLABLE")
    with pytest.raises(RewardError, match="import path 'pkg.module:function'"):
        load_reward_fn("just_a_name")


@pytest.fixture(scope="module")
def pool():
    p = RewardPool(USER, workers=2, timeout_s=1.5, timeout_reward=-1.0, error_reward=float("nan"))
    yield p
    p.close()


def test_pool_scores_in_order_and_survives_timeouts_errors_and_dead_workers(pool):
    kinds = ["exact", "sleep", "exact", "raise", "text", "exit", "print", "thread", "exact"]
    answers = ["a", "-", "b", "x", "-", "-", "-", "-", "c"]
    comps = ["a", "", "wrong", "", "", "", "", "", "c "]
    samples = [{"kind": k, "answer": a} for k, a in zip(kinds, answers)]
    t0 = time.monotonic()
    res = pool.score(comps, samples)
    assert time.monotonic() - t0 < 20
    assert res.status == ["ok", "timeout", "ok", "error", "error", "error", "ok", "ok", "ok"]
    r = res.rewards
    assert r[0] == 1.0 and r[1] == -1.0 and r[2] == 0.0 and r[6] == 0.25 and r[7] == 1.0 and r[8] == 1.0
    assert all(x != x for x in (r[3], r[4], r[5]))  # error_reward = NaN
    assert "bad sample x" in res.errors[3] and "not a number" in res.errors[4]
    assert "exited with code 3" in res.errors[5]
    assert res.counts == {"ok": 5, "timeout": 1, "error": 3}
    again = pool.score(["a"] * 4, [{"kind": "exact", "answer": "a"}] * 4)  # replaced workers work
    assert again.rewards == [1.0] * 4 and again.status == ["ok"] * 4


def test_pool_raises_on_errors_without_error_reward_and_on_bad_functions():
    with RewardPool(USER, workers=1, timeout_s=5.0) as p:
        with pytest.raises(RewardError, match="(?s)failed on 1 of 2 samples.*sample 1.*bad sample y"):
            p.score(["a", "b"], [{"kind": "exact", "answer": "a"}, {"kind": "raise", "answer": "y"}])
    with pytest.raises(RewardError, match="rl.reward.function.*no_such_module"):
        RewardPool("no_such_module:f", workers=1).score(["a"], [{}])
    with pytest.raises(ValueError, match="rl.reward.workers"):
        RewardPool(USER, workers=0)


def test_pool_with_a_builtin_reward():
    pytest.importorskip("math_verify")
    with RewardPool("math_verify", workers=1, timeout_s=20.0) as p:
        res = p.score(["\\boxed{4}", "\\boxed{5}", "no idea"], [{"answer": "4"}] * 3)
    assert res.rewards == [1.0, 0.0, 0.0] and res.status == ["ok"] * 3


def test_a_task_written_to_jsonl_gives_the_same_prompts_in_the_same_order(tmp_path):
    """The demo's reasoning-gym samples written as JSONL (what `benchmarks/rl/bench_trl.py
    --write-task-jsonl` does for a machine without reasoning-gym) load back as the same samples, and
    `PromptSource` draws them in the same order."""
    import json

    from xt.rl.loop.prompts import PromptSource, task_samples
    from xt.rl.run_config import TaskConfig

    gym = TaskConfig(name="basic_arithmetic", size=200, seed=1, config={"max_digits": 1, "operators": ["+", "-"]})
    samples = task_samples(gym)
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    again = task_samples(TaskConfig(source="jsonl", path=str(path), seed=1))
    assert again == [json.loads(json.dumps(s)) for s in samples]  # (JSON turns the metadata's tuples into lists)
    a, b = PromptSource(samples, seed=1), PromptSource(again, seed=1)
    assert [s["question"] for s in a.next(450)] == [s["question"] for s in b.next(450)]  # across epochs too
