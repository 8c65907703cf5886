"""Convert DASCO-format pickles (`finetune_dataset/<name>/{train,dev,test}/*.pkl`) into this package's VLP JSON.

    python -m conversion.import_dasco_pickles --input finetune_dataset/custom --output data/custom --allow-pickle \
        [--model checkpoints/dasco-init --vision-cache-dir cache/vision] [--overwrite]

Each pickle of the released DASCO code, and of its hotel-review fork, is a list of dicts with `image_feature`,
`query_input`, `scene_graph`, `text_input`, `target`, `nouns` and `parse_info` = {`token`, `postag`, `edges`,
`deprels`, `aspects`: [{`term`, `from`, `to` (inclusive word indices), `polarity` (POS/NEU/NEG), `scope`}]}.
Every file of a split is read, in natural order (data_2 before data_10), and the split is written as
`<output>/<split>.json`: one {"words", "image_id", "aspects": [{"from", "to" (exclusive), "polarity", "term"}]}
per dict, which `train.py --data-dir <output>` reads.

- `words` are `parse_info.token`. Each aspect's term must equal its tokens, compared case-insensitively after
  splitting the term at whitespace. Its polarity must be POS, NEU or NEG: the released code mapped one odd
  Twitter-2015 label to NEU, but this importer stops with an error instead.
- The pickles carry no image ids, so each dict gets `<split>-<file stem>-<list index>` (e.g. `train-data_0-17`).
- `nouns` and `scene_graph` are ignored: in the fork, `nouns` copy the gold aspects, so using them as candidates
  would leak the labels. The dependency heads in `parse_info.edges` are dropped too, because train.py re-parses
  the words with spaCy and the fork's heads lack the offsets of every sentence after the first.
- With `--model` and `--vision-cache-dir`, each `image_feature` is checked against the checkpoint's vision tower
  and imported into its feature cache under the record's image id, as `conversion.import_fork_features` does.
  DASCO's own Twitter pickles hold 1664-wide OpenCLIP ViT-bigG features, which no BLIP-2 vision tower produces,
  so they are rejected with a message that names both widths. Without these options the features are skipped.

Unpickling can run arbitrary code, so nothing is read without `--allow-pickle`. The JSON files are written only
after every file has been read without error. Features are stored file by file, so a run stopped by an error
keeps the entries of the files read before it, and a rerun finds them identical.
"""

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from conversion.common import check_output_dir
from conversion.import_fork_features import (
    ALLOW_PICKLE_HELP,
    FeatureImporter,
    PickleImportError,
    load_pickle,
    require_pickle_opt_in,
)


SPLITS = ("train", "dev", "test")
DASCO_POLARITIES = ("POS", "NEU", "NEG")
DASCO_PICKLE_DESCRIPTION = (
    "a pickled list of DASCO records: dicts with 'image_feature' and 'parse_info' = {'token', 'aspects': "
    "[{'term', 'from', 'to' (inclusive), 'polarity'}]}"
)
BIGG_WIDTH = 1664
NOT_CARRIED_NOTE = (
    "Not carried over: 'nouns' and 'scene_graph' are ignored ('nouns' copy the gold aspects in the hotel-review "
    "fork), and the heads in parse_info 'edges' are dropped, because train.py re-parses the words with spaCy."
)


@dataclass
class SplitCounts:
    files: int = 0
    records: int = 0
    aspects: int = 0


