"""Processor of DASCO: BLIP-2 image processor, text-encoder tokenizer and Q-Former tokenizer in one object."""

import copy

import torch
from transformers import BatchFeature, ProcessorMixin

from .dependency_utils import span_scope, subtoken_adjacency
from .image_utils import to_rgb


class DascoProcessor(ProcessorMixin):
    r"""
    Turn pre-tokenized tweets, their images and their aspects into the tensors of [`DascoForMabsa`].

    Words are tokenized one by one, so every word owns at least one sub-token (the tokenizer's unknown token
    when it yields none) and `word_token_start`/`word_token_end` align words with sub-tokens exactly. When a
    tweet is longer than `max_length` sub-tokens, whole words are dropped from its end. Aspect queries are
    built from all words, so they are never cut. An aspect whose words do not fit is flagged in
    `aspect_truncated` and left out of `aspect_mask`. An aspect may also have an empty span (`start == end`)
    when it does not occur in the text, such as a category ("food", "service"): its query then comes from its
    term in `aspect_terms` and its scope is the whole tweet.

    Args:
        image_processor: a BLIP-2 image processor (`BlipImageProcessor`).
        tokenizer: the text encoder's tokenizer (BERT family, WordPiece).
        qformer_tokenizer: the Q-Former's tokenizer (`bert-base-uncased` vocabulary in BLIP-2).
        max_length (`int`, *optional*, defaults to 128): maximum text length in sub-tokens, special tokens included.
        scope_hops (`int`, *optional*, defaults to 2): the scope rule's hop limit, as `DascoConfig.scope_hops`.
    """

    def __init__(
        self, image_processor, tokenizer, qformer_tokenizer, max_length: int = 128, scope_hops: int = 2, **kwargs
    ):
        self.max_length = max_length
        self.scope_hops = scope_hops
        if qformer_tokenizer is tokenizer:
            # ProcessorMixin.save_pretrained edits each tokenizer's init_kwargs; one shared object breaks it.
            qformer_tokenizer = copy.deepcopy(tokenizer)
        super().__init__(image_processor, tokenizer, qformer_tokenizer, **kwargs)

    def __call__(
        self,
        words: list[list[str]],
        images=None,
        aspect_spans: list[list[tuple[int, int]]] | None = None,
        aspect_scopes: list[list[tuple[int, int]]] | None = None,
        polarities: list[list[int]] | None = None,
        dependency_heads: list[list[int]] | None = None,
        image_embeds: torch.Tensor | None = None,
        aspect_terms: list[list[str | None]] | None = None,
        return_tensors: str = "pt",
        **kwargs,
    ) -> BatchFeature:
        r"""
        Args:
            words: one list of words per tweet (the datasets are pre-tokenized).
            images: one PIL image per tweet, of any mode; converted to RGB.
            aspect_spans: per tweet, word spans `[start, end)` of the aspects. Gives `mate_labels` (BIO) too. An
                empty span (`start == end`) is an aspect without a span in the text and needs its term in
                `aspect_terms`.
            aspect_scopes: per tweet and aspect, the word span `[start, end)` of its scope. Without it, scopes
                follow the `scope_hops` rule on `dependency_heads`, or cover the whole tweet without a parse.
            polarities: per tweet and aspect, label ids (negative=0, neutral=1, positive=2); gives `masc_labels`.
            dependency_heads: per tweet, the 0-based head of each word (the root points to itself); gives
                `word_heads` and the sub-token `syntax_adjacency`.
            image_embeds: `[batch, patches, vision_hidden]` vision features to pass through instead of images.
            aspect_terms: per tweet and aspect, a string whose Q-Former tokens become the aspect's queries in
                `aspect_input_ids`, or None to build the queries from the words of its span. Without
                `aspect_spans`, every aspect gets an empty span, so the terms alone are classified.
        """
        if return_tensors != "pt":
            raise ValueError(f"DascoProcessor returns PyTorch tensors only; got return_tensors={return_tensors!r}.")
        if isinstance(words, list) and words and isinstance(words[0], str):
            raise ValueError("Pass words as a list of tweets, each a list of words: [['Chuck', 'Bass', ...], ...].")

        encoding = self.encode_words(words)
        if aspect_terms is not None and aspect_spans is None:
            aspect_spans = [[(0, 0)] * len(terms) for terms in aspect_terms]
        if dependency_heads is not None:
            encoding.update(self.encode_dependencies(words, dependency_heads, encoding))
            if aspect_spans is not None and aspect_scopes is None:
                aspect_scopes = [
                    [span_scope(heads, start, end, self.scope_hops) for start, end in spans]
                    for heads, spans in zip(dependency_heads, aspect_spans)
                ]
        if aspect_spans is not None:
            encoding.update(
                self.encode_aspects(words, aspect_spans, aspect_scopes, polarities, encoding, aspect_terms)
            )
        if images is not None:
            rgb_images = [to_rgb(image) for image in images]
            encoding["pixel_values"] = self.image_processor(rgb_images, return_tensors="pt")["pixel_values"]
        if image_embeds is not None:
            encoding["image_embeds"] = image_embeds
        return BatchFeature(encoding)

    def tokenize_word(self, tokenizer, word: str) -> list[int]:
        """Sub-token ids of one word; the unknown token when the tokenizer yields nothing (e.g. a control char)."""
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))
        return ids if ids else [tokenizer.unk_token_id]

    def encode_words(self, words: list[list[str]]) -> dict:
        """Tokenize each tweet word by word into `[CLS] words [SEP]`, dropping whole words past `max_length`."""
        tokenizer = self.tokenizer
        rows, starts, ends, qformer_rows = [], [], [], []
        for tweet_words in words:
            ids, word_start, word_end = [tokenizer.cls_token_id], [], []
            for word in tweet_words:
                word_ids = self.tokenize_word(tokenizer, word)
                if len(ids) + len(word_ids) + 1 > self.max_length:
                    break
                word_start.append(len(ids))
                ids.extend(word_ids)
                word_end.append(len(ids))
            ids.append(tokenizer.sep_token_id)
            rows.append(ids)
            starts.append(word_start)
            ends.append(word_end)
            qformer_rows.append([self.tokenize_word(self.qformer_tokenizer, word) for word in tweet_words])

        num_words = max([len(tweet_words) for tweet_words in words] + [1])
        input_ids, attention_mask = _pad_2d(rows, tokenizer.pad_token_id)
        word_token_start, word_mask = _pad_2d(starts, 0, width=num_words)
        word_token_end, _ = _pad_2d(ends, 0, width=num_words)
        qformer_word_ids, qformer_word_mask = _pad_3d(qformer_rows, self.qformer_tokenizer.pad_token_id, num_words)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": torch.zeros_like(input_ids),
            "word_token_start": word_token_start,
            "word_token_end": word_token_end,
            "word_mask": word_mask,
            "qformer_word_ids": qformer_word_ids,
            "qformer_word_mask": qformer_word_mask,
        }

    def encode_dependencies(self, words, dependency_heads, encoding) -> dict:
        """Word heads padded with -1, and the sub-token dependency adjacency `[batch, tokens, tokens]`."""
        num_tokens = encoding["input_ids"].shape[1]
        word_heads = torch.full(encoding["word_mask"].shape, -1, dtype=torch.long)
        adjacency = torch.zeros(len(words), num_tokens, num_tokens)
        for row, heads in enumerate(dependency_heads):
            if len(heads) != len(words[row]):
                raise ValueError(
                    f"Tweet {row} of the batch has {len(words[row])} words but {len(heads)} dependency heads; "
                    "parse the given words without re-tokenizing them (one head per word)."
                )
            word_heads[row, : len(heads)] = torch.tensor(heads, dtype=torch.long)
            kept = int(encoding["word_mask"][row].sum())
            starts = encoding["word_token_start"][row, :kept].tolist()
            ends = encoding["word_token_end"][row, :kept].tolist()
            adjacency[row] = subtoken_adjacency(heads, starts, ends, num_tokens)
        return {"word_heads": word_heads, "syntax_adjacency": adjacency}

    def encode_aspects(self, words, aspect_spans, aspect_scopes, polarities, encoding, aspect_terms=None) -> dict:
        """Batch aspects as `[batch, aspects, ...]` with masks, their Q-Former queries, BIO and sentiment labels."""
        batch_size = len(words)
        num_aspects = max([len(spans) for spans in aspect_spans] + [1])
        kept_words = encoding["word_mask"].sum(-1).tolist()

        spans = torch.zeros(batch_size, num_aspects, 2, dtype=torch.long)
        scopes = torch.zeros(batch_size, num_aspects, 2, dtype=torch.long)
        aspect_mask = torch.zeros(batch_size, num_aspects, dtype=torch.long)
        truncated = torch.zeros(batch_size, num_aspects, dtype=torch.long)
        masc_labels = torch.full((batch_size, num_aspects), -100, dtype=torch.long)
        mate_labels = torch.full(encoding["word_mask"].shape, -100, dtype=torch.long)
        query_rows = []
        for row, tweet_spans in enumerate(aspect_spans):
            tweet_terms = _check_terms(row, tweet_spans, aspect_terms)
            _check_spans(row, tweet_spans, len(words[row]), tweet_terms)
            mate_labels[row, : kept_words[row]] = torch.tensor(_bio_tags(tweet_spans, kept_words[row]), dtype=torch.long)
            tweet_queries = []
            for column, (start, end) in enumerate(tweet_spans):
                spans[row, column] = torch.tensor([start, end])
                scope = aspect_scopes[row][column] if aspect_scopes is not None else (0, len(words[row]))
                scopes[row, column] = torch.tensor([scope[0], min(scope[1], kept_words[row])])
                fits = end <= kept_words[row]
                aspect_mask[row, column] = int(fits)
                truncated[row, column] = int(not fits)
                if polarities is not None and fits:
                    masc_labels[row, column] = polarities[row][column]
                if tweet_terms[column] is not None:
                    tweet_queries.append(self.tokenize_word(self.qformer_tokenizer, tweet_terms[column]))
                    continue
                word_ids = encoding["qformer_word_ids"][row, start:end]
                word_mask = encoding["qformer_word_mask"][row, start:end].bool()
                tweet_queries.append(word_ids[word_mask].tolist())
            query_rows.append(tweet_queries)

        aspect_input_ids, aspect_query_mask = _pad_3d(query_rows, self.qformer_tokenizer.pad_token_id, num_aspects)
        result = {
            "aspect_spans": spans,
            "aspect_scopes": scopes,
            "aspect_mask": aspect_mask,
            "aspect_truncated": truncated,
            "aspect_input_ids": aspect_input_ids,
            "aspect_query_mask": aspect_query_mask,
            "mate_labels": mate_labels,
        }
        if polarities is not None:
            result["masc_labels"] = masc_labels
        return result


