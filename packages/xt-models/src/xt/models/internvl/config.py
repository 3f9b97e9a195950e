"""Typed config of InternVL (InternViT + pixel shuffle + MLP projector + Qwen3 / Qwen3-MoE), read
from and written to the HF ``config.json`` of ``InternVLForConditionalGeneration``.

Field names are transformers' (``InternVLConfig``, ``InternVLVisionConfig``); the language model is
XT's :class:`~xt.models.qwen3.config.Qwen3Config` (``text_config.model_type`` ``qwen3`` or
``qwen3_moe``; the Intern-S1 shape is the MoE one). The top-level ``tie_word_embeddings`` decides
the head tie, as in transformers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import msgspec

from xt.models.common.hf_config import ConfigError, convert_known_fields
from xt.models.common.zoo_config import HFConfigMixin, read_hf_config
from xt.models.qwen3.config import Qwen3Config

__all__ = ["InternVisionConfig", "InternVLConfig"]

_NORMS = ("layer_norm", "rms_norm")


def _pair(v: Any, name: str) -> list[int]:
    pair = list(v) if isinstance(v, (list, tuple)) else [v, v]
    if len(pair) != 2 or any(not isinstance(x, int) or x <= 0 for x in pair):
        raise ConfigError(f"vision_config.{name} must be a positive int or [h, w]; got {v!r}", field=name)
    return pair


class InternVisionConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """InternViT hyper-parameters (HF ``vision_config``; sizes are counts, image sizes pixels).

    Raises (``__post_init__``):
        ConfigError: a value out of range or a feature XT does not implement (named).
    """

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    attention_bias: bool = False
    use_qk_norm: bool = False
    hidden_act: str = "gelu"
    norm_type: str = "layer_norm"
    layer_norm_eps: float = 1e-6
    image_size: list[int] | int = msgspec.field(default_factory=lambda: [448, 448])
    patch_size: list[int] | int = msgspec.field(default_factory=lambda: [14, 14])
    num_channels: int = 3
    use_absolute_position_embeddings: bool = True
    layer_scale_init_value: float = 0.1
    use_mean_pooling: bool = True
    use_mask_token: bool = False
    hidden_dropout_prob: float = 0.0
    attention_dropout: float = 0.0
    projection_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        self.image_size = _pair(self.image_size, "image_size")
        self.patch_size = _pair(self.patch_size, "patch_size")
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "num_channels"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"vision_config.{name} must be > 0; got {getattr(self, name)}", field=name)
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"vision_config.num_attention_heads={self.num_attention_heads} must divide "
                              f"hidden_size={self.hidden_size}", field="num_attention_heads")
        if any(i % p for i, p in zip(self.image_size, self.patch_size)):
            raise ConfigError(f"vision_config.patch_size={self.patch_size} must divide image_size="
                              f"{self.image_size}", field="patch_size")
        if self.norm_type not in _NORMS:
            raise ConfigError(f"vision_config.norm_type must be one of {list(_NORMS)}; got {self.norm_type!r}",
                              field="norm_type")
        if self.hidden_act != "gelu":
            raise ConfigError(f"vision_config.hidden_act must be 'gelu'; got {self.hidden_act!r}", field="hidden_act")
        if not self.use_absolute_position_embeddings:
            raise ConfigError("vision_config.use_absolute_position_embeddings=false is not supported",
                              field="use_absolute_position_embeddings")
        if self.use_mask_token:
            raise ConfigError("vision_config.use_mask_token=true (masked image modelling) is not supported",
                              field="use_mask_token")
        for name in ("hidden_dropout_prob", "attention_dropout", "projection_dropout"):
            if getattr(self, name) != 0:
                raise ConfigError(f"vision_config.{name} must be 0 (dropout is not implemented); got "
                                  f"{getattr(self, name)}", field=name)

    @property
    def num_patches(self) -> int:
        """Patches per tile (without the CLS token)."""
        return (self.image_size[0] // self.patch_size[0]) * (self.image_size[1] // self.patch_size[1])


class InternVLConfig(HFConfigMixin, msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """InternVL hyper-parameters: ``vision_config``, ``text_config`` (a Qwen3 / Qwen3-MoE config)
    and the connector (HF names).

    ``image_seq_length`` is the number of LM tokens per 448x448 tile:
    ``num_patches * downsample_ratio**2`` (checked).

    Raises (``__post_init__``):
        ConfigError: an inconsistent value (named).
    """

    HF_ARCHITECTURE: ClassVar[str] = "InternVLForConditionalGeneration"
    HF_MODEL_TYPE: ClassVar[str] = "internvl"
    vision_config: InternVisionConfig
    text_config: Qwen3Config
    image_token_id: int = 151667
    image_seq_length: int = 256
    downsample_ratio: float = 0.5
    projector_hidden_act: str = "gelu"
    vision_feature_layer: int = -1
    vision_feature_select_strategy: str = "default"
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        v = self.vision_config
        scale = round(1 / self.downsample_ratio) if self.downsample_ratio > 0 else 0
        side = [s // p for s, p in zip(v.image_size, v.patch_size)]
        if scale < 1 or abs(scale * self.downsample_ratio - 1) > 1e-9 or any(x % scale for x in side):
            raise ConfigError(f"downsample_ratio must be 1/n with n dividing the patch grid {side}; got "
                              f"{self.downsample_ratio}", field="downsample_ratio")
        if side[0] != side[1]:
            raise ConfigError(f"vision_config.image_size / patch_size must give a square grid; got {side}",
                              field="image_size")
        want = v.num_patches // scale ** 2
        if self.image_seq_length != want:
            raise ConfigError(f"image_seq_length must be num_patches * downsample_ratio**2 = {want}; got "
                              f"{self.image_seq_length}", field="image_seq_length")
        if not 0 <= self.image_token_id < self.text_config.vocab_size:
            raise ConfigError(f"image_token_id must be in [0, text_config.vocab_size={self.text_config.vocab_size}); "
                              f"got {self.image_token_id}", field="image_token_id")
        if self.projector_hidden_act != "gelu":
            raise ConfigError(f"projector_hidden_act must be 'gelu'; got {self.projector_hidden_act!r}",
                              field="projector_hidden_act")
        if not -v.num_hidden_layers <= self.vision_feature_layer < v.num_hidden_layers:
            raise ConfigError(f"vision_feature_layer must be in [-{v.num_hidden_layers}, {v.num_hidden_layers}); "
                              f"got {self.vision_feature_layer}", field="vision_feature_layer")
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ConfigError("vision_feature_select_strategy must be 'default' (drop CLS) or 'full'; got "
                              f"{self.vision_feature_select_strategy!r}", field="vision_feature_select_strategy")
        if self.vision_feature_select_strategy == "full":
            raise ConfigError("vision_feature_select_strategy='full' keeps the CLS token, which pixel shuffle "
                              "cannot lay on a grid; use 'default'", field="vision_feature_select_strategy")
        if self.text_config.tie_word_embeddings != self.tie_word_embeddings:
            self.text_config = msgspec.structs.replace(self.text_config, tie_word_embeddings=self.tie_word_embeddings)

    @property
    def downsample_scale(self) -> int:
        """``1 / downsample_ratio`` as an int (2 for InternVL's 0.5)."""
        return round(1 / self.downsample_ratio)

    @classmethod
    def from_hf(cls, d: dict[str, Any] | str | Path) -> "InternVLConfig":
        """From an HF ``InternVLConfig`` dict or ``config.json`` path (other HF keys are ignored).

        Raises:
            ConfigError: a missing, ill-typed or out-of-range field (named, ``text_config.`` /
                ``vision_config.`` prefixed for the sub-configs).
        """
        src = "config.json" if isinstance(d, dict) else str(d)
        d = dict(d if isinstance(d, dict) else read_hf_config(d))
        for sub in ("vision_config", "text_config"):
            if not isinstance(d.get(sub), dict):
                raise ConfigError(f"{src}: {sub} must be a table of the {sub.split('_')[0]} model's fields; "
                                  f"got {d.get(sub)!r}", field=sub)
        try:
            text = Qwen3Config.from_hf({**d["text_config"], "tie_word_embeddings": d.get("tie_word_embeddings", True)})
        except ConfigError as e:
            raise ConfigError(f"{src}: text_config.{e}", field=f"text_config.{e.field}" if e.field else "text_config") \
                from None
        vkeys = {k: v for k, v in d["vision_config"].items() if k in InternVisionConfig.__struct_fields__}
        try:
            vision = msgspec.convert(vkeys, InternVisionConfig, strict=False)
        except (msgspec.ValidationError, ConfigError) as e:
            field = getattr(e, "field", None)
            raise ConfigError(f"{src}: vision_config: {e}", field=f"vision_config.{field}" if field else "vision_config") \
                from None
        top = {k: v for k, v in d.items() if k not in ("vision_config", "text_config")}
        return convert_known_fields(cls, {**top, "vision_config": vision, "text_config": text}, src)

    def _hf_extra(self, d: dict[str, Any]) -> dict[str, Any]:
        """Nested ``text_config`` in the Qwen3 HF form, ``vision_config`` with its ``model_type``."""
        d["text_config"] = self.text_config.to_hf_dict()
        d["text_config"].pop("architectures", None)
        d["vision_config"] = {**msgspec.to_builtins(self.vision_config), "model_type": "internvl_vision"}
        return d
