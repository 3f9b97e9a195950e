"""Training options of the vision-language model: frozen parts (``model.freeze``) and per-part
learning rates (``optim.part_lr``), through the functions ``xt train`` uses; bad names are refused."""
from __future__ import annotations

import pytest
import torch

from xt.core.config import ConfigError, ConfigFieldError, OptimConfig, ScheduleConfig
from xt.core.engine.optim import build_optimizer, build_scheduler
from xt.models import check_model_section
from xt.models.section import ModelSection, build_run_model
from xt.models.section_check import check_part_names

from test_zoo_internvl_packing import IMAGE_PAD, tiny_vl_config

PARTS = {"vision_tower": "model.vision_tower.", "projector": "model.multi_modal_projector.",
         "language_model": ("model.language_model.", "lm_head.")}


def _step(model, opt):
    ids = torch.cat([torch.randint(0, 1000, (3,)), torch.full((4,), IMAGE_PAD), torch.randint(0, 1000, (5,))])
    labels = torch.cat([ids[1:], torch.tensor([-100])])
    labels[ids == IMAGE_PAD] = -100
    out = model(input_ids=ids, labels=labels, pixel_values=torch.randn(1, 3, 56, 56))
    out.loss_sum.backward()
    opt.step()


def test_part_learning_rates_scale_each_parts_update():
    torch.manual_seed(0)
    model = build_run_model(ModelSection(config=tiny_vl_config(moe=True)), "cpu")
    cfg = OptimConfig(lr=1e-3, weight_decay=0.0, part_lr={"vision_tower": 1e-5, "projector": 1e-4})
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=0, decay="constant"), 10)
    assert sched.base_lrs[0] == 1e-3 and sorted(set(sched.base_lrs)) == [1e-5, 1e-4, 1e-3]
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    _step(model, opt)
    moved = {}
    for k, p in model.named_parameters():
        part = next(n for n, pre in PARTS.items() if k.startswith(pre))
        moved[part] = max(moved.get(part, 0.0), float((p.detach() - before[k]).abs().max()))
    # Adam's first step moves each element by at most lr (about lr where the gradient is clear of eps),
    # up to the fp32 rounding of w - lr (2% of 1e-5 near |w| ~ 1)
    for part, lr in (("vision_tower", 1e-5), ("projector", 1e-4), ("language_model", 1e-3)):
        assert 0.5 * lr < moved[part] <= 1.02 * lr, (part, moved)


def test_frozen_vision_tower_is_not_trained():
    torch.manual_seed(0)
    model = build_run_model(ModelSection(config=tiny_vl_config(moe=False), freeze=("vision_tower",)), "cpu")
    frozen = [k for k, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(k.startswith("model.vision_tower.") for k in frozen)
    assert len(frozen) == sum(1 for k, _ in model.named_parameters() if k.startswith("model.vision_tower."))
    opt = build_optimizer(model, OptimConfig(lr=1e-3))
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    _step(model, opt)
    for k, p in model.named_parameters():
        assert torch.equal(p, before[k]) == (k in frozen), k
        assert (p.grad is None) == (k in frozen), k  # the projector still gets gradients through the tiles


def test_unknown_parts_are_refused_with_the_key():
    vl = ModelSection(config=tiny_vl_config(moe=False), freeze=("vision",))
    with pytest.raises(ConfigError, match=r"model\.freeze.*'vision'.*\['language_model', 'projector', 'vision_tower'\]"):
        check_model_section(vl, None)
    text = ModelSection(config={"architectures": ["Qwen3ForCausalLM"], "vocab_size": 64, "hidden_size": 16,
                                "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2})
    with pytest.raises(ConfigError, match=r"optim\.part_lr.*'vision_tower'.*no named parts"):
        check_part_names(text, ["vision_tower"], "optim.part_lr", None)
    with pytest.raises(ConfigError, match=r"optim.part_lr: Qwen3ForCausalLM has no part 'vision_tower'"):
        build_optimizer(build_run_model(text, "cpu"), OptimConfig(part_lr={"vision_tower": 1e-4}))
    with pytest.raises(ConfigFieldError, match=r"part_lr\.projector. must be a number > 0"):
        OptimConfig(part_lr={"projector": -1.0})


def test_layout_is_checked_against_the_language_model(monkeypatch):
    from xt.models.registry import config_from_hf
    from xt.parallel import LayoutError, ParallelConfig
    from xt.parallel.layout import check_layout

    monkeypatch.setenv("WORLD_SIZE", "4")
    cfg = config_from_hf(tiny_vl_config(moe=True))  # 4 experts, 4 heads, 2 KV heads in text_config
    check_layout(ParallelConfig(ep_size=4, activation_checkpointing=1.0), cfg)
    with pytest.raises(LayoutError, match=r"ep_size \(3\) must divide"):
        check_layout(ParallelConfig(ep_size=3), cfg)
    check_layout(ParallelConfig(sp_size=2), cfg)  # Ulysses on the LM (tests/parallel/test_parallel_internvl.py)
    with pytest.raises(LayoutError, match="sp_size"):
        check_layout(ParallelConfig(sp_size=3), cfg)
