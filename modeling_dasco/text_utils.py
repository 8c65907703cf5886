"""Raw tweet text to words with character offsets into the original string.

Shipped as remote code with the pipeline, so it imports only the standard library.

The benchmark tweets (Twitter-2015 and Twitter-2017) are pre-tokenized: `@user:` is `@`, `user`, `:`, `#MCM` is
`#`, `MCM`, punctuation and apostrophes are separate words (`didn ' t`) and every emoji is a word. `tokenize_tweet`
splits raw text the same way, after unescaping HTML entities (`&amp;` is `&`), and keeps for each word the
offsets `[start, end)` of the characters it came from in the raw text. A word made from `&amp;` therefore spans
those 5 characters, and `text[word.start:word.end]` is always the exact substring that produced the word.
"""

import html
import re
import unicodedata
from dataclasses import dataclass


# A character reference that ends with ";": named (`&amp;`), decimal (`&#39;`) or hexadecimal (`&#x1F60D;`).
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_URL = re.compile(r"(?:https?://|www\.)[^\s]+", re.IGNORECASE)
# Punctuation that ends a sentence rather than a URL: "see https://t.co/x." keeps the "." as its own word.
_URL_TRAILING = ".,;:!?)]}\"'"

_ZERO_WIDTH_JOINER = "\u200d"
_KEYCAP = "\u20e3"
_VARIATION_SELECTORS = ("\ufe0e", "\ufe0f")
_SKIN_TONES = range(0x1F3FB, 0x1F400)
_TAG_CHARACTERS = range(0xE0020, 0xE0080)
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)


@dataclass(frozen=True)
class Token:
    """One word of a tweet: its text after HTML unescaping and its character span `[start, end)` in the raw text."""

    text: str
    start: int
    end: int


def unescape_with_offsets(text: str) -> tuple[str, list[tuple[int, int]]]:
    """Unescape HTML character references and map every output character back to the raw text.

    Returns the unescaped string and, per character of it, the span `[start, end)` of the raw characters it
    comes from: one character for ordinary text, the whole reference (`&amp;`, 5 characters) for an entity.
    Only references that end with ";" are replaced, and unknown names (`&foo;`) stay as they are.
    """
    characters: list[str] = []
    spans: list[tuple[int, int]] = []
    position = 0
    for match in _ENTITY.finditer(text):
        for index in range(position, match.start()):
            characters.append(text[index])
            spans.append((index, index + 1))
        replacement = html.unescape(match.group())
        if replacement == match.group():
            for index in range(match.start(), match.end()):
                characters.append(text[index])
                spans.append((index, index + 1))
        else:
            for character in replacement:
                characters.append(character)
                spans.append((match.start(), match.end()))
        position = match.end()
    for index in range(position, len(text)):
        characters.append(text[index])
        spans.append((index, index + 1))
    return "".join(characters), spans


def tokenize_tweet(text: str) -> list[Token]:
    """Split raw tweet text into words as the Twitter MABSA datasets do, with offsets into `text`.

    - HTML character references are unescaped first (`&amp;` becomes the word `&`).
    - A run of letters, digits, underscores and combining marks is one word. Digits joined by "," or "."
      stay one word (`10,000`, `9.30`).
    - A URL (`http://`, `https://` or `www.` up to the next space) is one word, without trailing punctuation.
    - An emoji is one word, together with its variation selector, skin tone and zero-width-joiner sequence
      (👩‍💻 and 👍🏽 are one word each). Two regional indicators form one flag.
    - Every other visible character (punctuation, `@`, `#`, symbols) is a word of its own.
    - Whitespace, control characters and other invisible format characters separate words and belong to none.
    """
    clean, spans = unescape_with_offsets(text)
    tokens = []
    for start, end in _word_boundaries(clean):
        tokens.append(Token(clean[start:end], spans[start][0], spans[end - 1][1]))
    return tokens


