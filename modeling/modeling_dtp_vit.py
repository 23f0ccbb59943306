"""DTP-ViT: a Vision Transformer with Dynamic Token Pooling.

Patch embedding -> pre-layers -> boundary predictor -> segment-mean pooling -> shortened layers -> final norm -> pool.
The boundary predictor decides, per patch, whether the patch closes a segment; each segment is replaced by the
mean of its patches, so the shortened layers run on about `compression_rate * num_patches` tokens (plus CLS).
Paper: Nawrot et al., 2023, "Efficient Transformers with Dynamic Token Pooling".
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, CLIPModel, CLIPVisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from ..configuration.configuration_dtp_vit import DTPViTConfig
# The pipeline that config.json's `custom_pipelines` names: imported so that `save_pretrained` of a remotely loaded
# model copies its file along with this one.
from ..processing.pipeline_image_classification import ImageClassificationPipeline  # noqa: F401
from .modeling_common import BundleCodeFirstMixin, InterfaceAttention, additive_mask, check_pixel_values, split_heads


@dataclass
class DTPViTModelOutput(ModelOutput):
    """
    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, 1 + num_segments, hidden)`): CLS token then the
            pooled segments, after the final LayerNorm. Rows with fewer segments are padded (see `segment_mask`).
        pooler_output (`torch.FloatTensor` of shape `(batch, hidden)`): masked mean of the segments (or CLS).
        boundaries (`torch.FloatTensor` of shape `(batch, num_patches)`): hard boundaries (1 closes a segment),
            straight-through in training.
        segment_mask (`torch.BoolTensor` of shape `(batch, num_segments)`): True for real segments.
        boundary_loss (`torch.FloatTensor` scalar, *optional*): binomial prior loss on the boundary counts; in
            training or with `return_boundary_loss=True` only, so that inference outputs hold no scalar (pipelines
            split every tensor of a batched output by row).
        boundary_ratio (`torch.FloatTensor` of shape `(batch,)`): boundaries per patch for each image.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    boundaries: torch.FloatTensor | None = None
    segment_mask: torch.BoolTensor | None = None
    boundary_loss: torch.FloatTensor | None = None
    boundary_ratio: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class DTPViTImageClassifierOutput(ModelOutput):
    """`loss` = cross-entropy + `boundary_loss_weight` * `boundary_loss`; other fields as in `DTPViTModelOutput`."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    boundary_loss: torch.FloatTensor | None = None
    boundary_ratio: torch.FloatTensor | None = None
    boundaries: torch.FloatTensor | None = None
    segment_mask: torch.BoolTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class DTPViTEmbeddings(nn.Module):
    """x = [cls; Conv_p(image) flattened] + pos, with a learned CLS vector and learned absolute positions."""

    def __init__(self, config: DTPViTConfig):
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.position_embedding = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.hidden_size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        expected = (self.config.num_channels, self.config.image_size, self.config.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(pixel_values.shape)}"
            )
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.to(dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding


class DTPViTAttention(InterfaceAttention):
    """Multi-head self-attention through the config's attention function: softmax(Q K^T / sqrt(d) + M) V W_o."""

    def __init__(self, config: DTPViTConfig):
        super().__init__()
        self.config = config
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_probs_dropout_prob
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        query = split_heads(self.q_proj(hidden_states), self.head_dim)
        key = split_heads(self.k_proj(hidden_states), self.head_dim)
        value = split_heads(self.v_proj(hidden_states), self.head_dim)
        context, probs = self.attend(query, key, value, attention_mask, **kwargs)
        return self.out_proj(context.reshape(*hidden_states.shape[:-1], -1)), probs


class DTPViTMLP(nn.Module):
    """FFN(x) = W2 act(W1 x + b1) + b2."""

    def __init__(self, config: DTPViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states):
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class DTPViTLayer(GradientCheckpointingLayer):
    """Pre-LN block: x = x + Drop(Attn(LN1(x))); x = x + Drop(FFN(LN2(x)))."""

    def __init__(self, config: DTPViTConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = DTPViTAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = DTPViTMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        attn_out, probs = self.self_attn(self.layer_norm1(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + self.dropout(attn_out)
        del attn_out  # frees the attention output before the MLP: peak memory as a plain ViT layer
        hidden_states = hidden_states + self.dropout(self.mlp(self.layer_norm2(hidden_states)))
        return hidden_states, probs


def annealed_temperature(start: float, final: float, progress: float, schedule: str = "linear") -> float:
    """Gumbel temperature at training progress s in [0, 1] (clamped), from tau_0 = `start` to tau_1 = `final`:
    linear tau(s) = tau_0 + (tau_1 - tau_0) s; cosine tau(s) = tau_1 + (tau_0 - tau_1) (1 + cos(pi s)) / 2.

    The hard sample 1[soft > 0.5] = 1[logit + log u - log(1 - u) > 0] does not depend on tau: annealing changes only
    the straight-through gradient d soft / d logit = soft (1 - soft) / tau, concentrating it on patches whose noisy
    logit is near 0."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return start + (final - start) * progress
    if schedule == "cosine":
        return final + (start - final) * (1.0 + math.cos(math.pi * progress)) / 2.0
    raise ValueError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")


class BoundaryPredictor(nn.Module):
    """Predicts which patches close a segment.

    logit_t = W2 GELU(W1 x_t + b1) + b2,  p_t = sigmoid(logit_t).
    Training (Gumbel-sigmoid, temperature tau): soft_t = sigmoid((logit_t + log u - log(1 - u)) / tau), u ~ U(0, 1),
    hard_t = 1[soft_t > 0.5] with the straight-through estimator hard_t <- hard_t - sg(soft_t) + soft_t.
    Eval (deterministic): `boundary_inference="rate"` closes segments at the k = round(prior * T) patches with the
    highest p_t; `"threshold"` uses hard_t = 1[p_t > theta], theta = `boundary_threshold` (0.5 unless calibrated).
    The output bias b2 starts at logit(prior), so p_t starts near the prior.
    """

    def __init__(self, config: DTPViTConfig):
        super().__init__()
        self.config = config
        self.temperature = config.boundary_temperature
        self.prior = config.compression_rate
        self.dense = nn.Linear(config.hidden_size, config.boundary_predictor_hidden_size)
        self.act = nn.GELU()
        self.out = nn.Linear(config.boundary_predictor_hidden_size, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(1))

    def anneal_temperature(self, progress: float) -> float:
        """Sets tau for training progress s in [0, 1] (`annealed_temperature`) when the config asks for an anneal
        (`boundary_temperature_final`); returns the temperature in use."""
        config = self.config
        if config.boundary_temperature_final is not None:
            self.temperature = annealed_temperature(config.boundary_temperature, config.boundary_temperature_final,
                                                    progress, config.boundary_temperature_schedule)
        return self.temperature

    def rate_count(self, num_tokens: int) -> int:
        """k = round(prior * T), at least 1 and at most T: the boundaries the `"rate"` mode keeps per image."""
        return min(num_tokens, max(1, round(self.prior * num_tokens)))

    def probabilities(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """p_t = sigmoid(logit_t), float32, (batch, tokens)."""
        return torch.sigmoid(self.logits(hidden_states))

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return (self.out(self.act(self.dense(hidden_states))) + self.bias).squeeze(-1).float()

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (hard boundaries, probabilities), both (batch, tokens)."""
        logits = self.logits(hidden_states)
        probs = torch.sigmoid(logits)
        if not self.training:
            if self.config.boundary_inference == "threshold":
                return (probs > self.config.boundary_threshold).to(hidden_states.dtype), probs
            top = probs.topk(self.rate_count(probs.shape[-1]), dim=-1).indices
            return torch.zeros_like(probs).scatter(-1, top, 1.0).to(hidden_states.dtype), probs
        u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / self.temperature)
        hard = (soft > 0.5).to(soft.dtype)
        return (hard - soft.detach() + soft).to(hidden_states.dtype), probs


class SegmentMeanPooling(nn.Module):
    """Replaces each segment of consecutive tokens by the mean of its tokens, keeping gradients into boundaries.

    seg_t = cumsum(b)_t - b_t (a token with b_t = 1 closes its segment). A_{t,s} = 1 - (s - seg_t) where s = seg_t,
    else 0: equal to the one-hot assignment in value, but differentiable in b through seg_t (straight-through).
    pooled_s = sum_t A_{t,s} x_t / sum_t A_{t,s}. Rows with fewer segments are zero-padded; `segment_mask` marks
    the real segments (a row has seg_T + 1 segments: the tokens after the last boundary form one more).
    `max_segments` fixes the padded width (it must be >= every row's count); by default it is the batch's largest
    count, read from the data.
    """

    def forward(
        self, hidden_states: torch.Tensor, boundaries: torch.Tensor, max_segments: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        segment_ids = boundaries.cumsum(dim=1) - boundaries
        num_segments = segment_ids[:, -1].detach().round().long() + 1
        if max_segments is None:
            max_segments = int(num_segments.max())
        slots = torch.arange(max_segments, device=hidden_states.device, dtype=boundaries.dtype)
        offset = slots[None, None, :] - segment_ids[:, :, None]
        assignment = torch.where(offset.detach() == 0, 1 - offset, torch.zeros_like(offset))
        counts = assignment.sum(dim=1, keepdim=True)
        assignment = assignment / torch.where(counts.detach() == 0, torch.ones_like(counts), counts)
        pooled = torch.einsum("bld,bls->bsd", hidden_states, assignment.to(hidden_states.dtype))
        segment_mask = slots[None, :].long() < num_segments[:, None]
        return pooled, segment_mask


def count_sorted_chunks(counts: torch.Tensor, chunk_size: int) -> list[torch.Tensor]:
    """Row indices in chunks of `chunk_size`, rows sorted by `counts` (stable), so that each chunk's rows have
    similar counts and trimming a chunk to its longest row pads little."""
    return list(counts.argsort(stable=True).split(chunk_size))


def padding_waste(counts: torch.Tensor, chunk_size: int | None = None) -> float:
    """Fraction of token slots that are padding when rows run in chunks sorted by count (one chunk if None):
    1 - sum_i c_i / sum_g |g| max_{i in g} c_i."""
    chunks = count_sorted_chunks(counts, chunk_size or len(counts))
    slots = sum(len(rows) * int(counts[rows].max()) for rows in chunks)
    return 1.0 - float(counts.sum()) / slots

class BinomialBoundaryLoss(nn.Module):
    """L = -mean_b log Binomial(k_b; T, prior) / T, with k_b = sum_t hard_bt over T tokens."""

    def __init__(self, prior: float):
        super().__init__()
        self.prior = prior

    def forward(self, boundaries: torch.Tensor) -> torch.Tensor:
        num_tokens = boundaries.shape[-1]
        binomial = torch.distributions.Binomial(
            total_count=torch.tensor(float(num_tokens), device=boundaries.device),
            probs=torch.tensor(float(self.prior), device=boundaries.device),
        )
        return -binomial.log_prob(boundaries.float().sum(dim=-1)).mean() / num_tokens


class DTPViTPreTrainedModel(BundleCodeFirstMixin, PreTrainedModel):
    config_class = DTPViTConfig
    base_model_prefix = "dtp_vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["DTPViTLayer"]
    # Boundaries are decided in float32 whatever the loading dtype: the patch embedding, the pre-layers and the
    # predictor stay float32 under `dtype=torch.bfloat16`, only the shortened layers run in the lower precision.
    # (`position_embedding$` is our parameter; a CLIP text tower's `...position_embedding.weight` is not matched.)
    _keep_in_fp32_modules_strict = [
        "embeddings.patch_embedding",
        "embeddings.class_embedding",
        "embeddings.position_embedding$",
        "pre_layrnorm",
        "pre_layers",
        "boundary_predictor",
    ]

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, DTPViTEmbeddings):
            init.trunc_normal_(module.class_embedding, mean=0.0, std=std)
            init.trunc_normal_(module.position_embedding, mean=0.0, std=std)
        elif isinstance(module, BoundaryPredictor):
            prior = min(module.prior, 1 - 1e-4)
            init.constant_(module.bias, math.log(prior / (1 - prior)))


class DTPViTModel(DTPViTPreTrainedModel):
    def __init__(self, config: DTPViTConfig):
        super().__init__(config)
        self.embeddings = DTPViTEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.pre_layernorm else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.pre_layers = nn.ModuleList([DTPViTLayer(config) for _ in range(config.num_pre_layers)])
        # At compression 1.0 every patch is its own segment: no predictor, no pooling (a dense ViT).
        self.pools = config.compression_rate < 1.0
        self.boundary_predictor = BoundaryPredictor(config) if self.pools else None
        self.segment_pooling = SegmentMeanPooling()
        self.boundary_loss_fn = BinomialBoundaryLoss(config.compression_rate)
        self.shortened_layers = nn.ModuleList([DTPViTLayer(config) for _ in range(config.num_shortened_layers)])
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    @classmethod
    def from_clip_vision_pretrained(cls, name_or_path: str, **config_overrides) -> "DTPViTModel":
        """DTP-ViT initialised from a transformers CLIP checkpoint (`CLIPModel` or `CLIPVisionModel`), in eval mode.

        Embeddings, pre-layernorm, layers and post-layernorm are copied (see `load_clip_vision_weights`); the
        boundary predictor starts fresh. `config_overrides` go to `dtp_vit_config_from_clip_vision`, e.g.
        `compression_rate=0.25, num_pre_layers=2`. At compression 1.0 the pooled output equals CLIP's.
        """
        model_type = AutoConfig.from_pretrained(name_or_path).model_type
        if model_type == "clip":
            clip_vision = CLIPModel.from_pretrained(name_or_path).vision_model
        elif model_type == "clip_vision_model":
            clip_vision = CLIPVisionModel.from_pretrained(name_or_path)
        else:
            raise ValueError(f"{name_or_path!r} is a {model_type!r} checkpoint, not a CLIP or CLIP vision one")
        model = cls(dtp_vit_config_from_clip_vision(clip_vision.config, **config_overrides))
        load_clip_vision_weights(model, clip_vision)
        return model.eval()

    def get_input_embeddings(self):
        return self.embeddings.patch_embedding

    def _pre_stage(self, pixel_values, boundaries, run):
        """Embeddings, pre-layers, boundaries and segment pooling of some images.

        Returns (cls (B, 1, D), segments (B, S, D), segment_mask (B, S), boundaries (B, T)). Under `torch.compile`
        the segment count S is fixed from shapes alone (`_segment_budget` for predicted boundaries, every patch for
        given ones), so the graph has no data-dependent size.
        """
        hidden = self._patch_states(pixel_values, run)
        cls, patches = hidden[:, :1], hidden[:, 1:]
        batch, num_patches = patches.shape[:2]
        given = boundaries is not None
        if given:
            boundaries = boundaries.to(patches.dtype)
        elif self.pools:
            boundaries, _ = self.boundary_predictor(patches)
        else:  # a dense ViT: every patch is its own segment, nothing to pool
            ones = torch.ones(batch, num_patches, dtype=patches.dtype, device=patches.device)
            return cls, patches, ones.bool(), ones
        if self.pools or torch.compiler.is_compiling() or not bool((boundaries == 1).all()):
            # Given boundaries may close any number of segments: only the predictor's count is known from shapes.
            budget = None
            if torch.compiler.is_compiling():
                budget = num_patches if given else self._segment_budget(num_patches)
            segments, segment_mask = self.segment_pooling(patches, boundaries, budget)
        else:
            segments, segment_mask = patches, torch.ones_like(boundaries, dtype=torch.bool)
        return cls, segments, segment_mask, boundaries

    def _patch_states(self, pixel_values, run):
        """Embeddings, pre-layernorm and pre-layers: (B, 1 + T, D), CLS first."""
        hidden = self.embeddings(pixel_values)
        if self.pre_layrnorm is not None:
            hidden = self.pre_layrnorm(hidden)
        return run(self.pre_layers, self.dropout(hidden), None)

    @torch.no_grad()
    def boundary_probabilities(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The predictor's p_t for each patch, (batch, num_patches), float32 (a model that pools only)."""
        if not self.pools:
            raise ValueError("boundary_probabilities needs a pooling model (compression_rate < 1.0)")
        check_pixel_values(pixel_values)

        def run(layers, hidden, attention_mask):
            for layer in layers:
                hidden = layer(hidden, attention_mask)[0]
            return hidden

        return self.boundary_predictor.probabilities(self._patch_states(pixel_values, run)[:, 1:])

    def _segment_budget(self, num_patches: int) -> int:
        """Padded segment count without reading the data: k + 1 for the `"rate"` mode's k boundaries (the tokens after
        the last boundary form one more segment), else every patch."""
        if self.pools and not self.training and self.config.boundary_inference == "rate":
            return min(num_patches, self.boundary_predictor.rate_count(num_patches) + 1)
        return num_patches

    @staticmethod
    def _attention_mask(key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """Padded segments are masked keys; with nothing padded (checked in eager mode only), no mask lets SDPA take
        its fastest kernel."""
        if not torch.compiler.is_compiling() and bool(key_mask.all()):
            return None
        return additive_mask(key_mask[:, None, None, :], dtype)

    def _shortened_in_count_order(self, hidden, key_mask, chunk_size, run):
        """Shortened layers and final norm over chunks of images sorted by token count, each chunk trimmed to its
        longest row, so images of different counts share a batch with bounded padding (`padding_waste`). Padded
        positions of the result are 0."""
        counts = key_mask.sum(dim=-1)
        out = torch.zeros_like(hidden)
        for rows in count_sorted_chunks(counts, chunk_size):
            length = int(counts[rows].max())
            part_mask = key_mask[rows, :length]
            part = run(self.shortened_layers, hidden[rows, :length], self._attention_mask(part_mask, hidden.dtype))
            out[rows, :length] = self.post_layernorm(part)
        return out

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        boundaries: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        return_boundary_loss: bool | None = None,
        **kwargs,
    ) -> DTPViTModelOutput | tuple:
        r"""
        boundaries (`torch.Tensor` of shape `(batch, num_patches)`, *optional*):
            Given boundaries (1 closes a segment) used instead of the predictor's, e.g. to simulate a rate.
        return_boundary_loss (`bool`, *optional*):
            Compute the scalar `boundary_loss`; defaults to `self.training`.
        """
        if pixel_values is None:
            raise ValueError("DTPViTModel needs pixel_values")
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        all_hidden = [] if output_hidden_states else None
        all_attn = [] if output_attentions else None

        def run(layers, hidden, attention_mask):
            for layer in layers:
                if all_hidden is not None:
                    all_hidden.append(hidden)
                hidden, probs = layer(hidden, attention_mask, output_attentions=output_attentions)
                if all_attn is not None and probs is not None:
                    all_attn.append(probs)
            return hidden

        check_pixel_values(pixel_values)
        batch, num_patches = pixel_values.shape[0], self.config.num_patches
        if boundaries is not None and tuple(boundaries.shape) != (batch, num_patches):
            raise ValueError(
                f"boundaries must have shape (batch, num_patches) = {(batch, num_patches)}, "
                f"got {tuple(boundaries.shape)}"
            )
        chunk_size = self.config.inference_chunk_size
        if self.training or all_hidden is not None or all_attn is not None or not chunk_size:
            chunk_size = batch
        # Full-length activations live inside `_pre_stage`, for one chunk of images at a time.
        pieces = []
        for i in range(0, batch, chunk_size):
            given = None if boundaries is None else boundaries[i : i + chunk_size]
            pieces.append(self._pre_stage(pixel_values[i : i + chunk_size], given, run))
        if len(pieces) == 1:
            cls, segments, segment_mask, boundaries = pieces.pop()
        else:
            width = max(piece[1].shape[1] for piece in pieces)
            cls = torch.cat([piece[0] for piece in pieces])
            segments = torch.cat([F.pad(piece[1], (0, 0, 0, width - piece[1].shape[1])) for piece in pieces])
            segment_mask = torch.cat([F.pad(piece[2], (0, width - piece[2].shape[1])) for piece in pieces])
            boundaries = torch.cat([piece[3] for piece in pieces])
            del pieces
        boundary_loss = None
        if self.training if return_boundary_loss is None else return_boundary_loss:
            boundary_loss = self.boundary_loss_fn(boundaries) if self.pools else boundaries.new_zeros(())
        # From here on the compute dtype of the shortened layers (see `_keep_in_fp32_modules_strict`).
        hidden = torch.cat([cls, segments], dim=1).to(self.post_layernorm.weight.dtype)
        del cls, segments
        key_mask = torch.cat([segment_mask.new_ones(batch, 1), segment_mask], dim=1)
        threshold_mode = self.pools and self.config.boundary_inference == "threshold"
        if chunk_size < batch and threshold_mode and not torch.compiler.is_compiling():
            hidden = self._shortened_in_count_order(hidden, key_mask, chunk_size, run)
        else:
            hidden = run(self.shortened_layers, hidden, self._attention_mask(key_mask, hidden.dtype))
            hidden = self.post_layernorm(hidden)
        if all_hidden is not None:
            all_hidden.append(hidden)

        if self.config.pooler_type == "cls":
            pooled = hidden[:, 0]
        else:
            weights = segment_mask.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden[:, 1:] * weights).sum(dim=1) / weights.sum(dim=1)
        boundary_ratio = boundaries.detach().float().mean(dim=-1)

        output = DTPViTModelOutput(
            last_hidden_state=hidden,
            pooler_output=pooled,
            boundaries=boundaries,
            segment_mask=segment_mask,
            boundary_loss=boundary_loss,
            boundary_ratio=boundary_ratio,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            attentions=tuple(all_attn) if all_attn is not None else None,
        )
        return output if return_dict else output.to_tuple()


class DTPViTForImageClassification(DTPViTPreTrainedModel):
    accepts_loss_kwargs = False

    def __init__(self, config: DTPViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.dtp_vit = DTPViTModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        boundaries: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DTPViTImageClassifierOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch,)`, *optional*): class indices in `[0, num_labels)`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.dtp_vit(
            pixel_values,
            boundaries=boundaries,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            return_boundary_loss=True if labels is not None else None,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if labels.dtype.is_floating_point or labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
                raise ValueError(f"labels must be integer class indices of shape ({logits.shape[0]},)")
            if bool(((labels < 0) | (labels >= self.num_labels)).any()):
                raise ValueError(f"labels must lie in [0, {self.num_labels}), got {labels.tolist()}")
            loss = F.cross_entropy(logits.float(), labels)
            loss = loss + self.config.boundary_loss_weight * outputs.boundary_loss
        output = DTPViTImageClassifierOutput(
            loss=loss,
            logits=logits,
            boundary_loss=outputs.boundary_loss,
            boundary_ratio=outputs.boundary_ratio,
            boundaries=outputs.boundaries,
            segment_mask=outputs.segment_mask,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


@torch.no_grad()
def calibrate_boundary_threshold(
    model: DTPViTModel, pixel_values: torch.Tensor, target_rate: float | None = None, batch_size: int = 64
) -> float:
    r"""Fits the `"threshold"` mode's cut on held-out images and switches `model` to it.

    theta is the midpoint between the k-th and (k+1)-th largest p_t over all N patches of `pixel_values`,
    k = round(target_rate * N) (default target: the model's `compression_rate`), so exactly k of them have p > theta:
    their mean boundary rate is the target, while each image gets its own count. Sets `boundary_threshold` and
    `boundary_inference="threshold"` in `model.config` (saved with the model) and returns theta.
    """
    target_rate = model.config.compression_rate if target_rate is None else target_rate
    if not 0.0 < target_rate < 1.0:
        raise ValueError(f"target_rate must be in (0, 1), got {target_rate!r}")
    was_training = model.training
    model.eval()
    probs = torch.cat([model.boundary_probabilities(chunk) for chunk in pixel_values.split(batch_size)]).flatten()
    model.train(was_training)
    k = round(target_rate * probs.numel())
    if not 0 < k < probs.numel():
        raise ValueError(f"{probs.numel()} patches are too few to fit a rate of {target_rate}: pass more images")
    top = probs.topk(k + 1).values
    theta = float((top[k - 1] + top[k]) / 2)
    theta = min(max(theta, torch.finfo(torch.float32).tiny), 1.0 - torch.finfo(torch.float32).eps)
    model.config.boundary_threshold = theta
    model.config.boundary_inference = "threshold"
    return theta


def _square_side(value, name: str) -> int:
    """CLIP configs allow (height, width) sizes; DTP-ViT needs square ones."""
    if isinstance(value, int):
        return value
    height, width = value
    if height != width:
        raise ValueError(f"DTP-ViT needs a square {name}, the CLIP checkpoint has {tuple(value)}")
    return int(height)


def dtp_vit_config_from_clip_vision(clip_vision_config, **overrides) -> DTPViTConfig:
    """A DTPViTConfig with the widths of a transformers `CLIPVisionConfig`, CLIP's layers split into pre + shortened.

    Fixed by the checkpoint (an override to another value raises ValueError): sizes, widths, activation, norm eps,
    attention dropout, `pre_layernorm=True`. `pooler_type` defaults to `"cls"` (CLIP pools the CLS token).
    `num_pre_layers` defaults to 2 (or fewer layers, if CLIP has fewer) and `num_shortened_layers` to the rest; their
    sum must equal CLIP's layer count. Any other DTPViTConfig field (compression_rate, ...) may be overridden.
    """
    fixed = {
        "image_size": _square_side(clip_vision_config.image_size, "image_size"),
        "patch_size": _square_side(clip_vision_config.patch_size, "patch_size"),
        "num_channels": clip_vision_config.num_channels,
        "hidden_size": clip_vision_config.hidden_size,
        "num_attention_heads": clip_vision_config.num_attention_heads,
        "intermediate_size": clip_vision_config.intermediate_size,
        "hidden_act": clip_vision_config.hidden_act,
        "layer_norm_eps": clip_vision_config.layer_norm_eps,
        "attention_probs_dropout_prob": float(clip_vision_config.attention_dropout),
        "pre_layernorm": True,
    }
    overrides = dict(overrides)
    for key, value in fixed.items():
        if key in overrides and overrides[key] != value:
            raise ValueError(
                f"{key} is fixed by the CLIP checkpoint ({value!r}), cannot override it with {overrides[key]!r}"
            )
    num_layers = clip_vision_config.num_hidden_layers
    num_pre = overrides.pop("num_pre_layers", min(2, num_layers))
    num_shortened = overrides.pop("num_shortened_layers", num_layers - num_pre)
    if num_pre + num_shortened != num_layers:
        raise ValueError(
            f"num_pre_layers ({num_pre}) + num_shortened_layers ({num_shortened}) must equal the CLIP checkpoint's "
            f"num_hidden_layers ({num_layers})"
        )
    values = {"pooler_type": "cls", "initializer_range": clip_vision_config.initializer_range, **fixed}
    values.update(overrides, num_pre_layers=num_pre, num_shortened_layers=num_shortened)
    return DTPViTConfig(**values)


def load_clip_vision_weights(model: "DTPViTModel", clip_vision: nn.Module) -> None:
    """Copies a transformers `CLIPVisionModel`'s weights into `model` (built by `dtp_vit_config_from_clip_vision`).

    CLIP layer i goes to `pre_layers[i]` for i < num_pre_layers, else to `shortened_layers[i - num_pre_layers]`; the
    patch-embedding bias (CLIP has none) is zeroed; the boundary predictor keeps its fresh initialisation.
    """
    num_pre = model.config.num_pre_layers
    mapped = {}
    for key, value in clip_vision.state_dict().items():
        if key.startswith("encoder.layers."):
            index, rest = key[len("encoder.layers.") :].split(".", 1)
            index = int(index)
            key = f"pre_layers.{index}.{rest}" if index < num_pre else f"shortened_layers.{index - num_pre}.{rest}"
        elif key == "embeddings.position_embedding.weight":
            key, value = "embeddings.position_embedding", value.unsqueeze(0)
        mapped[key] = value
    mapped["embeddings.patch_embedding.bias"] = torch.zeros_like(model.embeddings.patch_embedding.bias)
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [key for key in missing if not key.startswith("boundary_predictor.")]
    if missing or unexpected:
        raise ValueError(f"CLIP vision weights do not fit DTP-ViT: missing {missing}, unexpected {unexpected}")


__all__ = [
    "DTPViTPreTrainedModel",
    "DTPViTModel",
    "DTPViTForImageClassification",
    "annealed_temperature",
    "calibrate_boundary_threshold",
    "count_sorted_chunks",
    "dtp_vit_config_from_clip_vision",
    "load_clip_vision_weights",
    "padding_waste",
]
