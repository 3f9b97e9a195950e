"""Read only some rows of a model's parameters from an HF safetensors folder (sharded HF load).

:func:`hf_row_reader` returns ``read(name, start, stop) -> tensor``: rows ``[start, stop)`` of dim 0
of the XT parameter `name`, read from the checkpoint with safetensors' ``get_slice`` so that a rank
touches only the bytes of the rows it owns (xt.parallel's ``materialize_(model, device,
read=...)`` asks for exactly those). XT and HF keys are equal for the families whose
``from_hf`` is a plain key copy with the experts stacked (Qwen3 / Qwen3-MoE, Llama): a stacked
expert weight ``[E, ...]`` is read expert by expert (rows are experts), ``gate_up_proj`` as each
expert's gate rows then up rows. Families with renamed or quantised keys (GPT-OSS's MXFP4,
DeepSeek-V3's FP8 and MLA renames) are not supported yet.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from xt.models.common.expert_keys import EMBED_KEY, HEAD_KEY
from xt.models.common.safetensors_io import CheckpointReader
from xt.models.llama.config import LlamaConfig
from xt.models.qwen3.config import Qwen3Config

__all__ = ["hf_row_reader"]


def hf_row_reader(path: str | Path, config) -> tuple[Callable[[str, int, int], torch.Tensor], CheckpointReader]:
    """A row reader of the HF folder `path` for a model of typed `config`.

    Returns:
        ``(read, reader)``: ``read(name, start, stop)`` gives rows of XT parameter `name`
        (``reader.bytes_read`` counts what was read).

    Raises:
        NotImplementedError: a family whose checkpoint keys are renamed or quantised.
        FileNotFoundError / ValueError: no safetensors in `path` (see ``CheckpointReader``).
    """
    if not isinstance(config, (Qwen3Config, LlamaConfig)):
        raise NotImplementedError(f"a sharded HF load of {type(config).__name__} (renamed or quantised keys) is not "
                                  "supported yet; load it whole (model.init_from)")
    reader = CheckpointReader(path)
    keys = set(reader.keys())
    tied = config.tie_word_embeddings

    def read(name: str, start: int, stop: int) -> torch.Tensor:
        if name == HEAD_KEY and tied:
            name = EMBED_KEY
        if name in keys:
            return reader.get_rows(name, start, stop)
        for suffix in (".experts.gate_up_proj", ".experts.down_proj"):
            if name.endswith(suffix):
                prefix = name[: -len(suffix)] + ".experts"
                projs = ("gate_proj", "up_proj") if suffix.endswith("gate_up_proj") else ("down_proj",)
                rows = [torch.cat([reader.get(f"{prefix}.{e}.{p}.weight") for p in projs]) for e in range(start, stop)]
                if rows:
                    return torch.stack(rows)
                first = torch.cat([reader.get_rows(f"{prefix}.0.{p}.weight", 0, 0) for p in projs])
                return first.new_empty((0, sum(reader.shape(f"{prefix}.0.{p}.weight")[0] for p in projs),
                                        first.shape[1]))
        raise KeyError(f"{path}: no checkpoint tensor for {name}")

    return read, reader
