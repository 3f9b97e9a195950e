"""`xt rl` under Ray (``orchestrator.kind = "ray"``) equals the one-process run, on the tiny
random Qwen3 of test_rl_command.py (4 RL steps of 2 updates each, 2 for the 2-rank trainer runs;
fp32, CPU):

- colocated (trainer and rollout on one actor): every per-step metric (rewards, losses, gradient
  norms, ratios, entropy) and every final weight equal the one-process run exactly;
- disaggregated (a rollout actor with its own model copy, weights broadcast over torch.distributed
  in small buckets: ``weight_sync = "collective"``), with the rollout actor killed mid-call in RL
  step 2 and the reward actor killed mid-call in step 3: Ray restarts them, the calls are redone
  (the weight-sync group rebuilt), and metrics and final weights still equal the one-process run
  exactly; ``actor_restarts`` counts the redone calls (2 here when both kills land mid-call, as the
  50 ms reward calls make sure for the reward); ``weight_sync_s`` is logged every step;
- collective weight sync to 2 rollout actors with ``train.dtype = "bf16"`` (the trainer resumed
  from the one-process run's final checkpoint): both hold the checkpoint's weights bit for bit,
  equal to the disk hand-over's, and (``rollout.dtype = "train"``: their own bf16 compute copies,
  re-cast after the weight load) sample the same tokens with the same log-probs, bit for bit, as
  the one-process bf16 rollout of the same two shares;
- a trainer of 2 Ray actors (one gloo group; a tiny Qwen3-MoE with routing replay started from an
  HF folder, loaded sharded: each rank reads its rows; FSDP2 over both and its experts sliced over
  both, EP 2; each rank training on its share of the samples;
  weights gathered by FullState and published through the object store) equals the one-process
  run: every per-step metric and every final weight within 1e-5 (AdamW made near-linear, eps = 1).
- (soak) a trainer of 2 Ray actors with ``parallel.sp_size = 2`` (Ulysses: every micro-batch split
  over both; GSPO, seq_mean_token_mean, KL in the loss, sequence-level TIS) equals the one-process
  run within 1e-5 in every per-step metric and final weight (the SP trainer step is test_rl_sp.py's).

- colocated with a trainer of 2 Ray actors (the same tiny Qwen3-MoE, FSDP2 2 x EP 2, routing replay;
  and the dense Qwen3 under FSDP2 2; each rank sampling its share of the prompts on a full rollout
  copy refreshed from the sharded policy after each update) equals the disaggregated run with 2
  trainer ranks and 2 rollout workers: per-step rewards equal, every other metric and every final
  weight within 1e-5; a colocated 2-rank FSDP2 trainer with ``train.dtype = "bf16"`` resumed from
  the one-process checkpoint holds its weights bit for bit in both ranks' rollout copies, and
  samples the same tokens and log-probs, bit for bit, as the one-process bf16 rollout of the same
  two shares.

- one-step overlap (``max_staleness = 1``, disaggregated, weights through disk): the samples are
  one RL step stale from step 2 on (``rollout_staleness``), the run differs from the synchronous
  one, and a run resumed from its step-4 checkpoint (after 2 RL steps; the checkpoint holds the
  buffered rollout), in which the rollout actor is killed during a prefetched rollout (redone on
  the weights it was started with), equals the uninterrupted one.

- asking for more GPUs than the Ray cluster has is one ConfigError (Ray would wait forever).

One Ray instance for the module (``num_cpus=2``, no dashboard); skipped when Ray is not installed.
The bucketed weight hand-over itself (object store and disk) is checked in test_rl_weight_sync.py.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import pytest
import torch
from rich.console import Console

from test_rl_command import _config, _rows, _weights
from xt.cli.rl import run_rl

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'xt-rl[ray]'); the Ray tests need it")
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    """One embedded Ray for the module; its workers import this checkout and the test reward functions."""
    old = os.environ.get("PYTHONPATH")
    import sys
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), *[p for p in sys.path if p]])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def _quiet(tmp: Path) -> Console:
    return Console(file=open(tmp / "log.txt", "a"))


def _with(path: Path, text: str) -> Path:
    path.write_text(path.read_text() + "\n" + text)
    return path


def _same_run(a_dir: Path, b_dir: Path, a_ckpt: Path, b_ckpt: Path) -> None:
    a = _rows(a_dir)
    b = [{k: v for k, v in r.items() if k != "actor_restarts"} for r in _rows(b_dir)]
    assert [r["step"] for r in a] == [1, 2, 3, 4] and a == b
    wa, wb = _weights(a_ckpt), _weights(b_ckpt)
    assert wa.keys() == wb.keys() and wa and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The one-process reference run (4 RL steps)."""
    tmp = tmp_path_factory.mktemp("local")
    res = run_rl(_config(tmp, "local"), console=_quiet(tmp))
    return tmp / "local", res.checkpoint


