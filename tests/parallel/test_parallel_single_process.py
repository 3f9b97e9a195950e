"""Every key of ``[parallel]`` has its effect on a single process, or is refused (none is ignored).

AC, capacity and the sizes run in this process; the FSDP2-only keys (param_dtype, reduce_dtype,
cpu_offload, reshard_after_forward) run in a subprocess, because `parallelize_single` creates a
world-size-1 process group there, as `xt train` does without torchrun.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import torch

from single_process_cases import batch, build, saved_activation_bytes, step
from xt.parallel import LayoutError, ParallelConfig
from xt.parallel.expert_parallel import capacity_metrics
from xt.parallel.single import describe_single, parallelize_single

HERE = Path(__file__).resolve().parent

#: every ParallelConfig key and the test that shows its effect (or its refusal) on one process
COVERED = {
    "fsdp_size": "test_sizes_above_one_are_refused", "hsdp_replicate": "test_sizes_above_one_are_refused",
    "ep_size": "test_sizes_above_one_are_refused", "sp_size": "test_sizes_above_one_are_refused",
    "activation_checkpointing": "test_activation_checkpointing_cuts_saved_activations",
    "activation_checkpointing_every_n": "test_activation_checkpointing_cuts_saved_activations",
    "capacity_factor": "test_capacity_factor_drops_rows",
    "moe_token_chunks": "test_moe_token_chunks_cut_saved_activations",
    "ep_overlap": "test_ep_overlap_is_refused_on_one_process",
    "param_dtype": "test_fsdp_keys_at_world_size_1", "reduce_dtype": "test_fsdp_keys_at_world_size_1",
    "cpu_offload": "test_fsdp_keys_at_world_size_1", "reshard_after_forward": "test_fsdp_keys_at_world_size_1",
}


def test_moe_token_chunks_cut_saved_activations():
    """The routed part in recomputed chunks keeps less for backward; loss and gradients stay those
    of the plain model (fp32; tests/parallel/test_parallel_moe_chunks.py covers every family)."""
    b = batch()
    plain_bytes, _ = saved_activation_bytes(build(), b)
    model, ctx = parallelize_single(build(), ParallelConfig(moe_token_chunks=2), device_type="cpu")
    chunk_bytes, _ = saved_activation_bytes(model, b)
    assert chunk_bytes < 0.8 * plain_bytes and ctx.world_size == 1
    ref, got = step(build(), b), step(model, b)
    assert float(got["loss"]) == pytest.approx(float(ref["loss"]), rel=1e-6)
    for name, g in ref["grads"].items():  # per tensor: chunking reorders the dW sums only
        err = float((got["grads"][name] - g).double().norm() / g.double().norm().clamp_min(1e-30))
        assert err <= 1e-6, (name, err)


def test_ep_overlap_is_refused_on_one_process():
    """`ep_overlap` needs EP (ep_size > 1: refused on one process) and no capacity factor; each
    refusal names the field (its effect under torchrun: test_parallel_ep_overlap.py)."""
    from xt.core.config.base import ConfigFieldError
    with pytest.raises(ConfigFieldError, match="ep_overlap.*ep_size > 1"):
        ParallelConfig(ep_overlap=True)
    with pytest.raises(ConfigFieldError, match="ep_overlap.*capacity_factor"):
        ParallelConfig(ep_overlap=True, ep_size=2, capacity_factor=1.0)
    with pytest.raises(LayoutError, match="ep_size"):
        parallelize_single(build(), ParallelConfig(ep_overlap=True, ep_size=2), device_type="cpu")


def test_every_key_is_covered():
    """A new [parallel] key fails here until a test shows what it does on one process."""
    assert set(COVERED) == {f.name for f in msgspec.structs.fields(ParallelConfig)}
    assert all(name in globals() for name in COVERED.values())


@pytest.mark.parametrize("kw,layers", [(dict(activation_checkpointing=1.0), 4),
                                       (dict(activation_checkpointing=0.5), 2),
                                       (dict(activation_checkpointing_every_n=4), 1)])
def test_activation_checkpointing_cuts_saved_activations(kw, layers):
    """Checkpointed layers keep only their input for backward: the saved bytes fall by the share
    of layers recomputed, and loss and gradients stay exactly those of the plain model."""
    b = batch()
    plain_bytes, _ = saved_activation_bytes(build(), b)
    model, ctx = parallelize_single(build(), ParallelConfig(**kw), device_type="cpu")
    ac_bytes, _ = saved_activation_bytes(model, b)
    full_bytes, _ = saved_activation_bytes(parallelize_single(build(), ParallelConfig(activation_checkpointing=1.0),
                                                              device_type="cpu")[0], b)
    per_layer = (plain_bytes - full_bytes) / 4
    assert per_layer > 0 and ctx.world_size == 1
    assert ac_bytes == pytest.approx(plain_bytes - layers * per_layer, rel=1e-6)
    ref, got = step(build(), b), step(model, b)
    assert torch.equal(got["loss"], ref["loss"])
    for name, g in ref["grads"].items():
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-6, atol=1e-7, msg=name)
    assert f"activation checkpointing on {layers}/4 layers" in describe_single(ParallelConfig(**kw), 4)


def test_capacity_factor_drops_rows():
    """A small capacity drops routed rows (counted) and changes the loss; a large one drops none."""
    b = batch(tokens=64)
    ref = step(build(), b)["loss"]
    small, _ = parallelize_single(build(), ParallelConfig(capacity_factor=0.25), device_type="cpu")
    loss = step(small, b)["loss"]
    assert capacity_metrics(small)["moe_dropped_rows"] > 0 and not torch.equal(loss, ref)
    large, _ = parallelize_single(build(), ParallelConfig(capacity_factor=100.0), device_type="cpu")
    assert torch.allclose(step(large, b)["loss"], ref, rtol=1e-6)
    assert capacity_metrics(large)["moe_dropped_rows"] == 0


@pytest.mark.parametrize("key", ["fsdp_size", "hsdp_replicate", "ep_size", "sp_size"])
def test_sizes_above_one_are_refused(key):
    """A sharding size above 1 cannot work on one process: refused before anything changes."""
    model = build()
    with pytest.raises(LayoutError, match=rf"parallel\.{key} = 2 .*single process.*torchrun"):
        parallelize_single(model, ParallelConfig(**{key: 2}), device_type="cpu")
    assert parallelize_single(model, ParallelConfig(**{key: 1}), device_type="cpu")[0] is model


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_fsdp_keys_at_world_size_1(tmp_path, device):
    """FSDP2-only keys build a world-size-1 group themselves (no torchrun) and take effect:
    bf16 compute with fp32 master weights; gradients rounded through a bf16 reduce; parameters
    kept gathered after forward without resharding; host-resident parameters with offload (on
    CUDA: the parameters really move off the GPU, and training still matches)."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    out = tmp_path / "fsdp.pt"
    subprocess.run([sys.executable, str(HERE / "single_process_cases.py"), str(out), device], check=True, env=env,
                   cwd=HERE, timeout=300)
    r = torch.load(out, weights_only=False)
    assert not r["initialised_before"]
    ref = r["ref"]
    mp = r["param_dtype"]
    assert mp["world_size"] == 1 and mp["compute_dtype"] == torch.bfloat16 and mp["master_dtype"] == torch.float32
    assert 0 < abs(float(mp["loss"] - ref["loss"])) < 2e-2 * float(ref["loss"])  # bf16 compute, same model
    red = r["reduce_dtype"]
    for name, g in red["grads"].items():
        assert torch.equal(g, g.bfloat16().float()), name  # every gradient went through bf16
        torch.testing.assert_close(g, ref["grads"][name], rtol=1e-2, atol=1e-4, msg=name)
    assert not all(torch.equal(g, g.bfloat16().float()) for g in ref["grads"].values())
    assert r["reshard_true"]["sharded_after_forward"] and not r["reshard_false"]["sharded_after_forward"]
    off = r["cpu_offload"]
    assert off["param_devices"] == ["cpu"] and r["param_dtype"]["param_devices"] == [device]
    for case in ("cpu_offload", "reshard_false"):  # fp32 FSDP2 at world 1 trains like the plain model
        torch.testing.assert_close(r[case]["loss"], ref["loss"], rtol=1e-6, atol=0)
        for name, g in ref["grads"].items():
            torch.testing.assert_close(r[case]["grads"][name], g, rtol=1e-5, atol=1e-7, msg=name)
