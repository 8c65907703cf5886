"""Pieces of `train.py` that tests and other scripts reuse: batching records, predicting, scoring."""

import json
import logging
import math
from collections import Counter
from pathlib import Path

import torch
from transformers import get_scheduler

from .data import DataFormatError, find_split_file, read_split
from .feature_cache import BLANK_IMAGE_KEY, image_file_key, imported_image_key
from .images import ImageLoader
from .metrics import mabsa_scores, masc_scores, span_scores
from .records import ID2LABEL, MabsaRecord
from .span_utils import decode_bio


logger = logging.getLogger(__name__)

# Dev metric used for model selection when the user does not name one.
DEFAULT_SELECTION_METRIC = {"mate": "mate_f1", "masc": "masc_accuracy", "jmasa": "jmasa_f1"}
# Sources of each gold aspect's Q-Former queries: its words or its category (train.py --aspect-queries).
ASPECT_QUERY_SOURCES = ("term", "category")


class MabsaCollator:
    """Turn a list of records into a model batch: load each tweet's own image and run the processor.

    With a vision feature cache, images whose features are cached are not loaded: the batch then carries
    `image_keys` (one per tweet) and `pixel_keys` (one per row of `pixel_values`) for `attach_image_embeds`.
    Records whose features were imported (`imported_image_key`) need no image file and no `image_loader`.
    With `aspect_queries="category"`, each gold aspect's Q-Former queries come from its category ("Facility")
    instead of its words, and an aspect without a category raises DataFormatError.
    """

    def __init__(
        self,
        processor,
        image_loader: ImageLoader | None,
        with_labels: bool = True,
        feature_cache=None,
        aspect_queries: str = "term",
    ):
        if aspect_queries not in ASPECT_QUERY_SOURCES:
            raise ValueError(f"aspect_queries={aspect_queries!r} is not supported; pass one of {ASPECT_QUERY_SOURCES}.")
        self.processor = processor
        self.image_loader = image_loader
        self.with_labels = with_labels
        self.feature_cache = feature_cache
        self.aspect_queries = aspect_queries

    def __call__(self, records: list[MabsaRecord]) -> dict:
        if self.feature_cache is not None:
            return self.collate_with_cache(records)
        images = None if self.image_loader is None else [self.image_loader.load(record) for record in records]
        return self.encode(records, images)

    def collate_with_cache(self, records: list[MabsaRecord]) -> dict:
        image_keys, pixel_keys, images = [], [], []
        for record in records:
            key = self.cached_key(record)
            if key is None:
                if self.image_loader is None:
                    raise ValueError(
                        f"Tweet {record.tweet_id} ({record.source}) has no cached features for image "
                        f"{record.image_id!r}, and the collator has no image loader to read the image."
                    )
                blanks_before = self.image_loader.num_blank
                image = self.image_loader.load(record)
                if self.image_loader.num_blank > blanks_before:
                    key = BLANK_IMAGE_KEY
                else:
                    key = image_file_key(record.image_id, self.image_loader.image_dir / record.image_id)
                if not self.feature_cache.contains(key) and key not in pixel_keys:
                    pixel_keys.append(key)
                    images.append(image)
            image_keys.append(key)
        batch = self.encode(records, images or None)
        batch["image_keys"], batch["pixel_keys"] = image_keys, pixel_keys
        return batch

    def cached_key(self, record: MabsaRecord) -> str | None:
        """Return the cache key of a record's features when they are cached, else None.

        The entry of the image file comes first. Without the file or its entry, the features imported for the
        record's image id serve, so a record with imported features needs no image file at all.
        """
        image_dir = None if self.image_loader is None else self.image_loader.image_dir
        if image_dir is not None and (image_dir / record.image_id).is_file():
            key = image_file_key(record.image_id, image_dir / record.image_id)
            if self.feature_cache.contains(key):
                return key
        key = imported_image_key(record.image_id)
        return key if self.feature_cache.contains(key) else None

    def encode(self, records: list[MabsaRecord], images) -> dict:
        spans = [[(aspect.start, aspect.end) for aspect in record.aspects] for record in records]
        polarities = [[aspect.polarity for aspect in record.aspects] for record in records]
        parsed = all(record.dependency_heads is not None for record in records)
        batch = self.processor(
            [record.words for record in records],
            images=images,
            aspect_spans=spans,
            polarities=polarities if self.with_labels else None,
            dependency_heads=[record.dependency_heads for record in records] if parsed else None,
            aspect_terms=aspect_category_terms(records) if self.aspect_queries == "category" else None,
        )
        batch = dict(batch)
        batch["tweet_ids"] = [record.tweet_id for record in records]
        return batch


