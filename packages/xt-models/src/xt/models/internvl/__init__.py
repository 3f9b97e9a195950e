"""InternVL / Intern-S1-shaped vision-language models (InternViT + pixel shuffle + MLP projector +
XT's Qwen3 / Qwen3-MoE): config, model, HF key mapping; registers itself in the registry."""
from xt.models.internvl import state_dict
from xt.models.internvl.config import InternVisionConfig, InternVLConfig
from xt.models.internvl.model import InternVLForConditionalGeneration, InternVLModel
from xt.models.internvl.vision import InternVisionModel, pixel_shuffle
from xt.models.registry import ModelSpec, register_model

register_model(ModelSpec(
    name="internvl",
    architectures=("InternVLForConditionalGeneration",),
    model_types=("internvl",),
    config_cls=InternVLConfig,
    model_cls=InternVLForConditionalGeneration,
    to_hf=state_dict.to_hf,
    from_hf=state_dict.from_hf,
    hf_rows=state_dict.hf_rows,
))

__all__ = ["InternVLConfig", "InternVisionConfig", "InternVLForConditionalGeneration", "InternVLModel",
           "InternVisionModel", "pixel_shuffle"]
