"""The bucketed weight hand-over of the Ray orchestration (`xt.rl.cluster.weights`), without Ray:

- `weight_buckets` yields HF names (`xt.models.iter_hf_buckets`) in checkpoint order, bounds each
  bucket's bytes (a larger tensor goes alone) and copies (changing a bucket leaves the model alone);
- the disk transport (safetensors files, atomic) moves a model's weights into a model of other
  weights by HF name bit for bit (dense, and MoE with its stacked experts unstacked into per-expert
  HF tensors and written back), keeps only the previous version's folder besides, and refuses a
  model that misses or adds a tensor;
- `build_policy` builds an ``init_from`` HF folder as `xt train` does (meta device + the row
  reader): the policy's weights equal `xt.models.from_pretrained`'s in float32 bit for bit, a
  random init equals an eager build of the same seed, and a KL reference is the same weights, frozen.
The object-store transport runs in test_rl_ray.py (disaggregated run). Also: without Ray,
``orchestrator.kind = "ray"`` is one ConfigError; `split_counts` shares work in order."""
from __future__ import annotations

import pytest
import torch

from rl_helpers import tiny_qwen3
from xt.models.hf_stream import hf_items
from xt.rl.cluster.weights import load_buckets, publish_weights, weight_buckets


def test_buckets_are_bounded_ordered_hf_named_copies():
    model = tiny_qwen3(seed=0, dtype=torch.float32, moe=True)
    hf = dict(hf_items(model))
    limit = 8 * 1024
    buckets = list(weight_buckets(model, limit))
    assert [k for b in buckets for k in b] == list(hf) and "model.layers.0.mlp.experts.3.down_proj.weight" in hf
    for b in buckets:
        size = sum(t.numel() * t.element_size() for t in b.values())
        assert size <= limit or len(b) == 1
    assert any(len(b) > 1 for b in buckets) and len(buckets) > 2
    first = next(iter(buckets[0]))
    buckets[0][first].add_(1.0)
    assert not torch.equal(buckets[0][first], hf[first])
    with pytest.raises(ValueError, match="max_bytes"):
        next(weight_buckets(model, 0))


@pytest.mark.parametrize("moe", [False, True])
def test_disk_hand_over_is_exact_and_checked(tmp_path, moe):
    src, dst = tiny_qwen3(seed=1, dtype=torch.float32, moe=moe), tiny_qwen3(seed=2, dtype=torch.float32, moe=moe)
    assert any(not torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    publish_weights(src, 2, "disk", 4096, tmp_path)
    publish_weights(src, 3, "disk", 4096, tmp_path)
    how, paths = publish_weights(src, 4, "disk", 4096, tmp_path)
    assert how == "disk" and len(paths) > 2 and sorted(p.name for p in tmp_path.iterdir()) == ["v3", "v4"]
    assert not list((tmp_path / "v4").glob("*.tmp"))
    n = load_buckets(dst, (how, paths))
    sd_src, sd_dst = src.state_dict(), dst.state_dict()
    assert n == sum(t.numel() * t.element_size() for _, t in hf_items(src))
    assert all(torch.equal(sd_src[k], sd_dst[k]) for k in sd_src)
    if moe:  # the checks below on the dense one
        return
    with pytest.raises(KeyError, match="did not arrive"):
        load_buckets(dst, (how, paths[1:]))
    moe = tiny_qwen3(seed=0, dtype=torch.float32, moe=True)
    with pytest.raises(KeyError, match="lacks|did not arrive"):
        load_buckets(moe, (how, paths))
    with pytest.raises(ValueError, match="object_store"):
        publish_weights(src, 5, "nfs", 4096, tmp_path)


def test_build_policy_loads_an_hf_folder_as_xt_train_does(tmp_path):
    from types import SimpleNamespace

    from xt.core.checkpoint import seed_everything
    from xt.core.config import OptimConfig, ScheduleConfig, TrainConfig
    from xt.kernels.config import KernelsConfig
    from xt.models import ModelSection, from_pretrained, save_pretrained
    from xt.rl.config import RLConfig
    from xt.rl.loop.build import build_policy
    from xt.rl.run_config import RolloutConfig

    src = tiny_qwen3(seed=3, dtype=torch.float32, moe=True)
    save_pretrained(src.to(torch.bfloat16), tmp_path / "hf")  # a bf16 checkpoint: float32 masters must hold it exactly
    cfg = SimpleNamespace(model=ModelSection(init_from=str(tmp_path / "hf")), train=TrainConfig(dtype="fp32"),
                          optim=OptimConfig(), schedule=ScheduleConfig(), kernels=KernelsConfig(), rl=RLConfig(),
                          rollout=RolloutConfig())
    parts = build_policy(cfg, "cpu")
    want = from_pretrained(tmp_path / "hf").float().state_dict()
    got = parts.model.state_dict()
    assert got.keys() == want.keys() and all(v.dtype == torch.float32 for v in got.values())
    assert all(torch.equal(got[k], want[k]) for k in want)
    parts.trainer.close()
    # random init: the meta build equals an eager build of the same seed
    hf_cfg = {**src.config.to_hf_dict(), "architectures": ["Qwen3MoeForCausalLM"]}
    rand = build_policy(SimpleNamespace(**{**vars(cfg), "model": ModelSection(config=hf_cfg)}), "cpu")
    from xt.models import build_model
    seed_everything(0)
    eager = build_model(hf_cfg).state_dict()
    assert all(torch.equal(v, eager[k]) for k, v in rand.model.state_dict().items())
    rand.trainer.close()
    # a reference (rl.kl_coef > 0): the same weights, frozen
    kl = build_policy(SimpleNamespace(**{**vars(cfg), "rl": RLConfig(kl_coef=0.1, kl_in="reward")}), "cpu")
    ref = kl.reference.model
    assert not any(p.requires_grad for p in ref.parameters()) and all(p.requires_grad for p in kl.model.parameters())
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in kl.model.state_dict().items())
    kl.trainer.close()


