"""XT's optimizer kernels: AdamW that re-casts the compute copies in its step (``optim.impl =
"fused_bf16_refresh"``, registered with `xt.core.engine.optim` when this package is imported)."""

from xt.core.config import ConfigError
from xt.core.engine.optim import register_adamw_impl
from xt.kernels.optim.adamw import AdamWRefresh, adamw_reference_

__all__ = ["AdamWRefresh", "adamw_reference_"]


def _build(groups: list[dict], *, lr: float, betas: tuple[float, float], eps: float) -> AdamWRefresh:
    """`build_optimizer`'s factory for ``optim.impl = "fused_bf16_refresh"``.

    Raises:
        ConfigError: naming ``optim.impl`` when the parameters do not suit it (e.g. FSDP2).
    """
    try:
        return AdamWRefresh(groups, lr=lr, betas=betas, eps=eps)
    except ValueError as e:
        raise ConfigError(f"optim.impl = 'fused_bf16_refresh': {e}") from None


register_adamw_impl("fused_bf16_refresh", _build)