@pytest.fixture(autouse=True)
def _reward_fns_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def test_colocated_ray_run_equals_the_one_process_run(tmp_path, local_run):
    cfg = _with(_config(tmp_path, "ray"), '[orchestrator]\nkind = "ray"\nplacement = "colocated"\n')
    res = run_rl(cfg, console=_quiet(tmp_path))
    assert res.step == 8
    _same_run(local_run[0], tmp_path / "ray", local_run[1], res.checkpoint)
    assert "(Ray, colocated)" in (tmp_path / "log.txt").read_text()


def test_killed_rollout_and_reward_actors_are_restarted_without_changing_the_run(tmp_path, local_run, monkeypatch):
    from xt.rl.cluster import driver

    calls = {"generate": 0, "score": 0}
    kill_at = {"generate": 2, "score": 3}  # the rollout in RL step 2, the reward in step 3

    def kill(method, handle, index):
        if method in calls:
            calls[method] += 1
            if calls[method] == kill_at[method]:
                ray.kill(handle, no_restart=False)  # mid-call: the request was just submitted

    monkeypatch.setattr(driver, "AFTER_SUBMIT", kill)
    cfg = _config(tmp_path, "ray")  # the same rewards, 50 ms per call (so that the kill lands mid-call)
    cfg.write_text(cfg.read_text().replace("rl_reward_fns:vowel_share", "rl_reward_fns:slow_vowel_share"))
    _with(cfg, '[orchestrator]\nkind = "ray"\nplacement = "disaggregated"\nweight_sync = "collective"\n'
               'bucket_mb = 0.05\n')
    res = run_rl(cfg, console=_quiet(tmp_path))
    assert res.step == 8 and calls == {"generate": 4, "score": 4}
    _same_run(local_run[0], tmp_path / "ray", local_run[1], res.checkpoint)
    raw = [json.loads(line) for line in (tmp_path / "ray" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["weight_sync_s"] > 0 for r in raw)
    # each redone call counts; a kill that lands just after its call finished is met by the next call,
    # or not at all when Ray has already restarted the actor by then (harmless: it gets synced weights)
    counts = [r["actor_restarts"] for r in _rows(tmp_path / "ray")]
    assert counts[0] == 0 and counts == sorted(counts) and 1 <= counts[-1] <= 2


OVERLAP = '[orchestrator]\nkind = "ray"\nplacement = "disaggregated"\nweight_sync = "disk"\nmax_staleness = 1\n'


def test_one_step_overlap_is_one_step_stale_and_resumes_exactly(tmp_path, local_run, monkeypatch):
    """The uninterrupted overlapped run saves its step-4 checkpoint as a run stopped there
    (``until_step``) does (same loop, same save); a run resumed from it, with the rollout actor
    killed during its first prefetched rollout, equals the uninterrupted run from step 5 on."""
    from xt.rl.cluster import driver

    straight = run_rl(_with(_config(tmp_path, "straight"), OVERLAP), console=_quiet(tmp_path))
    calls = {"generate": 0}

    def kill(method, handle, index):
        if method == "generate":
            calls["generate"] += 1
            if calls["generate"] == 1:  # submitted in RL step 3 for step 4, on the weights before step 3's update
                ray.kill(handle, no_restart=False)

    monkeypatch.setattr(driver, "AFTER_SUBMIT", kill)
    cut_cfg = _with(_config(tmp_path, "cut"), OVERLAP)
    second = run_rl(cut_cfg, resume=str(tmp_path / "straight" / "checkpoints" / "step-4"), console=_quiet(tmp_path))
    assert second.resumed_from.name == "step-4" and second.step == 8 and calls["generate"] >= 1
    a = _rows(tmp_path / "straight")
    assert [r["rollout_staleness"] for r in a] == [0, 1, 1, 1]
    b = _rows(tmp_path / "cut")
    assert b[-1]["actor_restarts"] >= 1
    strip = lambda rows: [{k: v for k, v in r.items() if k != "actor_restarts"} for r in rows]  # noqa: E731
    assert [r["step"] for r in b] == [3, 4] and strip(a[2:]) == strip(b)
    wa, wb = _weights(straight.checkpoint), _weights(second.checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sync = _weights(local_run[1])
    assert any(not torch.equal(wa[k], sync[k]) for k in wa)  # stale samples: another run than the synchronous one
    assert sorted(p.name for p in (tmp_path / "straight" / "weight_sync").iterdir()) == ["v6", "v8"]


def test_more_gpus_than_the_cluster_has_is_one_config_error(tmp_path):
    from xt.core.errors import ConfigError
    cfg = _with(_config(tmp_path, "gpus"), '[orchestrator]\nkind = "ray"\nplacement = "disaggregated"\n'
                                           'gpus_per_actor = 1\nrollout_workers = 2\n')
    with pytest.raises(ConfigError, match="need 3 GPUs") as e:
        run_rl(cfg, console=_quiet(tmp_path))
    assert e.value.key == "orchestrator.gpus_per_actor"


def _strip(key: str) -> str:
    return key[len("model."):]


def test_collective_sync_to_two_bf16_rollout_actors_is_bit_exact_and_samples_as_one_process(tmp_path, local_run):
    """One disaggregated `RayRun` (``train.dtype = "bf16"``, collective weight sync to 2 rollout
    actors) resumed from the one-process run's final checkpoint: both actors hold its weights bit
    for bit (in their fp32 copies), equal to the disk hand-over's; and they sample the same tokens
    and log-probs, bit for bit, as the one-process bf16 rollout of the same two shares (their own
    bf16 compute copies, re-cast after the weight load)."""
    from test_rl_command import _config as config_path
    from xt.cli.rl_config import load_rl_config
    from xt.models import build_model
    from xt.rl.cluster import RayRun
    from xt.rl.cluster.rollout_proxy import merge_samples, split_request
    from xt.rl.cluster.weights import load_buckets
    from xt.rl.loop.build import StateHolder, build_policy, load_policy
    from xt.rl.loop.local import policy_rollout
    from xt.rl.rollout import RolloutRequest, SamplingParams

    cfg = load_rl_config(_with(config_path(tmp_path, "coll"), '[orchestrator]\nkind = "ray"\n'
                               'placement = "disaggregated"\nweight_sync = "collective"\nrollout_workers = 2\n'
                               'bucket_mb = 0.5\n'), ["train.dtype=bf16"])
    request = RolloutRequest(prompts=[[9707, 11, 1879], [785, 3974], [1879, 9707]], n=2, seed=3,
                             sampling=SamplingParams(max_new_tokens=6, temperature=1.0, stop_token_ids=[]))
    run = RayRun(cfg, tmp_path / "coll")
    try:
        run.load(local_run[1], StateHolder())  # the trained weights, broadcast to both rollout actors
        got = [ray.get(h.state_dict.remote()) for h in run.rollout.actors.handles]
        remote = run.rollout.generate(request)
        banner = run.describe()["rollout_precision"]
        handle = run.trainers.call("publish_weights", "disk", 2 ** 16, str(tmp_path / "disk"))
    finally:
        run.close()
    want = {_strip(k): v for k, v in _weights(local_run[1]).items()}
    disk = build_model(cfg.model.config)
    load_buckets(disk, handle)
    disk_sd = disk.state_dict()
    assert len(got) == 2 and len(handle[1]) >= 2 and run.rollout.sync_bytes > 0  # the embedding alone, then the rest
    for sd in got:
        assert sd.keys() == disk_sd.keys() and set(want) <= set(sd)
        assert all(torch.equal(sd[k], disk_sd[k]) for k in sd) and all(torch.equal(sd[k], want[k]) for k in want)
    assert any(not torch.equal(v, build_model(cfg.model.config).state_dict()[k]) for k, v in disk_sd.items())

    parts = build_policy(cfg, torch.device("cpu"))
    load_policy(parts, local_run[1], StateHolder())
    local = policy_rollout(parts, cfg.rollout)
    shares, reqs = split_request(request, 2)
    here = merge_samples(shares, [local.generate(r) for r in reqs])
    assert "bf16 autocast" in banner and "own model copy" in banner and "bf16 autocast" in local.precision.summary
    assert [x.prompt_index for x in remote.samples] == [0, 0, 1, 1, 2, 2]
    assert [x.response_ids for x in remote.samples] == [x.response_ids for x in here]
    assert [x.log_probs for x in remote.samples] == [x.log_probs for x in here]  # bit for bit
    fp32 = policy_rollout(parts, msgspec.structs.replace(cfg.rollout, dtype="fp32"))
    assert [x.log_probs for x in merge_samples(shares, [fp32.generate(r) for r in reqs])] != \
        [x.log_probs for x in here]  # bf16 really ran


#: AdamW with eps = 1 is near-linear in the gradient (update ~ lr * momentum / eps), so the fp32
#: rounding of a sharded step is not amplified to ~lr per element as a sign-like AdamW step does on
#: the tiny gradients of rarely routed experts; 1e-5 against one process then means something
LINEAR_ADAM = ("lr = 1e-2", "lr = 0.1\neps = 1.0")


def _from_hf_folder(path: Path, folder: Path) -> Path:
    """The config at `path` with its ``[model.config]`` replaced by ``init_from`` an HF folder of
    that model (written once, random weights), and the near-linear AdamW."""
    import re
    import tomllib

    from xt.models import build_model, save_pretrained
    text = path.read_text()
    if not folder.exists():
        save_pretrained(build_model(tomllib.loads(text)["model"]["config"]), folder)
    text = re.sub(r"\[model\.config\].*?(?=\[task\])", f'[model]\ninit_from = "{folder}"\n\n', text, flags=re.S)
    path.write_text(text.replace(*LINEAR_ADAM))
    return path


def _two_rl_steps(path: Path) -> Path:
    """The config at `path` cut to 2 RL steps (4 updates; the second step samples on the weights
    refreshed after the first's updates): each RL step of a 2-rank run costs ~3 s on a 2-core CPU,
    its actors' start ~20 s, so the runs below compare 2 steps rather than 4."""
    path.write_text(path.read_text().replace("steps = 8", "steps = 4"))
    return path


def test_two_rank_fsdp_ep_trainer_equals_the_one_process_run(tmp_path):
    hf = tmp_path / "hf_start"
    local = _two_rl_steps(_from_hf_folder(_config(tmp_path, "local_moe", moe=True), hf))
    ref = run_rl(local, console=_quiet(tmp_path))
    cfg = _two_rl_steps(_from_hf_folder(_config(tmp_path, "ep", moe=True), hf))  # each rank reads its rows of the folder
    assert f'init_from = "{hf}"' in cfg.read_text() and "[model.config]" not in cfg.read_text()
    _with(cfg, '[orchestrator]\nkind = "ray"\nplacement = "disaggregated"\ntrainer_workers = 2\nbucket_mb = 0.5\n\n'
               '[parallel]\nfsdp_size = 2\nep_size = 2\n')
    res = run_rl(cfg, console=_quiet(tmp_path))
    assert res.step == 4
    a, b = _rows(tmp_path / "local_moe"), [{k: v for k, v in r.items() if k != "actor_restarts"}
                                          for r in _rows(tmp_path / "ep")]
    assert [r["step"] for r in b] == [1, 2] and [set(r) for r in a] == [set(r) for r in b]
    assert all(r["routing_mismatch_frac"] is not None for r in a)  # replay on, agreement measured
    for ra, rb in zip(a, b):
        for k, v in ra.items():
            assert (v is None and rb[k] is None) or rb[k] == pytest.approx(v, rel=1e-5, abs=1e-5), k
    wa, wb = _weights(ref.checkpoint), _weights(res.checkpoint)
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-5) for k in wa)
    log = " ".join((tmp_path / "log.txt").read_text().split())  # the console wraps at 80 columns
    assert "trainer layout world 2 = hsdp 1 x fsdp 2, ep 2" in log


