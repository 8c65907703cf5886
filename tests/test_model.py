import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

from modeling_dasco import DascoConfig, DascoForMabsa
from modeling_dasco.presets import tiny_config
from modeling_dasco.span_utils import decode_bio, gather_span_query_ids, word_spans_to_token_mask


WORDS = [["the", "camera", "of", "Chuck", "Bass", "is", "great"], ["New", "York", "City", "rain"]]
SPANS = [[(1, 2), (3, 5)], [(0, 3)]]
POLARITIES = [[2, 1], [0]]
# Hand-written parses: "is" and "rain" are the roots.
HEADS = [[1, 5, 1, 4, 2, 5, 5], [2, 2, 3, 3]]


def make_batch(processor, with_aspects=True):
    images = [Image.new("RGB", (60, 40), (200, 10, 10)), Image.new("RGB", (40, 60), (10, 10, 200))]
    if not with_aspects:
        return processor(WORDS, images=images, dependency_heads=HEADS)
    return processor(WORDS, images=images, aspect_spans=SPANS, polarities=POLARITIES, dependency_heads=HEADS)


def test_config_label_map_is_fixed():
    config = tiny_config()
    assert config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert config.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    with pytest.raises(ValueError, match="fixed label map"):
        tiny_config(id2label={0: "positive", 1: "neutral", 2: "negative"})
    with pytest.raises(ValueError, match="query_mode='prompt' is not supported"):
        tiny_config(query_mode="prompt")


def test_id2label_survives_save_and_load(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    assert DascoConfig.from_pretrained(tmp_path).id2label == {0: "negative", 1: "neutral", 2: "positive"}


@pytest.mark.parametrize("query_mode", ["aspect", "learned", "aspect+learned"])
def test_forward_shapes_and_loss(tiny_processor, query_mode):
    torch.manual_seed(0)
    model = DascoForMabsa(tiny_config(query_mode=query_mode)).eval()
    outputs = model(**make_batch(tiny_processor))
    assert outputs.mate_logits.shape == (2, 7, 3)
    assert outputs.masc_logits.shape == (2, 2, 3)
    assert outputs.image_embeds.shape == (2, 257, 32)
    expected = outputs.mate_loss.item() + outputs.masc_loss.item() + 0.2 * outputs.scope_loss.item()
    assert outputs.loss.item() == pytest.approx(expected)


def test_vision_tower_runs_once_per_image(tiny_processor):
    model = DascoForMabsa(tiny_config()).eval()
    images_per_call = []
    model.vision_model.register_forward_pre_hook(
        lambda module, args, kwargs: images_per_call.append(kwargs["pixel_values"].shape[0]), with_kwargs=True
    )
    # Two tweets with three aspects in all: one call over the two images.
    model(**make_batch(tiny_processor))
    assert images_per_call == [2]


def test_image_embeds_replace_pixel_values(tiny_processor):
    torch.manual_seed(0)
    model = DascoForMabsa(tiny_config()).eval()
    batch = make_batch(tiny_processor)
    with_pixels = model(**batch)
    features = dict(batch)
    features["image_embeds"] = with_pixels.image_embeds
    del features["pixel_values"]
    assert torch.equal(model(**features).masc_logits, with_pixels.masc_logits)


def test_masc_loss_uses_class_weights(tiny_processor):
    torch.manual_seed(0)
    model = DascoForMabsa(tiny_config(masc_class_weights=[2.0, 1.0, 0.5])).eval()
    outputs = model(**make_batch(tiny_processor), task="masc")
    logits = outputs.masc_logits[outputs.aspect_mask.bool()]
    labels = torch.tensor([2, 1, 0])
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor([2.0, 1.0, 0.5]))
    assert outputs.masc_loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert outputs.mate_loss is None


