"""MATE, MASC and JMASA scores for multimodal aspect-based sentiment analysis, and an `evaluate.Metric`.

Every score works on exact spans: an aspect is `(tweet_id, start, end)` over words `[start, end)`,
and a polarity is a label id (negative=0, neutral=1, positive=2).

This file imports only the standard library, `datasets` and `evaluate`, and nothing from its own
package, so that `evaluate.load("/path/to/modeling_dasco/metrics.py")` can load it offline from a
copy in the evaluate cache.
"""

import operator
from collections.abc import Hashable, Iterable, Mapping, Sequence

import datasets
import evaluate

# Copies of the label map and BIO tag ids in `records.py`, which must stay equal to these.
ID2LABEL = {0: "negative", 1: "neutral", 2: "positive"}
TAG_O, TAG_B, TAG_I = 0, 1, 2

GoldAspect = tuple[Hashable, int, int, int]  # (tweet_id, start, end, polarity)
AspectSpanKey = tuple[Hashable, int, int]  # (tweet_id, start, end)


def decode_bio(tag_ids: Sequence[int]) -> list[tuple[int, int]]:
    """Decode strict IOB2 tag ids (O=0, B=1, I=2) into word spans `[start, end)`.

    A span starts at B and extends over the I tags that follow it. An I that does not continue
    a span (at position 0, after O, or after another such I) starts no span and is ignored.

    Raises:
        ValueError: if a tag id is not 0, 1 or 2, e.g. the loss ignore index -100.
    """
    spans = []
    start = None
    for position, raw_tag in enumerate(tag_ids):
        tag = operator.index(raw_tag)
        if tag not in (TAG_O, TAG_B, TAG_I):
            raise ValueError(
                f"Invalid BIO tag id {tag} at position {position}: expected 0 (O), 1 (B) or 2 (I). "
                "Remove padding and ignored positions (such as -100) before decoding."
            )

        # A B or an O closes the open span, and an I keeps it open.
        if tag != TAG_I and start is not None:
            spans.append((start, position))
            start = None
        if tag == TAG_B:
            start = position

    if start is not None:
        spans.append((start, len(tag_ids)))
    return spans


def span_scores(gold: Iterable[tuple], pred: Iterable[tuple]) -> dict[str, float]:
    """Compute precision, recall and F1 of exact-match tuples.

    Use `(tweet_id, start, end)` tuples for MATE and `(tweet_id, start, end, polarity)` tuples for
    JMASA. Both sides are turned into sets, so a tuple repeated in `pred` (or in `gold`) counts once.
    Each score is 0.0 when its denominator is zero: no predictions give precision 0.0, no gold
    gives recall 0.0, and F1 is 0.0 when precision and recall are both 0.0.

    Raises:
        ValueError: if the tuples do not all have the same length, because then no tuple of one
            length could ever match one of the other and every score would silently be 0.0.
    """
    gold_set = set(gold)
    pred_set = set(pred)

    tuple_lengths = {len(item) for item in gold_set | pred_set}
    if len(tuple_lengths) > 1:
        raise ValueError(
            f"Gold and predicted tuples have different lengths {sorted(tuple_lengths)}: pass "
            "(tweet_id, start, end) tuples on both sides for MATE, or (tweet_id, start, end, polarity) for JMASA."
        )

    true_positives = len(gold_set & pred_set)
    precision = true_positives / len(pred_set) if pred_set else 0.0
    recall = true_positives / len(gold_set) if gold_set else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _check_polarity(polarity: int, location: str) -> int:
    polarity = operator.index(polarity)
    if polarity not in ID2LABEL:
        raise ValueError(
            f"Invalid polarity {polarity} in {location}: expected a label id in {sorted(ID2LABEL)} "
            f"({', '.join(f'{index}={label}' for index, label in ID2LABEL.items())})."
        )
    return polarity


