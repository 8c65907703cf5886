"""Reader for the review JSON of the hotel-review fork of DASCO (reviews matched to photos).

Each record is an object with `review` (text), `review_aspects` (`{term, from, to}` with 0-based, inclusive
indices of whitespace-separated words), `review_opinion_categories` (`Positive`, `Negative`, `Neutral` or
`Unknown`, parallel to the aspects), optional `review_aspect_categories` (e.g. "Facility"), and `image_id`
(or `id`) naming the photo. A record's optional `text_id` (`{hotel}_{sentence}` in the fork's pipeline) becomes
its `tweet_id`, so split files can name it; records without one get `"{file stem}-{index}"`.
"""

import json
from pathlib import Path

from .data import DataFormatError
from .records import AspectSpan, MabsaRecord


REVIEW_LABELS = {"Negative": 0, "Neutral": 1, "Positive": 2}
UNKNOWN_LABEL = "Unknown"


def read_review_json(path: str | Path, unknown: str = "skip") -> tuple[list[MabsaRecord], int]:
    """Read a review JSON file into records; returns them and the number of `Unknown` aspects skipped.

    `unknown="skip"` leaves aspects labelled `Unknown` out (and counts them); `unknown="error"` rejects them.
    Aspect categories, when present, are kept as each aspect's `category`, so they can serve as queries. Each
    record's `skipped_aspects` holds its own count. A `text_id` that occurs twice in the file is an error.
    """
    if unknown not in ("skip", "error"):
        raise ValueError(f"unknown={unknown!r} is not supported; pass 'skip' or 'error'.")
    path = Path(path)
    try:
        raw_records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path} is not valid JSON ({error}); expected a list of review objects.") from error
    if not isinstance(raw_records, list):
        raise DataFormatError(f"{path} contains a {type(raw_records).__name__}; expected a list of review objects.")

    records, skipped, sources_by_id = [], 0, {}
    for number, raw in enumerate(raw_records, start=1):
        record, record_skipped = _review_record(raw, f"{path}, record {number}", f"{path.stem}-{number - 1}", unknown)
        if record.tweet_id in sources_by_id:
            raise DataFormatError(
                f"text_id {record.tweet_id!r} occurs twice: in {sources_by_id[record.tweet_id]} and in {record.source}. "
                "Each record needs its own text_id, because splits and predictions refer to records by it."
            )
        sources_by_id[record.tweet_id] = record.source
        records.append(record)
        skipped += record_skipped
    return records, skipped


def _review_record(raw: dict, source: str, tweet_id: str, unknown: str) -> tuple[MabsaRecord, int]:
    if not isinstance(raw, dict) or "review" not in raw or "review_aspects" not in raw:
        raise DataFormatError(f"{source}: expected an object with 'review' and 'review_aspects'.")
    words = raw["review"].split()
    aspects_raw = raw["review_aspects"]
    labels = raw.get("review_opinion_categories", [])
    categories = raw.get("review_aspect_categories") or [None] * len(aspects_raw)
    if len(labels) != len(aspects_raw) or len(categories) != len(aspects_raw):
        raise DataFormatError(
            f"{source}: {len(aspects_raw)} review_aspects but {len(labels)} review_opinion_categories and "
            f"{len(categories)} review_aspect_categories; the lists must be parallel."
        )
    image_id = raw.get("image_id", raw.get("id"))
    if image_id is None:
        raise DataFormatError(f"{source}: no 'image_id' or 'id' names the record's photo.")
    if "text_id" in raw:
        tweet_id = _text_id(raw["text_id"], source)

    aspects, skipped = [], 0
    for aspect, label, category in zip(aspects_raw, labels, categories):
        if label == UNKNOWN_LABEL and unknown == "skip":
            skipped += 1
            continue
        aspects.append(_review_aspect(words, aspect, label, category, source))
    record = MabsaRecord(
        tweet_id=tweet_id, words=words, image_id=str(image_id), aspects=aspects, source=source, skipped_aspects=skipped
    )
    return record, skipped


def _text_id(value: object, source: str) -> str:
    # bool is an int subclass, so reject it explicitly.
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise DataFormatError(f"{source}: 'text_id' must be a non-empty string or an integer, got {value!r}.")
    return str(value)


def _review_aspect(words: list[str], aspect: dict, label: str, category: str | None, source: str) -> AspectSpan:
    fields_valid = isinstance(aspect, dict) and {"term", "from", "to"} <= aspect.keys()
    indices = (aspect.get("from"), aspect.get("to")) if fields_valid else ()
    if not fields_valid or not all(isinstance(index, int) and not isinstance(index, bool) for index in indices):
        raise DataFormatError(
            f"{source}: each review aspect needs 'term' and integer 'from' and 'to' (inclusive word indices), "
            f"got {aspect!r}."
        )
    if label not in REVIEW_LABELS:
        accepted = ", ".join(REVIEW_LABELS)
        raise DataFormatError(
            f"{source}: invalid opinion category {label!r} for aspect {aspect['term']!r}. Accepted: {accepted}"
            f" ({UNKNOWN_LABEL} is skipped unless --unknown-polarity error is given)."
        )
    start, end = aspect["from"], aspect["to"] + 1  # inclusive `to` -> exclusive end
    term = tuple(str(aspect["term"]).split())
    if not 0 <= start < end <= len(words) or tuple(words[start:end]) != term:
        raise DataFormatError(
            f"{source}: aspect term {aspect['term']!r} does not match words {aspect['from']}..{aspect['to']} "
            f"(inclusive) of the review: {words[start:end]!r}."
        )
    return AspectSpan(start=start, end=end, polarity=REVIEW_LABELS[label], term=term, category=category)
