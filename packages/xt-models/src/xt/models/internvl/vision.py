"""InternViT, the vision tower of InternVL, and the pixel-shuffle + MLP connector.

Module tree (names are transformers' ``InternVLVisionModel`` / ``InternVLMultiModalProjector``, so
checkpoint keys map one to one)::

    embeddings.cls_token [1, 1, C], embeddings.position_embeddings [1, N+1, C]
    embeddings.patch_embeddings.projection  Conv2d(3, C, patch, stride=patch)
    encoder.layer[i].layernorm_before / attention.{q,k,v}_proj, (q_norm, k_norm), projection_layer
    encoder.layer[i].lambda_1 [C], layernorm_after, mlp.fc1 / fc2, lambda_2 [C]
    layernorm                               LayerNorm (only when ``use_mean_pooling`` is false)

Shapes: a batch of ``N`` tiles ``[N, 3, H, W]`` gives ``[N, 1 + P, C]`` tokens (CLS first; P patches).
Attention is bidirectional within one tile. Reference: InternVL (arXiv:2312.14238), InternVL 2.5
(arXiv:2412.05271) for the pixel shuffle; numerics follow transformers' implementation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xt.core.seeded_init import InitRule
from xt.models.common.norm import RMSNorm
from xt.models.internvl.config import InternVisionConfig

__all__ = ["InternVisionModel", "MultiModalProjector", "pixel_shuffle"]


class _LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` with XT's init rules (weight 1, bias 0)."""

    def xt_init_rules(self, std: float) -> dict[str, InitRule]:
        """Weight ones, bias zeros."""
        return {"weight": InitRule("ones"), "bias": InitRule("zeros")}


class _Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with XT's init rules (weight normal(0, std), bias 0)."""

    def xt_init_rules(self, std: float) -> dict[str, InitRule]:
        """Weight normal(0, `std`), bias zeros."""
        return {"weight": InitRule("normal", std), "bias": InitRule("zeros")}


def _layer_norm(c: InternVisionConfig, dim: int) -> nn.Module:
    return _LayerNorm(dim, eps=c.layer_norm_eps) if c.norm_type == "layer_norm" else RMSNorm(dim, c.layer_norm_eps)