def test_jmasa_classifies_extracted_spans(tiny_processor):
    torch.manual_seed(0)
    model = DascoForMabsa(tiny_config()).eval()
    batch = make_batch(tiny_processor, with_aspects=False)
    # Force the MATE head to tag every word B, so each word becomes a one-word aspect.
    with torch.no_grad():
        model.mate_head[1].weight.zero_()
        model.mate_head[1].bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    outputs = model(**batch, task="jmasa")
    assert outputs.aspect_mask.tolist() == [[1] * 7, [1] * 4 + [0] * 3]
    assert outputs.aspect_spans[1, :4].tolist() == [[0, 1], [1, 2], [2, 3], [3, 4]]
    # The extracted queries equal what the processor builds for the same gold spans.
    gold = tiny_processor(
        WORDS, aspect_spans=[[(i, i + 1) for i in range(7)], [(i, i + 1) for i in range(4)]], dependency_heads=HEADS
    )
    real = outputs.aspect_mask.bool()
    assert torch.equal(outputs.aspect_scopes[real], gold["aspect_scopes"][real])
    ids, mask = gather_span_query_ids(
        batch["qformer_word_ids"], batch["qformer_word_mask"], outputs.aspect_spans, outputs.aspect_mask, 0
    )
    assert torch.equal(ids, gold["aspect_input_ids"])
    assert torch.equal(mask, gold["aspect_query_mask"])


def test_decode_bio_is_strict_iob2():
    assert decode_bio([2, 2, 0, 1, 2, 0, 2]) == [(3, 5)]
    assert decode_bio([1, 1]) == [(0, 1), (1, 2)]
    assert decode_bio([0, 1, 2]) == [(1, 3)]


def test_empty_span_marks_no_tokens():
    spans = torch.tensor([[[0, 0], [1, 3], [2, 2]]])
    mask = word_spans_to_token_mask(spans, torch.tensor([[1, 2, 4]]), torch.tensor([[2, 4, 5]]), 6)
    assert mask[0, 0].tolist() == [0.0] * 6
    assert mask[0, 1].tolist() == [0, 0, 1, 1, 1, 0]
    assert mask[0, 2].tolist() == [0.0] * 6


def test_aspect_without_span_uses_its_term(tiny_processor):
    torch.manual_seed(0)
    model = DascoForMabsa(tiny_config()).eval()
    images = [Image.new("RGB", (60, 40), (200, 10, 10))]
    logits = {}
    for term in ("food", "camera"):
        batch = tiny_processor(
            WORDS[:1], images=images, aspect_spans=[[(1, 2), (0, 0)]], aspect_terms=[[None, term]],
            dependency_heads=HEADS[:1],
        )  # fmt: skip
        outputs = model(**batch, task="masc")
        assert outputs.aspect_scopes[0, 1].tolist() == [0, 7]
        assert outputs.aspect_mask.tolist() == [[1, 1]]
        logits[term] = outputs.masc_logits[0]
    # The spanned aspect is unaffected by the other aspect's term; the empty-span aspect reads its own term.
    assert torch.equal(logits["food"][0], logits["camera"][0])
    assert not torch.allclose(logits["food"][1], logits["camera"][1])


def test_empty_span_left_out_of_scope_loss(tiny_processor):
    torch.manual_seed(0)
    model = DascoForMabsa(tiny_config()).eval()
    images = [Image.new("RGB", (60, 40), (200, 10, 10))]
    common = {"images": images, "dependency_heads": HEADS[:1], "polarities": [[2, 0]]}
    with_empty = model(
        **tiny_processor(WORDS[:1], aspect_spans=[[(1, 2), (0, 0)]], aspect_terms=[[None, "food"]], **common)
    )
    common["polarities"] = [[2]]
    alone = model(**tiny_processor(WORDS[:1], aspect_spans=[[(1, 2)]], **common))
    assert with_empty.scope_loss.item() == pytest.approx(alone.scope_loss.item(), abs=1e-6)