def find_term(tokens: list[Token], term: str) -> tuple[int, int] | None:
    """Word span `[start, end)` of the first occurrence of `term` in `tokens`, or None when it does not occur.

    The term is tokenized like the tweet and must match whole words: exactly first, then ignoring case.
    `"Smith & Jones"` therefore matches the raw text `Smith &amp; Jones`, but `"Chuck"` does not match the word
    `ChuckBass`.
    """
    words = [token.text for token in tokenize_tweet(term)]
    if not words:
        return None
    tweet_words = [token.text for token in tokens]
    for normalize in (_identity, str.casefold):
        wanted = [normalize(word) for word in words]
        candidates = [normalize(word) for word in tweet_words]
        for start in range(len(candidates) - len(wanted) + 1):
            if candidates[start : start + len(wanted)] == wanted:
                return start, start + len(wanted)
    return None


def _identity(word: str) -> str:
    return word


def _word_boundaries(text: str) -> list[tuple[int, int]]:
    """Spans `[start, end)` of the words of already unescaped text, by the rules of `tokenize_tweet`."""
    boundaries = []
    position = 0
    while position < len(text):
        character = text[position]
        if _is_separator(character):
            position += 1
            continue
        url = _URL.match(text, position)
        if url and _starts_word(text, position):
            end = url.end()
            while end > position + 1 and text[end - 1] in _URL_TRAILING:
                end -= 1
            boundaries.append((position, end))
            position = end
            continue
        if _is_word_character(character):
            end = _word_end(text, position)
        elif _is_emoji_base(character):
            end = _emoji_end(text, position)
        else:
            # Modifiers stay with the symbol before them: "‼️" and "#️⃣" are one word each.
            end = _skip_emoji_modifiers(text, position + 1)
        boundaries.append((position, end))
        position = end
    return boundaries


def _is_separator(character: str) -> bool:
    """Whitespace, control and format characters (zero-width space, joiners outside emoji) separate words."""
    return character.isspace() or unicodedata.category(character) in ("Cc", "Cf", "Zs", "Zl", "Zp")


def _starts_word(text: str, position: int) -> bool:
    """True when no word character precedes `position`, so `xhttp://` is not read as a URL."""
    return position == 0 or not _is_word_character(text[position - 1])


def _is_word_character(character: str) -> bool:
    return character.isalnum() or character == "_"


def _word_end(text: str, start: int) -> int:
    """End of the word at `start`: word characters, combining marks, and digit groups joined by "," or "."."""
    end = start + 1
    while end < len(text):
        character = text[end]
        if _is_word_character(character) or unicodedata.category(character).startswith("M"):
            end += 1
        elif (
            character in ",."
            and end + 1 < len(text)
            and text[end - 1].isdigit()
            and text[end + 1].isdigit()
        ):
            end += 2
        else:
            break
    return end


def _is_emoji_base(character: str) -> bool:
    """Pictographic symbols (Unicode category So, which includes the regional indicators of flags)."""
    return unicodedata.category(character) == "So"


def _emoji_end(text: str, start: int) -> int:
    """End of the emoji sequence at `start`: modifiers, joined emoji, or a pair of regional indicators."""
    if ord(text[start]) in _REGIONAL_INDICATORS:
        if start + 1 < len(text) and ord(text[start + 1]) in _REGIONAL_INDICATORS:
            return start + 2
        return start + 1
    end = _skip_emoji_modifiers(text, start + 1)
    while (
        end + 1 < len(text)
        and text[end] == _ZERO_WIDTH_JOINER
        and _is_emoji_base(text[end + 1])
    ):
        end = _skip_emoji_modifiers(text, end + 2)
    return end


def _skip_emoji_modifiers(text: str, position: int) -> int:
    while position < len(text):
        code_point = ord(text[position])
        if (
            text[position] in _VARIATION_SELECTORS
            or text[position] == _KEYCAP
            or code_point in _SKIN_TONES
            or code_point in _TAG_CHARACTERS
        ):
            position += 1
        else:
            break
    return position


__all__ = ["Token", "find_term", "tokenize_tweet", "unescape_with_offsets"]
