"""The one record type that every data reader produces, and the package's label map."""

from dataclasses import dataclass, field

# One label map for the whole package, also stored in `DascoConfig.id2label`.
ID2LABEL = {0: "negative", 1: "neutral", 2: "positive"}
LABEL2ID = {label: index for index, label in ID2LABEL.items()}

# BIO tags for aspect term extraction (MATE), one tag per word, strict IOB2.
BIO_TAGS = ("O", "B", "I")
BIO2ID = {tag: index for index, tag in enumerate(BIO_TAGS)}


@dataclass(frozen=True)
class AspectSpan:
    """One gold aspect: words `[start, end)` of its tweet and its polarity id (negative=0, neutral=1, positive=2).

    `category` is the aspect category ("Facility", "food") where the data set gives one.
    """

    start: int
    end: int
    polarity: int
    term: tuple[str, ...]
    category: str | None = None


@dataclass
class MabsaRecord:
    """One tweet (or review) with its image id and gold aspects, whatever file format it came from.

    `source` names the file and the row (1-based line or record number) the tweet was read from,
    so that errors about this record can point the user to it. `dependency_heads` contains the 0-based head
    index of each word (the root points to itself) once the record is parsed. `skipped_aspects` counts the
    aspects that the reader left out of `aspects` (the review JSON's `Unknown` polarity).
    """

    tweet_id: str
    words: list[str]
    image_id: str
    aspects: list[AspectSpan] = field(default_factory=list)
    source: str = ""
    dependency_heads: list[int] | None = None
    skipped_aspects: int = 0