def masc_scores(gold: Iterable[GoldAspect], pred: Mapping[AspectSpanKey, int]) -> dict[str, float]:
    """Compute MASC accuracy and macro-F1 over all gold aspects.

    Args:
        gold: `(tweet_id, start, end, polarity)` for every gold aspect. Exact duplicates count once.
        pred: predicted polarity per `(tweet_id, start, end)`. Keys that are not gold spans are
            ignored, because MASC scores only the gold aspects.

    A gold aspect with no entry in `pred` counts as wrong: it lowers accuracy and is a false
    negative of its gold class, but it is a false positive of no class.

    Macro-F1 is the mean of the per-class F1 over the classes that occur in the gold polarities
    or in the predicted polarities of gold aspects, as scikit-learn's
    `f1_score(average="macro")` does when `labels` is not given. A class absent from both is left
    out of the mean rather than counted as 0.0. A class with no true positives has F1 0.0.

    Returns:
        `{"accuracy": ..., "macro_f1": ...}`, both 0.0 when `gold` is empty.

    Raises:
        ValueError: on a polarity that is not 0, 1 or 2, or on a gold span listed with two
            different polarities.
    """
    gold_polarity: dict[AspectSpanKey, int] = {}
    for tweet_id, start, end, polarity in gold:
        key = (tweet_id, start, end)
        polarity = _check_polarity(polarity, f"gold aspect {key}")
        if gold_polarity.setdefault(key, polarity) != polarity:
            raise ValueError(
                f"Gold aspect {key} is listed with two polarities, {gold_polarity[key]} and {polarity}: "
                "each gold span must have exactly one polarity."
            )
    if not gold_polarity:
        return {"accuracy": 0.0, "macro_f1": 0.0}

    # Predicted polarity per gold aspect, where None marks a gold aspect with no prediction.
    pairs = []
    for key, gold_label in gold_polarity.items():
        predicted = pred.get(key)
        if predicted is not None:
            predicted = _check_polarity(predicted, f"the prediction for {key}")
        pairs.append((gold_label, predicted))

    correct = sum(gold_label == predicted for gold_label, predicted in pairs)
    accuracy = correct / len(pairs)

    classes = {gold_label for gold_label, _ in pairs} | {predicted for _, predicted in pairs if predicted is not None}
    class_f1 = []
    for label in sorted(classes):
        true_positives = sum(gold_label == label and predicted == label for gold_label, predicted in pairs)
        predicted_count = sum(predicted == label for _, predicted in pairs)
        gold_count = sum(gold_label == label for gold_label, _ in pairs)
        precision = true_positives / predicted_count if predicted_count else 0.0
        recall = true_positives / gold_count if gold_count else 0.0
        class_f1.append(2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0)

    return {"accuracy": accuracy, "macro_f1": sum(class_f1) / len(class_f1)}


def polarity_by_span(aspects: Iterable[GoldAspect]) -> dict[AspectSpanKey, int]:
    """Map each `(tweet_id, start, end)` of `(tweet_id, start, end, polarity)` tuples to its polarity.

    A span listed with two or more different polarities is left out, so MASC counts it as a gold
    aspect with no prediction rather than picking one of the polarities.
    """
    polarities: dict[AspectSpanKey, set[int]] = {}
    for tweet_id, start, end, polarity in aspects:
        polarities.setdefault((tweet_id, start, end), set()).add(polarity)
    return {key: next(iter(labels)) for key, labels in polarities.items() if len(labels) == 1}


def mabsa_scores(
    gold: Iterable[GoldAspect],
    joint_predictions: Iterable[GoldAspect],
    masc_predictions: Mapping[AspectSpanKey, int] | None = None,
) -> dict[str, float]:
    """Compute MATE, JMASA and, when MASC predictions are given, MASC scores in one flat dict.

    Args:
        gold: `(tweet_id, start, end, polarity)` for every gold aspect of the evaluation split.
        joint_predictions: `(tweet_id, start, end, polarity)` predicted jointly (JMASA). MATE is
            scored on their spans alone and JMASA on the full tuples.
        masc_predictions: predicted polarity per `(tweet_id, start, end)`, usually from
            classifying the gold spans (MASC). When None, the MASC keys are left out.

    Returns:
        `mate_precision, mate_recall, mate_f1, jmasa_precision, jmasa_recall, jmasa_f1`, plus
        `masc_accuracy, masc_macro_f1` when `masc_predictions` is given. All are floats in [0, 1].
    """
    gold = list(gold)
    joint_predictions = list(joint_predictions)

    mate = span_scores(
        [(tweet_id, start, end) for tweet_id, start, end, _ in gold],
        [(tweet_id, start, end) for tweet_id, start, end, _ in joint_predictions],
    )
    jmasa = span_scores(
        [tuple(aspect) for aspect in gold],
        [tuple(aspect) for aspect in joint_predictions],
    )

    scores = {f"mate_{name}": value for name, value in mate.items()}
    if masc_predictions is not None:
        masc = masc_scores(gold, masc_predictions)
        scores["masc_accuracy"] = masc["accuracy"]
        scores["masc_macro_f1"] = masc["macro_f1"]
    scores.update({f"jmasa_{name}": value for name, value in jmasa.items()})
    return scores


