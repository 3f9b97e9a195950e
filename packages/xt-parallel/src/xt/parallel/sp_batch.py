"""Split one packed micro-batch (docs/contracts.md) over the ranks of a sequence-parallel group."""
from __future__ import annotations

import torch

from xt.core.labels import IGNORE_INDEX

__all__ = ["shard_batch_for_sp", "IGNORE_INDEX"]

_GLOBAL_KEYS = ("cu_seqlens", "max_seqlen")
_WHOLE_KEYS = ("pixel_values",)  # a vision-language batch's tiles: every SP rank gets all of them


def shard_batch_for_sp(batch: dict, sp_rank: int, sp_size: int, pad_token_id: int = 0,
                       image_token_id: int | None = None) -> dict:
    """Return SP rank `sp_rank`'s slice of a packed batch, keeping the *global* ``cu_seqlens``.

    The sequence is first padded to a multiple of `sp_size` with one extra padding document
    (``input_ids = pad_token_id``, ``labels = -100``, ``position_ids = 0..n-1``), so padding never
    attends to or is attended by real tokens and carries no loss. Labels are pre-shifted (contract),
    so a rank's slice needs nothing from its neighbours.

    Args:
        batch: ``input_ids[T]``, ``labels[T]``, ``position_ids[T]`` int64, ``cu_seqlens[D+1]`` int32,
            optional ``max_seqlen``; any other tensor whose first dimension is ``T`` is sliced too,
            other entries are passed through.
        sp_rank, sp_size: this rank's index in the SP group and the group size.
        pad_token_id: token id used for padding.
        image_token_id: a vision-language model's image placeholder token (the model's
            ``xt_image_token_id``): then ``pixel_values [N, 3, S, S]`` goes whole to every rank
            (the vision tower runs unsharded) and ``image_feature_index [T_pad / sp_size]`` int64
            is added: at each of the slice's image tokens, the row of the batch's flattened image
            features it takes (its rank among all image tokens of the batch), else -1.

    Returns:
        A new dict: token tensors ``[T_pad / sp_size]``; ``cu_seqlens [D+1 or D+2]`` (global, padded
        total ``T_pad``); ``max_seqlen`` (global, int); ``pixel_values`` whole.

    Raises:
        ValueError: batched ``[B, S]`` input (SP needs packed 1-D batches), ``cu_seqlens`` not
            ending at ``T``, or ``sp_rank`` outside ``[0, sp_size)``.
    """
    if not 0 <= sp_rank < sp_size:
        raise ValueError(f"shard_batch_for_sp: sp_rank={sp_rank} outside [0, sp_size={sp_size})")
    ids = batch["input_ids"]
    if ids.dim() != 1 or "cu_seqlens" not in batch:
        raise ValueError(f"shard_batch_for_sp: sequence parallelism needs packed 1-D batches with cu_seqlens; "
                         f"got input_ids of shape {tuple(ids.shape)} and keys {sorted(batch)}")
    T = ids.numel()
    cu = batch["cu_seqlens"]
    if int(cu[0]) != 0 or int(cu[-1]) != T:
        raise ValueError(f"shard_batch_for_sp: cu_seqlens must start at 0 and end at T={T}; got {cu.tolist()}")
    n_pad = (-T) % sp_size
    tl = (T + n_pad) // sp_size
    out = {}
    if image_token_id is not None and "pixel_values" in batch:
        is_image = ids == image_token_id
        batch = {**batch, "image_feature_index": torch.where(is_image, is_image.cumsum(0) - 1, -1)}
    for key, value in batch.items():
        if key in _GLOBAL_KEYS:
            continue
        if key not in _WHOLE_KEYS and isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == T:
            if n_pad:
                if key == "labels":
                    fill = value.new_full((n_pad, *value.shape[1:]), IGNORE_INDEX)
                elif key == "position_ids":
                    fill = torch.arange(n_pad, dtype=value.dtype, device=value.device)
                elif key == "input_ids":
                    fill = value.new_full((n_pad,), pad_token_id)
                elif key == "image_feature_index":
                    fill = value.new_full((n_pad,), -1)
                else:
                    fill = value.new_zeros((n_pad, *value.shape[1:]))
                value = torch.cat([value, fill])
            out[key] = value[sp_rank * tl:(sp_rank + 1) * tl]
        else:
            out[key] = value
    if n_pad:
        cu = torch.cat([cu, cu.new_tensor([T + n_pad])])
    out["cu_seqlens"] = cu
    out["max_seqlen"] = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    return out
