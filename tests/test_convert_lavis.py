"""The LAVIS converter against the transformers one: the tiny transformers BLIP-2 checkpoints of `blip2_sources`
are rewritten under LAVIS key names, converted with convert_lavis_to_dasco, and compared tensor by tensor with
what convert_blip2_to_dasco makes of the same checkpoints."""

import json

import pytest
import torch
from transformers import BertModel

from blip2_sources import QFORMER, save_itm, save_opt, save_tiny_bert
from conversion.convert_blip2_to_dasco import main as convert_blip2_main
from conversion.convert_lavis_to_dasco import (
    TEXT_FFN_GROUP,
    UNUSED_BLOCKS_GROUP,
    infer_cross_attention_frequency,
    infer_vision_config,
)
from conversion.convert_lavis_to_dasco import main as convert_lavis_main
from modeling_dasco import DascoForMabsa


NUM_QFORMER_LAYERS = QFORMER["num_hidden_layers"]
# The tiny sources use 4 heads; LAVIS files do not store head counts, so the tests pass them.
HEAD_FLAGS = ["--vision-num-heads", "4", "--qformer-num-heads", "4"]
CONVERTED_PREFIXES = ("vision_model.", "query_tokens", "qformer.", "embeddings.")
VISION_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size",
    "qkv_bias", "layer_norm_eps", "hidden_act",
)  # fmt: skip
QFORMER_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "cross_attention_frequency",
    "encoder_hidden_size", "vocab_size", "max_position_embeddings", "layer_norm_eps", "hidden_act",
)  # fmt: skip

# transformers key prefixes and their LAVIS names. The first matching prefix applies.
TO_LAVIS = (
    ("vision_model.embeddings.class_embedding", "visual_encoder.cls_token"),
    ("vision_model.embeddings.position_embedding", "visual_encoder.pos_embed"),
    ("vision_model.embeddings.patch_embedding.", "visual_encoder.patch_embed.proj."),
    ("vision_model.post_layernorm.", "ln_vision."),
    ("vision_model.encoder.layers.", "visual_encoder.blocks."),
    ("qformer.layernorm.", "Qformer.bert.embeddings.LayerNorm."),
    ("qformer.encoder.layer.", "Qformer.bert.encoder.layer."),
    ("embeddings.", "Qformer.bert.embeddings."),
    ("vision_projection.", "vision_proj."),
    ("text_projection.", "text_proj."),
    ("language_projection.", "opt_proj."),
    ("language_model.", "opt_model."),
)
# Names inside one vision block and one Q-Former layer, transformers first.
BLOCK_TO_LAVIS = (
    (".layer_norm1.", ".norm1."),
    (".layer_norm2.", ".norm2."),
    (".self_attn.qkv.weight", ".attn.qkv.weight"),
    (".self_attn.projection.", ".attn.proj."),
)
QFORMER_LAYER_TO_LAVIS = (
    (".crossattention.attention.", ".crossattention.self."),
    (".attention.attention.", ".attention.self."),
)


class LavisConfigStub:
    """A non-tensor object that `torch.load(weights_only=True)` rejects."""