@pytest.mark.parametrize("moe, ep", [(True, 2)], ids=["moe-fsdp2-ep2"])  # (False, 1): dense FSDP2 alike, ~45 s more
def test_colocated_two_rank_trainer_samples_as_two_rollout_workers(tmp_path, moe, ep):
    hf = tmp_path / "hf_start"
    rows, ckpts = {}, {}
    for name, placement in (("dis", 'placement = "disaggregated"\nrollout_workers = 2\nbucket_mb = 0.5\n'),
                            ("col", 'placement = "colocated"\n')):
        cfg = _two_rl_steps(_from_hf_folder(_config(tmp_path, name, moe=moe), hf))
        _with(cfg, f'[orchestrator]\nkind = "ray"\ntrainer_workers = 2\n{placement}\n'
                   f'[parallel]\nfsdp_size = 2\nep_size = {ep}\n')
        res = run_rl(cfg, console=_quiet(tmp_path))
        assert res.step == 4
        rows[name] = [{k: v for k, v in r.items() if k != "actor_restarts"} for r in _rows(tmp_path / name)]
        ckpts[name] = res.checkpoint
    a, b = rows["dis"], rows["col"]
    assert [r["step"] for r in b] == [1, 2] and [set(r) for r in a] == [set(r) for r in b]
    rewards = [k for k in a[0] if k.startswith(("reward", "pass_at"))]
    assert "reward_mean" in rewards and [[r[k] for k in rewards] for r in a] == [[r[k] for k in rewards] for r in b]
    assert len({r["reward_mean"] for r in a}) > 1  # the samples change as the policy trains
    assert all((r.get("routing_mismatch_frac") is not None) == moe for r in b)  # replay on the copy's recorded experts
    for ra, rb in zip(a, b):
        for k, v in ra.items():
            assert (v is None and rb[k] is None) or rb[k] == pytest.approx(v, rel=1e-5, abs=1e-5), k
    wa, wb = _weights(ckpts["dis"]), _weights(ckpts["col"])
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-5) for k in wa)
    log = " ".join((tmp_path / "log.txt").read_text().split())  # the console wraps at 80 columns
    assert "Ray, colocated (2 trainer ranks, each sampling its share on a rollout copy)" in log
    assert f"trainer layout world 2 = hsdp 1 x fsdp 2, ep {ep}" in log


