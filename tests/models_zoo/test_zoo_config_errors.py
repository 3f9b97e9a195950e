"""Zoo configs without ``head_dim``: heads that do not divide ``hidden_size`` are a named
`ModelConfigError`, not a silently truncated head size (or a ZeroDivisionError for 0 heads)."""
from __future__ import annotations

import pytest

from xt.models import ModelConfigError, config_from_hf

BASE = dict(vocab_size=64, hidden_size=66, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2)
ARCH = {"LlamaForCausalLM": {}, "GptOssForCausalLM": dict(num_local_experts=4, num_experts_per_tok=2)}


@pytest.mark.parametrize("arch", sorted(ARCH))
@pytest.mark.parametrize("heads", [4, 0])
def test_heads_not_dividing_hidden_size_is_named(arch, heads):
    d = dict(BASE, **ARCH[arch], architectures=[arch], num_attention_heads=heads)
    with pytest.raises(ModelConfigError) as e:
        config_from_hf(d)
    assert e.value.field == "num_attention_heads" and "num_attention_heads" in str(e.value)


@pytest.mark.parametrize("arch", sorted(ARCH))
def test_explicit_head_dim_or_dividing_heads_pass(arch):
    assert config_from_hf(dict(BASE, **ARCH[arch], architectures=[arch], head_dim=16)).head_dim == 16
    assert config_from_hf(dict(BASE, **ARCH[arch], architectures=[arch], hidden_size=64)).head_dim == 16