def records_needing_images(records: list[MabsaRecord], feature_cache) -> list[MabsaRecord]:
    """Return the records whose image must be read: all of them, except those with imported features in the cache.

    A record whose features are cached under its image file's key is kept, because the file's bytes give the key.
    """
    if feature_cache is None:
        return list(records)
    return [record for record in records if not feature_cache.contains(imported_image_key(record.image_id))]


def attach_image_embeds(batch: dict, feature_cache, device) -> dict:
    """Replace a cached batch's images by their vision features (a no-op without a cache)."""
    if feature_cache is None:
        return batch
    pixel_values = batch.pop("pixel_values", None)
    batch["image_embeds"] = feature_cache.image_embeds(batch["image_keys"], batch["pixel_keys"], pixel_values, device)
    return batch


def aspect_category_terms(records: list[MabsaRecord]) -> list[list[str]]:
    """Return per record and aspect the aspect's category, as the processor's `aspect_terms`."""
    terms = []
    for record in records:
        for aspect in record.aspects:
            if not aspect.category:
                raise DataFormatError(
                    f"{record.source}: aspect {' '.join(aspect.term)!r} has no category, but --aspect-queries "
                    "category builds each aspect's queries from its category. Give every aspect a category "
                    "(review_aspect_categories in the review JSON) or use --aspect-queries term."
                )
        terms.append([aspect.category for aspect in record.aspects])
    return terms


def load_splits(
    data_dir: str | Path, data_format: str | None, splits=("train", "dev", "test"), unknown_polarity: str = "skip"
) -> dict:
    """Read each split of a data folder into records. `unknown_polarity` applies to the review format only."""
    return {
        split: read_split(find_split_file(data_dir, split, data_format), data_format, unknown_polarity)
        for split in splits
    }


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


def predict_tweets(model, batch: dict, task: str) -> list[dict]:
    """One prediction row per tweet of the batch: extracted spans (MATE), extracted aspects with polarity
    (JMASA) and the polarity of each gold aspect that fit in the text (MASC, JMASA)."""
    rows = [{"tweet_id": tweet_id, "spans": [], "joint": [], "gold_polarities": []} for tweet_id in batch["tweet_ids"]]
    if task == "mate":
        outputs = model(**model_inputs(batch, with_labels=False), task="mate")
        tags = outputs.mate_logits.argmax(-1).tolist()
        for row, tweet_tags, length in zip(rows, tags, batch["word_mask"].sum(-1).tolist()):
            row["spans"] = [(row["tweet_id"], start, end) for start, end in decode_bio(tweet_tags[:length])]
        return rows

    classified = model(**model_inputs(batch, with_labels=False), task="masc")
    for row, aspects in zip(rows, _aspects_with_labels(classified, batch["aspect_spans"], batch["aspect_mask"])):
        row["gold_polarities"] = [((row["tweet_id"], start, end), label) for start, end, label in aspects]
    if task == "jmasa":
        joint = model(**model_inputs(batch, with_labels=False, with_aspects=False), task="jmasa")
        for row, aspects in zip(rows, _aspects_with_labels(joint, joint.aspect_spans, joint.aspect_mask)):
            row["joint"] = [(row["tweet_id"], start, end, label) for start, end, label in aspects]
    return rows


def _aspects_with_labels(outputs, spans: torch.Tensor, mask: torch.Tensor) -> list[list[tuple[int, int, int]]]:
    """Per tweet, (start, end, predicted label) of each real aspect row."""
    labels = outputs.masc_logits.argmax(-1).tolist()
    result = []
    for tweet_spans, tweet_mask, tweet_labels in zip(spans.tolist(), mask.tolist(), labels):
        result.append([(start, end, label) for (start, end), keep, label in zip(tweet_spans, tweet_mask, tweet_labels) if keep])
    return result


def merge_tweet_rows(rows: list[dict]) -> dict:
    """Combine per-tweet rows into the prediction sets that `score_predictions` takes."""
    merged = {"spans": [], "joint": [], "gold_polarities": {}}
    for row in rows:
        merged["spans"] += row["spans"]
        merged["joint"] += row["joint"]
        merged["gold_polarities"].update(dict(row["gold_polarities"]))
    return merged


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


def make_linear_schedule(args, optimizer, train_loader, accelerator):
    """Build the prepared linear warmup and decay schedule of `--warmup-ratio` over `--num-train-epochs`.

    Call it after `accelerator.prepare` has sharded `train_loader`, so the step counts are per process. Returns
    the scheduler, the optimizer steps per epoch and the optimizer steps in all.
    """
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    max_steps = steps_per_epoch * args.num_train_epochs
    # The prepared scheduler steps once per process for each optimizer step, so its step counts are scaled.
    scheduler = get_scheduler(
        "linear", optimizer, num_warmup_steps=int(args.warmup_ratio * max_steps) * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )  # fmt: skip
    return accelerator.prepare(scheduler), steps_per_epoch, max_steps


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