def _check_terms(row: int, spans: list[tuple[int, int]], aspect_terms: list[list[str | None]] | None) -> list:
    """Return the aspect terms of tweet `row`, one per span (None where the span's words give the query)."""
    if aspect_terms is None:
        return [None] * len(spans)
    terms = aspect_terms[row]
    if len(terms) != len(spans):
        raise ValueError(
            f"Tweet {row} of the batch has {len(spans)} aspect spans but {len(terms)} aspect terms; pass one term "
            "(or None) per span."
        )
    return list(terms)


def _check_spans(row: int, spans: list[tuple[int, int]], num_words: int, terms: list[str | None]) -> None:
    for column, ((start, end), term) in enumerate(zip(spans, terms)):
        if not 0 <= start <= end <= num_words:
            raise ValueError(
                f"Tweet {row} of the batch has {num_words} words but an aspect span ({start}, {end}); "
                "spans are word indices [start, end) with start <= end <= number of words."
            )
        if start == end and not term:
            raise ValueError(
                f"Aspect {column} of tweet {row} has the empty span ({start}, {end}) and no term; an aspect without "
                "a span in the text needs its term in aspect_terms to build its queries."
            )


def _bio_tags(spans: list[tuple[int, int]], num_words: int) -> list[int]:
    """BIO tag ids (O=0, B=1, I=2) of the first `num_words` words; later words are cut off."""
    tags = [0] * num_words
    for start, end in spans:
        for position in range(start, min(end, num_words)):
            tags[position] = 1 if position == start else 2
    return tags


def _pad_2d(rows: list[list[int]], pad_value: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    width = width if width is not None else max([len(row) for row in rows] + [1])
    values = torch.full((len(rows), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        values[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[index, : len(row)] = 1
    return values, mask


def _pad_3d(rows: list[list[list[int]]], pad_value: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    depth = max([len(item) for row in rows for item in row] + [1])
    values = torch.full((len(rows), width, depth), pad_value, dtype=torch.long)
    mask = torch.zeros((len(rows), width, depth), dtype=torch.long)
    for index, row in enumerate(rows):
        for position, item in enumerate(row):
            values[index, position, : len(item)] = torch.tensor(item, dtype=torch.long)
            mask[index, position, : len(item)] = 1
    return values, mask


__all__ = ["DascoProcessor"]