def test_colocated_two_rank_resume_refreshes_both_copies_and_bf16_samples_as_one_process(tmp_path, local_run):
    from test_rl_command import _config as config_path
    from xt.cli.rl_config import load_rl_config
    from xt.rl.cluster import RayRun
    from xt.rl.cluster.rollout_proxy import merge_samples, split_request
    from xt.rl.loop.build import StateHolder, build_policy, load_policy
    from xt.rl.loop.local import policy_rollout
    from xt.rl.rollout import RolloutRequest, SamplingParams

    cfg = load_rl_config(_with(config_path(tmp_path, "cbf16"), '[orchestrator]\nkind = "ray"\ntrainer_workers = 2\n\n'
                               '[parallel]\nfsdp_size = 2\n'), ["train.dtype=bf16"])
    request = RolloutRequest(prompts=[[9707, 11, 1879], [785, 3974], [1879, 9707]], n=2, seed=3,
                             sampling=SamplingParams(max_new_tokens=6, temperature=1.0, stop_token_ids=[]))
    run = RayRun(cfg, tmp_path / "cbf16")
    try:
        run.load(local_run[1], StateHolder())  # the one-process checkpoint, resharded; every copy refreshed
        copies = [ray.get(h.rollout_state_dict.remote()) for h in run.trainers.handles]
        remote = run.rollout.generate(request)
        banner = run.describe()["rollout_precision"]
    finally:
        run.close()
    want = {_strip(k): v for k, v in _weights(local_run[1]).items()}
    for sd in copies:  # each rank holds the whole model, the checkpoint's weights bit for bit
        assert set(want) <= set(sd) and all(torch.equal(sd[k], want[k]) for k in want)
    parts = build_policy(msgspec.structs.replace(cfg, parallel=type(cfg.parallel)()), torch.device("cpu"))
    load_policy(parts, local_run[1], StateHolder())
    local = policy_rollout(parts, cfg.rollout)  # bf16 under the one-process policy engine's compute copies
    shares, reqs = split_request(request, 2)
    here = merge_samples(shares, [local.generate(r) for r in reqs])
    assert "bf16 autocast" in banner and "own model copy" in banner
    assert [x.prompt_index for x in remote.samples] == [0, 0, 1, 1, 2, 2]
    assert [x.response_ids for x in remote.samples] == [x.response_ids for x in here]
    assert [x.log_probs for x in remote.samples] == [x.log_probs for x in here]  # bit for bit