class PatchEmbeddings(nn.Module):
    """``[N, 3, H, W] -> [N, P, C]`` by a stride-``patch`` convolution (HF ``patch_embeddings``)."""

    def __init__(self, c: InternVisionConfig) -> None:
        super().__init__()
        self.projection = _Conv2d(c.num_channels, c.hidden_size, kernel_size=tuple(c.patch_size),
                                  stride=tuple(c.patch_size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``[N, P, C]``."""
        return self.projection(pixel_values.to(self.projection.weight.dtype)).flatten(2).transpose(1, 2)


class VisionEmbeddings(nn.Module):
    """CLS token + patch embeddings + learned absolute positions (tiles of the configured size only)."""

    def __init__(self, c: InternVisionConfig) -> None:
        super().__init__()
        self.image_size = tuple(c.image_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.hidden_size))
        self.patch_embeddings = PatchEmbeddings(c)
        self.position_embeddings = nn.Parameter(torch.zeros(1, c.num_patches + 1, c.hidden_size))

    def xt_init_rules(self, std: float) -> dict[str, InitRule]:
        """CLS zeros (as transformers), positions normal(0, std)."""
        return {"cls_token": InitRule("zeros"), "position_embeddings": InitRule("normal", std)}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values [N, 3, H, W]`` -> ``[N, 1 + P, C]``.

        Raises:
            ValueError: tiles of another size than ``vision_config.image_size`` (the data side tiles
                images to that size; position interpolation is not implemented).
        """
        if tuple(pixel_values.shape[-2:]) != self.image_size:
            raise ValueError(f"pixel_values: tiles must be {list(self.image_size)} pixels (vision_config.image_size); "
                             f"got {list(pixel_values.shape[-2:])}")
        patches = self.patch_embeddings(pixel_values)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embeddings


class VisionAttention(nn.Module):
    """Bidirectional multi-head self-attention over one tile's tokens (optional q/k RMSNorm over all heads)."""

    def __init__(self, c: InternVisionConfig) -> None:
        super().__init__()
        C = c.hidden_size
        self.num_heads = c.num_attention_heads
        self.q_proj = nn.Linear(C, C, bias=c.attention_bias)
        self.k_proj = nn.Linear(C, C, bias=c.attention_bias)
        self.v_proj = nn.Linear(C, C, bias=c.attention_bias)
        self.projection_layer = nn.Linear(C, C)
        self.q_norm = RMSNorm(C) if c.use_qk_norm else nn.Identity()
        self.k_norm = RMSNorm(C) if c.use_qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, S, C] -> [N, S, C]``."""
        N, S, C = x.shape
        H = self.num_heads
        q = self.q_norm(self.q_proj(x)).view(N, S, H, C // H).transpose(1, 2)
        k = self.k_norm(self.k_proj(x)).view(N, S, H, C // H).transpose(1, 2)
        v = self.v_proj(x).view(N, S, H, C // H).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.projection_layer(o.transpose(1, 2).reshape(N, S, C))


class VisionMLP(nn.Module):
    """``fc2(gelu(fc1(x)))`` (exact GELU, as transformers' ``"gelu"``)."""

    def __init__(self, c: InternVisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c.hidden_size, c.intermediate_size)
        self.fc2 = nn.Linear(c.intermediate_size, c.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., C] -> [..., C]``."""
        return self.fc2(F.gelu(self.fc1(x)))


class VisionLayer(nn.Module):
    """Pre-norm block with layer scale: ``h += lambda_1 * attn(norm(h)); h += lambda_2 * mlp(norm(h))``."""

    def __init__(self, c: InternVisionConfig) -> None:
        super().__init__()
        self.layer_scale = c.layer_scale_init_value
        self.attention = VisionAttention(c)
        self.mlp = VisionMLP(c)
        self.layernorm_before = _layer_norm(c, c.hidden_size)
        self.layernorm_after = _layer_norm(c, c.hidden_size)
        self.lambda_1 = nn.Parameter(torch.full((c.hidden_size,), c.layer_scale_init_value))
        self.lambda_2 = nn.Parameter(torch.full((c.hidden_size,), c.layer_scale_init_value))

    def xt_init_rules(self, std: float) -> dict[str, InitRule]:
        """Layer scales start at ``layer_scale_init_value`` (transformers' init)."""
        return {"lambda_1": InitRule("constant", value=self.layer_scale),
                "lambda_2": InitRule("constant", value=self.layer_scale)}

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h [N, S, C] -> [N, S, C]``."""
        h = h + self.lambda_1 * self.attention(self.layernorm_before(h))
        return h + self.lambda_2 * self.mlp(self.layernorm_after(h))


class VisionEncoder(nn.Module):
    """The stack of :class:`VisionLayer` (HF ``encoder.layer``)."""

    def __init__(self, c: InternVisionConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(VisionLayer(c) for _ in range(c.num_hidden_layers))


class InternVisionModel(nn.Module):
    """InternViT: tiles -> token features of one layer (HF ``InternVLVisionModel``).

    Args:
        config: :class:`~xt.models.internvl.config.InternVisionConfig`.
    """

    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = VisionEmbeddings(config)
        self.encoder = VisionEncoder(config)
        self.layernorm = nn.Identity() if config.use_mean_pooling else _layer_norm(config, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor, feature_layer: int = -1) -> torch.Tensor:
        """``pixel_values [N, 3, H, W]`` float -> ``[N, 1 + P, C]``: the last layer's output after
        ``layernorm`` (``feature_layer = -1``), or the input of layer ``feature_layer + 1`` counted as
        transformers counts its ``hidden_states`` (index 0 = the embeddings)."""
        h = self.embeddings(pixel_values)
        L = len(self.encoder.layer)
        stop = L if feature_layer == -1 else (feature_layer % (L + 1))
        for layer in self.encoder.layer[:stop]:
            h = layer(h)
        return self.layernorm(h) if feature_layer == -1 else h


def pixel_shuffle(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Space-to-depth of a token grid, as InternVL does it: ``[N, G, G, C] -> [N, G/s, G/s, C*s*s]``.

    The channel order is transformers' ``InternVLModel.pixel_shuffle`` (two view/permute rounds),
    which the pretrained projectors expect.

    Raises:
        ValueError: ``G`` not divisible by ``scale``.
    """
    N, W, H, C = x.shape
    if W % scale or H % scale:
        raise ValueError(f"pixel_shuffle: grid {W}x{H} is not divisible by {scale}")
    x = x.reshape(N, W, H // scale, C * scale).permute(0, 2, 1, 3)
    x = x.reshape(N, H // scale, W // scale, C * scale * scale)
    return x.permute(0, 2, 1, 3)


class MultiModalProjector(nn.Module):
    """``linear_2(gelu(linear_1(layer_norm(x))))``: ``[..., C*s*s] -> [..., D]`` (HF ``multi_modal_projector``)."""

    def __init__(self, in_dim: int, out_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.layer_norm = _LayerNorm(in_dim, eps=eps)
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project shuffled vision features to the LM's hidden size."""
        return self.linear_2(F.gelu(self.linear_1(self.layer_norm(x))))