def natural_key(path: Path) -> list:
    """Sort key that orders numbers in file names by value: data_2.pkl before data_10.pkl."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def split_files(input_dir: Path, split: str) -> list[Path]:
    """Return every .pkl file of a split folder in natural order; raise PickleImportError when there is none."""
    folder = input_dir / split
    if not folder.is_dir():
        raise PickleImportError(
            f"Split folder {folder} was not found. Expected {input_dir}/{{train,dev,test}}/ with data_0.pkl, "
            "data_1.pkl, ..."
        )
    files = sorted(folder.glob("*.pkl"), key=natural_key)
    if not files:
        raise PickleImportError(f"Split folder {folder} contains no .pkl file. Expected data_0.pkl, data_1.pkl, ...")
    return files


def convert_record(raw: object, image_id: str, source: str) -> dict:
    """Turn one DASCO record into a VLP JSON record; `source` names the file and list index in errors."""
    if not isinstance(raw, dict):
        raise PickleImportError(f"{source}: the record is a {type(raw).__name__}. Expected a dict.")
    parse_info = raw.get("parse_info")
    if not isinstance(parse_info, dict) or not {"token", "aspects"} <= parse_info.keys():
        raise PickleImportError(
            f"{source}: 'parse_info' is missing or lacks 'token' or 'aspects'. Expected {DASCO_PICKLE_DESCRIPTION}."
        )
    tokens = parse_info["token"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(token, str) for token in tokens):
        raise PickleImportError(f"{source}: parse_info 'token' is {tokens!r}; expected a non-empty list of strings.")
    aspects = parse_info["aspects"]
    if not isinstance(aspects, list):
        raise PickleImportError(f"{source}: parse_info 'aspects' is {aspects!r}; expected a list.")
    converted = [convert_aspect(aspect, tokens, f"{source}, aspect {number}") for number, aspect in enumerate(aspects)]
    return {"words": tokens, "image_id": image_id, "aspects": converted}


def convert_aspect(raw: object, tokens: list[str], source: str) -> dict:
    """Turn one parse_info aspect (`to` inclusive) into a VLP JSON aspect (`to` exclusive, `term` as words)."""
    if not isinstance(raw, dict) or not {"term", "from", "to", "polarity"} <= raw.keys():
        raise PickleImportError(f"{source}: {raw!r} lacks 'term', 'from', 'to' or 'polarity'.")
    term, start, end, polarity = raw["term"], raw["from"], raw["to"], raw["polarity"]
    # bool is an int subclass, so reject it explicitly.
    if not all(isinstance(index, int) and not isinstance(index, bool) for index in (start, end)):
        raise PickleImportError(f"{source}: 'from' {start!r} and 'to' {end!r} must be integers.")
    if not 0 <= start <= end < len(tokens):
        raise PickleImportError(
            f"{source}: 'from' {start} and 'to' {end} (inclusive) are out of range for {len(tokens)} tokens."
        )
    if polarity not in DASCO_POLARITIES:
        raise PickleImportError(f"{source}: polarity {polarity!r} is invalid; expected one of {DASCO_POLARITIES}.")
    span = tokens[start : end + 1]
    if not isinstance(term, str) or [word.lower() for word in term.split()] != [token.lower() for token in span]:
        raise PickleImportError(
            f"{source}: term {term!r} does not match the tokens {span!r} at 'from' {start}, 'to' {end} (inclusive)."
        )
    return {"from": start, "to": end + 1, "polarity": polarity, "term": span}


def import_split(split: str, files: list[Path], importer: FeatureImporter | None) -> tuple[list[dict], SplitCounts]:
    """Read the files of one split into VLP JSON records; import each record's features when `importer` is given."""
    records, counts = [], SplitCounts()
    for path in files:
        raw_records = load_pickle(path, DASCO_PICKLE_DESCRIPTION)
        if not isinstance(raw_records, list):
            raise PickleImportError(
                f"{path} contains a {type(raw_records).__name__}. Expected {DASCO_PICKLE_DESCRIPTION}."
            )
        for index, raw in enumerate(raw_records):
            source = f"{path}, record {index}"
            record = convert_record(raw, f"{split}-{path.stem}-{index}", source)
            if importer is not None:
                if "image_feature" not in raw:
                    raise PickleImportError(f"{source}: the record has no 'image_feature'.")
                importer.check(record["image_id"], raw["image_feature"], source)
            records.append(record)
            counts.aspects += len(record["aspects"])
        if importer is not None:
            importer.write()
        counts.files += 1
        counts.records += len(raw_records)
    return records, counts


