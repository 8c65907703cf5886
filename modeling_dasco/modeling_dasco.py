"""DASCO for multimodal aspect-based sentiment analysis on a BLIP-2 vision tower and an aspect-query Q-Former."""

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, Blip2QFormerModel, Blip2VisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import ModelOutput
from transformers.models.blip_2.modeling_blip_2 import Blip2TextEmbeddings

from .configuration_dasco import DascoConfig
from .dependency_utils import span_scope
from .dual_gcn import DascoDualGCN, DascoProjectionHead, scope_contrastive_loss
from .released_gcn import DascoReleasedDualGCN, DascoReleasedMascHead
from .span_utils import (
    decode_bio,
    first_subtoken_states,
    gather_span_query_ids,
    masked_mean,
    word_spans_to_token_mask,
    word_tokens_mask,
)


NUM_BIO_TAGS = 3


@dataclass
class DascoOutput(ModelOutput):
    r"""
    Output of [`DascoForMabsa`].

    loss (`torch.FloatTensor` of shape `()`, *optional*):
        Sum of the losses of the task, returned when labels are given.
    mate_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Cross-entropy of the BIO tags, for tasks `mate` and `jmasa` when `mate_labels` is given.
    masc_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Weighted cross-entropy of the aspect sentiments, for tasks `masc` and `jmasa` when `masc_labels` is given.
    scope_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Scope contrastive loss of the given aspects (unweighted), when labels are given and it is switched on.
    mate_logits (`torch.FloatTensor` of shape `(batch_size, num_words, 3)`):
        BIO scores (O, B, I) of each word, read at its first sub-token.
    masc_logits (`torch.FloatTensor` of shape `(batch_size, num_aspects, 3)`, *optional*):
        Sentiment scores (negative, neutral, positive) of each aspect in `aspect_spans`.
    aspect_spans (`torch.LongTensor` of shape `(batch_size, num_aspects, 2)`, *optional*):
        Word spans `[start, end)` that `masc_logits` classify: the given ones, or the extracted ones for
        `jmasa` without given aspects. A given span may be empty (`start == end`) for an aspect that does not
        occur in the text.
    aspect_mask (`torch.LongTensor` of shape `(batch_size, num_aspects)`, *optional*):
        1 for the real rows of `aspect_spans`.
    aspect_scopes (`torch.LongTensor` of shape `(batch_size, num_aspects, 2)`, *optional*):
        Word spans `[start, end)` of the scopes used for `aspect_spans`.
    text_hidden_states (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
        Scope-aware states H' that the heads read: the text encoder output (visual prefix removed) plus the
        dual GCN's contribution.
    image_embeds (`torch.FloatTensor` of shape `(batch_size, num_patches + 1, vision_hidden_size)`, *optional*):
        Vision tower output, one row per image.
    aspect_cross_attentions (`torch.FloatTensor`, *optional*):
        Cross-attention weights of each aspect's Q-Former queries over the image tokens, of shape `(batch_size,
        num_aspects, num_cross_attention_layers, num_heads, query_length, num_patches + 1)`, from every Q-Former
        layer that has cross-attention. The image tokens are the CLS token, then the patches in row-major order.
        Returned with `output_attentions=True` when the model reads images and `query_mode` is not `"learned"`.
        Each row of a real query sums to 1 over the image tokens. Rows of padding query positions and of padded
        aspects are 0.
    """

    loss: torch.FloatTensor | None = None
    mate_loss: torch.FloatTensor | None = None
    masc_loss: torch.FloatTensor | None = None
    scope_loss: torch.FloatTensor | None = None
    mate_logits: torch.FloatTensor | None = None
    masc_logits: torch.FloatTensor | None = None
    aspect_spans: torch.LongTensor | None = None
    aspect_mask: torch.LongTensor | None = None
    aspect_scopes: torch.LongTensor | None = None
    text_hidden_states: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    aspect_cross_attentions: torch.FloatTensor | None = None


