import json

import pytest

from modeling_dasco.data import DataFormatError
from modeling_dasco.review_data import read_review_json


RECORDS = [
    {"review": "Beautiful sea view and fully equipped apartment", "image_id": "h1_0.jpg",
     "review_aspects": [{"term": "sea view", "from": 1, "to": 2}, {"term": "apartment", "from": 6, "to": 6}],
     "review_opinion_categories": ["Positive", "Neutral"], "review_aspect_categories": ["View", "Room"]},
    {"review": "Staff was rude", "id": 17, "review_aspects": [{"term": "Staff", "from": 0, "to": 0}],
     "review_opinion_categories": ["Negative"]},
    {"review": "The pool", "image_id": "h3_2.jpg", "review_aspects": [{"term": "pool", "from": 1, "to": 1}],
     "review_opinion_categories": ["Unknown"]},
]  # fmt: skip


def write(tmp_path, records):
    path = tmp_path / "reviews.json"
    path.write_text(json.dumps(records))
    return path


def test_review_records_read(tmp_path):
    records, skipped = read_review_json(write(tmp_path, RECORDS))
    assert [record.image_id for record in records] == ["h1_0.jpg", "17", "h3_2.jpg"]
    first = records[0].aspects
    assert [(aspect.start, aspect.end, aspect.polarity) for aspect in first] == [(1, 3, 2), (6, 7, 1)]
    assert [aspect.category for aspect in first] == ["View", "Room"]
    assert records[1].aspects[0].polarity == 0
    assert records[2].aspects == []
    assert skipped == 1


def test_unknown_rejected_on_request(tmp_path):
    with pytest.raises(DataFormatError, match=r"record 3: invalid opinion category 'Unknown'"):
        read_review_json(write(tmp_path, RECORDS), unknown="error")


def test_term_mismatch_names_record(tmp_path):
    broken = [dict(RECORDS[1], review_aspects=[{"term": "Staff", "from": 1, "to": 1}])]
    with pytest.raises(DataFormatError, match=r"reviews.json, record 1: aspect term 'Staff' does not match"):
        read_review_json(write(tmp_path, broken))


@pytest.mark.parametrize("aspect", [{"term": "room", "to": 1}, {"term": "room", "from": "1", "to": 1}, "room"])
def test_malformed_aspect_names_record(tmp_path, aspect):
    path = tmp_path / "reviews.json"
    record = {"review": "The room was clean", "review_aspects": [aspect], "review_opinion_categories": ["Positive"],
              "image_id": "p1.jpg"}  # fmt: skip
    path.write_text(json.dumps([record]))
    with pytest.raises(DataFormatError, match=r"record 1: each review aspect needs 'term' and integer 'from' and 'to'"):
        read_review_json(path)
