"""Pieces of `train.py` that tests and other scripts reuse: batching records, predicting, scoring."""

import json
import logging
from collections import Counter
from pathlib import Path

import torch

from .data import find_split_file, read_split
from .images import ImageLoader
from .metrics import mabsa_scores, masc_scores, span_scores
from .records import ID2LABEL, MabsaRecord
from .span_utils import decode_bio


logger = logging.getLogger(__name__)

# Dev metric used for model selection when the user does not name one.
DEFAULT_SELECTION_METRIC = {"mate": "mate_f1", "masc": "masc_accuracy", "jmasa": "jmasa_f1"}


class MabsaCollator:
    """Turn a list of records into a model batch: load each tweet's own image and run the processor."""

    def __init__(self, processor, image_loader: ImageLoader | None, with_labels: bool = True):
        self.processor = processor
        self.image_loader = image_loader
        self.with_labels = with_labels

    def __call__(self, records: list[MabsaRecord]) -> dict:
        images = None if self.image_loader is None else [self.image_loader.load(record) for record in records]
        spans = [[(aspect.start, aspect.end) for aspect in record.aspects] for record in records]
        polarities = [[aspect.polarity for aspect in record.aspects] for record in records]
        parsed = all(record.dependency_heads is not None for record in records)
        batch = self.processor(
            [record.words for record in records],
            images=images,
            aspect_spans=spans,
            polarities=polarities if self.with_labels else None,
            dependency_heads=[record.dependency_heads for record in records] if parsed else None,
        )
        batch = dict(batch)
        batch["tweet_ids"] = [record.tweet_id for record in records]
        return batch


def load_splits(data_dir: str | Path, data_format: str | None, splits=("train", "dev", "test")) -> dict:
    """Read each split of a data folder into records."""
    return {split: read_split(find_split_file(data_dir, split, data_format), data_format) for split in splits}


def class_weights_from_records(records: list[MabsaRecord]) -> list[float]:
    """Balanced MASC weights `n / (classes * n_c)` from the training split's aspect polarities."""
    counts = Counter(aspect.polarity for record in records for aspect in record.aspects)
    missing = [ID2LABEL[label] for label in ID2LABEL if counts[label] == 0]
    if missing:
        raise ValueError(
            f"The training split has no {', '.join(missing)} aspects, so balanced class weights are undefined; "
            "pass --masc-class-weights none or explicit weights."
        )
    total = sum(counts.values())
    return [round(total / (len(ID2LABEL) * counts[label]), 4) for label in sorted(ID2LABEL)]


def count_truncated_aspects(batch: dict) -> int:
    """Number of aspects in a batch that lie past the processor's `max_length`."""
    truncated = batch.get("aspect_truncated")
    return 0 if truncated is None else int(truncated.sum())


def model_inputs(batch: dict, with_labels: bool, with_aspects: bool = True) -> dict:
    """Select what the model's forward takes from a collated batch."""
    skip = {"tweet_ids", "aspect_truncated"}
    if not with_labels:
        skip |= {"mate_labels", "masc_labels"}
    if not with_aspects:
        skip |= {"aspect_spans", "aspect_scopes", "aspect_mask", "aspect_input_ids", "aspect_query_mask"}
    return {key: value for key, value in batch.items() if key not in skip}


def extracted_aspects(outputs, tweet_ids: list[str]) -> list[tuple[str, int, int, int]]:
    """(tweet_id, start, end, polarity) of the aspects a JMASA forward extracted and classified."""
    predictions = []
    spans = outputs.aspect_spans.tolist()
    mask = outputs.aspect_mask.tolist()
    labels = outputs.masc_logits.argmax(-1).tolist()
    for row, tweet_id in enumerate(tweet_ids):
        for column, keep in enumerate(mask[row]):
            if keep:
                start, end = spans[row][column]
                predictions.append((tweet_id, start, end, labels[row][column]))
    return predictions


def extracted_spans(outputs, word_mask: torch.Tensor, tweet_ids: list[str]) -> list[tuple[str, int, int]]:
    """(tweet_id, start, end) decoded (strict IOB2) from the MATE logits."""
    tags = outputs.mate_logits.argmax(-1).tolist()
    lengths = word_mask.sum(-1).tolist()
    return [
        (tweet_id, start, end)
        for tweet_id, row, length in zip(tweet_ids, tags, lengths)
        for start, end in decode_bio(row[:length])
    ]


def classified_gold_aspects(outputs, batch: dict, tweet_ids: list[str]) -> dict[tuple[str, int, int], int]:
    """Map each gold aspect that fit in the text to its predicted polarity."""
    predictions = {}
    spans = batch["aspect_spans"].tolist()
    mask = batch["aspect_mask"].tolist()
    labels = outputs.masc_logits.argmax(-1).tolist()
    for row, tweet_id in enumerate(tweet_ids):
        for column, keep in enumerate(mask[row]):
            if keep:
                start, end = spans[row][column]
                predictions[(tweet_id, start, end)] = labels[row][column]
    return predictions


def gold_aspects(records: list[MabsaRecord]) -> list[tuple[str, int, int, int]]:
    """Every gold aspect of the records, including those past the maximum length."""
    return [
        (record.tweet_id, aspect.start, aspect.end, aspect.polarity) for record in records for aspect in record.aspects
    ]


def score_predictions(task: str, gold: list, predictions: dict) -> dict[str, float]:
    """Score gathered predictions for a task; JMASA also reports MATE and MASC."""
    if task == "mate":
        scores = span_scores([aspect[:3] for aspect in gold], predictions["spans"])
        return {f"mate_{name}": value for name, value in scores.items()}
    if task == "masc":
        scores = masc_scores(gold, predictions["gold_polarities"])
        return {f"masc_{name}": value for name, value in scores.items()}
    return mabsa_scores(gold, predictions["joint"], predictions["gold_polarities"])


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
