import json

import pytest
import torch
from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval

from blip2_sources import save_itm, save_opt, save_t5, save_tiny_bert
from conversion.convert_blip2_to_dasco import main as convert_main
from modeling_dasco import DascoForMabsa
from modeling_dasco.modeling_dasco import align_parameters


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_bert")
    save_tiny_bert(folder)
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("blip2")
    save_itm(root / "itm")
    save_opt(root / "opt", max_shard_size="100KB")
    save_t5(root / "t5")
    return root


def convert(source, bert_dir, output, *extra):
    convert_main([
        "--blip2", str(source), "--text-encoder", str(bert_dir), "--qformer-embeddings-from", str(bert_dir),
        "--output", str(output), *extra,
    ])  # fmt: skip
    return json.loads((output / "conversion_report.json").read_text())


def assert_same_vision_and_qformer(source_model, converted):
    align_parameters(source_model)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, 3, 224, 224, generator=generator)
    queries = torch.randn(2, 5, 32, generator=generator)
    query_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        expected_image = source_model.vision_model(pixel_values=pixel_values).last_hidden_state
        image = converted.vision_model(pixel_values=pixel_values).last_hidden_state
        expected = source_model.qformer(queries, attention_mask=query_mask, encoder_hidden_states=expected_image)
        actual = converted.qformer(queries, attention_mask=query_mask, encoder_hidden_states=image)
    assert (image - expected_image).abs().max().item() == 0.0
    assert (actual.last_hidden_state - expected.last_hidden_state).abs().max().item() == 0.0


def test_itm_parity(sources, bert_dir, tmp_path):
    report = convert(sources / "itm", bert_dir, tmp_path / "out")
    converted = DascoForMabsa.from_pretrained(tmp_path / "out").eval()
    source_model = Blip2ForImageTextRetrieval.from_pretrained(sources / "itm").eval()
    assert_same_vision_and_qformer(source_model, converted)
    ids = torch.tensor([[101, 4950, 30522, 102]])
    assert torch.equal(converted.embeddings(input_ids=ids), source_model.embeddings(input_ids=ids))
    assert report["notes"][0] == "Q-Former word and position embeddings copied from the BLIP-2 checkpoint."
    assert report["copied"]["embeddings"] == 2
    assert report["dropped"] == {"itm_head": 2, "text_projection": 2, "vision_projection": 2}


@pytest.mark.parametrize("layout", ["opt", "t5"])
def test_generation_layout_parity(sources, bert_dir, tmp_path, layout):
    report = convert(sources / layout, bert_dir, tmp_path / "out")
    converted = DascoForMabsa.from_pretrained(tmp_path / "out").eval()
    source_model = Blip2ForConditionalGeneration.from_pretrained(sources / layout).eval()
    assert_same_vision_and_qformer(source_model, converted)
    assert "no Q-Former word embeddings; copied them from" in report["notes"][0]
    assert report["dropped"]["language_projection"] == 2
    assert report["initialized"]["masc_head"] == 4
    assert "embeddings" not in report["initialized"]


def test_sharded_source_read(sources):
    assert len(list((sources / "opt").glob("model-*.safetensors"))) > 1


def test_reload_has_no_missing_keys(sources, bert_dir, tmp_path):
    convert(sources / "itm", bert_dir, tmp_path / "out")
    _, info = DascoForMabsa.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert info["missing_keys"] == set()
    assert info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set()


def test_text_encoder_weights_copied(sources, bert_dir, tmp_path):
    from transformers import BertModel

    convert(sources / "opt", bert_dir, tmp_path / "out")
    converted = DascoForMabsa.from_pretrained(tmp_path / "out")
    bert = BertModel.from_pretrained(bert_dir, add_pooling_layer=False)
    key = "encoder.layer.1.output.dense.weight"
    assert torch.equal(converted.text_encoder.state_dict()[key], bert.state_dict()[key])


def test_not_blip2_rejected(bert_dir, tmp_path):
    with pytest.raises(ValueError, match=r"model_type 'bert' \(BertModel\), not a BLIP-2 checkpoint"):
        convert(bert_dir, bert_dir, tmp_path / "out")


def test_existing_output_not_overwritten(sources, bert_dir, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        convert(sources / "itm", bert_dir, output)
    assert (output / "keep.txt").read_text() == "user data"
    convert(sources / "itm", bert_dir, output, "--overwrite")
    assert (output / "model.safetensors").is_file()


def test_bfloat16_output(sources, bert_dir, tmp_path):
    convert(sources / "itm", bert_dir, tmp_path / "out", "--dtype", "bfloat16")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"


def test_missing_qformer_tokenizer_explained(sources, bert_dir, tmp_path):
    import shutil

    source = tmp_path / "itm_without_tokenizer"
    shutil.copytree(sources / "itm", source)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (source / name).unlink()
    with pytest.raises(ValueError, match="has no tokenizer files, and the Q-Former tokenizer could not be loaded"):
        convert_main([
            "--blip2", str(source), "--text-encoder", str(bert_dir), "--qformer-embeddings-from", "no-such-bert",
            "--output", str(tmp_path / "out"),
        ])  # fmt: skip


def test_report_names_qformer_tokenizer(sources, bert_dir, tmp_path):
    report = convert(sources / "opt", bert_dir, tmp_path / "out")
    assert report["notes"][1] == f"Q-Former tokenizer: from {bert_dir}."