_DESCRIPTION = """\
Exact-span scores for multimodal aspect-based sentiment analysis on tweets, where an aspect is a
span of words [start, end) of one tweet with a polarity (negative=0, neutral=1, positive=2):
- MATE (aspect term extraction): precision, recall and F1 of the predicted spans.
- JMASA (joint aspect and sentiment): precision, recall and F1 of the predicted (span, polarity) pairs.
- MASC (aspect sentiment classification): accuracy and macro-F1 over all gold aspects, where the
  prediction for a gold aspect is the polarity that the prediction row gives for that exact span.
Duplicates in a prediction count once, and zero predictions or zero gold aspects give 0.0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one row per tweet, a list of predicted aspects, each a dict
        `{"start": int, "end": int, "polarity": int}` with words `[start, end)`.
    references: one row per tweet, in the same order, with the gold aspects in the same form.
        The row index is the tweet identity, so row i of both lists must be the same tweet.
Returns:
    mate_precision, mate_recall, mate_f1: scores of the predicted spans, polarity ignored.
    masc_accuracy, masc_macro_f1: scores over all gold aspects. A gold span that the prediction
        row lacks, or lists with more than one polarity, counts as wrong. To score MASC alone,
        predict a polarity for every gold span and pass those spans as predictions. To score a
        joint model, pass its output, and then MASC accuracy equals the JMASA recall unless the
        output lists one span with two polarities. Macro-F1 averages the classes that occur in the gold polarities or
        the predicted polarities of gold aspects.
    jmasa_precision, jmasa_recall, jmasa_f1: scores of the predicted (span, polarity) pairs.
Examples:
    >>> metric = evaluate.load("modeling_dasco/metrics.py")
    >>> metric.compute(
    ...     predictions=[[{"start": 0, "end": 1, "polarity": 2}], []],
    ...     references=[[{"start": 0, "end": 1, "polarity": 2}], [{"start": 3, "end": 5, "polarity": 0}]],
    ... )["jmasa_f1"]
    0.6666666666666666
"""

_CITATION = """\
@misc{liu2025dasco,
  title = {Dependency Structure Augmented Contextual Scoping Framework for Multimodal Aspect-Based Sentiment Analysis},
  author = {Hao Liu and Lijun He and Jiaxi Liang and Zhihan Ren and Haixia Bi and Fan Li},
  year = {2025},
  eprint = {2504.11331},
  archivePrefix = {arXiv},
}
"""

_ASPECT_LIST = [
    {
        "start": datasets.Value("int32"),
        "end": datasets.Value("int32"),
        "polarity": datasets.Value("int32"),
    }
]


def _rows_to_aspects(rows: Sequence[Sequence[Mapping[str, int]]], argument_name: str) -> list[GoldAspect]:
    """Flatten per-tweet aspect rows into `(row index, start, end, polarity)` tuples."""
    aspects = []
    for row_index, row in enumerate(rows):
        for aspect in row:
            start, end, polarity = aspect["start"], aspect["end"], aspect["polarity"]
            if not 0 <= start < end:
                raise ValueError(
                    f"Invalid span [{start}, {end}) in {argument_name} row {row_index}: "
                    "expected 0 <= start < end with `end` exclusive."
                )
            aspects.append((row_index, start, end, polarity))
    return aspects


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MabsaMetric(evaluate.Metric):
    """MATE, MASC and JMASA scores with one row of aspects per tweet."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": _ASPECT_LIST, "references": _ASPECT_LIST}),
        )

    def _compute(self, predictions, references):
        if len(predictions) != len(references):
            raise ValueError(
                f"Got {len(predictions)} prediction rows and {len(references)} reference rows: "
                "pass exactly one row per tweet in both."
            )
        gold = _rows_to_aspects(references, "references")
        joint_predictions = _rows_to_aspects(predictions, "predictions")
        return mabsa_scores(gold, joint_predictions, polarity_by_span(joint_predictions))
