"""Tensor helpers that turn word spans into sub-token masks, Q-Former queries and back into spans.

Shipped as remote code with the model, so it imports only torch and the standard library.
"""

import torch


# BIO tag ids of the MATE head: O=0, B=1, I=2.
TAG_OUTSIDE, TAG_BEGIN, TAG_INSIDE = 0, 1, 2


def decode_bio(tag_ids: list[int]) -> list[tuple[int, int]]:
    """Decode strict IOB2 tags into word spans `[start, end)`.

    A span starts at `B` and extends over the `I` tags that follow it. An `I` that does not continue a span
    does not start one: it is ignored.
    """
    spans = []
    start = None
    for position, tag in enumerate(tag_ids):
        if tag == TAG_INSIDE and start is not None:
            continue
        if start is not None:
            spans.append((start, position))
            start = None
        if tag == TAG_BEGIN:
            start = position
    if start is not None:
        spans.append((start, len(tag_ids)))
    return spans


def word_spans_to_token_mask(
    spans: torch.LongTensor, word_token_start: torch.LongTensor, word_token_end: torch.LongTensor, num_tokens: int
) -> torch.Tensor:
    """Mark the sub-tokens covered by word spans.

    Args:
        spans: `[batch, aspects, 2]` word spans `[start, end)`; rows of padded aspects may hold anything valid.
            An empty span (`start == end`) marks no sub-token: it is an aspect without a span in the text, or a
            padded row.
        word_token_start: `[batch, words]` index of the first sub-token of each word.
        word_token_end: `[batch, words]` index one past the last sub-token of each word.
        num_tokens: length of the text sequence.

    Returns:
        `[batch, aspects, num_tokens]` float mask, 1.0 on the sub-tokens of each span.
    """
    num_words = word_token_start.shape[1]
    first_word = spans[..., 0].clamp(0, num_words - 1)
    last_word = (spans[..., 1] - 1).clamp(0, num_words - 1)
    token_start = torch.gather(word_token_start, 1, first_word)
    token_end = torch.gather(word_token_end, 1, last_word)
    positions = torch.arange(num_tokens, device=spans.device)
    inside = (positions[None, None, :] >= token_start[..., None]) & (positions[None, None, :] < token_end[..., None])
    not_empty = spans[..., 1] > spans[..., 0]
    return (inside & not_empty[..., None]).float()


def first_subtoken_states(hidden: torch.Tensor, word_token_start: torch.LongTensor) -> torch.Tensor:
    """Pick each word's state at its first sub-token: `hidden [batch, tokens, dim]` to `[batch, words, dim]`."""
    return torch.gather(hidden, 1, word_token_start.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def word_tokens_mask(
    word_mask: torch.LongTensor, word_token_start: torch.LongTensor, word_token_end: torch.LongTensor, num_tokens: int
) -> torch.LongTensor:
    """Mark the sub-tokens of each tweet's kept words (no special tokens, no padding): `[batch, num_tokens]`."""
    kept_words = word_mask.sum(-1)
    whole_tweet = torch.stack([torch.zeros_like(kept_words), kept_words], dim=-1)[:, None, :]
    return word_spans_to_token_mask(whole_tweet, word_token_start, word_token_end, num_tokens)[:, 0]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average `values [batch, tokens, dim]` over the tokens of each `mask [batch, rows, tokens]` row.

    Returns `[batch, rows, dim]`; a row with an empty mask gives zeros.
    """
    mask = mask.to(values.dtype)
    total = torch.einsum("brt,btd->brd", mask, values)
    count = mask.sum(-1, keepdim=True).clamp(min=1.0)
    return total / count


def gather_span_query_ids(
    qformer_word_ids: torch.LongTensor,
    qformer_word_mask: torch.Tensor,
    spans: torch.LongTensor,
    aspect_mask: torch.Tensor,
    pad_token_id: int,
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Build each aspect's Q-Former query ids by concatenating the Q-Former sub-tokens of its words.

    The processor builds gold aspect queries with the same rule, so a span gets the same query whether it is
    gold or extracted by the MATE head.

    Args:
        qformer_word_ids: `[batch, words, sub_tokens]` Q-Former token ids of each word, padded.
        qformer_word_mask: `[batch, words, sub_tokens]` 1 for real sub-tokens.
        spans: `[batch, aspects, 2]` word spans `[start, end)`.
        aspect_mask: `[batch, aspects]` 1 for real aspects.
        pad_token_id: id used for padding the result.

    Returns:
        `aspect_input_ids [batch, aspects, query_tokens]` and `aspect_query_mask` of the same shape.
    """
    batch_size, num_aspects = aspect_mask.shape
    queries = []
    for batch_index in range(batch_size):
        for aspect_index in range(num_aspects):
            if not aspect_mask[batch_index, aspect_index]:
                queries.append(qformer_word_ids.new_empty(0))
                continue
            start, end = spans[batch_index, aspect_index].tolist()
            ids = qformer_word_ids[batch_index, start:end]
            keep = qformer_word_mask[batch_index, start:end].bool()
            queries.append(ids[keep])
    query_length = max([len(query) for query in queries] + [1])
    input_ids = qformer_word_ids.new_full((batch_size * num_aspects, query_length), pad_token_id)
    query_mask = torch.zeros_like(input_ids)
    for row, query in enumerate(queries):
        input_ids[row, : len(query)] = query
        query_mask[row, : len(query)] = 1
    shape = (batch_size, num_aspects, query_length)
    return input_ids.view(shape), query_mask.view(shape)