@pytest.mark.soak  # ~35 s; in the default suite: the SP trainer step (test_rl_sp.py) and a 2-rank Ray layout
def test_two_rank_sequence_parallel_trainer_equals_the_one_process_run(tmp_path):
    """Soak (``-m soak``): the default suite covers the SP trainer step over gloo ranks in
    `test_rl_sp.py` and a 2-rank Ray trainer layout against one process in
    `test_two_rank_fsdp_ep_trainer_equals_the_one_process_run`.

    ``parallel.sp_size = 2`` over 2 trainer actors (each micro-batch split over both, Ulysses;
    FSDP2 over both) with GSPO, seq_mean_token_mean, KL in the loss and sequence-level TIS: every
    per-step metric and every final weight within 1e-5 of one process (2 RL steps; default AdamW,
    a dense model). The trainer step itself, for more losses, is `test_rl_sp.py`'s (fast)."""
    rl = ('[rl]\npolicy_loss = "gspo"\naggregation = "seq_mean_token_mean"\nclip_eps_low = 0.1\nkl_coef = 0.05\n'
          '[rl.mismatch]\ntis = "sequence"\ntis_cap = 1.5\n')
    runs = {}
    for name, extra in (("local_sp", ""), ("sp", '[orchestrator]\nkind = "ray"\nplacement = "disaggregated"\n'
                                                 'trainer_workers = 2\n\n[parallel]\nsp_size = 2\n\n')):
        path = _config(tmp_path, name)
        text = path.read_text().replace("steps = 8", "steps = 4").replace("[rl]\nclip_eps_high = 0.28\n", "")
        path.write_text(text.replace("[rl.reward]", rl + "\n[rl.reward]"))
        _with(path, extra)
        runs[name] = run_rl(path, console=_quiet(tmp_path))
    assert runs["sp"].step == 4
    a, b = _rows(tmp_path / "local_sp"), [{k: v for k, v in r.items() if k != "actor_restarts"}
                                         for r in _rows(tmp_path / "sp")]
    assert [r["step"] for r in b] == [1, 2] and [set(r) for r in a] == [set(r) for r in b]
    assert all(r["kl"] is not None and r["tis_weight_mean"] is not None for r in a)
    for ra, rb in zip(a, b):
        for k, v in ra.items():
            assert (v is None and rb[k] is None) or rb[k] == pytest.approx(v, rel=1e-5, abs=1e-5), k
    wa, wb = _weights(runs["local_sp"].checkpoint), _weights(runs["sp"].checkpoint)
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], rtol=0, atol=1e-5) for k in wa)
    assert "trainer layout world 2 = hsdp 1 x fsdp 2, ep 1, sp 2" in " ".join((tmp_path / "log.txt").read_text().split())
