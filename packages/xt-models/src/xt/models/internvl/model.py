"""InternVL / Intern-S1-shaped vision-language model: InternViT -> pixel shuffle -> MLP projector ->
XT's Qwen3 / Qwen3-MoE decoder (:class:`~xt.models.qwen3.model.Qwen3Model`).

Module tree (transformers' ``InternVLForConditionalGeneration`` names; on disk the keys are
renamed, see :mod:`xt.models.internvl.state_dict`)::

    model.vision_tower            InternVisionModel (xt.models.internvl.vision)
    model.multi_modal_projector   MultiModalProjector
    model.language_model          Qwen3Model (embed_tokens, layers, norm, rotary_emb)
    lm_head                       nn.Linear [V, D] (shares embed_tokens.weight when tied)

The batch is the text contract (docs/contracts.md, Batches) plus ``pixel_values [N, 3, H, W]``: the
N tiles of the micro-batch's images in the order of their placeholder tokens. Each tile becomes
``image_seq_length`` consecutive ``image_token_id`` positions of ``input_ids``; their embeddings
are replaced by the projected vision features, in order (as transformers' ``masked_scatter``).
Reference: InternVL 2.5 / 3 (arXiv:2412.05271, arXiv:2504.10479), Intern-S1 (arXiv:2508.15763).
"""
from __future__ import annotations

import torch
from torch import nn

from xt.models.common.flops import causal_lm_flops_per_token
from xt.models.common.init import SeededInit, seeded_build
from xt.models.common.lm_loss import head_outputs
from xt.models.common.output import CausalLMOutput, pack_inputs
from xt.models.common.parallel_plan import decoder_plan
from xt.models.internvl.config import InternVLConfig
from xt.models.internvl.vision import InternVisionModel, MultiModalProjector, pixel_shuffle
from xt.models.qwen3.model import Qwen3Model, add_router_outputs

__all__ = ["InternVLModel", "InternVLForConditionalGeneration"]


class InternVLModel(nn.Module):
    """Vision tower, projector and language model body (HF ``model``)."""

    def __init__(self, config: InternVLConfig, attn_backend: str = "auto") -> None:
        super().__init__()
        self.config = config
        v, t = config.vision_config, config.text_config
        self.vision_tower = InternVisionModel(v)
        self.multi_modal_projector = MultiModalProjector(v.hidden_size * config.downsample_scale ** 2, t.hidden_size)
        self.language_model = Qwen3Model(t, attn_backend)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tiles ``[N, 3, H, W]`` -> LM-space features ``[N, image_seq_length, D]``."""
        c = self.config
        feats = self.vision_tower(pixel_values, c.vision_feature_layer)
        feats = feats[:, 1:]  # "default": drop CLS
        N, P, C = feats.shape
        side = int(round(P ** 0.5))
        feats = pixel_shuffle(feats.reshape(N, side, side, C), c.downsample_scale)
        return self.multi_modal_projector(feats.reshape(N, -1, feats.shape[-1]))

    def no_image_anchor(self) -> torch.Tensor:
        """A scalar 0 that depends on every trainable vision-tower and projector parameter.

        A micro-batch without tiles (text-only records, or a text source of a data mix) would leave
        those parameters without a gradient on this rank while other ranks have one, and FSDP2
        reduce-scatters only the gradients that exist, so the ranks' collectives would disagree.
        Adding ``0 * Σ p[0]`` (one element of each parameter: cheap, and no sum that could
        overflow) to the embeddings gives them exact zero gradients instead (the values are
        unchanged: ``x + 0 = x``). Used only when autograd records.
        """
        parts = [p.reshape(-1)[0] for m in (self.vision_tower, self.multi_modal_projector) for p in m.parameters()
                 if p.requires_grad]
        return torch.stack(parts).sum() * 0.0 if parts else torch.zeros(())

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
              image_feature_index: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings ``[T, D]`` with the image features scattered into the placeholder positions
        (without tiles, plus `no_image_anchor` while autograd records).

        `image_feature_index` ``[T]`` (a sequence-parallel slice, xt.parallel's
        ``shard_batch_for_sp``): the feature row each image token takes (-1 elsewhere), since the
        slice holds only some of the batch's image tokens while `pixel_values` holds all its tiles.
        Without it, the image tokens take the features in order.

        Raises:
            ValueError: on CPU, when the number of placeholder tokens differs from the tiles'
                features (on CUDA the check would be a host sync; the data side guarantees it).
        """
        embeds = self.language_model.embed_tokens(input_ids)
        if pixel_values is None or pixel_values.shape[0] == 0:
            return embeds + self.no_image_anchor().to(embeds.dtype) if torch.is_grad_enabled() else embeds
        feats = self.image_features(pixel_values)
        feats = feats.reshape(-1, feats.shape[-1]).to(embeds.dtype)
        mask = (input_ids == self.config.image_token_id).unsqueeze(-1)
        if image_feature_index is not None:
            if not embeds.is_cuda and image_feature_index.numel() and int(image_feature_index.max()) >= feats.shape[0]:
                raise ValueError(f"image_feature_index: row {int(image_feature_index.max())} of {feats.shape[0]} "
                                 "image features")
            return embeds.masked_scatter(mask, feats[image_feature_index[mask[:, 0]]])
        if not embeds.is_cuda:
            n = int(mask.sum())
            if n != feats.shape[0]:
                raise ValueError(f"pixel_values: {pixel_values.shape[0]} tiles give {feats.shape[0]} image features, "
                                 f"but input_ids hold {n} image tokens (image_token_id={self.config.image_token_id})")
        return embeds.masked_scatter(mask, feats)


class InternVLForConditionalGeneration(SeededInit, nn.Module):
    """InternVL-style VLM following the model-forward contract of ``docs/contracts.md``.

    Args:
        config: :class:`~xt.models.internvl.config.InternVLConfig`.
        attn_backend: the language model's core attention backend (the vision tower uses
            ``scaled_dot_product_attention`` over each tile).

    ``xt_embed_path`` names the token embedding, which the head shares when tied; ``xt_image_token_id``
    the placeholder token (for sequence-parallel slicing);
    ``xt_param_parts`` the parts that ``model.freeze`` and ``optim.part_lr`` name (qualified-name
    prefixes).
    """

    xt_embed_path = "model.language_model.embed_tokens"

    @property
    def xt_image_token_id(self) -> int:
        """The image placeholder token; xt.parallel's sequence-parallel slicing numbers its positions."""
        return self.config.image_token_id

    xt_param_parts = {"vision_tower": ("model.vision_tower.",), "projector": ("model.multi_modal_projector.",),
                      "language_model": ("model.language_model.", "lm_head.")}

    def __init__(self, config: InternVLConfig, attn_backend: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.init_std = config.text_config.initializer_range
        with seeded_build(self):
            self.model = InternVLModel(config, attn_backend)
            t = config.text_config
            self.lm_head = nn.Linear(t.hidden_size, t.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.language_model.embed_tokens.weight
        self.reset_parameters()

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                max_seqlen: int | None = None, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, return_logits: bool | None = None,
                return_hidden: bool = False, image_feature_index: torch.Tensor | None = None) -> CausalLMOutput:
        """Run the model.

        Args:
            input_ids, labels, position_ids, cu_seqlens, max_seqlen, attention_mask, return_logits,
                return_hidden: as :meth:`xt.models.qwen3.model.Qwen3ForCausalLM.forward` (packed
                ``[T]`` or batched ``[B, S]``; labels already shifted).
            pixel_values: ``[N, 3, H, W]`` float, normalised tiles (``xt.data`` preprocessing), in the
                order of the ``image_token_id`` runs of ``input_ids``; None or N = 0 for text only.
            image_feature_index: ``[T]`` int64, under sequence parallelism only: which feature row
                each image token of this slice takes (:meth:`InternVLModel.embed`).

        Returns:
            :class:`~xt.models.common.output.CausalLMOutput` (loss_sum, aux_loss for an MoE LM,
            metrics, logits as asked).

        Raises:
            ValueError: inputs that break the batch contract, or tiles and image tokens that do not match.
        """
        p = pack_inputs(input_ids, labels, position_ids, cu_seqlens, max_seqlen, attention_mask)
        embeds = self.model.embed(p.input_ids, pixel_values, image_feature_index)
        hidden, stats, _ = self.model.language_model(p.input_ids, p.position_ids, p.cu_seqlens, p.max_seqlen,
                                                     inputs_embeds=embeds)
        out = head_outputs(CausalLMOutput(), hidden, self.lm_head, p, return_logits, return_hidden)
        return add_router_outputs(out, stats, self.config.text_config)

    def parallel_plan(self) -> dict:
        """Where xt.parallel may act: the language model's decoder layers, MoE blocks and core
        attentions (the vision tower and projector stay in the root unit)."""
        t = self.config.text_config
        return decoder_plan(self, ["model.language_model.layers"], num_experts=t.num_experts,
                            num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per LM token (docs/architecture.md, MFU): the language model only, so MFU
        leaves the vision tower out and is a lower bound."""
        t = self.config.text_config
        return causal_lm_flops_per_token(t.active_params(), t.num_hidden_layers, t.num_attention_heads,
                                         t.head_dim, seq_len)
