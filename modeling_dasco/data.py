"""Readers for the multimodal aspect-based sentiment benchmarks (Twitter-2015, Twitter-2017).

Three file layouts hold the same annotations, row for row:

- VLP-MABSA JSON (``{split}.json``): a list of ``{words, image_id, aspects: [{from, to, polarity, term}]}``,
  with ``to`` exclusive and ``polarity`` one of ``POS``, ``NEU``, ``NEG``. Extra keys are ignored.
- TomBERT TSV (``{split}.tsv``): a header line, then one row per aspect with the tab-separated columns
  ``index, label (0/1/2), image id, tweet with $T$, target``.
- TomBERT TXT (``{split}.txt``): 4 lines per aspect: tweet with ``$T$``, target, label (-1/0/1), image id.

The review JSON of the hotel-review fork of DASCO (format ``review``, also ``{split}.json``) is read by
``review_data.read_review_json``; as its extension is ``.json`` too, it is read only when named explicitly.

Every reader returns ``list[MabsaRecord]`` with polarity ids negative=0, neutral=1, positive=2, and the
same ``tweet_id`` (``"{file stem}-{ordinal}"``) for the same tweet whichever layout it came from.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .records import ID2LABEL, AspectSpan, MabsaRecord

SUPPORTED_FORMATS = ("json", "tsv", "txt", "review")
# File extension of each format. A format is detected from the extension only for the first three.
FORMAT_EXTENSIONS = {"json": "json", "tsv": "tsv", "txt": "txt", "review": "json"}
DETECTED_FORMATS = ("json", "tsv", "txt")
SPLIT_SUBFOLDERS = ("", "aom_json", "tombert")
TARGET_PLACEHOLDER = "$T$"

# Raw label -> polarity id (negative=0, neutral=1, positive=2), one table per file layout.
LABEL_TABLES = {
    "json": {"NEG": 0, "NEU": 1, "POS": 2},
    "tsv": {"0": 0, "1": 1, "2": 2},
    "txt": {"-1": 0, "0": 1, "1": 2},
}

FORMAT_DESCRIPTIONS = {
    "json": "VLP-MABSA JSON: a list of objects with 'words', 'image_id' and "
    "'aspects' [{'from', 'to' (exclusive), 'polarity' (POS/NEU/NEG), 'term'}]",
    "tsv": "TomBERT TSV: a header line, then 5 tab-separated columns per row: "
    "index, label (0/1/2), image id, tweet with $T$, target",
    "txt": "TomBERT TXT: 4 lines per aspect: tweet with $T$, target, label (-1/0/1), image id",
}

TSV_COLUMNS = 5
TXT_LINES_PER_ASPECT = 4


class DataFormatError(ValueError):
    """A data file that is not in the layout its reader expects, or that contains an invalid value."""


def parse_label(value: str, data_format: str, source: str) -> int:
    """Map a raw label of the given file layout to a polarity id (negative=0, neutral=1, positive=2).

    `source` names the file and row, for the error message.
    """
    table = LABEL_TABLES[data_format]
    key = str(value).strip()
    if key not in table:
        accepted = ", ".join(f"{raw} ({ID2LABEL[index]})" for raw, index in table.items())
        raise DataFormatError(
            f"{source}: invalid {data_format.upper()} label {value!r}. Accepted labels: {accepted}."
        )
    return table[key]


# ---------------------------------------------------------------------------------------------
# Choosing a reader and finding a split


def read_split(path: str | Path, data_format: str | None = None, unknown_polarity: str = "skip") -> list[MabsaRecord]:
    """Read one split file, choosing the reader from `data_format` or else from the file extension.

    `data_format` is one of "json", "tsv", "txt", "review". `unknown_polarity` ("skip" or "error") applies to the
    review format only: see `review_data.read_review_json`.
    """
    path = Path(path)
    data_format = _resolve_format(path, data_format)
    if data_format == "review":
        # Imported here because review_data imports DataFormatError from this module.
        from .review_data import read_review_json

        return read_review_json(path, unknown=unknown_polarity)[0]
    readers = {"json": read_vlp_json, "tsv": read_tombert_tsv, "txt": read_tombert_txt}
    return readers[data_format](path)


def _resolve_format(path: Path, data_format: str | None) -> str:
    if data_format is not None:
        name = data_format.lower().lstrip(".")
        if name not in SUPPORTED_FORMATS:
            raise ValueError(
                f"Unknown data format {data_format!r}. Use one of: {', '.join(SUPPORTED_FORMATS)}."
            )
        return name
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in DETECTED_FORMATS:
        raise ValueError(
            f"Cannot tell the data format of {path} from its extension {path.suffix!r}. "
            f"Rename it to .json, .tsv or .txt, or pass the format explicitly "
            f"(one of: {', '.join(SUPPORTED_FORMATS)})."
        )
    return suffix


def find_split_file(data_dir: str | Path, split: str, data_format: str | None = None) -> Path:
    """Return the file of `split` ("train", "dev", "test") in `data_dir`.

    Looks for `{split}.json`, `{split}.tsv` and `{split}.txt`, in that order, first in `data_dir`
    itself and then in its `aom_json/` and `tombert/` subfolders. With `data_format` set, only that
    format's extension is tried.
    """
    data_dir = Path(data_dir)
    if data_format is None:
        extensions = DETECTED_FORMATS
    else:
        extensions = (FORMAT_EXTENSIONS[_resolve_format(data_dir, data_format)],)

    tried = []
    for subfolder in SPLIT_SUBFOLDERS:
        for extension in extensions:
            candidate = data_dir / subfolder / f"{split}.{extension}"
            if candidate.is_file():
                return candidate
            tried.append(str(candidate))

    if data_format is not None:
        raise FileNotFoundError(
            f"No {split!r} split file in the {data_format!r} format found in {data_dir}. Tried: {', '.join(tried)}. "
            f"Drop --data-format to detect the format from the file extension, or pass the format of the files."
        )
    raise FileNotFoundError(
        f"No {split!r} split file found in {data_dir}. Tried: {', '.join(tried)}. "
        f"Pass a data directory that contains {split}.json, {split}.tsv or {split}.txt."
    )


# ---------------------------------------------------------------------------------------------
# VLP-MABSA JSON


def read_vlp_json(path: str | Path) -> list[MabsaRecord]:
    """Read a VLP-MABSA JSON split (the format of the VLP-MABSA and AoM repositories).

    Each record's `source` is `"{path}, record {n}"` with n counted from 1.
    """
    path = Path(path)
    raw_records = _load_json_list(path)
    return [
        _json_record(raw, tweet_id=f"{path.stem}-{ordinal}", source=f"{path}, record {ordinal + 1}")
        for ordinal, raw in enumerate(raw_records)
    ]


def _load_json_list(path: Path) -> list:
    text = _read_text(path, "json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFormatError(
            f"{path} is not valid JSON ({error}). Expected {FORMAT_DESCRIPTIONS['json']}."
        ) from None
    if not isinstance(data, list):
        raise DataFormatError(
            f"{path}: the top-level JSON value is a {type(data).__name__}, not a list. "
            f"Expected {FORMAT_DESCRIPTIONS['json']}."
        )
    return data


def _json_record(raw: object, tweet_id: str, source: str) -> MabsaRecord:
    if not isinstance(raw, dict) or not {"words", "image_id", "aspects"} <= raw.keys():
        hint = ""
        if isinstance(raw, dict) and "review" in raw:
            hint = " The record has a 'review' key: for the hotel-review JSON, pass the data format 'review'."
        raise DataFormatError(
            f"{source}: the record is missing 'words', 'image_id' or 'aspects'. "
            f"Expected {FORMAT_DESCRIPTIONS['json']}.{hint}"
        )
    words = raw["words"]
    if not _is_string_list(words):
        raise DataFormatError(f"{source}: 'words' must be a list of strings, got {words!r}.")
    image_id = raw["image_id"]
    if not isinstance(image_id, str) or not image_id:
        raise DataFormatError(f"{source}: 'image_id' must be a non-empty string, got {image_id!r}.")
    if not isinstance(raw["aspects"], list):
        raise DataFormatError(f"{source}: 'aspects' must be a list, got {raw['aspects']!r}.")

    aspects = [_json_aspect(aspect, source) for aspect in raw["aspects"]]
    for aspect in aspects:
        check_aspect(words, aspect, source)
    return MabsaRecord(
        tweet_id=tweet_id, words=list(words), image_id=image_id, aspects=aspects, source=source
    )


def _json_aspect(raw: object, source: str) -> AspectSpan:
    if not isinstance(raw, dict) or not {"from", "to", "polarity", "term"} <= raw.keys():
        raise DataFormatError(
            f"{source}: an aspect is missing 'from', 'to', 'polarity' or 'term': {raw!r}. "
            f"Expected {FORMAT_DESCRIPTIONS['json']}."
        )
    start, end, term = raw["from"], raw["to"], raw["term"]
    # bool is an int subclass, so reject it explicitly.
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in (start, end)):
        raise DataFormatError(f"{source}: aspect 'from' and 'to' must be integers, got {raw!r}.")
    if not _is_string_list(term):
        raise DataFormatError(f"{source}: aspect 'term' must be a list of strings, got {term!r}.")
    polarity = parse_label(raw["polarity"], "json", source)
    return AspectSpan(start=start, end=end, polarity=polarity, term=tuple(term))


def _is_string_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def check_aspect(words: Sequence[str], aspect: AspectSpan, source: str) -> None:
    """Raise DataFormatError unless `aspect` is a non-empty span inside `words` whose words equal its term."""
    if not 0 <= aspect.start < aspect.end <= len(words):
        raise DataFormatError(
            f"{source}: aspect span [{aspect.start}, {aspect.end}) of {aspect.term!r} is out of range "
            f"for a tweet of {len(words)} words."
        )
    span_words = tuple(words[aspect.start : aspect.end])
    if span_words != aspect.term:
        raise DataFormatError(
            f"{source}: aspect term {list(aspect.term)!r} does not match the words "
            f"{list(span_words)!r} at its span [{aspect.start}, {aspect.end})."
        )


# ---------------------------------------------------------------------------------------------
# TomBERT TSV and TXT: one row per aspect, grouped into tweets


@dataclass
class _AspectRow:
    """One TomBERT row: a tweet with one aspect, and the 1-based line numbers it came from."""

    image_id: str
    words: list[str]
    aspect: AspectSpan
    first_line: int
    last_line: int


def read_tombert_tsv(path: str | Path) -> list[MabsaRecord]:
    """Read a TomBERT TSV split.

    Columns are read by position, never by header name, because `test.tsv` has 4 header names for
    its 5 columns. Consecutive rows of one tweet become one record (see `_group_rows`).
    """
    path = Path(path)
    lines = _split_lines(_read_text(path, "tsv"))
    if not lines:
        raise DataFormatError(f"{path} is empty. Expected {FORMAT_DESCRIPTIONS['tsv']}.")

    header_columns = len(lines[0].split("\t"))
    if header_columns not in (TSV_COLUMNS - 1, TSV_COLUMNS):
        raise DataFormatError(
            f"{path}, line 1: the header has {header_columns} tab-separated column(s). "
            f"Expected {FORMAT_DESCRIPTIONS['tsv']}."
        )

    rows = []
    for line_number, line in enumerate(lines[1:], start=2):
        columns = line.split("\t")
        if len(columns) != TSV_COLUMNS:
            raise DataFormatError(
                f"{path}, line {line_number}: found {len(columns)} tab-separated column(s), "
                f"expected {TSV_COLUMNS}. Expected {FORMAT_DESCRIPTIONS['tsv']}."
            )
        _, label, image_id, tweet, target = columns
        source = f"{path}, line {line_number}"
        polarity = parse_label(label, "tsv", source)
        rows.append(_aspect_row(tweet, target, polarity, image_id, source, line_number, line_number))
    return _group_rows(rows, path)


def read_tombert_txt(path: str | Path) -> list[MabsaRecord]:
    """Read a TomBERT TXT split: 4 lines per aspect (tweet with $T$, target, label -1/0/1, image id).

    Consecutive aspects of one tweet become one record (see `_group_rows`).
    """
    path = Path(path)
    lines = _split_lines(_read_text(path, "txt"))
    if not lines or len(lines) % TXT_LINES_PER_ASPECT != 0:
        raise DataFormatError(
            f"{path} has {len(lines)} non-trailing line(s), which is not a positive multiple of "
            f"{TXT_LINES_PER_ASPECT}. Expected {FORMAT_DESCRIPTIONS['txt']}."
        )

    rows = []
    for offset in range(0, len(lines), TXT_LINES_PER_ASPECT):
        tweet, target, label, image_id = lines[offset : offset + TXT_LINES_PER_ASPECT]
        first_line = offset + 1
        label_source = f"{path}, line {first_line + 2}"
        polarity = parse_label(label, "txt", label_source)
        tweet_source = f"{path}, line {first_line}"
        rows.append(_aspect_row(tweet, target, polarity, image_id, tweet_source, first_line, first_line + 3))
    return _group_rows(rows, path)


def _aspect_row(
    tweet: str, target: str, polarity: int, image_id: str, source: str, first_line: int, last_line: int
) -> _AspectRow:
    """Substitute the target for `$T$` and return the tweet's words with the target's word span."""
    placeholders = tweet.count(TARGET_PLACEHOLDER)
    if placeholders != 1:
        raise DataFormatError(
            f"{source}: the tweet contains {placeholders} '{TARGET_PLACEHOLDER}' placeholders, expected "
            f"exactly one marking the target. Tweet: {tweet!r}."
        )
    target_words = target.split()
    if not target_words:
        raise DataFormatError(f"{source}: the target is empty. Tweet: {tweet!r}.")
    image_id = image_id.strip()
    if not image_id:
        raise DataFormatError(f"{source}: the image id is empty.")

    # Split on any whitespace: the TXT files end some tweet lines with a space.
    before, after = tweet.split(TARGET_PLACEHOLDER)
    before_words = before.split()
    start = len(before_words)
    end = start + len(target_words)
    aspect = AspectSpan(start=start, end=end, polarity=polarity, term=tuple(target_words))
    words = before_words + target_words + after.split()
    return _AspectRow(image_id, words, aspect, first_line, last_line)


def _group_rows(rows: list[_AspectRow], path: Path) -> list[MabsaRecord]:
    """Group consecutive rows with the same image id and the same words into one record per tweet.

    Only consecutive rows are grouped, so a tweet repeated elsewhere in the file stays a separate
    record, as it is in the JSON files. NOTE: two different tweets with identical words and image
    that sit next to each other would be merged, because the TSV/TXT layouts carry no tweet id.
    """
    records: list[MabsaRecord] = []
    group: list[_AspectRow] = []
    for row in rows:
        if group and (row.image_id, row.words) != (group[0].image_id, group[0].words):
            records.append(_record_from_group(group, path, len(records)))
            group = []
        group.append(row)
    if group:
        records.append(_record_from_group(group, path, len(records)))
    return records


def _record_from_group(group: list[_AspectRow], path: Path, ordinal: int) -> MabsaRecord:
    first_line, last_line = group[0].first_line, group[-1].last_line
    lines = f"line {first_line}" if first_line == last_line else f"lines {first_line}-{last_line}"
    return MabsaRecord(
        tweet_id=f"{path.stem}-{ordinal}",
        words=group[0].words,
        image_id=group[0].image_id,
        aspects=[row.aspect for row in group],
        source=f"{path}, {lines}",
    )


# ---------------------------------------------------------------------------------------------
# Text helpers


def _read_text(path: Path, data_format: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataFormatError(
            f"{path} is not UTF-8 text ({error}). Expected {FORMAT_DESCRIPTIONS[data_format]}."
        ) from None


def _split_lines(text: str) -> list[str]:
    """Split on newlines only, dropping trailing empty lines.

    `str.splitlines` would also split on characters such as U+2028 that may occur inside a tweet.
    """
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines
