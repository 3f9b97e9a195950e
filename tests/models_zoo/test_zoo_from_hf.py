"""One loading style for every family: the registry's ``from_hf(keys, get, config, source)`` reads
each checkpoint tensor exactly once through ``get`` (so a caller can stream tensors from shards),
and its result loads strictly into the model and equals the dict-based ``hf_to_xt``."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from xt.models.registry import get_spec
from zoo_helpers import ARCHS, converter, hf_model


@pytest.mark.parametrize("arch", ARCHS)
def test_from_hf_reads_every_tensor_once_and_matches_hf_to_xt(arch):
    from xt.models import build_model

    hf = hf_model(arch)
    sd = hf.state_dict()
    cfg = hf.config.to_dict()
    model = build_model(cfg)
    spec = get_spec(cfg)
    reads = Counter()

    def get(key):
        reads[key] += 1
        return sd[key]

    out = spec.from_hf(list(sd), get, model.config, source="test")
    assert set(reads) <= set(sd) and max(reads.values()) == 1, reads.most_common(3)
    model.load_state_dict(out, strict=True)
    hf_to_xt, _ = converter(arch)
    ref = hf_to_xt(dict(sd), model.config)
    assert set(ref) == set(out)
    for k in ref:
        assert torch.equal(ref[k], out[k]), k