def test_missing_ray_is_one_config_error(monkeypatch):
    """Without Ray, orchestrator.kind = "ray" stops with a ConfigError naming the key and the extra."""
    import sys

    from xt.core.errors import ConfigError
    from xt.rl.cluster.driver import import_ray, split_counts
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"xt-rl\[ray\]") as e:
        import_ray()
    assert e.value.key == "orchestrator.kind"
    assert split_counts(7, 3) == [(0, 2), (2, 4), (4, 7)] and split_counts(1, 3) == [(0, 1)]


def _receiver(address, prefix, rank, world, die_after_buckets, seed, out):
    """A weight-sync member of rank >= 1 (a forked process): receive the plan's buckets into a model
    of other weights and report the outcome; or leave after ``die_after_buckets`` buckets (os._exit)."""
    import io
    import os
    import time

    from xt.rl.cluster.collective import WeightGroup, _bytes, receive_weights
    model = tiny_qwen3(seed=seed + 1, dtype=torch.float32)
    group = WeightGroup(address, prefix, rank, world, torch.device("cpu"), timeout_s=60)
    plan = out.get()
    if die_after_buckets is not None:
        for bucket in plan[:die_after_buckets]:
            group.broadcast(torch.empty(sum(_bytes(s, d) for _, s, d in bucket), dtype=torch.uint8))
        os._exit(3)
    t0 = time.perf_counter()
    try:
        receive_weights(group, model, plan)
    except RuntimeError as e:
        out.put(("failed", time.perf_counter() - t0, str(e)[:200]))
        return
    buf = io.BytesIO()  # bytes, not tensors: a queued tensor is shared by a file descriptor that dies with us
    torch.save(model.state_dict(), buf)
    out.put(("ok", time.perf_counter() - t0, buf.getvalue()))


def test_a_member_dying_mid_broadcast_fails_the_others_at_once_and_a_new_group_works():
    """Weight sync over gloo (`xt.rl.cluster.collective`): trainer rank 0 and two receivers; one
    receiver leaves after the first bucket. The trainer's broadcast raises, closes its end, and the
    other receiver, blocked in the same broadcast, fails too: both within seconds, not at the 60 s
    timeout. A new group (new prefix, a fresh receiver) then moves every weight bit for bit."""
    import datetime
    import io
    import multiprocessing as mp
    import time

    import torch.distributed as dist
    from xt.models.hf_stream import PlainState
    from xt.rl.cluster.collective import WeightGroup, bucket_plan, broadcast_weights

    model = tiny_qwen3(seed=0, dtype=torch.float32)
    plan = bucket_plan(model, 2048, PlainState(model).layout)
    assert len(plan) > 3
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=60))
    address = f"127.0.0.1:{store.port}"
    ctx = mp.get_context("fork")
    for prefix, dying in (("sync/1", 1), ("sync/2", None)):
        queues = [ctx.Queue(), ctx.Queue()]
        procs = [ctx.Process(target=_receiver, args=(address, prefix, 1 + i, 3, dying if i == 1 else None, 0, q))
                 for i, q in enumerate(queues)]
        for p in procs:
            p.start()
        group = WeightGroup(address, prefix, 0, 3, torch.device("cpu"), timeout_s=60)
        for q in queues:
            q.put(plan)
        time.sleep(0.5)  # both receivers are inside the broadcast loop
        t0 = time.perf_counter()
        if dying is None:
            sent = broadcast_weights(group, model, 2048, plan)
            status, _, raw = queues[0].get(timeout=60)
            state = torch.load(io.BytesIO(raw))
            assert status == "ok" and sent == sum(t.numel() * t.element_size() for t in model.state_dict().values())
            assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
            assert queues[1].get(timeout=60)[0] == "ok"
        else:
            with pytest.raises(RuntimeError, match="broadcast of the weights failed"):
                broadcast_weights(group, model, 2048, plan)
            assert time.perf_counter() - t0 < 20 and group.pg is None  # closed
            status, waited, why = queues[0].get(timeout=60)
            assert status == "failed" and waited < 20, why
        for p in procs:
            p.join(timeout=30)
        assert [p.exitcode for p in procs] == [0, 3 if dying else 0]