def randomize(model, seed: int) -> None:
    """Give every parameter random values, so that a swapped or dropped tensor cannot go unnoticed.

    transformers initializes biases, LayerNorms and the query tokens to constants, which would hide such mistakes.
    The key part of each vision qkv bias is set to zero: LAVIS's EVA attention has no key bias, so a LAVIS file
    cannot carry one, and the round trip is exact only without it.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
            if name.endswith("self_attn.qkv.bias"):
                width = parameter.shape[0] // 3
                parameter[width : 2 * width] = 0


def rename_prefix(key: str) -> str:
    for source, target in TO_LAVIS:
        if key.startswith(source):
            return target + key[len(source) :]
    return key


def rename_part(key: str, table) -> str:
    for source, target in table:
        if source in key:
            return key.replace(source, target, 1)
    return key


def to_lavis(blip2_state: dict) -> dict:
    """The same tensors under LAVIS names, with each vision qkv bias split into q_bias and v_bias."""
    lavis = {}
    for key, tensor in blip2_state.items():
        if key.endswith("self_attn.qkv.bias"):
            prefix = rename_prefix(key).removesuffix("self_attn.qkv.bias")
            q_bias, k_bias, v_bias = tensor.chunk(3)
            assert not k_bias.any(), "the source must have a zero key bias for an exact round trip"
            lavis[prefix + "attn.q_bias"] = q_bias.clone()
            lavis[prefix + "attn.v_bias"] = v_bias.clone()
            continue
        lavis_key = rename_prefix(key)
        part_table = BLOCK_TO_LAVIS if lavis_key.startswith("visual_encoder.") else QFORMER_LAYER_TO_LAVIS
        lavis_key = rename_part(lavis_key, part_table)
        lavis[lavis_key] = tensor.clone()
    return lavis


def stage1_extras(hidden: int, intermediate: int, vocab_size: int) -> dict:
    """Tensors of a LAVIS stage-1 file that DASCO drops: the Q-Former text FFN, its LM head and the ITC temperature."""
    generator = torch.Generator().manual_seed(11)
    extras = {"Qformer.bert.embeddings.position_ids": torch.arange(512).unsqueeze(0), "temp": torch.tensor(0.07)}
    for index in range(NUM_QFORMER_LAYERS):
        prefix = f"Qformer.bert.encoder.layer.{index}."
        extras[prefix + "intermediate.dense.weight"] = torch.randn(intermediate, hidden, generator=generator)
        extras[prefix + "intermediate.dense.bias"] = torch.randn(intermediate, generator=generator)
        extras[prefix + "output.dense.weight"] = torch.randn(hidden, intermediate, generator=generator)
        extras[prefix + "output.dense.bias"] = torch.randn(hidden, generator=generator)
        extras[prefix + "output.LayerNorm.weight"] = torch.randn(hidden, generator=generator)
        extras[prefix + "output.LayerNorm.bias"] = torch.randn(hidden, generator=generator)
    cls = "Qformer.cls.predictions."
    extras[cls + "bias"] = torch.zeros(vocab_size)
    extras[cls + "transform.dense.weight"] = torch.randn(hidden, hidden, generator=generator)
    extras[cls + "transform.dense.bias"] = torch.zeros(hidden)
    extras[cls + "transform.LayerNorm.weight"] = torch.ones(hidden)
    extras[cls + "transform.LayerNorm.bias"] = torch.zeros(hidden)
    extras[cls + "decoder.weight"] = torch.randn(vocab_size, hidden, generator=generator)
    extras[cls + "decoder.bias"] = torch.zeros(vocab_size)
    return extras


def eva_file_state(lavis_state: dict) -> dict:
    """The vision tower as eva_vit_g.pth would hold it: bare EVA keys, one block more than BLIP-2 runs, and the
    final norm and head that LAVIS never uses."""
    eva = {
        key.removeprefix("visual_encoder."): tensor
        for key, tensor in lavis_state.items()
        if key.startswith("visual_encoder.")
    }
    last = max(int(key.split(".")[1]) for key in eva if key.startswith("blocks."))
    for key in [key for key in eva if key.startswith(f"blocks.{last}.")]:
        eva[key.replace(f"blocks.{last}.", f"blocks.{last + 1}.", 1)] = eva[key] + 1
    width = eva["cls_token"].shape[-1]
    eva.update({"norm.weight": torch.ones(width), "norm.bias": torch.zeros(width)})
    eva.update({"head.weight": torch.zeros(10, width), "head.bias": torch.zeros(10)})
    return eva


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_bert")
    save_tiny_bert(folder)
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory, bert_dir):
    """LAVIS files made from the tiny ITM and OPT checkpoints, and the DASCO folders that the transformers
    converter makes from those checkpoints."""
    root = tmp_path_factory.mktemp("lavis")
    itm = save_itm(root / "itm")
    randomize(itm, seed=21)
    itm.save_pretrained(root / "itm")
    opt = save_opt(root / "opt")
    randomize(opt, seed=22)
    opt.save_pretrained(root / "opt")
    for layout in ("itm", "opt"):
        convert_blip2_main([
            "--blip2", str(root / layout), "--text-encoder", str(bert_dir), "--qformer-embeddings-from",
            str(bert_dir), "--output", str(root / f"dasco_{layout}"),
        ])  # fmt: skip

    hidden, intermediate = QFORMER["hidden_size"], QFORMER["intermediate_size"]
    stage1 = to_lavis(itm.state_dict())
    vocab_size = stage1["Qformer.bert.embeddings.word_embeddings.weight"].shape[0]
    stage1.update(stage1_extras(hidden, intermediate, vocab_size))
    # LAVIS wraps its saved state dicts as {"model": ...}.
    torch.save({"model": stage1}, root / "stage1.pth")

    released = {key: tensor for key, tensor in stage1.items() if not key.startswith("visual_encoder.")}
    torch.save({"model": released}, root / "stage1_without_vision.pth")
    torch.save(eva_file_state(stage1), root / "eva_vit.pth")

    stage2 = to_lavis(opt.state_dict())
    stage2["Qformer.bert.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    torch.save(stage2, root / "stage2.pth")
    return root


def convert(source, bert_dir, output, *extra) -> dict:
    convert_lavis_main([
        "--lavis", str(source), "--text-encoder", str(bert_dir), "--qformer-tokenizer", str(bert_dir),
        "--output", str(output), *HEAD_FLAGS, *extra,
    ])  # fmt: skip
    return json.loads((output / "conversion_report.json").read_text())


@pytest.fixture(scope="module")
def stage1_output(sources, bert_dir):
    output = sources / "out_stage1"
    return output, convert(sources / "stage1.pth", bert_dir, output)


@pytest.fixture(scope="module")
def stage2_output(sources, bert_dir):
    output = sources / "out_stage2"
    return output, convert(sources / "stage2.pth", bert_dir, output, "--qformer-embeddings-from", str(bert_dir))


def converted_tensors(folder) -> dict:
    state = DascoForMabsa.from_pretrained(folder).state_dict()
    return {key: tensor for key, tensor in state.items() if key.startswith(CONVERTED_PREFIXES)}


def assert_same_conversion(folder, reference_folder):
    actual, expected = converted_tensors(folder), converted_tensors(reference_folder)
    assert sorted(actual) == sorted(expected)
    different = [key for key in expected if not torch.equal(actual[key], expected[key])]
    assert different == []

    config = json.loads((folder / "config.json").read_text())
    reference = json.loads((reference_folder / "config.json").read_text())
    assert config["num_query_tokens"] == reference["num_query_tokens"]
    for field in VISION_FIELDS:
        assert config["vision_config"][field] == reference["vision_config"][field], field
    for field in QFORMER_FIELDS:
        assert config["qformer_config"][field] == reference["qformer_config"][field], field


def test_stage1_matches_blip2_conversion(sources, stage1_output):
    output, _ = stage1_output
    assert_same_conversion(output, sources / "dasco_itm")


def test_stage1_report(stage1_output):
    _, report = stage1_output
    assert report["dropped"][TEXT_FFN_GROUP] == 6 * NUM_QFORMER_LAYERS
    assert report["dropped"]["Qformer.cls"] == 7
    assert report["dropped"]["Qformer.bert"] == 1  # position_ids
    for group in ("vision_proj", "text_proj", "itm_head"):
        assert report["dropped"][group] == 2, group
    assert report["dropped"]["temp"] == 1
    assert "Q-Former word and position embeddings copied from the LAVIS checkpoint." in report["notes"]
    assert not set(report["initialized"]) & {"vision_model", "qformer", "query_tokens", "embeddings"}


def test_stage2_matches_blip2_conversion(sources, stage2_output):
    output, _ = stage2_output
    assert_same_conversion(output, sources / "dasco_opt")


def test_stage2_embeddings_from_bert(stage2_output, bert_dir):
    output, report = stage2_output
    converted = DascoForMabsa.from_pretrained(output)
    bert = BertModel.from_pretrained(bert_dir, add_pooling_layer=False).state_dict()
    for name in ("word_embeddings", "position_embeddings"):
        assert torch.equal(converted.embeddings.state_dict()[f"{name}.weight"], bert[f"embeddings.{name}.weight"])
    assert any("stage-2 file without Q-Former word embeddings; copied them from" in note for note in report["notes"])


def test_stage2_report(stage2_output):
    _, report = stage2_output
    opt_model_dropped = sum(count for group, count in report["dropped"].items() if group.startswith("opt_model"))
    assert opt_model_dropped > 0
    assert report["dropped"]["opt_proj"] == 2
    assert TEXT_FFN_GROUP not in report["dropped"]
    assert "embeddings" not in report["initialized"]


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_reload_has_no_missing_keys(request, stage):
    output, _ = request.getfixturevalue(f"{stage}_output")
    _, info = DascoForMabsa.from_pretrained(output, output_loading_info=True)
    assert info["missing_keys"] == set()
    assert info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set()


def test_processor_image_size(stage1_output):
    output, _ = stage1_output
    saved = json.loads((output / "processor_config.json").read_text())
    assert saved["image_processor"]["size"] == {"height": 224, "width": 224}


def test_stage2_without_embeddings_source(sources, bert_dir, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(ValueError) as raised:
        convert(sources / "stage2.pth", bert_dir, output)
    message = str(raised.value)
    assert "stage2.pth is a stage-2 LAVIS checkpoint" in message
    assert "without Q-Former word embeddings" in message
    assert "to turn aspect words into queries" in message
    assert "--qformer-embeddings-from bert-base-uncased" in message
    assert "convert a stage-1 checkpoint (e.g. LAVIS blip2_pretrained.pth)" in message
    assert not output.exists()


def test_vision_tower_from_eva_file(sources, bert_dir, tmp_path):
    output = tmp_path / "out"
    report = convert(
        sources / "stage1_without_vision.pth", bert_dir, output, "--vision-from", str(sources / "eva_vit.pth"),
        "--vision-num-layers", "2",
    )  # fmt: skip
    assert_same_conversion(output, sources / "dasco_itm")
    assert report["dropped"][UNUSED_BLOCKS_GROUP] == 13
    assert report["dropped"]["visual_encoder"] == 4  # norm and head
    assert any("eva_vit.pth" in note for note in report["notes"])


def test_missing_vision_tower_rejected(sources, bert_dir, tmp_path):
    with pytest.raises(ValueError, match="has no vision tower .* Pass that file as --vision-from"):
        convert(sources / "stage1_without_vision.pth", bert_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_tensor_pickle_rejected(bert_dir, tmp_path):
    path = tmp_path / "with_object.pth"
    torch.save({"model": {"query_tokens": torch.zeros(1, 4, 32)}, "config": LavisConfigStub()}, path)
    with pytest.raises(ValueError, match=r"with_object\.pth is not a plain state dict: .*LavisConfigStub"):
        convert(path, bert_dir, tmp_path / "out")


def test_existing_output_not_overwritten(bert_dir, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("user data")
    # The LAVIS file does not exist: the output folder is checked before anything is loaded.
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        convert(tmp_path / "missing.pth", bert_dir, output)
    assert (output / "keep.txt").read_text() == "user data"


def test_heads_must_divide_width(sources, bert_dir, tmp_path):
    with pytest.raises(ValueError, match="vision width 32 is not divisible by 5 attention heads"):
        convert(sources / "stage1.pth", bert_dir, tmp_path / "out", "--vision-num-heads", "5")


@pytest.mark.parametrize(
    ("cross_layers", "num_layers", "frequency"),
    [([0, 2, 4, 6, 8, 10], 12, 2), (list(range(12)), 12, 1), ([0], 2, 2), ([0, 3], 4, 3)],
)
def test_cross_attention_frequency(cross_layers, num_layers, frequency):
    assert infer_cross_attention_frequency(cross_layers, num_layers) == frequency


@pytest.mark.parametrize("cross_layers", [[0, 1, 3], [1, 3], [0, 2, 3]])
def test_irregular_cross_attention_rejected(cross_layers):
    with pytest.raises(ValueError, match="every n-th layer"):
        infer_cross_attention_frequency(cross_layers, 4)


def synthetic_vision_state(num_positions: int) -> dict:
    state = {
        "visual_encoder.patch_embed.proj.weight": torch.zeros(8, 3, 14, 14),
        "visual_encoder.pos_embed": torch.zeros(1, num_positions, 8),
    }
    for index in range(3):
        state[f"visual_encoder.blocks.{index}.mlp.fc1.weight"] = torch.zeros(20, 8)
        state[f"visual_encoder.blocks.{index}.attn.q_bias"] = torch.zeros(8)
    return state


def test_vision_config_from_shapes():
    config = infer_vision_config(synthetic_vision_state(num_positions=5), num_heads=2)
    assert config == {
        "hidden_size": 8, "intermediate_size": 20, "num_hidden_layers": 3, "num_attention_heads": 2,
        "image_size": 28, "patch_size": 14, "qkv_bias": True,
    }  # fmt: skip
    assert infer_vision_config(synthetic_vision_state(5), num_heads=2, num_layers=2)["num_hidden_layers"] == 2


def test_non_square_position_grid_rejected():
    with pytest.raises(ValueError, match="6 positions"):
        infer_vision_config(synthetic_vision_state(num_positions=6), num_heads=2)
