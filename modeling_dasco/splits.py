"""Split files: which records form the train, dev and test splits, written and read back as JSON.

`train.py` writes `split_ids.json` into its output folder: `{"train": [tweet ids], "dev": [...], "test": [...],
"source": {...}}`, where `source` records the data and the options the splits came from. Reading the file back
(`train.py --split-file`) takes the same records from the pooled data, in the listed order, so another run or
another tool scores the same test set. For data held in one file, `split_by_image` draws a random split in which
all records of one image land in the same split.
"""

import json
import math
import random
from itertools import accumulate
from pathlib import Path

from .data import DataFormatError, find_split_file, read_split
from .records import MabsaRecord


SPLITS = ("train", "dev", "test")
SPLIT_FILE_LAYOUT = '{"train": [tweet ids], "dev": [...], "test": [...]}, as train.py writes to split_ids.json'


def split_ids_payload(splits: dict[str, list[MabsaRecord]], source: dict) -> dict:
    """Return the content of `split_ids.json`: the tweet ids of each split, in order, and the data's `source`."""
    payload = {split: [record.tweet_id for record in splits[split]] for split in SPLITS}
    payload["source"] = source
    return payload


def read_split_ids(path: str | Path) -> dict[str, list[str]]:
    """Read the tweet ids of each split from a split file. Integer ids are read as strings.

    Keys other than "train", "dev" and "test" (such as "source") are ignored.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataFormatError(f"Split file {path} is not valid JSON ({error}). Expected {SPLIT_FILE_LAYOUT}.") from None
    if not isinstance(data, dict):
        raise DataFormatError(
            f"Split file {path} contains a {type(data).__name__}, not an object. Expected {SPLIT_FILE_LAYOUT}."
        )
    split_ids = {}
    for split in SPLITS:
        if split not in data:
            raise DataFormatError(f"Split file {path} has no {split!r} key. Expected {SPLIT_FILE_LAYOUT}.")
        ids = data[split]
        # bool is an int subclass, so reject it explicitly.
        if not isinstance(ids, list) or any(isinstance(item, bool) or not isinstance(item, (str, int)) for item in ids):
            raise DataFormatError(
                f"Split file {path}: {split!r} must be a list of tweet ids (strings), got {str(ids)[:200]}."
            )
        split_ids[split] = [str(item) for item in ids]
    return split_ids


def read_pooled_records(
    data_dir: str | Path, data_format: str | None, unknown_polarity: str = "skip"
) -> tuple[list[MabsaRecord], list[Path]]:
    """Read the records of every split file in `data_dir` (train, dev, test: those that exist), in that order.

    Returns the records and the files read.
    """
    files = []
    for split in SPLITS:
        try:
            files.append(find_split_file(data_dir, split, data_format))
        except FileNotFoundError:
            continue
    if not files:
        raise FileNotFoundError(
            f"No train, dev or test file found in {data_dir} to take the records of the split file from. Pass a data "
            "folder with train.json, dev.json or test.json (or .tsv, .txt), or a single file with --data-file."
        )
    records = []
    for path in files:
        records += read_split(path, data_format, unknown_polarity)
    return records, files


def check_unique_tweet_ids(records: list[MabsaRecord]) -> None:
    """Raise DataFormatError when two records have the same tweet id, naming both."""
    first_source = {}
    for record in records:
        if record.tweet_id in first_source:
            raise DataFormatError(
                f"Tweet id {record.tweet_id!r} occurs twice in the data: in {first_source[record.tweet_id]} and in "
                f"{record.source}. A split file names records by id, so every id must be unique across the files."
            )
        first_source[record.tweet_id] = record.source


def apply_split_ids(
    records: list[MabsaRecord], split_ids: dict[str, list[str]], split_file: str | Path, searched: list[Path]
) -> tuple[dict[str, list[MabsaRecord]], list[MabsaRecord]]:
    """Take each split's records in the order the split file lists their tweet ids.

    Returns the splits and the records that no split lists. `searched` names the data files, for the error about an
    id that is not in the data.
    """
    check_unique_tweet_ids(records)
    by_id = {record.tweet_id: record for record in records}
    split_of = {}
    splits = {}
    for split in SPLITS:
        splits[split] = []
        for tweet_id in split_ids[split]:
            if tweet_id in split_of:
                raise DataFormatError(
                    f"Split file {split_file} lists tweet id {tweet_id!r} in the {split_of[tweet_id]!r} split and "
                    f"again in the {split!r} split. Each record belongs to one split: list it once."
                )
            if tweet_id not in by_id:
                raise DataFormatError(
                    f"Split file {split_file}: tweet id {tweet_id!r} of the {split!r} split was not found in the data. "
                    f"Searched: {', '.join(map(str, searched))}. Records without a text_id are named "
                    "'{file stem}-{record index}', so their ids change when records move to another file."
                )
            split_of[tweet_id] = split
            splits[split].append(by_id[tweet_id])
    unassigned = [record for record in records if record.tweet_id not in split_of]
    return splits, unassigned


def parse_split_ratios(text: str) -> tuple[float, float, float]:
    """Parse "train,dev,test" ratios such as "0.8,0.1,0.1". Raise ValueError unless all three are positive and
    sum to 1."""
    try:
        ratios = [float(part) for part in text.split(",")]
    except ValueError:
        ratios = []
    if len(ratios) != 3 or not all(ratio > 0 for ratio in ratios) or not math.isclose(sum(ratios), 1.0):
        read_values = f" (read {ratios}, sum {sum(ratios):g})" if len(ratios) == 3 else ""
        raise ValueError(
            f"--split-ratios {text!r} is invalid{read_values}: pass three positive fractions train,dev,test that sum "
            "to 1, such as 0.8,0.1,0.1."
        )
    return tuple(ratios)


def split_by_image(records: list[MabsaRecord], ratios: tuple[float, ...], seed: int) -> dict[str, list[MabsaRecord]]:
    """Split records at random into train, dev and test so that all records of one image id share a split.

    The sorted image ids are shuffled with `random.Random(seed)`. Walking them in that order, each image's records
    go to the split whose share of the records (`ratios` of the record count, in the order train, dev, test)
    contains the midpoint of that image's records. Each split keeps the records in file order. A split left
    empty raises DataFormatError.
    """
    records_of_image = {}
    for record in records:
        records_of_image.setdefault(record.image_id, []).append(record)
    image_ids = sorted(records_of_image)
    random.Random(seed).shuffle(image_ids)

    bounds = [share * len(records) for share in accumulate(ratios)]
    split_of_image, placed = {}, 0
    for image_id in image_ids:
        size = len(records_of_image[image_id])
        midpoint = placed + size / 2
        index = next((index for index, bound in enumerate(bounds) if midpoint < bound), len(SPLITS) - 1)
        split_of_image[image_id] = SPLITS[index]
        placed += size

    splits = {split: [record for record in records if split_of_image[record.image_id] == split] for split in SPLITS}
    for split, chosen in splits.items():
        if not chosen:
            raise DataFormatError(
                f"--split-ratios {','.join(f'{ratio:g}' for ratio in ratios)} left the {split} split empty: the data "
                f"holds {len(records)} records on {len(image_ids)} images. Use more data or a larger {split} ratio."
            )
    return splits
