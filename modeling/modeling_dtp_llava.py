"""DTP-LLaVA: a LLaVA-style assistant whose vision tower is a DTP-ViT, so each image costs the language model only its
own, content-adaptive number of visual tokens.

image -> DTP-ViT (segments) -> hidden state `vision_feature_layer` (CLS dropped or kept) -> projector (LLaVA-1.5 MLP)
-> visual tokens that replace the image's one `<image>` placeholder in the prompt -> any causal language model.
Padded segments of a batch never reach the language model.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..configuration.configuration_dtp_llava import DTPLlavaConfig
from ..modeling.modeling_dtp_vit import DTPViTModel
from .modeling_common import BundleCodeFirstMixin


@dataclass
class DTPLlavaCausalLMOutputWithPast(CausalLMOutputWithPast):
    """
    The language model's output over the EXPANDED sequence (each `<image>` replaced by its visual tokens, input
    padding dropped, every row left-padded to the longest), plus:

    Args:
        attention_mask (`torch.LongTensor` of shape `(batch, expanded_length)`): 1 at real positions of the expanded
            sequence; row b's real positions are its last `attention_mask[b].sum()` ones.
        image_token_counts (`torch.LongTensor` of shape `(num_images,)`): visual tokens each image contributed.
        boundary_ratio (`torch.FloatTensor` of shape `(num_images,)`): the tower's boundaries per patch.
        boundary_loss (`torch.FloatTensor` scalar, *optional*): the tower's binomial boundary loss, only when the
            tower trains (`freeze_vision_tower=False`) and labels are given.
    """

    attention_mask: torch.LongTensor | None = None
    image_token_counts: torch.LongTensor | None = None
    boundary_ratio: torch.FloatTensor | None = None
    boundary_loss: torch.FloatTensor | None = None


class DTPLlavaMultiModalProjector(nn.Module):
    """LLaVA-1.5's projector generalised to `projector_depth` layers:

    h_1 = W_1 x + b_1,  h_k = W_k act(h_{k-1}) + b_k  (k = 2 .. depth),  output h_depth.

    Depth 2 is LLaVA-1.5's `linear_1 -> GELU -> linear_2` (same parameter names), depth 1 the original LLaVA's linear
    map. Widths: vision hidden size -> text hidden size -> ... -> text hidden size.
    """

    def __init__(self, config: DTPLlavaConfig):
        super().__init__()
        width_in, width = config.vision_config.hidden_size, config.text_config.hidden_size
        self.act = ACT2FN[config.projector_hidden_act]
        self.layer_names = [f"linear_{k + 1}" for k in range(config.projector_depth)]
        for k, name in enumerate(self.layer_names):
            self.add_module(name, nn.Linear(width_in if k == 0 else width, width, bias=config.multimodal_projector_bias))

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        hidden = getattr(self, self.layer_names[0])(image_features)
        for name in self.layer_names[1:]:
            hidden = getattr(self, name)(self.act(hidden))
        return hidden


class ImagePlaceholderExpansion(nn.Module):
    r"""
    Replaces each `<image>` token by the valid visual tokens of its image and drops input padding (no parameters).

    For row b with tokens t_1..t_T, attention mask m_t and images i(t) in order of appearance (row-major over the
    batch), each kept token contributes r_t rows:

        r_t = n_{i(t)} (the image's valid visual tokens) if t is `<image>`,  else m_t (1, or 0 for padding).

    Row b's expanded sequence is the concatenation, of length L_b = sum_t r_t; rows are LEFT-padded to max_b L_b, so
    generation appends after the last real token. The expanded mask is 1 on real rows, position ids are
    cumsum(mask) - 1 (0 on padding), so a sample gives the same result in any batch. Labels follow their text tokens;
    visual tokens and padding get -100.
    """

    def forward(
        self,
        token_embeds: torch.Tensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor,
        image_token_id: int,
        image_features: torch.Tensor | None = None,
        image_mask: torch.BoolTensor | None = None,
        labels: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.LongTensor, torch.LongTensor, torch.LongTensor | None]:
        """`token_embeds` (B, T, H), `input_ids` / `attention_mask` / `labels` (B, T), `image_features` (N, S, H) with
        `image_mask` (N, S) marking valid tokens -> (embeds (B, L, H), mask (B, L), position ids (B, L), labels)."""
        keep = attention_mask.bool()
        is_image = (input_ids == image_token_id) & keep
        num_placeholders = int(is_image.sum())
        num_images = 0 if image_features is None else image_features.shape[0]
        if num_placeholders != num_images:
            raise ValueError(
                f"the prompts hold {num_placeholders} image token(s) (id {image_token_id}) but {num_images} image(s) "
                "were given: put exactly one image token in the text per image"
            )
        repeats = keep.long()
        if num_images:
            counts = image_mask.sum(dim=1)
            repeats = repeats.masked_scatter(is_image, counts)
        lengths = repeats.sum(dim=1)
        total = int(lengths.max())
        batch, width = input_ids.shape[0], token_embeds.shape[-1]
        starts = repeats.cumsum(dim=1) - repeats + (total - lengths)[:, None]

        text = keep & ~is_image
        rows, cols = text.nonzero(as_tuple=True)
        index = (rows, starts[rows, cols])
        embeds = token_embeds.new_zeros(batch, total, width).index_put(index, token_embeds[rows, cols])
        mask = torch.zeros(batch, total, dtype=torch.long, device=input_ids.device).index_put(
            index, torch.ones_like(rows)
        )
        new_labels = None
        if labels is not None:
            new_labels = torch.full_like(mask, -100).index_put(index, labels[rows, cols])
        if num_images:
            image_rows, image_cols = is_image.nonzero(as_tuple=True)  # row-major: image order
            image_index, slot = image_mask.nonzero(as_tuple=True)
            rank = image_mask.long().cumsum(dim=1) - 1
            positions = starts[image_rows, image_cols][image_index] + rank[image_index, slot]
            visual_index = (image_rows[image_index], positions)
            embeds = embeds.index_put(visual_index, image_features[image_index, slot].to(embeds.dtype))
            mask = mask.index_put(visual_index, torch.ones_like(positions))
        position_ids = (mask.cumsum(dim=1) - 1).masked_fill(mask == 0, 0)
        return embeds, mask, position_ids, new_labels


class DTPLlavaPreTrainedModel(BundleCodeFirstMixin, PreTrainedModel):
    config_class = DTPLlavaConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True


class DTPLlavaForConditionalGeneration(DTPLlavaPreTrainedModel, GenerationMixin):
    def __init__(self, config: DTPLlavaConfig):
        super().__init__(config)
        if config.image_token_id is None:
            raise ValueError("DTPLlavaConfig.image_token_id is not set: give the id of the tokenizer's <image> token")
        self.vision_tower = DTPViTModel._from_config(config.vision_config)
        self.multi_modal_projector = DTPLlavaMultiModalProjector(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.placeholder_expansion = ImagePlaceholderExpansion()
        self._no_split_modules = ["DTPViTLayer", *(self.language_model._no_split_modules or [])]
        self.post_init()
        self._freeze_vision_tower()

    def _freeze_vision_tower(self) -> None:
        if self.config.freeze_vision_tower:
            self.vision_tower.requires_grad_(False)
            self.vision_tower.eval()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`, with the tower frozen again: loading replaces the parameters."""
        model = super().from_pretrained(*args, **kwargs)
        model._freeze_vision_tower()
        return model

    def train(self, mode: bool = True):
        """A frozen tower stays in eval mode: deterministic boundaries (and no dropout) in training too."""
        super().train(mode)
        if self.config.freeze_vision_tower:
            self.vision_tower.eval()
        return self

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.language_model.set_output_embeddings(value)

    def decoder_blocks(self) -> list[nn.Module]:
        """The language model's decoder layers, lowest first (for progressive freezing)."""
        return list(self.language_model.get_decoder().layers)

    def get_image_features(
        self, pixel_values: torch.Tensor, boundaries: torch.Tensor | None = None, return_boundary_loss: bool = False
    ) -> tuple[torch.Tensor, torch.BoolTensor, object]:
        """Projected visual tokens of each image: (features (N, S, text hidden), valid mask (N, S), tower output).

        S is the batch's largest segment count (+1 with the CLS token for `"full"`); `mask[i]` marks image i's own
        tokens, in patch order."""
        tower = self.vision_tower(
            pixel_values, boundaries=boundaries, output_hidden_states=True, return_dict=True,
            return_boundary_loss=return_boundary_loss,
        )
        selected = tower.hidden_states[self.config.vision_feature_layer]
        num_segments = tower.segment_mask.shape[1]
        segments = selected[:, -num_segments:]  # pooled segments follow the CLS token
        mask = tower.segment_mask
        if self.config.vision_feature_select_strategy == "full":
            segments = selected
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        return self.multi_modal_projector(segments), mask, tower

    def _merge_inputs(self, input_ids, pixel_values, attention_mask, boundaries, labels, return_boundary_loss):
        """Text embeddings with the visual tokens spliced in: the inputs of the language model."""
        if input_ids is None:
            raise ValueError("DTPLlavaForConditionalGeneration needs input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
        image_token_id = self.config.image_token_id
        token_embeds = self.get_input_embeddings()(input_ids.masked_fill(input_ids == image_token_id, 0))
        features = mask = tower = None
        if pixel_values is not None:
            features, mask, tower = self.get_image_features(pixel_values, boundaries, return_boundary_loss)
        merged = self.placeholder_expansion(
            token_embeds, input_ids, attention_mask, image_token_id, features, mask, labels
        )
        return merged, mask, tower

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        boundaries: torch.Tensor | None = None,
        **kwargs,
    ) -> DTPLlavaCausalLMOutputWithPast:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch, length)`): prompts with ONE image token per image.
        pixel_values (`torch.FloatTensor` of shape `(num_images, channels, size, size)`, *optional*): the images, in
            the order their image tokens appear (row by row).
        attention_mask (`torch.Tensor` of shape `(batch, length)`, *optional*): 1 for real tokens, 0 for padding
            (either side).
        labels (`torch.LongTensor` of shape `(batch, length)`, *optional*): next-token targets aligned with
            `input_ids` (-100 = not trained); the image positions never count.
        boundaries (`torch.Tensor` of shape `(num_images, num_patches)`, *optional*): forced tower boundaries.
        kwargs: passed to the language model (`use_cache`, its cache, `output_hidden_states`, ...);
            `num_items_in_batch` normalises the summed token loss (gradient accumulation).
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        tower_trains = labels is not None and not self.config.freeze_vision_tower
        (embeds, mask, position_ids, new_labels), _, tower = self._merge_inputs(
            input_ids, pixel_values, attention_mask, boundaries, labels, tower_trains
        )
        outputs = self.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, return_dict=True, **kwargs
        )
        loss = boundary_loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=outputs.logits, labels=new_labels, vocab_size=outputs.logits.shape[-1],
                num_items_in_batch=num_items_in_batch,
            )
            if tower_trains and tower is not None:
                boundary_loss = tower.boundary_loss
                loss = loss + self.config.vision_config.boundary_loss_weight * boundary_loss
        fields = {key: value for key, value in outputs.items() if key != "loss"}
        return DTPLlavaCausalLMOutputWithPast(
            loss=loss,
            **fields,
            attention_mask=mask,
            image_token_counts=None if tower is None else self._image_token_counts(tower),
            boundary_ratio=None if tower is None else tower.boundary_ratio,
            boundary_loss=boundary_loss,
        )

    def _image_token_counts(self, tower) -> torch.LongTensor:
        extra = int(self.config.vision_feature_select_strategy == "full")
        return tower.segment_mask.sum(dim=1) + extra

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        boundaries: torch.Tensor | None = None,
        **kwargs,
    ):
        """Generates with the language model's KV cache from the expanded prompt. Returns the prompt's `input_ids`
        followed by the new tokens (as any decoder-only model; a `return_dict_in_generate` output's `sequences`
        likewise). Greedy unless the generation config says otherwise. Other `kwargs` go to the language model's
        `generate` (`max_new_tokens`, `num_beams`, `do_sample`, ...)."""
        (embeds, mask, _, _), _, _ = self._merge_inputs(input_ids, pixel_values, attention_mask, boundaries, None, False)
        if "generation_config" not in kwargs:  # this model's settings, updated by the generation flags given
            generation_config = copy.deepcopy(self.generation_config)
            kwargs = {**generation_config.update(**kwargs), "generation_config": generation_config}
        generated = self.language_model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        new_tokens = generated if isinstance(generated, torch.Tensor) else generated.sequences
        prompt = input_ids.repeat_interleave(new_tokens.shape[0] // input_ids.shape[0], dim=0)
        sequences = torch.cat([prompt, new_tokens.to(prompt.device)], dim=1)
        if isinstance(generated, torch.Tensor):
            return sequences
        generated.sequences = sequences
        return generated


__all__ = [
    "DTPLlavaForConditionalGeneration",
    "DTPLlavaMultiModalProjector",
    "DTPLlavaPreTrainedModel",
    "ImagePlaceholderExpansion",
]
