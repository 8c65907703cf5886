import pytest
import torch
from PIL import Image


WORDS = ["RT", "@", "ltsChuckBass", ":", "Chuck", "Bass", "is", "everything", "#", "MCM"]


def test_word_subtoken_alignment(tiny_processor):
    # MiniLM's WordPiece splits "ltsChuckBass" into lt ##sch ##uck ##bas ##s and "MCM" into mc ##m.
    encoding = tiny_processor([WORDS])
    assert encoding["word_token_start"][0].tolist() == [1, 2, 3, 8, 9, 10, 11, 12, 13, 14]
    assert encoding["word_token_end"][0].tolist() == [2, 3, 8, 9, 10, 11, 12, 13, 14, 16]
    assert encoding["input_ids"].shape == (1, 17)
    assert encoding["word_mask"][0].tolist() == [1] * 10


def test_word_without_subtokens_gets_unknown(tiny_processor, minilm_tokenizer):
    encoding = tiny_processor([["a", "\u200b", "b"]])
    assert encoding["input_ids"][0, 2].item() == minilm_tokenizer.unk_token_id
    assert encoding["word_token_end"][0].tolist() == [2, 3, 4]


def test_aspects_batched_with_masks(tiny_processor, minilm_tokenizer):
    encoding = tiny_processor(
        [WORDS, ["Millions", "For", "Trayvon"]],
        aspect_spans=[[(4, 6), (8, 10)], [(0, 3)]],
        polarities=[[2, 1], [1]],
    )
    assert encoding["aspect_spans"].tolist() == [[[4, 6], [8, 10]], [[0, 3], [0, 0]]]
    assert encoding["aspect_mask"].tolist() == [[1, 1], [1, 0]]
    assert encoding["masc_labels"].tolist() == [[2, 1], [1, -100]]
    # The longest query, "Millions For Trayvon", has 4 sub-tokens: millions for tray ##von.
    expected_query = minilm_tokenizer.convert_tokens_to_ids(["#", "mc", "##m"]) + [minilm_tokenizer.pad_token_id]
    assert encoding["aspect_input_ids"][0, 1].tolist() == expected_query
    assert encoding["aspect_query_mask"][0, 0].tolist() == [1, 1, 0, 0]
    assert encoding["aspect_query_mask"][1, 0].tolist() == [1, 1, 1, 1]
    assert encoding["mate_labels"][0].tolist() == [0, 0, 0, 0, 1, 2, 0, 0, 1, 2]


def test_long_tweet_keeps_aspect_query(tiny_processor, minilm_tokenizer):
    words = ["word"] * 70 + ["camera"]
    encoding = tiny_processor([words], aspect_spans=[[(0, 1), (70, 71)]], polarities=[[0, 2]])
    assert encoding["input_ids"].shape[1] == 64
    assert encoding["word_mask"].sum().item() == 62
    assert encoding["aspect_truncated"].tolist() == [[0, 1]]
    assert encoding["aspect_mask"].tolist() == [[1, 0]]
    assert encoding["aspect_input_ids"][0, 1, 0].item() == minilm_tokenizer.convert_tokens_to_ids("camera")
    assert encoding["masc_labels"].tolist() == [[0, -100]]


def test_span_out_of_range_rejected(tiny_processor):
    with pytest.raises(ValueError, match=r"has 3 words but an aspect span \(2, 5\)"):
        tiny_processor([["a", "b", "c"]], aspect_spans=[[(2, 5)]])


def test_aspect_terms_give_queries(tiny_processor, minilm_tokenizer):
    heads = [6] * len(WORDS)
    encoding = tiny_processor(
        [WORDS], aspect_spans=[[(4, 6), (0, 0)]], aspect_terms=[[None, "food service"]], dependency_heads=[heads]
    )
    assert encoding["aspect_spans"].tolist() == [[[4, 6], [0, 0]]]
    assert encoding["aspect_mask"].tolist() == [[1, 1]]
    assert encoding["aspect_scopes"][0, 1].tolist() == [0, len(WORDS)]
    # The span's query comes from its words, the empty span's from its term.
    chuck_bass = minilm_tokenizer.convert_tokens_to_ids(["chuck", "bass"])
    food_service = minilm_tokenizer.convert_tokens_to_ids(["food", "service"])
    assert encoding["aspect_input_ids"][0, 0, :2].tolist() == chuck_bass
    assert encoding["aspect_input_ids"][0, 1, :2].tolist() == food_service
    assert encoding["aspect_query_mask"][0, 1].tolist() == [1, 1]
    assert encoding["mate_labels"][0].tolist() == [0, 0, 0, 0, 1, 2, 0, 0, 0, 0]


def test_aspect_terms_without_spans(tiny_processor, minilm_tokenizer):
    encoding = tiny_processor([WORDS, ["a"]], aspect_terms=[["food", "camera"], ["service"]])
    assert encoding["aspect_spans"].tolist() == [[[0, 0], [0, 0]], [[0, 0], [0, 0]]]
    assert encoding["aspect_mask"].tolist() == [[1, 1], [1, 0]]
    assert encoding["aspect_scopes"][0].tolist() == [[0, 10], [0, 10]]
    assert encoding["aspect_input_ids"][1, 0, 0].item() == minilm_tokenizer.convert_tokens_to_ids("service")


def test_empty_span_needs_term(tiny_processor):
    with pytest.raises(ValueError, match=r"empty span \(0, 0\) and no term"):
        tiny_processor([["a", "b"]], aspect_spans=[[(0, 0)]])
    with pytest.raises(ValueError, match="1 aspect spans but 2 aspect terms"):
        tiny_processor([["a", "b"]], aspect_spans=[[(0, 1)]], aspect_terms=[["a", "b"]])


@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "L", "P", "I;16"])
def test_images_of_any_mode_become_rgb_tensors(tiny_processor, mode):
    image = Image.new(mode, (37, 53))
    encoding = tiny_processor([["a"]], images=[image])
    assert encoding["pixel_values"].shape == (1, 3, 224, 224)
    assert encoding["pixel_values"].dtype == torch.float32


def test_processor_round_trip(tiny_checkpoint):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    assert processor.max_length == 64
    assert processor.image_processor.size["height"] == 224
    assert processor.qformer_tokenizer.convert_tokens_to_ids("camera") == 4950