class DascoPreTrainedModel(PreTrainedModel):
    config: DascoConfig
    config_class = DascoConfig
    base_model_prefix = "dasco"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # As in BLIP-2, the Q-Former and its inputs stay in float32 when the rest is loaded in float16.
    _keep_in_fp32_modules = ["query_tokens", "qformer"]
    _no_split_modules = ["Blip2EncoderLayer", "Blip2QFormerLayer", "BertLayer"]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        align_parameters(model)
        return loaded

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, Blip2TextEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, DascoForMabsa):
            init.normal_(module.query_tokens, mean=0.0, std=self.config.initializer_range)


def align_parameters(model: nn.Module, alignment: int = 64) -> None:
    """Copy parameters that the safetensors loader left at unaligned addresses into fresh storage.

    CPU kernels take other vectorized paths on unaligned memory, so float32 results change in the last bits.
    With aligned storage, a reloaded model reproduces the saved model's outputs exactly.
    """
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.device.type == "cpu" and parameter.data_ptr() % alignment:
                parameter.data = parameter.data.clone()


class DascoMascHead(nn.Module):
    """Classify an aspect from `[mean over its span ; mean over its scope ; its visual tokens]`."""

    def __init__(self, hidden_size: int, dropout: float, num_labels: int):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(3 * hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.dense(self.dropout(features)))
        return self.out_proj(self.dropout(hidden))


