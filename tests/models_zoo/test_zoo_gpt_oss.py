"""GPT-OSS specifics: MXFP4 expert weights in transformers' checkpoint format (dequantised to bf16),
the router load-balancing loss and its gradients against HF, and the clamped SwiGLU."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from xt.models.gpt_oss import GptOssConfig, GptOssForCausalLM, dequantize_mxfp4, hf_to_xt
from zoo_helpers import hf_config, pack, random_docs, rel_err


def _random_mxfp4(E: int, rows: int, cols: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A checkpoint's MXFP4 pair for a weight of HF shape [E, cols, rows]: blocks [E, rows, cols/32, 16]
    uint8 (random e2m1 nibbles) and scales [E, rows, cols/32] uint8 (e8m0 around 2**-3)."""
    blocks = torch.randint(0, 256, (E, rows, cols // 32, 16), generator=g, dtype=torch.int64).to(torch.uint8)
    scales = torch.randint(121, 126, (E, rows, cols // 32), generator=g, dtype=torch.int64).to(torch.uint8)
    return blocks, scales


def test_mxfp4_checkpoint_loads_dequantised_like_transformers(tmp_path):
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from xt.models import from_pretrained

    hc = hf_config("gpt_oss")
    hc.intermediate_size = 32  # MXFP4 blocks hold 32 values along the input dim (D=32, F=32)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(hc, attn_implementation="eager").eval()
    E, D, F_ = hc.num_local_experts, hc.hidden_size, hc.intermediate_size
    g = torch.Generator().manual_seed(1)
    hub = {k: v for k, v in hf.state_dict().items() if not k.endswith(("experts.gate_up_proj", "experts.down_proj"))}
    for i in range(hc.num_hidden_layers):
        pre = f"model.layers.{i}.mlp.experts."
        for proj, rows, cols in (("gate_up_proj", 2 * F_, D), ("down_proj", D, F_)):
            blocks, scales = _random_mxfp4(E, rows, cols, g)
            hub[pre + proj + "_blocks"], hub[pre + proj + "_scales"] = blocks, scales
            ref = convert_moe_packed_tensors(blocks, scales, dtype=torch.bfloat16)  # transformers' dequantisation
            assert torch.equal(dequantize_mxfp4(blocks, scales).transpose(1, 2), ref)
            with torch.no_grad():
                getattr(hf.model.layers[i].mlp.experts, proj).copy_(ref.float())
    (tmp_path / "ckpt").mkdir()
    save_file(hub, str(tmp_path / "ckpt" / "model.safetensors"))
    hc.save_pretrained(tmp_path / "ckpt")
    ours = from_pretrained(tmp_path / "ckpt", dtype=torch.float32).eval()
    exp = ours.model.layers[0].mlp.experts.gate_up_proj
    assert exp.dtype == torch.float32 and torch.equal(exp, exp.bfloat16().float())  # values are bf16's
    docs = random_docs([8, 5])
    with torch.no_grad():
        ref = torch.cat([hf(d[None]).logits[0] for d in docs])
    assert rel_err(ours(**pack(docs), return_logits=True).logits, ref) <= 1e-5
    direct = hf_to_xt(hub, GptOssConfig.from_hf(hc.to_dict()))
    assert direct["model.layers.1.mlp.experts.down_proj"].dtype == torch.bfloat16


def test_router_aux_loss_and_gradients_match_hf():
    from transformers import AutoModelForCausalLM

    hc = hf_config("gpt_oss")
    hc.router_aux_loss_coef = 0.05
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(hc, attn_implementation="eager").train()
    cfg = GptOssConfig.from_hf(hc.to_dict())
    assert cfg.router_aux_loss_coef == 0.05
    ours = GptOssForCausalLM(cfg).train()
    ours.load_state_dict(hf_to_xt(hf.state_dict(), cfg))
    ids = torch.stack(random_docs([10, 10], seed=2))
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    out = ours(ids, labels=labels)
    ref = hf(ids, output_router_logits=True)
    ref_ce = F.cross_entropy(ref.logits.reshape(-1, hc.vocab_size), labels.reshape(-1), reduction="sum")
    assert rel_err(out.aux_loss, 0.05 * ref.aux_loss) <= 1e-6
    (out.loss_sum + out.aux_loss).backward()
    (ref_ce + 0.05 * ref.aux_loss).backward()
    grads = hf_to_xt({k: p.grad for k, p in hf.named_parameters()}, cfg)
    for k, p in ours.named_parameters():
        if float(grads[k].norm()) == 0:
            assert torch.count_nonzero(p.grad) == 0, k
        else:
            assert rel_err(p.grad, grads[k]) <= 1e-5, k
    load = out.metrics["expert_load"]
    assert load.shape == (2, 8) and torch.allclose(load.sum(1), torch.ones(2))


def test_clamped_swiglu_matches_hf_experts_gate():
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts as HFExperts

    from xt.models.gpt_oss.moe import clamped_swiglu

    hc = hf_config("gpt_oss")
    hf_e = HFExperts(hc)
    gate_up = torch.randn(50, 2 * hc.intermediate_size) * 4  # beyond the limit on both sides
    ref = hf_e._apply_gate(gate_up)
    got = clamped_swiglu(gate_up[:, 0::2], gate_up[:, 1::2], hc.swiglu_alpha, hc.swiglu_limit)
    assert torch.equal(got, ref)
