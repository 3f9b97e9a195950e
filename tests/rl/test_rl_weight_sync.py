"""The bucketed weight hand-over of the Ray orchestration (`xt.rl.cluster.weights`), without Ray:

- `weight_buckets` keeps the state dict's order, bounds each bucket's bytes (a larger tensor goes
  alone) and copies (changing a bucket leaves the model alone);
- the disk transport (safetensors files, atomic) moves a trained model's weights into a model of
  other weights bit for bit, keeps only the previous version's folder besides, and refuses a model that
  misses or adds a tensor.
The object-store transport runs in test_rl_ray.py (disaggregated run). Also: without Ray,
``orchestrator.kind = "ray"`` is one ConfigError; `split_counts` shares work in order."""
from __future__ import annotations

import pytest
import torch

from rl_helpers import tiny_qwen3
from xt.rl.cluster.weights import load_buckets, publish_weights, weight_buckets


def test_buckets_are_bounded_ordered_copies():
    model = tiny_qwen3(seed=0, dtype=torch.float32)
    sd = model.state_dict()
    limit = 8 * 1024
    buckets = list(weight_buckets(sd, limit))
    assert [k for b in buckets for k in b] == list(sd)
    for b in buckets:
        size = sum(t.numel() * t.element_size() for t in b.values())
        assert size <= limit or len(b) == 1
    assert any(len(b) > 1 for b in buckets) and len(buckets) > 2
    first = next(iter(buckets[0]))
    buckets[0][first].add_(1.0)
    assert not torch.equal(buckets[0][first], sd[first])
    with pytest.raises(ValueError, match="max_bytes"):
        next(weight_buckets(sd, 0))


def test_disk_hand_over_is_exact_and_checked(tmp_path):
    src, dst = tiny_qwen3(seed=1, dtype=torch.float32), tiny_qwen3(seed=2, dtype=torch.float32)
    assert any(not torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    publish_weights(src, 2, "disk", 4096, tmp_path)
    publish_weights(src, 3, "disk", 4096, tmp_path)
    how, paths = publish_weights(src, 4, "disk", 4096, tmp_path)
    assert how == "disk" and len(paths) > 2 and sorted(p.name for p in tmp_path.iterdir()) == ["v3", "v4"]
    assert not list((tmp_path / "v4").glob("*.tmp"))
    n = load_buckets(dst, (how, paths))
    sd_src, sd_dst = src.state_dict(), dst.state_dict()
    assert n == sum(t.numel() * t.element_size() for t in sd_src.values())
    assert all(torch.equal(sd_src[k], sd_dst[k]) for k in sd_src)
    with pytest.raises(KeyError, match="did not arrive"):
        load_buckets(dst, (how, paths[1:]))
    moe = tiny_qwen3(seed=0, dtype=torch.float32, moe=True)
    with pytest.raises(KeyError, match="lacks|did not arrive"):
        load_buckets(moe, (how, paths))
    with pytest.raises(ValueError, match="object_store"):
        publish_weights(src, 5, "nfs", 4096, tmp_path)


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
