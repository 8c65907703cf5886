"""Hand-worked checks of the MATE, MASC and JMASA scores and of the metric as an evaluate module."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_dasco.metrics import (
    decode_bio,
    mabsa_scores,
    masc_scores,
    polarity_by_span,
    span_scores,
)

NEG, NEU, POS = 0, 1, 2
O, B, I = 0, 1, 2
METRICS_PATH = Path(__file__).resolve().parents[1] / "modeling_dasco" / "metrics.py"


def test_jmasa_duplicate_prediction_counts_once():
    gold = {("t1", 0, 1, POS), ("t1", 5, 6, NEG)}
    pred = [("t1", 0, 1, POS), ("t1", 0, 1, POS), ("t1", 3, 4, NEU)]

    scores = span_scores(gold, pred)

    assert scores["precision"] == 0.5
    assert scores["recall"] == 0.5
    assert scores["f1"] == 0.5


def test_mabsa_scores_duplicate_prediction():
    gold = [("t1", 0, 1, POS), ("t1", 5, 6, NEG)]
    pred = [("t1", 0, 1, POS), ("t1", 0, 1, POS), ("t1", 3, 4, NEU)]

    scores = mabsa_scores(gold, pred)

    assert scores == {
        "mate_precision": 0.5,
        "mate_recall": 0.5,
        "mate_f1": 0.5,
        "jmasa_precision": 0.5,
        "jmasa_recall": 0.5,
        "jmasa_f1": 0.5,
    }


def test_span_scores_wrong_polarity_is_miss():
    gold = [("t1", 0, 2, POS)]
    pred = [("t1", 0, 2, NEG)]

    assert span_scores(gold, pred) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert mabsa_scores(gold, pred)["mate_f1"] == 1.0


def test_span_scores_mixed_tuple_lengths_rejected():
    with pytest.raises(ValueError, match="different lengths"):
        span_scores([("t1", 0, 1)], [("t1", 0, 1, POS)])


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ([I, I, O, B, I, O, I], [(3, 5)]),
        ([B, B], [(0, 1), (1, 2)]),
        ([O, B, I], [(1, 3)]),
        ([B], [(0, 1)]),
        ([B, I, I, B, O], [(0, 3), (3, 4)]),
        ([O, O, O], []),
        ([], []),
    ],
)
def test_decode_bio_strict_iob2(tags, expected):
    assert decode_bio(tags) == expected


def test_decode_bio_ignore_index_rejected():
    with pytest.raises(ValueError, match="position 2"):
        decode_bio([B, I, -100])


def test_split_without_aspects_scores_zero():
    zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0}

    assert span_scores([], []) == zero
    assert span_scores([], [("t1", 0, 1, POS)]) == zero
    assert span_scores([("t1", 0, 1, POS)], []) == zero
    assert masc_scores([], {("t1", 0, 1): POS}) == {"accuracy": 0.0, "macro_f1": 0.0}

    scores = mabsa_scores([], [], {})
    assert set(scores) == {
        "mate_precision", "mate_recall", "mate_f1",
        "masc_accuracy", "masc_macro_f1",
        "jmasa_precision", "jmasa_recall", "jmasa_f1",
    }
    assert all(value == 0.0 for value in scores.values())


def test_masc_missing_prediction_counts_wrong():
    gold = [
        ("t1", 0, 1, POS),
        ("t1", 3, 4, NEG),
        ("t2", 0, 2, NEU),
        ("t2", 5, 6, POS),  # no prediction
        ("t3", 1, 2, NEG),
    ]
    pred = {
        ("t1", 0, 1): POS,
        ("t1", 3, 4): POS,
        ("t2", 0, 2): NEU,
        ("t3", 1, 2): NEG,
        ("t9", 0, 1): NEG,  # not a gold span, so ignored
    }

    scores = masc_scores(gold, pred)

    # 3 of 5 gold aspects correct. Per class: positive P=1/2 R=1/2 F1=1/2,
    # negative P=1 R=1/2 F1=2/3, neutral F1=1, so macro-F1 = (1/2 + 2/3 + 1) / 3 = 13/18.
    assert scores["accuracy"] == pytest.approx(0.6)
    assert scores["macro_f1"] == pytest.approx(13 / 18)


def test_masc_macro_f1_skips_absent_class():
    gold = [("a", 0, 1, POS), ("b", 0, 1, NEG)]
    pred = {("a", 0, 1): POS, ("b", 0, 1): NEG}

    # Neutral occurs in neither gold nor predictions, so the mean is over 2 classes, not 3.
    assert masc_scores(gold, pred)["macro_f1"] == 1.0


def test_masc_macro_f1_counts_predicted_only_class():
    gold = [("a", 0, 1, POS), ("b", 0, 1, POS)]
    pred = {("a", 0, 1): POS, ("b", 0, 1): NEG}

    scores = masc_scores(gold, pred)

    # Positive has P=1 R=1/2 F1=2/3. Negative occurs only as a prediction (F1=0), and neutral is absent.
    assert scores["accuracy"] == 0.5
    assert scores["macro_f1"] == pytest.approx(1 / 3)


def test_masc_conflicting_gold_rejected():
    with pytest.raises(ValueError, match="two polarities"):
        masc_scores([("a", 0, 1, POS), ("a", 0, 1, NEG)], {})


def test_masc_invalid_polarity_rejected():
    with pytest.raises(ValueError, match="Invalid polarity 3"):
        masc_scores([("a", 0, 1, 3)], {})
    with pytest.raises(ValueError, match="Invalid polarity -1"):
        masc_scores([("a", 0, 1, POS)], {("a", 0, 1): -1})


def test_polarity_by_span_drops_conflicts():
    aspects = [("a", 0, 1, POS), ("a", 0, 1, POS), ("a", 2, 3, POS), ("a", 2, 3, NEG)]

    assert polarity_by_span(aspects) == {("a", 0, 1): POS}


# Three tweets as rows of the evaluate module. Tweet 1 lists one aspect twice, tweet 2 has no gold.
REFERENCES = [
    [{"start": 0, "end": 1, "polarity": POS}, {"start": 3, "end": 5, "polarity": NEG}],
    [{"start": 2, "end": 3, "polarity": NEU}],
    [],
]
PREDICTIONS = [
    [{"start": 0, "end": 1, "polarity": POS}, {"start": 3, "end": 5, "polarity": POS}],
    [{"start": 2, "end": 3, "polarity": NEU}, {"start": 2, "end": 3, "polarity": NEU}],
    [{"start": 4, "end": 6, "polarity": NEG}],
]

# Runs in a fresh interpreter so that the offline switches and HF_HOME apply before evaluate is
# imported, and the module copy and cache files stay under the test's tmp_path.
LOAD_SCRIPT = """
import json, sys
import evaluate
metric = evaluate.load(sys.argv[1], cache_dir=sys.argv[2], keep_in_memory=True)
arguments = json.loads(sys.stdin.read())
print(json.dumps(metric.compute(**arguments)))
"""


def run_loaded_metric(tmp_path, predictions, references):
    """Load the metric file with `evaluate.load` in a fresh offline interpreter and compute."""
    environment = dict(os.environ)
    environment.update(
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(METRICS_PATH), str(tmp_path / "metric_cache")],
        input=json.dumps({"predictions": predictions, "references": references}),
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=300,
    )


def test_evaluate_load_matches_functions(tmp_path):
    completed = run_loaded_metric(tmp_path, PREDICTIONS, REFERENCES)
    assert completed.returncode == 0, completed.stderr
    loaded_scores = json.loads(completed.stdout.strip().splitlines()[-1])

    gold = [(row, a["start"], a["end"], a["polarity"]) for row, aspects in enumerate(REFERENCES) for a in aspects]
    pred = [(row, a["start"], a["end"], a["polarity"]) for row, aspects in enumerate(PREDICTIONS) for a in aspects]
    function_scores = mabsa_scores(gold, pred, polarity_by_span(pred))

    assert loaded_scores == pytest.approx(function_scores)
    # Hand-worked: of 3 gold aspects and 4 distinct predictions, 3 spans and 2 (span, polarity) pairs match.
    assert loaded_scores["mate_precision"] == 0.75
    assert loaded_scores["mate_recall"] == 1.0
    assert loaded_scores["mate_f1"] == pytest.approx(6 / 7)
    assert loaded_scores["jmasa_precision"] == 0.5
    assert loaded_scores["jmasa_recall"] == pytest.approx(2 / 3)
    assert loaded_scores["jmasa_f1"] == pytest.approx(4 / 7)
    # MASC gets 2 of 3 gold aspects right, with F1 positive 2/3, negative 0 and neutral 1.
    assert loaded_scores["masc_accuracy"] == pytest.approx(2 / 3)
    assert loaded_scores["masc_macro_f1"] == pytest.approx(5 / 9)


def test_evaluate_load_empty_split(tmp_path):
    completed = run_loaded_metric(tmp_path, [[], []], [[], []])
    assert completed.returncode == 0, completed.stderr
    loaded_scores = json.loads(completed.stdout.strip().splitlines()[-1])

    assert len(loaded_scores) == 8
    assert all(value == 0.0 for value in loaded_scores.values())


def test_evaluate_load_invalid_span_rejected(tmp_path):
    completed = run_loaded_metric(tmp_path, [[{"start": 3, "end": 3, "polarity": POS}]], [[]])

    assert completed.returncode != 0
    assert "Invalid span [3, 3) in predictions row 0" in completed.stderr
