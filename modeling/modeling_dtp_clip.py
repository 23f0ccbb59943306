"""DTP-CLIP: CLIP with a DTP-ViT image tower (Dynamic Token Pooling) and transformers' CLIP text tower.

image_embeds = normalise(W_v pool(DTPViT(image))), text_embeds = normalise(W_t pool(CLIPText(text))),
logits_per_text = exp(logit_scale) * text_embeds @ image_embeds^T, logits_per_image = logits_per_text^T.
loss = symmetric InfoNCE + boundary_loss_weight * boundary_loss (the DTP-ViT binomial prior on the boundaries).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPTextModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ..configuration.configuration_dtp_clip import DTPCLIPConfig
from ..modeling.modeling_dtp_vit import DTPViTModel, dtp_vit_config_from_clip_vision, load_clip_vision_weights
# The pipeline that config.json's `custom_pipelines` names: imported so that `save_pretrained` of a remotely loaded
# model copies its file along with this one.
from ..processing.pipeline_zero_shot import ZeroShotImageClassificationPipeline  # noqa: F401
from .modeling_common import BundleCodeFirstMixin


@dataclass
class DTPCLIPOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` scalar, *optional*, with `return_loss=True`):
            `contrastive_loss + vision_config.boundary_loss_weight * boundary_loss`.
        contrastive_loss (`torch.FloatTensor` scalar, *optional*, with `return_loss=True`): symmetric InfoNCE.
        logits_per_image (`torch.FloatTensor` of shape `(num_images, num_texts)`): scaled cosine similarities.
        logits_per_text (`torch.FloatTensor` of shape `(num_texts, num_images)`): `logits_per_image.T`.
        text_embeds (`torch.FloatTensor` of shape `(num_texts, projection_dim)`): L2-normalised text embeddings.
        image_embeds (`torch.FloatTensor` of shape `(num_images, projection_dim)`): L2-normalised image embeddings.
        boundary_loss (`torch.FloatTensor` scalar, *optional*, in training or with `return_loss=True`): binomial prior
            loss of the image tower's boundaries.
        boundary_ratio (`torch.FloatTensor` of shape `(num_images,)`): boundaries per patch for each image.
        boundaries (`torch.FloatTensor` of shape `(num_images, num_patches)`): the image tower's hard boundaries.
        text_model_output (`BaseModelOutputWithPooling`): the CLIP text tower's output (its `hidden_states` and
            `attentions` with `output_hidden_states` / `output_attentions`), as in transformers' `CLIPOutput`.
        vision_model_output (`DTPViTModelOutput`): the image tower's output, likewise.
    """

    loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    boundary_loss: torch.FloatTensor | None = None
    boundary_ratio: torch.FloatTensor | None = None
    boundaries: torch.FloatTensor | None = None
    text_model_output: ModelOutput | None = None
    vision_model_output: ModelOutput | None = None

    def to_tuple(self) -> tuple:
        """As `CLIPOutput.to_tuple`: the two tower outputs become tuples too."""
        return tuple(
            self[k].to_tuple() if k in ("text_model_output", "vision_model_output") else self[k] for k in self.keys()
        )


class SymmetricInfoNCELoss(nn.Module):
    """L = (CE(S, y) + CE(S^T, y)) / 2 with S = logits_per_text (texts x images) and y_i = i: pair i matches pair i."""

    def forward(self, logits_per_text: torch.Tensor) -> torch.Tensor:
        if logits_per_text.shape[0] != logits_per_text.shape[1]:
            raise ValueError(
                f"the contrastive loss needs as many texts as images (pairs), got {tuple(logits_per_text.shape)}"
            )
        logits = logits_per_text.float()
        targets = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def _l2_normalise(embeds: torch.Tensor) -> torch.Tensor:
    """x / ||x||_2 over the last dimension (as transformers' CLIP: no epsilon)."""
    return embeds / embeds.norm(p=2, dim=-1, keepdim=True)


