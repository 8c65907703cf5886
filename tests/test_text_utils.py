import json
from pathlib import Path

import pytest

from modeling_dasco.text_utils import find_term, tokenize_tweet, unescape_with_offsets


SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
RT_TWEET = "RT @user: Poll: Smith &amp; Jones lead the field 😍"


def words(text: str) -> list[str]:
    return [token.text for token in tokenize_tweet(text)]


def test_rt_tweet_words_and_offsets():
    tokens = tokenize_tweet(RT_TWEET)
    assert [token.text for token in tokens] == [
        "RT", "@", "user", ":", "Poll", ":", "Smith", "&", "Jones", "lead", "the", "field", "😍",
    ]  # fmt: skip
    substrings = [RT_TWEET[token.start : token.end] for token in tokens]
    assert substrings[7] == "&amp;"
    for token, substring in zip(tokens, substrings):
        if token.text != "&":
            assert substring == token.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@user:", ["@", "user", ":"]),
        ("#MCM", ["#", "MCM"]),
        ("didn't", ["didn", "'", "t"]),
        ("Wow!!", ["Wow", "!", "!"]),
        ("(great)...", ["(", "great", ")", ".", ".", "."]),
        ("$10,000 at 9.30, then 21,", ["$", "10,000", "at", "9.30", ",", "then", "21", ","]),
        ("snake_case_name", ["snake_case_name"]),
        ("e-mail", ["e", "-", "mail"]),
    ],
)
def test_splits_like_twitter_datasets(text, expected):
    assert words(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("love😍it", ["love", "😍", "it"]),
        ("😂😂", ["😂", "😂"]),
        ("👍🏽", ["👍🏽"]),
        ("👩\u200d💻 coding", ["👩\u200d💻", "coding"]),
        ("🇺🇸🇬🇧", ["🇺🇸", "🇬🇧"]),
        ("❤️ you", ["❤️", "you"]),
        ("‼️", ["‼️"]),
        ("1️⃣", ["1️⃣"]),
    ],
)
def test_emoji_sequences_are_words(text, expected):
    assert words(text) == expected


@pytest.mark.parametrize(
    ("text", "expected_words", "expected_substrings"),
    [
        ("a &lt;3 b", ["a", "<", "3", "b"], ["a", "&lt;", "3", "b"]),
        ("&quot;hi&quot;", ['"', "hi", '"'], ["&quot;", "hi", "&quot;"]),
        ("it&#39;s", ["it", "'", "s"], ["it", "&#39;", "s"]),
        ("&#x1F60D;!", ["😍", "!"], ["&#x1F60D;", "!"]),
        ("&foo; x", ["&", "foo", ";", "x"], ["&", "foo", ";", "x"]),
        ("AT&amp T", ["AT", "&", "amp", "T"], ["AT", "&", "amp", "T"]),
    ],
)
def test_html_entities_map_to_raw_characters(text, expected_words, expected_substrings):
    tokens = tokenize_tweet(text)
    assert [token.text for token in tokens] == expected_words
    assert [text[token.start : token.end] for token in tokens] == expected_substrings


def test_unescape_offsets_cover_entity():
    clean, spans = unescape_with_offsets("a&amp;b")
    assert clean == "a&b"
    assert spans == [(0, 1), (1, 6), (6, 7)]


def test_invisible_characters_separate_words():
    text = "one\u200btwo\tthree\u00a0four\n"
    tokens = tokenize_tweet(text)
    assert [token.text for token in tokens] == ["one", "two", "three", "four"]
    assert [text[token.start : token.end] for token in tokens] == ["one", "two", "three", "four"]


def test_combining_marks_stay_in_word():
    decomposed = "cafe\u0301 Vie\u0323\u0302t"
    assert words(decomposed) == ["cafe\u0301", "Vie\u0323\u0302t"]


def test_url_is_one_word():
    text = "read https://t.co/AbC123. now www.example.com/x?y=1"
    assert words(text) == ["read", "https://t.co/AbC123", ".", "now", "www.example.com/x?y=1"]


def test_every_word_maps_to_raw_substring():
    text = "RT @a_b: 10,000 fans ❤️ #USWNT&amp;co &lt;3 https://t.co/x 👩\u200d💻!"
    clean, _ = unescape_with_offsets(text)
    for token in tokenize_tweet(text):
        raw = text[token.start : token.end]
        assert raw == token.text or "&" in raw, (token, raw)
        assert token.text in clean


def test_dataset_words_tokenize_to_themselves():
    # The bundled Twitter-2015 sample is pre-tokenized: joining its words with spaces and tokenizing again
    # must give back the same words, tweet by tweet.
    for split in ("train", "dev", "test"):
        for record in json.loads((SAMPLE / f"{split}.json").read_text(encoding="utf-8")):
            assert words(" ".join(record["words"])) == record["words"]


def test_find_term_whole_words():
    tokens = tokenize_tweet(RT_TWEET)
    assert find_term(tokens, "Smith") == (6, 7)
    assert find_term(tokens, "Jones") == (8, 9)
    assert find_term(tokens, "Smith & Jones") == (6, 9)
    assert find_term(tokens, "Smith &amp; Jones") == (6, 9)
    assert find_term(tokens, "😍") == (12, 13)


def test_find_term_case_and_misses():
    tokens = tokenize_tweet("Chuck Bass and chuck bass #MCM")
    assert find_term(tokens, "chuck bass") == (3, 5)
    assert find_term(tokens, "CHUCK") == (0, 1)
    assert find_term(tokens, "#MCM") == (5, 7)
    assert find_term(tokens, "Bas") is None
    assert find_term(tokens, "food") is None
    assert find_term(tokens, "   ") is None
