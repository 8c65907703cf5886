"""DASCO's pretraining stage: AOE, ITM with hard negatives, ASSC and an optional ITC on the MABSA backbone.

DASCO (arXiv:2504.11331) continues pretraining its Q-Former and text encoder with aspect-oriented enhancement
(AOE), image-text matching (ITM) and aspect-level sentiment-sensitive cognition (ASSC). Its pretraining code
was withdrawn and its corpus was never released, so the objectives below are this package's definitions, made
from the annotations that the MABSA readers already produce. `docs/pretraining.md` compares them with what
DASCO reported.

`DascoForPretraining` subclasses `DascoForMabsa`, so the backbone's keys are the same, and adds four small
heads. `to_backbone()` returns the `DascoForMabsa` without them, which is what `train.py --stage pretrain`
saves and what fine-tuning starts from.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import ModelOutput

from .modeling_dasco import DascoForMabsa
from .span_utils import (
    first_subtoken_states,
    gather_span_query_ids,
    masked_mean,
    word_spans_to_token_mask,
    word_tokens_mask,
)


OBJECTIVES = ("aoe", "itm", "assc", "itc")
# Modules that exist only in DascoForPretraining; `to_backbone` drops their weights.
PRETRAINING_HEADS = ("aoe_head", "itm_text_proj", "itm_vision_proj", "itm_head", "assc_head")
NUM_SENTIMENTS = 3


@dataclass
class DascoPretrainingOutput(ModelOutput):
    r"""
    Output of [`DascoForPretraining`]. A loss whose weight in the config is 0 is not computed and is None. ITM's
    and ASSC's losses are also None for a batch without real aspects.

    loss (`torch.FloatTensor` of shape `()`):
        Sum of `config.pretrain_<objective>_weight * <objective>_loss` over the computed losses.
    aoe_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Aspect-oriented enhancement: mean cross-entropy of the inside/outside-an-aspect label over real words.
    itm_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Image-text matching: mean cross-entropy over the positive and hard negative (aspect, image) pairs.
    assc_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Aspect-level sentiment: mean cross-entropy of the gold polarity over real aspects.
    itc_loss (`torch.FloatTensor` of shape `()`, *optional*):
        Image-text contrastive loss: mean of the text-to-image and image-to-text InfoNCE over the batch's tweets.
    aoe_logits (`torch.FloatTensor` of shape `(batch_size, num_words, 2)`, *optional*):
        Scores (outside, inside an aspect) of each word, read at its first sub-token.
    itm_logits (`torch.FloatTensor` of shape `(num_pairs, 2)`, *optional*):
        Scores (no match, match) of each pair. The rows start with one positive pair per real aspect, in the
        row-major order of `aspect_mask`. One negative pair follows per real aspect that has a negative, in the
        same order.
    itm_labels (`torch.LongTensor` of shape `(num_pairs,)`, *optional*):
        1 for the positive pairs, 0 for the negative ones.
    itm_negative_tweets (`torch.LongTensor` of shape `(num_real_aspects,)`, *optional*):
        Index in the batch of the tweet whose image is each real aspect's negative, or -1 when every tweet of
        the batch has the aspect's own image.
    assc_logits (`torch.FloatTensor` of shape `(batch_size, num_aspects, 3)`, *optional*):
        Sentiment scores (negative, neutral, positive) of each aspect row; rows of padded aspects are not used.
    itc_logits (`torch.FloatTensor` of shape `(batch_size, batch_size)`, *optional*):
        Similarity of tweet i's text and tweet j's image divided by the temperature, with -inf where j != i
        shows the same image as i.
    """

    loss: torch.FloatTensor | None = None
    aoe_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    assc_loss: torch.FloatTensor | None = None
    itc_loss: torch.FloatTensor | None = None
    aoe_logits: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    itm_labels: torch.LongTensor | None = None
    itm_negative_tweets: torch.LongTensor | None = None
    assc_logits: torch.FloatTensor | None = None
    itc_logits: torch.FloatTensor | None = None


class PretrainingSetupError(ValueError):
    """The objective weights do not fit the model: all zero, or an objective that the model cannot compute."""


class DascoForPretraining(DascoForMabsa):
    """The DASCO backbone with the heads of the pretraining objectives (AOE, ITM, ASSC and ITC).

    The objectives and their weights come from the config (`pretrain_aoe_weight`, `pretrain_itm_weight`,
    `pretrain_assc_weight`, `pretrain_itc_weight`). The input is a batch of the processor with gold aspects and
    polarities, exactly as for fine-tuning.
    """

    def __init__(self, config):
        super().__init__(config)
        text_hidden = config.text_config.hidden_size
        qformer_hidden = config.qformer_config.hidden_size
        self.aoe_head = nn.Linear(text_hidden, 2)
        # Shared by ITM's choice of negatives and by ITC, so ITC trains the similarity that picks the negatives.
        self.itm_text_proj = nn.Linear(text_hidden, config.projection_size)
        self.itm_vision_proj = nn.Linear(qformer_hidden, config.projection_size)
        self.itm_head = nn.Linear(qformer_hidden, 2)
        self.assc_head = nn.Linear(2 * text_hidden, NUM_SENTIMENTS)
        self.check_objectives()
        self.post_init()

    @classmethod
    def from_backbone(cls, backbone: DascoForMabsa) -> "DascoForPretraining":
        """Build a pretraining model with `backbone`'s config and weights; the pretraining heads start random."""
        model = cls(copy.deepcopy(backbone.config))
        missing, unexpected = model.load_state_dict(backbone.state_dict(), strict=False)
        not_heads = [key for key in missing if not key.startswith(PRETRAINING_HEADS)]
        if not_heads or unexpected:
            raise ValueError(f"The backbone does not match: missing {not_heads}, unexpected {unexpected}.")
        return model.to(backbone.device)

    def to_backbone(self) -> DascoForMabsa:
        """Return a `DascoForMabsa` with this model's config and weights, without the pretraining heads.

        The copy is loaded strictly, so every backbone weight is carried over.
        """
        backbone = DascoForMabsa(copy.deepcopy(self.config))
        state = {key: value for key, value in self.state_dict().items() if not key.startswith(PRETRAINING_HEADS)}
        backbone.load_state_dict(state, strict=True)
        return backbone.to(self.device)

    def objective_weights(self) -> dict[str, float]:
        """Weight of each objective that is switched on (weight > 0), by name."""
        weights = {name: getattr(self.config, f"pretrain_{name}_weight") for name in OBJECTIVES}
        return {name: weight for name, weight in weights.items() if weight > 0}

    def freeze_untrained_modules(self) -> list[str]:
        """Stop the gradients of the modules that no switched-on objective trains, and return their names.

        Pretraining never trains the fine-tuning heads (MATE, MASC and the scope loss's projection head) or the
        head of an objective whose weight is 0. ITM's two projections only choose negatives unless ITC is on. Once
        frozen, these modules stay out of the optimizer, and DDP finds no trainable parameter without a gradient.
        """
        weights = self.objective_weights()
        untrained = ["mate_head", "masc_head", "projection_head"]
        heads = {"aoe_head": "aoe", "itm_head": "itm", "assc_head": "assc"}
        untrained += [head for head, objective in heads.items() if objective not in weights]
        if "itc" not in weights:
            untrained += ["itm_text_proj", "itm_vision_proj"]
        aspect_queries = self.config.query_mode != "learned"
        if not self.config.use_image or not aspect_queries or not {"itm", "assc"} & weights.keys():
            # The Q-Former word embeddings only embed aspect queries, which ITM and ASSC run over images (and
            # which query_mode="learned" replaces by the learned tokens).
            untrained.append("embeddings")
        for name in untrained:
            module = getattr(self, name)
            if module is not None:
                module.requires_grad_(False)
        return untrained

    def check_objectives(self) -> None:
        weights = self.objective_weights()
        if not weights:
            raise PretrainingSetupError(
                "Every pretraining weight is 0; set at least one of pretrain_{aoe,itm,assc,itc}_weight "
                "(--aoe-weight, --itm-weight, --assc-weight, --itc-weight)."
            )
        if not self.config.use_image and ("itm" in weights or "itc" in weights):
            raise PretrainingSetupError(
                "ITM and ITC compare images, but use_image=False; set pretrain_itm_weight=0 and pretrain_itc_weight=0 "
                "(--itm-weight 0 --itc-weight 0)."
            )
        if self.config.query_mode == "learned" and "itm" in weights:
            raise PretrainingSetupError(
                "ITM matches each aspect's queries with an image, but query_mode='learned' gives every aspect the same "
                "queries; set pretrain_itm_weight=0 (--itm-weight 0) or use query_mode 'aspect' or 'aspect+learned'."
            )

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
        aspect_mask: torch.LongTensor | None = None,
        aspect_input_ids: torch.LongTensor | None = None,
        aspect_query_mask: torch.LongTensor | None = None,
        syntax_adjacency: torch.FloatTensor | None = None,
        mate_labels: torch.LongTensor | None = None,
        masc_labels: torch.LongTensor | None = None,
        image_keys: list | None = None,
        **kwargs,
    ) -> DascoPretrainingOutput:
        r"""
        Takes the processor's batch with gold aspects (`aspect_spans`, `aspect_mask`, `mate_labels` and
        `masc_labels`); see [`DascoForMabsa.forward`] for the other inputs. Extra keys (`aspect_scopes`,
        `word_heads`, `pixel_keys`, ...) are accepted and ignored.

        image_keys (`list`, *optional*):
            One key per tweet; tweets with equal keys show the same image. The collator passes them with a vision
            feature cache. Without them, two tweets show the same image when their rows of `pixel_values` (or of
            `image_embeds`) are equal. ITM and ITC never use a tweet with the same image as a negative.
        """
        weights = self.objective_weights()
        if aspect_spans is None or aspect_mask is None:
            raise ValueError("Pretraining needs gold aspects: pass aspect_spans and aspect_mask.")
        if "aoe" in weights and mate_labels is None:
            raise ValueError("AOE needs the aspect words' labels: pass mate_labels, or set pretrain_aoe_weight=0.")
        if "assc" in weights and masc_labels is None:
            raise ValueError("ASSC needs the aspects' polarities: pass masc_labels, or set pretrain_assc_weight=0.")

        # 1. As in fine-tuning: image features, tweet-level query output [B, Nq, Dq], fused text states H' [B, T, D].
        image_embeds = self.get_image_features(pixel_values, image_embeds)
        tweet_query_output = self.query_image(self.query_tokens.expand(input_ids.shape[0], -1, -1), image_embeds)
        encoder_hidden = self.encode_text(input_ids, attention_mask, token_type_ids, tweet_query_output)
        text_hidden, _, _ = self.fuse_branches(encoder_hidden, attention_mask, syntax_adjacency)

        # 2. The text alone [B, T, D], for the text side of ITM's negative choice and of ITC: with the visual prefix,
        #    the text states would already contain their own image, and matching them with images would be trivial.
        text_only_hidden = None
        if "itm" in weights or "itc" in weights:
            with torch.set_grad_enabled(torch.is_grad_enabled() and "itc" in weights):
                text_only_hidden = self.encode_text(input_ids, attention_mask, token_type_ids, None)
        same_image = None if image_embeds is None else self.same_image_matrix(image_keys, pixel_values, image_embeds)

        output = DascoPretrainingOutput()
        if "aoe" in weights:
            output.aoe_logits, output.aoe_loss = self.aoe_loss(text_hidden, word_token_start, word_mask, mate_labels)

        # 3. Aspects: queries of the real ones (row-major order of aspect_mask) and their sub-token span masks.
        span_mask = word_spans_to_token_mask(aspect_spans, word_token_start, word_token_end, text_hidden.shape[1])
        if aspect_input_ids is None and self.config.query_mode != "learned":
            aspect_input_ids, aspect_query_mask = gather_span_query_ids(
                qformer_word_ids, qformer_word_mask, aspect_spans, aspect_mask, self.config.qformer_config.pad_token_id
            )
        has_aspects = bool(aspect_mask.any())
        pooled_positives = None
        if "itm" in weights and has_aspects:
            output.itm_logits, output.itm_labels, output.itm_negative_tweets, output.itm_loss, pooled_positives = (
                self.itm_loss(text_only_hidden, tweet_query_output, image_embeds, same_image, span_mask, aspect_mask,
                              aspect_input_ids, aspect_query_mask)
            )  # fmt: skip
        if "assc" in weights and has_aspects:
            if pooled_positives is not None:
                # ITM already ran each aspect's queries over its own image: the same pooled output, projected.
                visual = self.scatter_aspects(self.project_visual(pooled_positives), aspect_mask)
            else:
                visual, _ = self.aspect_visual_features(
                    aspect_input_ids, aspect_query_mask, aspect_mask, image_embeds, tweet_query_output
                )
            output.assc_logits, output.assc_loss = self.assc_loss(text_hidden, span_mask, visual, aspect_mask, masc_labels)
        if "itc" in weights:
            output.itc_logits, output.itc_loss = self.itc_loss(
                text_only_hidden, tweet_query_output, same_image, word_token_start, word_token_end, word_mask
            )

        # 4. Total: sum of weight * loss over the losses computed for this batch.
        computed = {name: getattr(output, f"{name}_loss") for name in weights}
        losses = [weights[name] * loss for name, loss in computed.items() if loss is not None]
        output.loss = sum(losses) if losses else None
        return output

    def aoe_loss(
        self,
        text_hidden: torch.Tensor,
        word_token_start: torch.LongTensor,
        word_mask: torch.LongTensor,
        mate_labels: torch.LongTensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Aspect-oriented enhancement: is each word part of a gold aspect?

        With `h'_w` the fused state H' at the first sub-token of word w, `z_w = aoe_head(h'_w)` (2 scores) and
        `y_w = 1` when w lies inside any gold aspect span (BIO tag B or I in `mate_labels`), else 0:

            L_AOE = -1/|W| * Σ_{w ∈ W} log softmax(z_w)[y_w],   W = the real words (`word_mask == 1`).

        Returns the logits `[batch, words, 2]` and the loss.
        """
        logits = self.aoe_head(first_subtoken_states(text_hidden, word_token_start))
        labels = (mate_labels > 0).long().masked_fill(word_mask == 0, -100)
        loss = F.cross_entropy(logits.reshape(-1, 2).float(), labels.reshape(-1), ignore_index=-100)
        return logits, loss

    def itm_loss(
        self,
        text_only_hidden: torch.Tensor,
        tweet_query_output: torch.Tensor,
        image_embeds: torch.Tensor,
        same_image: torch.BoolTensor,
        span_mask: torch.Tensor,
        aspect_mask: torch.LongTensor,
        aspect_input_ids: torch.LongTensor,
        aspect_query_mask: torch.LongTensor,
    ) -> tuple[torch.Tensor, torch.LongTensor, torch.LongTensor, torch.Tensor, torch.Tensor]:
        r"""Image-text matching of each aspect's queries with its own image and with the hardest other image.

        For each real aspect a of tweet i:
        - its negative tweet is `j* = argmax_{j : image_j ≠ image_i} cos(t_a, v_j)` (see `choose_itm_negatives`);
          an aspect without any tweet of another image in the batch has only its positive pair;
        - for a pair (a, k), `q_{a,k}` is the mean over a's real query positions of the Q-Former output of a's
          queries (`aspect_query_embeds`) over image k, and `z_{a,k} = itm_head(q_{a,k})` (2 scores).

        With P = {(a, i, 1)} ∪ {(a, j*, 0)} the positive and negative pairs:

            L_ITM = -1/|P| * Σ_{(a, k, y) ∈ P} log softmax(z_{a,k})[y]

        Returns the pair logits `[pairs, 2]`, labels `[pairs]`, each real aspect's negative tweet `[aspects]`
        (-1 for none), the loss, and the positive pairs' pooled output `[aspects, qformer_hidden]`.
        """
        tweet_index, aspect_index = aspect_mask.nonzero(as_tuple=True)
        negatives = self.choose_itm_negatives(text_only_hidden, tweet_query_output, same_image, span_mask, aspect_mask)
        has_negative = negatives >= 0

        # Positives, then negatives, in one Q-Former pass: [aspects + negatives, queries, Dq].
        query_embeds, query_mask = self.aspect_query_embeds(
            aspect_input_ids[tweet_index, aspect_index], aspect_query_mask[tweet_index, aspect_index]
        )
        image_rows = torch.cat([tweet_index, negatives[has_negative]])
        query_embeds = torch.cat([query_embeds, query_embeds[has_negative]])
        query_mask = torch.cat([query_mask, query_mask[has_negative]])
        qformer_output = self.run_qformer(query_embeds, image_embeds[image_rows], query_mask).last_hidden_state
        pooled = masked_mean(qformer_output, query_mask[:, None, :]).squeeze(1)

        logits = self.itm_head(pooled)
        labels = torch.cat([torch.ones_like(tweet_index), torch.zeros_like(negatives[has_negative])])
        loss = F.cross_entropy(logits.float(), labels)
        return logits, labels, negatives, loss, pooled[: len(tweet_index)]

    @torch.no_grad()
    def choose_itm_negatives(
        self,
        text_only_hidden: torch.Tensor,
        tweet_query_output: torch.Tensor,
        same_image: torch.BoolTensor,
        span_mask: torch.Tensor,
        aspect_mask: torch.LongTensor,
    ) -> torch.LongTensor:
        r"""Pick each real aspect's hardest negative image in the batch, by argmax, so the choice is deterministic.

        Text side of aspect a: `t_a = itm_text_proj(mean of the text-only encoder states over a's span)`. Image side
        of tweet j: `v_j = itm_vision_proj(mean over the learned queries of the Q-Former output of image j)`. The
        negative of a (of tweet i) is `argmax_j cos(t_a, v_j)` over the tweets j whose image is not i's image.

        Returns one tweet index per real aspect (row-major order of `aspect_mask`), -1 where there is no other
        image. NOTE: an aspect with an empty span (a category not in the text) has `t_a = itm_text_proj(0)`, the
        bias alone, so its negative depends on the images only.
        """
        tweet_index, aspect_index = aspect_mask.nonzero(as_tuple=True)
        span_means = masked_mean(text_only_hidden, span_mask)[tweet_index, aspect_index]
        text_side = F.normalize(self.itm_text_proj(span_means).float(), dim=-1)
        image_side = F.normalize(self.itm_vision_proj(tweet_query_output.mean(1)).float(), dim=-1)
        similarity = text_side @ image_side.T
        excluded = same_image[tweet_index]
        best = similarity.masked_fill(excluded, float("-inf")).argmax(-1)
        return torch.where(excluded.all(-1), torch.full_like(best, -1), best)

    def assc_loss(
        self,
        text_hidden: torch.Tensor,
        span_mask: torch.Tensor,
        visual: torch.Tensor,
        aspect_mask: torch.LongTensor,
        masc_labels: torch.LongTensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Aspect-level sentiment from the aspect's visual tokens and its words together.

        For aspect a: `v_a` is the projected pooled Q-Former output of its queries over its image (what
        `aspect_visual_features` returns), `m_a` the mean of H' over its span's sub-tokens (zeros for an empty
        span), `z_a = assc_head([v_a ; m_a])` (3 scores) and `y_a` its gold polarity (negative=0, neutral=1,
        positive=2):

            L_ASSC = -1/|A| * Σ_{a ∈ A} log softmax(z_a)[y_a],   A = real aspects with a label (not -100).

        Unlike fine-tuning's MASC loss, it has no class weights. Returns the logits `[batch, aspects, 3]` and the
        loss (None when no aspect has a label).
        """
        features = torch.cat([visual.to(text_hidden.dtype), masked_mean(text_hidden, span_mask)], dim=-1)
        logits = self.assc_head(features)
        labels = masc_labels.masked_fill(aspect_mask == 0, -100)
        if not (labels != -100).any():
            return logits, None
        loss = F.cross_entropy(logits.reshape(-1, NUM_SENTIMENTS).float(), labels.reshape(-1), ignore_index=-100)
        return logits, loss

    def itc_loss(
        self,
        text_only_hidden: torch.Tensor,
        tweet_query_output: torch.Tensor,
        same_image: torch.BoolTensor,
        word_token_start: torch.LongTensor,
        word_token_end: torch.LongTensor,
        word_mask: torch.LongTensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Symmetric InfoNCE between the tweets' texts and their images.

        Text side of tweet i: `t_i = itm_text_proj(mean of the text-only encoder states over its words' sub-tokens)`.
        Image side: `v_j = itm_vision_proj(mean over the learned queries of the Q-Former output of image j)`; the
        mean, not BLIP-2's max over queries, so that ITC trains the very similarity that picks ITM's negatives.
        With τ = `pretrain_itc_temperature` and `s_ij = cos(t_i, v_j) / τ`, set to -inf where j ≠ i shows the
        same image as i (a duplicate image is no negative):

            L_ITC = 1/2 * (-1/B Σ_i log softmax_j(s_ij)[i]  -  1/B Σ_j log softmax_i(s_ij)[j])

        A tweet whose image every other tweet of the batch shares keeps only its own pair, so its terms are 0.
        Returns `s [B, B]` and the loss.
        """
        word_tokens = word_tokens_mask(word_mask, word_token_start, word_token_end, text_only_hidden.shape[1])
        text_mean = masked_mean(text_only_hidden, word_tokens[:, None, :]).squeeze(1)
        text_side = F.normalize(self.itm_text_proj(text_mean).float(), dim=-1)
        image_side = F.normalize(self.itm_vision_proj(tweet_query_output.mean(1)).float(), dim=-1)
        logits = text_side @ image_side.T / self.config.pretrain_itc_temperature
        duplicates = same_image & ~torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(duplicates, float("-inf"))
        targets = torch.arange(len(logits), device=logits.device)
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        return logits, loss

    @staticmethod
    def same_image_matrix(
        image_keys: list | None, pixel_values: torch.Tensor | None, image_embeds: torch.Tensor
    ) -> torch.BoolTensor:
        """`[B, B]` True where tweets i and j show the same image: equal keys, else equal pixel or feature rows."""
        rows = pixel_values if pixel_values is not None else image_embeds
        size = len(image_embeds)
        same = torch.eye(size, dtype=torch.bool, device=image_embeds.device)
        for i in range(size):
            for j in range(i + 1, size):
                equal = image_keys[i] == image_keys[j] if image_keys is not None else torch.equal(rows[i], rows[j])
                same[i, j] = same[j, i] = bool(equal)
        return same

    def scatter_aspects(self, values: torch.Tensor, aspect_mask: torch.LongTensor) -> torch.Tensor:
        """Place one row per real aspect `[aspects, D]` into `[batch, num_aspects, D]`, zeros for padded rows."""
        scattered = values.new_zeros(*aspect_mask.shape, values.shape[-1])
        scattered[aspect_mask.bool()] = values
        return scattered


__all__ = ["DascoForPretraining", "DascoPretrainingOutput"]
