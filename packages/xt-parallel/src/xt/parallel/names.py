"""Parameter names as the plain model has them, without the prefixes wrappers insert."""
from __future__ import annotations

from torch import nn

__all__ = ["plain_name", "persistent_buffer_names"]

_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "_orig_mod.")


def plain_name(name: str) -> str:
    """`name` without the prefixes activation checkpointing, FSDP1 and ``torch.compile`` insert
    (so it is the key of the unwrapped model's ``state_dict()``)."""
    for p in _WRAPPER_PREFIXES:
        name = name.replace(p, "")
    return name


def persistent_buffer_names(model: nn.Module) -> set[str]:
    """Qualified names of `model`'s buffers that its ``state_dict()`` holds (not those registered
    with ``persistent=False``), as ``named_buffers()`` spells them."""
    out = set()
    for mod_name, mod in model.named_modules():
        for name, _ in mod.named_buffers(recurse=False):
            if name not in mod._non_persistent_buffers_set:
                out.add(f"{mod_name}.{name}" if mod_name else name)
    return out