def test_output_attentions_returns_cross_attentions(tiny_processor):
    torch.manual_seed(0)
    model = DascoForMabsa(tiny_config()).eval()
    batch = make_batch(tiny_processor)
    with torch.no_grad():
        plain = model(**batch)
        outputs = model(**batch, output_attentions=True)
    assert plain.aspect_cross_attentions is None
    # (tweets, aspects, cross-attention layers, heads, query tokens, image tokens incl. CLS)
    query_length = batch["aspect_input_ids"].shape[-1]
    assert outputs.aspect_cross_attentions.shape == (2, 2, 2, 4, query_length, 257)
    row_sums = outputs.aspect_cross_attentions.sum(-1)
    real_queries = batch["aspect_query_mask"].bool()
    assert torch.allclose(row_sums.permute(0, 1, 4, 2, 3)[real_queries], torch.tensor(1.0))
    assert row_sums.permute(0, 1, 4, 2, 3)[~real_queries].abs().max().item() == 0.0
    assert outputs.aspect_cross_attentions[1, 1].abs().max().item() == 0.0  # padded aspect
    assert torch.allclose(outputs.masc_logits, plain.masc_logits, atol=1e-5)
    # The eager switch lasts only for the call.
    assert model.qformer.config._attn_implementation == "sdpa"


def test_output_attentions_for_extracted_spans(tiny_processor):
    torch.manual_seed(0)
    model = DascoForMabsa(tiny_config()).eval()
    with torch.no_grad():
        model.mate_head[1].weight.zero_()
        model.mate_head[1].bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
        outputs = model(**make_batch(tiny_processor, with_aspects=False), task="jmasa", output_attentions=True)
    assert outputs.aspect_cross_attentions.shape[:2] == (2, 7)
    real = outputs.aspect_mask.bool()
    assert torch.allclose(outputs.aspect_cross_attentions[real][:, :, :, 0].sum(-1), torch.tensor(1.0))
    learned = DascoForMabsa(tiny_config(query_mode="learned")).eval()
    assert learned(**make_batch(tiny_processor), output_attentions=True).aspect_cross_attentions is None


def test_masc_requires_aspects(tiny_processor):
    model = DascoForMabsa(tiny_config()).eval()
    with pytest.raises(ValueError, match="pass aspect_spans and aspect_mask"):
        model(**make_batch(tiny_processor, with_aspects=False), task="masc")


def test_missing_images_error(tiny_processor):
    model = DascoForMabsa(tiny_config()).eval()
    with pytest.raises(ValueError, match="Pass pixel_values or image_embeds"):
        model(**tiny_processor(WORDS, aspect_spans=SPANS, dependency_heads=HEADS), task="masc")


def test_syntactic_branch_needs_parse(tiny_processor):
    model = DascoForMabsa(tiny_config()).eval()
    batch = tiny_processor(WORDS, images=[Image.new("RGB", (9, 9))] * 2, aspect_spans=SPANS)
    with pytest.raises(ValueError, match="pass dependency_heads to the processor"):
        model(**batch, task="masc")


def test_text_only_model_skips_vision(tiny_processor):
    model = DascoForMabsa(tiny_config(use_image=False)).eval()
    outputs = model(**tiny_processor(WORDS, aspect_spans=SPANS, dependency_heads=HEADS), task="masc")
    assert outputs.image_embeds is None
    assert outputs.masc_logits.shape == (2, 2, 3)


def test_remote_code_load_without_package(tiny_checkpoint, tiny_processor, tmp_path):
    model = DascoForMabsa.from_pretrained(tiny_checkpoint).eval()
    batch = dict(make_batch(tiny_processor))
    torch.save(batch, tmp_path / "batch.pt")
    with torch.no_grad():
        expected = model(**batch)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["modeling_dasco"] = None  # `import modeling_dasco` now raises ImportError
        import torch
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(tiny_checkpoint)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(tiny_checkpoint)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        assert type(processor).__name__ == "DascoProcessor"
        batch = torch.load({str(tmp_path / "batch.pt")!r})
        with torch.no_grad():
            outputs = model(**batch)
        torch.save({{"mate": outputs.mate_logits, "masc": outputs.masc_logits}}, {str(tmp_path / "out.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, env=_offline_env())
    reloaded = torch.load(tmp_path / "out.pt")
    assert (reloaded["mate"] - expected.mate_logits).abs().max().item() == 0.0
    assert (reloaded["masc"] - expected.masc_logits).abs().max().item() == 0.0


def _offline_env():
    import os

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env
