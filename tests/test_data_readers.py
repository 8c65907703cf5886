"""Tests for the VLP-MABSA JSON and TomBERT TSV/TXT readers."""

import json
from pathlib import Path

import pytest

from modeling_dasco.data import (
    DataFormatError,
    find_split_file,
    parse_label,
    read_split,
    read_tombert_tsv,
    read_tombert_txt,
    read_vlp_json,
)
from modeling_dasco.records import ID2LABEL, AspectSpan

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SAMPLE_DIR = REPO_ROOT / "data" / "sample"

TSV_HEADER = "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String\n"
TEST_TSV_HEADER = "index\t#1 ImageID\t#2 String\t#2 String\n"

# One tweet with two aspects followed by a one-aspect tweet, the same annotations in all 3 layouts.
TSV_TWO_TWEETS = (
    TSV_HEADER
    + "1\t2\t100.jpg\tRT @ fan : $T$ is everything # MCM\tChuck Bass\n"
    + "2\t1\t100.jpg\tRT @ fan : Chuck Bass is everything $T$\t# MCM\n"
    + "3\t0\t200.jpg\tTraffic in $T$ again\tNew York\n"
)
TXT_TWO_TWEETS = (
    "RT @ fan : $T$ is everything # MCM\nChuck Bass\n1\n100.jpg\n"
    "RT @ fan : Chuck Bass is everything $T$ \n# MCM\n0\n100.jpg\n"
    "Traffic in $T$ again\nNew York\n-1\n200.jpg\n"
)
JSON_TWO_TWEETS = [
    {
        "words": ["RT", "@", "fan", ":", "Chuck", "Bass", "is", "everything", "#", "MCM"],
        "image_id": "100.jpg",
        "aspects": [
            {"from": 4, "to": 6, "polarity": "POS", "term": ["Chuck", "Bass"]},
            {"from": 8, "to": 10, "polarity": "NEU", "term": ["#", "MCM"]},
        ],
    },
    {
        "words": ["Traffic", "in", "New", "York", "again"],
        "image_id": "200.jpg",
        "aspects": [{"from": 2, "to": 4, "polarity": "NEG", "term": ["New", "York"]}],
    },
]
EXPECTED_FIRST_ASPECTS = [
    AspectSpan(start=4, end=6, polarity=2, term=("Chuck", "Bass")),
    AspectSpan(start=8, end=10, polarity=1, term=("#", "MCM")),
]


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_json(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# TSV


def test_tsv_groups_consecutive_rows(tmp_path):
    records = read_tombert_tsv(write_text(tmp_path / "train.tsv", TSV_TWO_TWEETS))

    assert len(records) == 2
    first, second = records
    assert first.tweet_id == "train-0"
    assert first.words == ["RT", "@", "fan", ":", "Chuck", "Bass", "is", "everything", "#", "MCM"]
    assert first.image_id == "100.jpg"
    assert first.aspects == EXPECTED_FIRST_ASPECTS
    assert first.source == f"{tmp_path / 'train.tsv'}, lines 2-3"
    assert second.tweet_id == "train-1"
    assert second.words == ["Traffic", "in", "New", "York", "again"]
    assert second.aspects == [AspectSpan(start=2, end=4, polarity=0, term=("New", "York"))]
    assert second.source == f"{tmp_path / 'train.tsv'}, line 4"


def test_tsv_same_text_other_image_splits(tmp_path):
    text = TSV_HEADER + "1\t2\t1.jpg\t$T$ wins\tAlice\n" + "2\t2\t2.jpg\t$T$ wins\tAlice\n"
    records = read_tombert_tsv(write_text(tmp_path / "dev.tsv", text))

    assert [record.image_id for record in records] == ["1.jpg", "2.jpg"]
    assert [record.tweet_id for record in records] == ["dev-0", "dev-1"]


def test_tsv_repeated_tweet_not_adjacent_kept(tmp_path):
    text = (
        TSV_HEADER
        + "1\t2\t1.jpg\t$T$ wins\tAlice\n"
        + "2\t0\t2.jpg\t$T$ loses\tBob\n"
        + "3\t2\t1.jpg\t$T$ wins\tAlice\n"
    )
    records = read_tombert_tsv(write_text(tmp_path / "train.tsv", text))

    assert len(records) == 3
    assert records[0].words == records[2].words
    assert records[2].tweet_id == "train-2"


def test_tsv_same_term_twice_keyed_by_span(tmp_path):
    text = (
        TSV_HEADER
        + "1\t2\t1.jpg\t$T$ beat Spain , Spain cried\tSpain\n"
        + "2\t0\t1.jpg\tSpain beat $T$ , Spain cried\tSpain\n"
        + "3\t0\t1.jpg\tSpain beat Spain , $T$ cried\tSpain\n"
    )
    (record,) = read_tombert_tsv(write_text(tmp_path / "train.tsv", text))

    assert [(aspect.start, aspect.end, aspect.polarity) for aspect in record.aspects] == [
        (0, 1, 2),
        (2, 3, 0),
        (4, 5, 0),
    ]


def test_tsv_test_header_read_by_position(tmp_path):
    text = TEST_TSV_HEADER + "1\t1\t74960.jpg\tthe official $T$ football page\tOklahoma\n"
    (record,) = read_tombert_tsv(write_text(tmp_path / "test.tsv", text))

    assert record.image_id == "74960.jpg"
    assert record.words == ["the", "official", "Oklahoma", "football", "page"]
    assert record.aspects == [AspectSpan(start=2, end=3, polarity=1, term=("Oklahoma",))]


@pytest.mark.parametrize("tweet", ["no placeholder here", "$T$ and $T$ twice"])
def test_tsv_placeholder_count_error_names_line(tmp_path, tweet):
    text = TSV_HEADER + "1\t2\t1.jpg\t$T$ wins\tAlice\n" + f"2\t1\t1.jpg\t{tweet}\tBob\n"
    path = write_text(tmp_path / "train.tsv", text)

    with pytest.raises(DataFormatError) as error:
        read_tombert_tsv(path)
    assert f"{path}, line 3" in str(error.value)
    assert "$T$" in str(error.value)


def test_tsv_rejects_csv_file(tmp_path):
    path = write_text(tmp_path / "train.tsv", "index,label,image,tweet,target\n1,2,1.jpg,$T$ wins,Alice\n")

    with pytest.raises(DataFormatError) as error:
        read_tombert_tsv(path)
    assert "TomBERT TSV" in str(error.value)
    assert "5 tab-separated columns" in str(error.value)


def test_tsv_rejects_json_file(tmp_path):
    path = write_json(tmp_path / "train.tsv", JSON_TWO_TWEETS)

    with pytest.raises(DataFormatError) as error:
        read_tombert_tsv(path)
    assert "TomBERT TSV" in str(error.value)


def test_tsv_rejects_short_row(tmp_path):
    path = write_text(tmp_path / "train.tsv", TSV_HEADER + "1\t2\t1.jpg\t$T$ wins\n")

    with pytest.raises(DataFormatError) as error:
        read_tombert_tsv(path)
    assert f"{path}, line 2" in str(error.value)
    assert "found 4 tab-separated column(s), expected 5" in str(error.value)


# ---------------------------------------------------------------------------------------------
# TXT and JSON


def test_txt_groups_consecutive_aspects(tmp_path):
    path = write_text(tmp_path / "train.txt", TXT_TWO_TWEETS)
    records = read_tombert_txt(path)

    assert [record.tweet_id for record in records] == ["train-0", "train-1"]
    assert records[0].aspects == EXPECTED_FIRST_ASPECTS
    assert records[0].source == f"{path}, lines 1-8"
    assert records[1].aspects == [AspectSpan(start=2, end=4, polarity=0, term=("New", "York"))]
    assert records[1].source == f"{path}, lines 9-12"


def test_txt_rejects_incomplete_group(tmp_path):
    path = write_text(tmp_path / "train.txt", "$T$ wins\nAlice\n1\n")

    with pytest.raises(DataFormatError) as error:
        read_tombert_txt(path)
    assert "TomBERT TXT" in str(error.value)
    assert "4 lines per aspect" in str(error.value)


def test_txt_placeholder_error_names_line(tmp_path):
    path = write_text(tmp_path / "train.txt", "$T$ wins\nAlice\n1\n1.jpg\nBob loses\nBob\n-1\n2.jpg\n")

    with pytest.raises(DataFormatError) as error:
        read_tombert_txt(path)
    assert f"{path}, line 5" in str(error.value)


def test_json_reader_values(tmp_path):
    path = write_json(tmp_path / "dev.json", JSON_TWO_TWEETS)
    records = read_vlp_json(path)

    assert [record.tweet_id for record in records] == ["dev-0", "dev-1"]
    assert records[0].aspects == EXPECTED_FIRST_ASPECTS
    assert records[1].source == f"{path}, record 2"


def test_three_formats_agree_on_example(tmp_path):
    from_json = read_vlp_json(write_json(tmp_path / "train.json", JSON_TWO_TWEETS))
    from_tsv = read_tombert_tsv(write_text(tmp_path / "train.tsv", TSV_TWO_TWEETS))
    from_txt = read_tombert_txt(write_text(tmp_path / "train.txt", TXT_TWO_TWEETS))

    def content(records):
        return [(r.tweet_id, r.words, r.image_id, r.aspects) for r in records]

    assert content(from_json) == content(from_tsv)
    assert content(from_json) == content(from_txt)


def test_json_span_out_of_range_names_record(tmp_path):
    aspect = {"from": 1, "to": 3, "polarity": "POS", "term": ["b", "c"]}
    records = [{"words": ["a", "b"], "image_id": "1.jpg", "aspects": [aspect]}]
    path = write_json(tmp_path / "train.json", records)

    with pytest.raises(DataFormatError) as error:
        read_vlp_json(path)
    assert f"{path}, record 1" in str(error.value)
    assert "out of range" in str(error.value)


def test_json_term_mismatch_names_record(tmp_path):
    good = JSON_TWO_TWEETS[1]
    aspect = {"from": 0, "to": 1, "polarity": "POS", "term": ["b"]}
    bad = {"words": ["a", "b"], "image_id": "1.jpg", "aspects": [aspect]}
    path = write_json(tmp_path / "train.json", [good, bad])

    with pytest.raises(DataFormatError) as error:
        read_vlp_json(path)
    assert f"{path}, record 2" in str(error.value)
    assert "does not match" in str(error.value)


def test_json_rejects_tsv_content(tmp_path):
    path = write_text(tmp_path / "train.json", TSV_TWO_TWEETS)

    with pytest.raises(DataFormatError) as error:
        read_vlp_json(path)
    assert "VLP-MABSA JSON" in str(error.value)


# ---------------------------------------------------------------------------------------------
# Labels


@pytest.mark.parametrize(
    ("data_format", "raw_labels"),
    [("txt", ["-1", "0", "1"]), ("tsv", ["0", "1", "2"]), ("json", ["NEG", "NEU", "POS"])],
)
def test_label_maps_to_package_ids(data_format, raw_labels):
    ids = [parse_label(raw, data_format, "file, line 1") for raw in raw_labels]

    assert ids == [0, 1, 2]
    assert [ID2LABEL[index] for index in ids] == ["negative", "neutral", "positive"]


def test_unknown_tsv_label_names_row(tmp_path):
    text = TSV_HEADER + "1\t2\t1.jpg\t$T$ wins\tAlice\n" + "2\t3\t1.jpg\t$T$ ok\tBob\n"
    path = write_text(tmp_path / "train.tsv", text)

    with pytest.raises(DataFormatError) as error:
        read_tombert_tsv(path)
    message = str(error.value)
    assert f"{path}, line 3" in message
    assert "'3'" in message
    assert "0 (negative), 1 (neutral), 2 (positive)" in message


def test_unknown_txt_label_names_row(tmp_path):
    path = write_text(tmp_path / "train.txt", "$T$ wins\nAlice\n2\n1.jpg\n")

    with pytest.raises(DataFormatError) as error:
        read_tombert_txt(path)
    message = str(error.value)
    assert f"{path}, line 3" in message
    assert "-1 (negative), 0 (neutral), 1 (positive)" in message


def test_unknown_json_label_names_record(tmp_path):
    aspect = {"from": 0, "to": 1, "polarity": "positive", "term": ["a"]}
    records = [{"words": ["a"], "image_id": "1.jpg", "aspects": [aspect]}]
    path = write_json(tmp_path / "test.json", records)

    with pytest.raises(DataFormatError) as error:
        read_vlp_json(path)
    message = str(error.value)
    assert f"{path}, record 1" in message
    assert "NEG (negative), NEU (neutral), POS (positive)" in message


# ---------------------------------------------------------------------------------------------
# Choosing a reader and finding a split


def test_read_split_by_extension_and_name(tmp_path):
    tsv_path = write_text(tmp_path / "train.tsv", TSV_TWO_TWEETS)
    renamed = write_text(tmp_path / "train.data", TXT_TWO_TWEETS)

    assert len(read_split(tsv_path)) == 2
    assert len(read_split(renamed, data_format="txt")) == 2
    with pytest.raises(ValueError, match="Cannot tell the data format"):
        read_split(renamed)
    with pytest.raises(ValueError, match="Unknown data format 'csv'"):
        read_split(tsv_path, data_format="csv")


def test_find_split_file_subfolders(tmp_path):
    (tmp_path / "aom_json").mkdir()
    (tmp_path / "tombert").mkdir()
    json_path = write_json(tmp_path / "aom_json" / "dev.json", JSON_TWO_TWEETS)
    tsv_path = write_text(tmp_path / "tombert" / "dev.tsv", TSV_TWO_TWEETS)

    assert find_split_file(tmp_path, "dev") == json_path
    assert find_split_file(tmp_path, "dev", data_format="tsv") == tsv_path


def test_find_split_file_missing_lists_tried(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        find_split_file(tmp_path, "test")
    message = str(error.value)
    assert str(tmp_path / "test.json") in message
    assert str(tmp_path / "tombert" / "test.txt") in message


# ---------------------------------------------------------------------------------------------
# Bundled sample and real benchmark files

# Tweets and aspects per split, as stated in data/sample/README.md.
SAMPLE_COUNTS = {"train": (240, 393), "dev": (80, 129), "test": (80, 126)}


@pytest.mark.parametrize("split", sorted(SAMPLE_COUNTS))
def test_sample_counts_match_readme(split):
    records = read_vlp_json(SAMPLE_DIR / f"{split}.json")
    tweets, aspects = SAMPLE_COUNTS[split]

    assert len(records) == tweets
    assert sum(len(record.aspects) for record in records) == aspects
    assert _readme_row(split)[:2] == [str(tweets), str(aspects)]


def _readme_row(split):
    for line in (SAMPLE_DIR / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith(f"| `{split}.json`"):
            return [cell.strip() for cell in line.strip("|").split("|")][1:]
    raise AssertionError(f"no row for {split}.json in data/sample/README.md")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"benchmark data not found at {SHARED_DATA}")
@pytest.mark.parametrize("split", sorted(SAMPLE_COUNTS))
def test_sample_is_prefix_of_source(split):
    source_text = (SHARED_DATA / "twitter2015" / "aom_json" / f"{split}.json").read_text(encoding="utf-8")
    sample_text = (SAMPLE_DIR / f"{split}.json").read_text(encoding="utf-8")

    assert source_text.startswith(sample_text.removesuffix("]"))


# Tweets and aspects per split of the full benchmarks.
BENCHMARK_SIZES = {
    ("twitter2015", "train"): (2101, 3179),
    ("twitter2015", "dev"): (727, 1122),
    ("twitter2015", "test"): (674, 1037),
    ("twitter2017", "train"): (1746, 3562),
    ("twitter2017", "dev"): (577, 1176),
    ("twitter2017", "test"): (587, 1234),
}


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"benchmark data not found at {SHARED_DATA}")
@pytest.mark.parametrize(("dataset", "split"), sorted(BENCHMARK_SIZES))
def test_real_data_formats_agree(dataset, split):
    data_dir = SHARED_DATA / dataset
    from_json = read_split(find_split_file(data_dir, split, "json"))
    from_tsv = read_split(find_split_file(data_dir, split, "tsv"))
    from_txt = read_split(find_split_file(data_dir, split, "txt"))

    def content(records):
        return [(r.tweet_id, r.words, r.image_id, r.aspects) for r in records]

    tweets, aspects = BENCHMARK_SIZES[(dataset, split)]
    assert len(from_json) == tweets
    assert sum(len(record.aspects) for record in from_json) == aspects
    assert content(from_tsv) == content(from_json)
    assert content(from_txt) == content(from_json)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"benchmark data not found at {SHARED_DATA}")
def test_real_2017_duplicate_tweet_kept():
    records = read_split(find_split_file(SHARED_DATA / "twitter2017", "train", "tsv"))
    keys = [(record.image_id, tuple(record.words)) for record in records]

    assert len(keys) - len(set(keys)) == 1
    assert keys[1190] == keys[1312]
    assert records[1190].image_id == "17_06_2136.jpg"