class DascoForMabsa(DascoPreTrainedModel):
    """DASCO with aspect queries: MATE (BIO tagging), MASC (per-aspect sentiment) and JMASA in one model.

    Module names follow BLIP-2 (`vision_model`, `query_tokens`, `embeddings`, `qformer`), so BLIP-2 weights
    load under the same keys.
    """

    def __init__(self, config: DascoConfig):
        super().__init__(config)
        qformer_hidden = config.qformer_config.hidden_size
        text_hidden = config.text_config.hidden_size

        self.vision_model = Blip2VisionModel._from_config(config.vision_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, qformer_hidden))
        self.embeddings = Blip2TextEmbeddings(config.qformer_config)
        self.qformer = Blip2QFormerModel._from_config(config.qformer_config)
        self.visual_projection = nn.Linear(qformer_hidden, text_hidden)
        self.visual_layernorm = nn.LayerNorm(text_hidden, eps=config.text_config.layer_norm_eps)

        self.text_encoder = AutoModel.from_config(config.text_config, add_pooling_layer=False)
        self.dual_gcn = None
        self.projection_head = None
        num_labels = len(config.id2label)
        if config.fusion_style == "released":
            self.dual_gcn = DascoReleasedDualGCN(text_hidden, config)
            self.projection_head = DascoProjectionHead(config.gcn_hidden_size, config.projection_size)
        elif config.use_semantic_branch or config.use_syntactic_branch:
            self.dual_gcn = DascoDualGCN(text_hidden, config)
            if config.use_scope_loss:
                self.projection_head = DascoProjectionHead(config.gcn_hidden_size, config.projection_size)
        self.mate_head = nn.Sequential(nn.Dropout(config.classifier_dropout), nn.Linear(text_hidden, NUM_BIO_TAGS))
        if config.fusion_style == "released":
            self.masc_head = DascoReleasedMascHead(config.gcn_hidden_size, text_hidden, num_labels, config.classifier_dropout)
        else:
            self.masc_head = DascoMascHead(text_hidden, config.classifier_dropout, num_labels)

        if config.freeze_vision_model:
            self.vision_model.requires_grad_(False)
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save the model as `PreTrainedModel.save_pretrained` does, with the `multimodal-absa` pipeline.

        The config gets a `custom_pipelines` entry for the task, and the import below makes `save_pretrained`
        copy `pipeline_dasco.py` (and the modules it imports) next to this file, so that
        `pipeline("multimodal-absa", model=folder, trust_remote_code=True)` loads without this package.
        """
        from .pipeline_dasco import custom_pipelines_entry

        pipelines = dict(getattr(self.config, "custom_pipelines", None) or {})
        pipelines.update(custom_pipelines_entry())
        self.config.custom_pipelines = pipelines
        return super().save_pretrained(save_directory, *args, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor,
        word_token_start: torch.LongTensor,
        word_token_end: torch.LongTensor,
        word_mask: torch.LongTensor,
        qformer_word_ids: torch.LongTensor | None = None,
        qformer_word_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_embeds: torch.FloatTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        aspect_spans: torch.LongTensor | None = None,
        aspect_scopes: torch.LongTensor | None = None,
        aspect_mask: torch.LongTensor | None = None,
        aspect_input_ids: torch.LongTensor | None = None,
        aspect_query_mask: torch.LongTensor | None = None,
        word_heads: torch.LongTensor | None = None,
        syntax_adjacency: torch.FloatTensor | None = None,
        mate_labels: torch.LongTensor | None = None,
        masc_labels: torch.LongTensor | None = None,
        task: str | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> DascoOutput:
        r"""
        word_token_start, word_token_end (`torch.LongTensor` of shape `(batch_size, num_words)`):
            First sub-token of each word and one past its last, in `input_ids`.
        word_mask (`torch.LongTensor` of shape `(batch_size, num_words)`):
            1 for the words that fit in `input_ids`.
        qformer_word_ids, qformer_word_mask (`torch.LongTensor` of shape `(batch_size, num_words, sub_tokens)`):
            Q-Former tokens of each word; needed to build aspect queries for spans without `aspect_input_ids`.
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Images; or pass `image_embeds`, the vision tower output, instead.
        aspect_spans, aspect_scopes (`torch.LongTensor` of shape `(batch_size, num_aspects, 2)`):
            Word spans `[start, end)` of the aspects to classify and of their scopes. Without them, task `jmasa`
            classifies the spans extracted by the MATE head. An empty span (`start == end`) is an aspect that does
            not occur in the text: its span mean is zero, its scope is the whole tweet, and its queries must come
            from `aspect_input_ids`.
        aspect_input_ids, aspect_query_mask (`torch.LongTensor` of shape `(batch_size, num_aspects, query_tokens)`):
            Q-Former token ids of each aspect, used as its queries in `query_mode` `"aspect"`.
        word_heads (`torch.LongTensor` of shape `(batch_size, num_words)`):
            0-based dependency head of each word (-1 for padding); gives the scopes of extracted spans.
        syntax_adjacency (`torch.FloatTensor` of shape `(batch_size, sequence_length, sequence_length)`):
            Sub-token dependency graph with self-loops, from the processor; needed by the syntactic branch.
        mate_labels (`torch.LongTensor` of shape `(batch_size, num_words)`): BIO tag ids, -100 to ignore.
        masc_labels (`torch.LongTensor` of shape `(batch_size, num_aspects)`): label ids, -100 to ignore.
        task (`str`, *optional*): `"mate"`, `"masc"` or `"jmasa"`; defaults to `config.task`.
        output_attentions (`bool`, *optional*, defaults to `False`):
            Return `aspect_cross_attentions`. The aspect queries' Q-Former pass then runs with eager attention,
            because SDPA returns no attention weights (transformers 5.25).
        """
        task = task or self.config.task
        if task not in ("mate", "masc", "jmasa"):
            raise ValueError(f"task={task!r} is not supported; pass 'mate', 'masc' or 'jmasa'.")
        if task == "masc" and aspect_spans is None:
            raise ValueError("task='masc' classifies given aspects: pass aspect_spans and aspect_mask.")

        # 1. Vision tower, once per image, and the tweet-level visual tokens from the learned queries.
        image_embeds = self.get_image_features(pixel_values, image_embeds)
        tweet_query_output = self.query_image(self.query_tokens.expand(input_ids.shape[0], -1, -1), image_embeds)

        # 2. Text encoder over [visual tokens ; text embeddings]; text positions are embedded only once.
        encoder_hidden = self.encode_text(input_ids, attention_mask, token_type_ids, tweet_query_output)

        # 3. Dual GCN: semantic and syntactic branches fused into scope-aware states H'.
        text_hidden, first_view, second_view = self.fuse_branches(encoder_hidden, attention_mask, syntax_adjacency)

        # 4. MATE: BIO tags read at the first sub-token of each word.
        mate_logits = self.mate_head(first_subtoken_states(text_hidden, word_token_start))
        mate_loss = None
        if mate_labels is not None and task in ("mate", "jmasa"):
            mate_loss = nn.functional.cross_entropy(
                mate_logits.reshape(-1, NUM_BIO_TAGS).float(), mate_labels.reshape(-1), ignore_index=-100
            )

        # 5. Aspects: the given ones, or for JMASA inference the spans the MATE head extracted; their scopes.
        if aspect_spans is None and task == "jmasa":
            aspect_spans, aspect_mask = self.extract_spans(mate_logits, word_mask)
            aspect_scopes, aspect_input_ids = None, None
        if aspect_spans is not None and aspect_scopes is None:
            aspect_scopes = self.compute_scopes(aspect_spans, aspect_mask, word_heads, word_mask)
        num_tokens = text_hidden.shape[1]
        if aspect_spans is not None:
            span_mask = word_spans_to_token_mask(aspect_spans, word_token_start, word_token_end, num_tokens)
            scope_mask = word_spans_to_token_mask(aspect_scopes, word_token_start, word_token_end, num_tokens)
        scope_loss = None
        has_labels = mate_labels is not None or masc_labels is not None
        use_scope_loss = self.projection_head is not None and self.config.use_scope_loss
        if use_scope_loss and has_labels and aspect_spans is not None and aspect_mask.any():
            scope_loss = self.scope_loss(first_view, second_view, span_mask, scope_mask, aspect_mask, word_mask,
                                         word_token_start, word_token_end)  # fmt: skip
        if task == "mate":
            losses = [loss for loss in (mate_loss, self.weighted(scope_loss)) if loss is not None]
            return DascoOutput(
                loss=sum(losses) if losses else None, mate_loss=mate_loss, scope_loss=scope_loss,
                mate_logits=mate_logits, text_hidden_states=text_hidden, image_embeds=image_embeds,
            )  # fmt: skip

        # 6. MASC: [span mean ; scope mean ; aspect-aligned visual tokens] -> 3 classes (or the released head).
        if self.config.fusion_style == "released":
            first, second = self.projection_head(first_view), self.projection_head(second_view)
            masc_logits = self.masc_head(first, second, encoder_hidden[:, 0], span_mask)
            aspect_cross_attentions = None
        else:
            if aspect_input_ids is None and self.config.query_mode != "learned":
                aspect_input_ids, aspect_query_mask = gather_span_query_ids(
                    qformer_word_ids, qformer_word_mask, aspect_spans, aspect_mask,
                    self.config.qformer_config.pad_token_id,
                )  # fmt: skip
            visual, aspect_cross_attentions = self.aspect_visual_features(
                aspect_input_ids, aspect_query_mask, aspect_mask, image_embeds, tweet_query_output, output_attentions
            )
            spans_and_scopes = [masked_mean(text_hidden, span_mask), masked_mean(text_hidden, scope_mask)]
            masc_logits = self.masc_head(torch.cat([*spans_and_scopes, visual], -1))

        # 7. Losses: CE(MATE) + CE(MASC, class weights) + scope_loss_weight * scope contrastive loss.
        masc_loss = None
        if masc_labels is not None and aspect_mask.any():
            masc_loss = self.masc_loss(masc_logits, masc_labels, aspect_mask)
        losses = [loss for loss in (mate_loss, masc_loss, self.weighted(scope_loss)) if loss is not None]
        return DascoOutput(
            loss=sum(losses) if losses else None,
            mate_loss=mate_loss,
            masc_loss=masc_loss,
            scope_loss=scope_loss,
            mate_logits=mate_logits,
            masc_logits=masc_logits,
            aspect_spans=aspect_spans,
            aspect_mask=aspect_mask,
            aspect_scopes=aspect_scopes,
            text_hidden_states=text_hidden,
            image_embeds=image_embeds,
            aspect_cross_attentions=aspect_cross_attentions,
        )

    def get_image_features(
        self, pixel_values: torch.FloatTensor | None, image_embeds: torch.FloatTensor | None
    ) -> torch.FloatTensor | None:
        """Run the vision tower once per image; returns `[batch, num_patches + 1, vision_hidden]` or None without images."""
        if not self.config.use_image:
            return None
        if image_embeds is not None:
            return image_embeds
        if pixel_values is None:
            raise ValueError("Pass pixel_values or image_embeds, or set config.use_image=False for a text-only model.")
        pixel_values = pixel_values.to(self.vision_model.embeddings.patch_embedding.weight.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision_model):
            return self.vision_model(pixel_values=pixel_values).last_hidden_state

    def query_image(
        self,
        query_embeds: torch.Tensor,
        image_embeds: torch.Tensor | None,
        query_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Run the Q-Former with `query_embeds [n, queries, hidden]` over `image_embeds [n, patches, vision_hidden]`."""
        if image_embeds is None:
            return None
        return self.run_qformer(query_embeds, image_embeds, query_mask).last_hidden_state

    def run_qformer(
        self,
        query_embeds: torch.Tensor,
        image_embeds: torch.Tensor,
        query_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ):
        """Run the Q-Former and return its full output; `cross_attentions` is filled with `output_attentions`."""
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        inputs = {
            "query_embeds": query_embeds,
            "query_length": query_embeds.shape[1],
            "attention_mask": query_mask,
            "encoder_hidden_states": image_embeds,
            "encoder_attention_mask": image_mask,
        }
        if not output_attentions:
            return self.qformer(**inputs)
        with self.eager_qformer_attention():
            return self.qformer(**inputs, output_attentions=True)

    @contextmanager
    def eager_qformer_attention(self):
        """Switch the Q-Former to eager attention inside the block, because SDPA returns no attention weights.

        The switch changes `config.qformer_config` (the Q-Former's config object) until the block ends, so it is
        not safe while another thread runs the same model.
        """
        previous = self.qformer.config._attn_implementation
        if previous == "eager":
            yield
            return
        self.qformer.set_attn_implementation("eager")
        try:
            yield
        finally:
            self.qformer.set_attn_implementation(previous)

    def encode_text(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor,
        token_type_ids: torch.LongTensor | None,
        tweet_query_output: torch.Tensor | None,
    ) -> torch.Tensor:
        """Encode the tweet with the projected tweet-level visual tokens prefixed; returns the text positions only."""
        text_embeds = self.text_encoder.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        mask = attention_mask
        num_prefix = 0
        if tweet_query_output is not None:
            prefix = self.project_visual(tweet_query_output).to(text_embeds.dtype)
            num_prefix = prefix.shape[1]
            text_embeds = torch.cat([prefix, text_embeds], dim=1)
            mask = torch.cat([attention_mask.new_ones(prefix.shape[:2]), attention_mask], dim=1)
        mask_4d = create_bidirectional_mask(
            config=self.text_encoder.config, inputs_embeds=text_embeds, attention_mask=mask
        )
        hidden = self.text_encoder.encoder(text_embeds, attention_mask=mask_4d).last_hidden_state
        return hidden[:, num_prefix:]

    def project_visual(self, qformer_output: torch.Tensor) -> torch.Tensor:
        """Map Q-Former states `[..., qformer_hidden]` to the text encoder width."""
        projected = self.visual_projection(qformer_output.to(self.visual_projection.weight.dtype))
        return self.visual_layernorm(projected)

    def aspect_visual_features(
        self,
        aspect_input_ids: torch.LongTensor | None,
        aspect_query_mask: torch.LongTensor | None,
        aspect_mask: torch.LongTensor,
        image_embeds: torch.Tensor | None,
        tweet_query_output: torch.Tensor | None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pool the Q-Former output of each aspect's queries into `[batch, aspects, text_hidden]`.

        Returns the pooled features and, with `output_attentions`, the aspects' cross-attentions (see
        `DascoOutput.aspect_cross_attentions`); None without images or in `query_mode="learned"`.
        """
        batch_size, num_aspects = aspect_mask.shape
        text_hidden = self.config.text_config.hidden_size
        features = self.query_tokens.new_zeros(batch_size, num_aspects, text_hidden)
        if image_embeds is None:
            return features, None
        if self.config.query_mode == "learned":
            pooled = self.project_visual(tweet_query_output).mean(1)
            return pooled[:, None, :].expand(-1, num_aspects, -1) * aspect_mask[..., None], None

        cross_attentions = None
        if output_attentions:
            num_layers = sum(1 for layer in self.qformer.encoder.layer if layer.has_cross_attention)
            shape = (batch_size, num_aspects, num_layers, self.config.qformer_config.num_attention_heads, 1)
            cross_attentions = image_embeds.new_zeros(*shape, image_embeds.shape[1], dtype=torch.float32)
        if not aspect_mask.any():
            return features, cross_attentions

        # Only real aspects go through the Q-Former, each against its own tweet's image.
        tweet_index, aspect_index = aspect_mask.nonzero(as_tuple=True)
        query_embeds, query_mask = self.aspect_query_embeds(
            aspect_input_ids[tweet_index, aspect_index], aspect_query_mask[tweet_index, aspect_index]
        )
        output = self.run_qformer(query_embeds, image_embeds[tweet_index], query_mask, output_attentions)
        pooled = masked_mean(output.last_hidden_state, query_mask[:, None, :]).squeeze(1)
        features = features.to(pooled.dtype)
        features[tweet_index, aspect_index] = self.project_visual(pooled).to(features.dtype)
        if output_attentions:
            # [aspects, layers, heads, queries, image tokens], with the rows of padding queries zeroed.
            stacked = torch.stack(output.cross_attentions, dim=1).float()
            stacked = stacked * query_mask[:, None, None, :, None].to(stacked.dtype)
            cross_attentions = stacked.new_zeros(batch_size, num_aspects, *stacked.shape[1:])
            cross_attentions[tweet_index, aspect_index] = stacked
        return features, cross_attentions

    def aspect_query_embeds(
        self, query_ids: torch.LongTensor, query_mask: torch.LongTensor
    ) -> tuple[torch.Tensor, torch.LongTensor]:
        """Embed aspect queries `[n, query_tokens]` with the Q-Former word and position embeddings.

        In `query_mode="aspect+learned"` the learned query tokens come first. Returns the queries
        `[n, queries, qformer_hidden]` and their mask `[n, queries]`.
        """
        query_embeds = self.embeddings(input_ids=query_ids)
        if self.config.query_mode == "aspect+learned":
            learned = self.query_tokens.expand(query_ids.shape[0], -1, -1)
            query_embeds = torch.cat([learned, query_embeds], dim=1)
            query_mask = torch.cat([query_mask.new_ones(learned.shape[:2]), query_mask], dim=1)
        return query_embeds, query_mask

    def fuse_branches(
        self, encoder_hidden: torch.Tensor, attention_mask: torch.LongTensor, syntax_adjacency: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Run the dual GCN; returns H' and the two views of the contrastive loss (None without the GCN)."""
        if self.dual_gcn is None:
            return encoder_hidden, None, None
        if self.config.use_syntactic_branch and syntax_adjacency is None:
            raise ValueError(
                "The syntactic branch needs syntax_adjacency: pass dependency_heads to the processor (see "
                "modeling_dasco.parsing.DependencyParser), or set config.use_syntactic_branch=False."
            )
        return self.dual_gcn(encoder_hidden, attention_mask, syntax_adjacency)

    def compute_scopes(
        self,
        aspect_spans: torch.LongTensor,
        aspect_mask: torch.LongTensor,
        word_heads: torch.LongTensor | None,
        word_mask: torch.LongTensor,
    ) -> torch.LongTensor:
        """Scopes by the `scope_hops` rule when a parse is given, else the whole tweet; clipped to kept words."""
        scopes = self.whole_tweet_scopes(word_mask, aspect_spans.shape[1]).clone()
        if word_heads is None:
            return scopes
        kept = word_mask.sum(-1).tolist()
        for row, column in aspect_mask.nonzero().tolist():
            heads = [head for head in word_heads[row].tolist() if head >= 0]
            start, end = aspect_spans[row, column].tolist()
            first, last = span_scope(heads, start, end, self.config.scope_hops)
            scopes[row, column, 0] = first
            scopes[row, column, 1] = min(last, kept[row])
        return scopes

    def scope_loss(
        self, first_view, second_view, span_mask, scope_mask, aspect_mask, word_mask, word_token_start, word_token_end
    ) -> torch.Tensor:
        """Scope contrastive loss on the projected views; see `scope_contrastive_loss` for the formula.

        Aspects with an empty span have no anchor in the text, so they are left out of the loss.
        """
        word_token_mask = word_tokens_mask(word_mask, word_token_start, word_token_end, span_mask.shape[-1])
        return scope_contrastive_loss(
            self.projection_head(first_view),
            self.projection_head(second_view),
            span_mask,
            scope_mask,
            word_token_mask,
            aspect_mask * span_mask.any(-1).to(aspect_mask.dtype),
            self.config.scope_temperature,
        )

    def weighted(self, scope_loss: torch.Tensor | None) -> torch.Tensor | None:
        return None if scope_loss is None else self.config.scope_loss_weight * scope_loss

    def extract_spans(
        self, mate_logits: torch.Tensor, word_mask: torch.LongTensor
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Decode the MATE head's BIO tags (strict IOB2) into padded spans `[batch, aspects, 2]` and a mask."""
        tags = mate_logits.argmax(-1).tolist()
        lengths = word_mask.sum(-1).tolist()
        spans_per_tweet = [decode_bio(row[:length]) for row, length in zip(tags, lengths)]
        num_aspects = max([len(spans) for spans in spans_per_tweet] + [1])
        spans = torch.zeros(len(tags), num_aspects, 2, dtype=torch.long, device=mate_logits.device)
        mask = torch.zeros(len(tags), num_aspects, dtype=torch.long, device=mate_logits.device)
        for row, tweet_spans in enumerate(spans_per_tweet):
            for column, (start, end) in enumerate(tweet_spans):
                spans[row, column] = torch.tensor([start, end])
                mask[row, column] = 1
        return spans, mask

    @staticmethod
    def whole_tweet_scopes(word_mask: torch.LongTensor, num_aspects: int) -> torch.LongTensor:
        """Scopes that cover every word of the tweet, for aspects without a computed scope."""
        ends = word_mask.sum(-1)
        scopes = torch.stack([torch.zeros_like(ends), ends], dim=-1)
        return scopes[:, None, :].expand(-1, num_aspects, -1)

    def masc_loss(
        self, masc_logits: torch.Tensor, masc_labels: torch.LongTensor, aspect_mask: torch.LongTensor
    ) -> torch.Tensor:
        """Cross-entropy over real aspects, weighted by `config.masc_class_weights` when set."""
        weight = None
        if self.config.masc_class_weights is not None:
            weight = torch.tensor(self.config.masc_class_weights, dtype=torch.float, device=masc_logits.device)
        labels = masc_labels.masked_fill(aspect_mask == 0, -100)
        return nn.functional.cross_entropy(
            masc_logits.reshape(-1, masc_logits.shape[-1]).float(), labels.reshape(-1), weight=weight, ignore_index=-100
        )


__all__ = ["DascoForMabsa", "DascoOutput", "DascoPreTrainedModel"]