class DTPCLIPPreTrainedModel(BundleCodeFirstMixin, PreTrainedModel):
    config_class = DTPCLIPConfig
    base_model_prefix = "dtp_clip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["DTPViTLayer", "CLIPEncoderLayer", "CLIPTextEmbeddings"]

    def _init_weights(self, module):
        # The two towers are PreTrainedModels: transformers initialises them with their own `_init_weights`.
        super()._init_weights(module)
        if isinstance(module, DTPCLIPModel):
            factor = self.config.initializer_factor
            init.normal_(module.visual_projection.weight, std=module.vision_embed_dim**-0.5 * factor)
            init.normal_(module.text_projection.weight, std=module.text_embed_dim**-0.5 * factor)
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class DTPCLIPModel(DTPCLIPPreTrainedModel):
    accepts_loss_kwargs = False

    def __init__(self, config: DTPCLIPConfig):
        super().__init__(config)
        self.vision_embed_dim = config.vision_config.hidden_size
        self.text_embed_dim = config.text_config.hidden_size
        self.vision_model = DTPViTModel._from_config(config.vision_config)
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.visual_projection = nn.Linear(self.vision_embed_dim, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.contrastive_loss_fn = SymmetricInfoNCELoss()
        self.post_init()

    def get_input_embeddings(self):
        return self.text_model.embeddings.token_embedding

    @classmethod
    def from_clip_pretrained(cls, name_or_path: str, **vision_overrides) -> "DTPCLIPModel":
        """DTP-CLIP initialised from a transformers `CLIPModel` checkpoint (e.g. `openai/clip-vit-base-patch32`).

        Copied: the image tower's embeddings, pre-layernorm, layers (CLIP layers 0..num_pre_layers-1 become the
        pre-layers, the rest the shortened layers), post-layernorm; the whole text tower; both projections; the logit
        scale. The boundary predictor starts fresh. `vision_overrides` go to the DTP-ViT config (compression_rate,
        num_pre_layers, boundary_loss_weight, ...); the widths come from the checkpoint. Returned in eval mode; at
        compression 1.0 the embeddings equal CLIP's.
        """
        clip = CLIPModel.from_pretrained(name_or_path)
        config = cls.config_class(
            vision_config=dtp_vit_config_from_clip_vision(clip.config.vision_config, **vision_overrides),
            text_config=clip.config.text_config.to_dict(),
            projection_dim=clip.config.projection_dim,
            logit_scale_init_value=float(clip.config.logit_scale_init_value),
            initializer_factor=float(clip.config.initializer_factor),
        )
        model = cls(config)
        load_clip_vision_weights(model.vision_model, clip.vision_model)
        model.text_model.load_state_dict(clip.text_model.state_dict())
        model.visual_projection.load_state_dict(clip.visual_projection.state_dict())
        model.text_projection.load_state_dict(clip.text_projection.state_dict())
        with torch.no_grad():
            model.logit_scale.copy_(clip.logit_scale)
        return model.eval()

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Text embeddings `W_t pool(text)` of shape `(batch, projection_dim)`, L2-normalised if `normalize`.

        Unlike transformers 5's `CLIPModel.get_text_features` (which returns a `BaseModelOutputWithPooling` whose
        `pooler_output` holds the projection), this returns the tensor itself.
        """
        text_outputs = self.text_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        embeds = self.text_projection(text_outputs.pooler_output)
        return _l2_normalise(embeds) if normalize else embeds

    def get_image_features(
        self, pixel_values: torch.Tensor, boundaries: torch.Tensor | None = None, normalize: bool = False
    ) -> torch.Tensor:
        """Image embeddings `W_v pool(DTPViT(image))` of shape `(batch, projection_dim)`, L2-normalised if `normalize`.

        `boundaries` (batch, num_patches), optional, replaces the predicted boundaries. Returns the tensor itself (see
        `get_text_features`).
        """
        embeds = self.visual_projection(self.vision_model(pixel_values, boundaries=boundaries).pooler_output)
        return _l2_normalise(embeds) if normalize else embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        boundaries: torch.Tensor | None = None,
        return_loss: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> DTPCLIPOutput | tuple:
        r"""
        input_ids (`torch.LongTensor` of shape `(num_texts, length)`): CLIP-tokenised texts (with `eos`).
        pixel_values (`torch.FloatTensor` of shape `(num_images, channels, size, size)`): processed images.
        attention_mask (`torch.Tensor` of shape `(num_texts, length)`, *optional*): 1 for real tokens, 0 for padding.
        boundaries (`torch.Tensor` of shape `(num_images, num_patches)`, *optional*): forced image boundaries.
        return_loss (`bool`, *optional*): compute `loss` (then texts and images are pairs: equal counts).
        output_attentions, output_hidden_states (`bool`, *optional*): return both towers' attention maps / hidden
            states in `vision_model_output` and `text_model_output` (defaults: the config's fields).
        """
        if input_ids is None or pixel_values is None:
            raise ValueError("DTPCLIPModel.forward needs both input_ids and pixel_values")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        flags = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states}
        vision = self.vision_model(
            pixel_values, boundaries=boundaries, return_dict=True, return_boundary_loss=True if return_loss else None,
            **flags,
        )
        text = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True, **flags
        )
        image_embeds = _l2_normalise(self.visual_projection(vision.pooler_output))
        text_embeds = _l2_normalise(self.text_projection(text.pooler_output))

        logits_per_text = torch.matmul(text_embeds, image_embeds.t()) * self.logit_scale.exp()
        logits_per_image = logits_per_text.t()

        loss = contrastive_loss = None
        if return_loss:
            contrastive_loss = self.contrastive_loss_fn(logits_per_text)
            loss = contrastive_loss + self.config.vision_config.boundary_loss_weight * vision.boundary_loss
        output = DTPCLIPOutput(
            loss=loss,
            contrastive_loss=contrastive_loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            boundary_loss=vision.boundary_loss,
            boundary_ratio=vision.boundary_ratio,
            boundaries=vision.boundaries,
            text_model_output=text,
            vision_model_output=vision,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["DTPCLIPPreTrainedModel", "DTPCLIPModel", "SymmetricInfoNCELoss"]