def import_dasco_pickles(
    input_dir: str | Path,
    output_dir: str | Path,
    allow_pickle: bool,
    model_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
) -> tuple[dict[str, SplitCounts], FeatureImporter | None]:
    """Convert the three splits of `input_dir` into `output_dir/<split>.json`; returns the counts and the importer.

    `model_dir` and `cache_dir` go together: with both, the features are imported into that checkpoint's cache.
    """
    input_dir = Path(input_dir)
    require_pickle_opt_in(f"the .pkl files in {input_dir}", allow_pickle)
    if (model_dir is None) != (cache_dir is None):
        raise PickleImportError("--model and --vision-cache-dir go together: pass both to import the features.")
    output_dir = check_output_dir(output_dir, overwrite)
    files = {split: split_files(input_dir, split) for split in SPLITS}  # A missing split fails before any work.
    importer = None
    if model_dir is not None:
        hint = (
            f" DASCO's Twitter pickles contain {BIGG_WIDTH}-wide OpenCLIP ViT-bigG features, which no BLIP-2 vision "
            "tower produces, and the fork's contain 1408-wide features of Salesforce/blip2-opt-2.7b, which fit only a "
            "--model converted from that checkpoint. Otherwise train from the images (the annotations with "
            "--image-dir), or leave out --model and --vision-cache-dir to convert the text alone and train with "
            "--no-image."
        )
        importer = FeatureImporter(model_dir, cache_dir, overwrite=overwrite, wrong_shape_hint=hint)

    converted, counts = {}, {}
    for split in SPLITS:
        converted[split], counts[split] = import_split(split, files[split], importer)
    output_dir.mkdir(parents=True, exist_ok=True)
    for split, records in converted.items():
        (output_dir / f"{split}.json").write_text(json.dumps(records, ensure_ascii=False) + "\n", encoding="utf-8")
    return counts, importer


def print_summary(counts: dict[str, SplitCounts], importer: FeatureImporter | None, args) -> None:
    print(f"{'split':<6} {'files':>6} {'records':>8} {'aspects':>8}")
    for split, split_counts in counts.items():
        print(f"{split:<6} {split_counts.files:>6} {split_counts.records:>8} {split_counts.aspects:>8}")
    print(f"Wrote {', '.join(f'{split}.json' for split in counts)} to {args.output} (VLP JSON, 'to' exclusive).")
    print(NOT_CARRIED_NOTE)
    if importer is None:
        print(
            "Image features were skipped; pass --model and --vision-cache-dir to import them. The image ids "
            "(e.g. train-data_0-0) name no image file, so train without images:\n"
            f"    accelerate launch train.py --data-dir {args.output} --no-image ..."
        )
        return
    print(importer.report(args.input))
    print(
        "Train with them, without image files:\n"
        f"    accelerate launch train.py --model {args.model} --data-dir {args.output} "
        f"--vision-cache-dir {args.vision_cache_dir} ..."
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="Folder with train/, dev/ and test/ of DASCO .pkl files.")
    parser.add_argument("--output", required=True, help="Folder to write train.json, dev.json and test.json to.")
    parser.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    parser.add_argument("--model", help="DASCO checkpoint whose vision feature cache receives the image features.")
    parser.add_argument("--vision-cache-dir", help="Feature cache folder to pass to train.py (needs --model).")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="Write into a non-empty output folder, and replace imported cache entries that contain other features.",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        counts, importer = import_dasco_pickles(
            args.input, args.output, allow_pickle=args.allow_pickle, model_dir=args.model,
            cache_dir=args.vision_cache_dir, overwrite=args.overwrite,
        )  # fmt: skip
    except (PickleImportError, FileExistsError) as error:
        # Bad input, not a bug: the message alone states what to fix.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print_summary(counts, importer, args)


if __name__ == "__main__":
    main()
