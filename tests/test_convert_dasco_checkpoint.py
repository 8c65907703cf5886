"""Conversion of released DASCO state dicts: key mapping, label remap, inferred sizes and the checks that stop it."""

import json

import pytest
import torch

from conversion.convert_dasco_checkpoint import main as convert_main
from modeling_dasco import DascoForMabsa
from modeling_dasco.presets import tiny_config


RELEASED_SETTINGS = {"fusion_style": "released", "query_mode": "learned", "num_gcn_layers": 3,
                     "gcn_hidden_size": 24, "projection_size": 8}  # fmt: skip
WORDS = [["Chuck", "Bass", "is", "everything", "#", "MCM"], ["nice", "camera", "bad", "lens"]]
SPANS = [[(0, 2), (4, 6)], [(1, 2), (3, 4)]]
HEADS = [[1, 3, 3, 3, 5, 3], [1, 1, 3, 1]]


def released_key(key: str) -> str:
    """The released model's name of a key of this package's `fusion_style="released"` layout."""
    renames = [
        ("text_encoder.", "text_encoder.encoder."),
        ("masc_head.pooler.", "text_encoder.encoder.pooler.dense."),
        ("masc_head.classifier.", "classifier."),
        ("visual_projection.", "FSUIE_proj."),
        ("dual_gcn.semantic_adjacency.query.", "attn.linears.0."),
        ("dual_gcn.semantic_adjacency.key.", "attn.linears.1."),
        ("dual_gcn.semantic_layers.", "semW."),
        ("dual_gcn.syntactic_layers.", "depW."),
        ("dual_gcn.output_proj.", "fc3."),
        ("dual_gcn.input_proj.", "fc4."),
        ("projection_head.", ""),
        ("query_tokens", "pdq.query_tokens"),
        ("qformer.layernorm.", "pdq.Qformer.bert.embeddings.LayerNorm."),
        ("embeddings.", "pdq.Qformer.bert.embeddings."),
    ]
    if key.startswith("qformer.encoder."):
        key = key.replace(".attention.attention.", ".attention.self.").replace(".crossattention.attention.", ".crossattention.self.")
        return "pdq.Qformer.bert." + key[len("qformer.") :]
    for ours, theirs in renames:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    raise KeyError(key)


def released_state_dict(model: DascoForMabsa) -> dict[str, torch.Tensor]:
    """Write `model` as the released code would save it: released names, POS/NEU/NEG rows, extra tensors."""
    state = {}
    for key, tensor in model.state_dict().items():
        if key.startswith(("vision_model.", "mate_head.", "visual_layernorm.")) or key.endswith("position_ids"):
            continue
        state[released_key(key)] = tensor.clone()
    state["classifier.weight"] = state["classifier.weight"][[2, 1, 0]]
    state["classifier.bias"] = state["classifier.bias"][[2, 1, 0]]
    hidden = model.config.qformer_config.hidden_size
    for layer in range(model.config.qformer_config.num_hidden_layers):
        state[f"pdq.Qformer.bert.encoder.layer.{layer}.intermediate.dense.weight"] = torch.zeros(64, hidden)
    state["pdq.Qformer.cls.predictions.bias"] = torch.zeros(5)
    state["pdq.temp"] = torch.tensor(0.07)
    state["pdq.itm_head.weight"] = torch.zeros(2, hidden)
    state["text_encoder.sparse_attn_layer.attn.weight"] = torch.zeros(4, 4)
    return state


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    """A released-layout MASC model whose vision tower and Q-Former embeddings are the base's."""
    torch.manual_seed(3)
    model = DascoForMabsa(tiny_config(task="masc", fusion_gate_scale=0.2, **RELEASED_SETTINGS)).eval()
    base = DascoForMabsa.from_pretrained(tiny_checkpoint).state_dict()
    model.load_state_dict({key: base[key] for key in base if key.startswith(("vision_model.", "embeddings."))}, strict=False)
    return model


def masc_inputs(processor, model):
    batch = dict(processor(WORDS, aspect_spans=SPANS, polarities=[[2, 1], [2, 0]], dependency_heads=HEADS))
    vision = model.config.vision_config
    torch.manual_seed(5)
    batch["image_embeds"] = torch.randn(2, (vision.image_size // vision.patch_size) ** 2 + 1, vision.hidden_size)
    return {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}


def test_masc_checkpoint_converts_with_label_remap(tmp_path, tiny_checkpoint, tiny_processor, reference, capsys):
    state = released_state_dict(reference)
    torch.save(state, tmp_path / "masc.pt")
    output = tmp_path / "converted"
    convert_main(["--checkpoint", str(tmp_path / "masc.pt"), "--base", str(tiny_checkpoint), "--output", str(output),
                  "--gate-scale", "0.2", "--masc-class-weights", "0.14,0.46,0.4"])  # fmt: skip
    printed = capsys.readouterr().out

    converted = DascoForMabsa.from_pretrained(output).eval()
    assert converted.config.task == "masc"
    assert converted.config.num_gcn_layers == 3
    assert converted.config.gcn_hidden_size == 24
    assert converted.config.projection_size == 8
    assert converted.config.fusion_gate_scale == 0.2
    assert converted.config.masc_class_weights == [0.4, 0.46, 0.14]
    assert torch.equal(converted.masc_head.classifier.weight[0], state["classifier.weight"][2])
    assert torch.equal(converted.masc_head.classifier.weight[2], state["classifier.weight"][0])

    inputs = masc_inputs(tiny_processor, converted)
    captured = {}
    converted.masc_head.classifier.register_forward_hook(lambda module, args, out: captured.update(features=args[0]))
    with torch.no_grad():
        logits = converted(**inputs, task="masc").masc_logits
        expected = reference(**inputs, task="masc").masc_logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
    # The released classifier on the same features scores POS, NEU, NEG: its column 0 is our positive (2).
    released_logits = captured["features"] @ state["classifier.weight"].T + state["classifier.bias"]
    torch.testing.assert_close(logits, released_logits[..., [2, 1, 0]], rtol=0, atol=1e-6)

    report = json.loads((output / "conversion_report.json").read_text())
    assert report["dropped"]["text_encoder.sparse_attn_layer"] == 1
    assert report["dropped"]["pdq"] == 3
    assert report["initialized"] == {"mate_head": 2, "visual_layernorm": 2}
    assert "Classifier rows reordered from POS, NEU, NEG" in printed


def test_mate_checkpoint_drops_candidate_classifier(tmp_path, tiny_checkpoint, reference):
    state = released_state_dict(reference)
    state["classifier.weight"] = state["classifier.weight"][:2]
    state["classifier.bias"] = state["classifier.bias"][:2]
    torch.save(state, tmp_path / "mate.pt")
    output = tmp_path / "converted"
    convert_main(["--checkpoint", str(tmp_path / "mate.pt"), "--base", str(tiny_checkpoint), "--output", str(output)])

    converted = DascoForMabsa.from_pretrained(output)
    report = json.loads((output / "conversion_report.json").read_text())
    assert converted.config.task == "mate"
    assert converted.config.fusion_gate_scale == 0.2
    assert any("(default, as in DASCO's scripts)" in note for note in report["notes"])
    assert report["dropped"]["classifier"] == 2
    assert report["dropped"]["text_encoder.encoder"] == 2  # the pooler feeds only the MASC classifier
    assert torch.equal(converted.text_encoder.encoder.layer[1].output.dense.weight,
                       reference.text_encoder.encoder.layer[1].output.dense.weight)  # fmt: skip


def test_qformer_width_mismatch_names_both_widths(tmp_path):
    from modeling_dasco.presets import TINY_QFORMER, TINY_TEXT

    vision = {"hidden_size": 1408, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 8,
              "image_size": 28, "patch_size": 14}  # fmt: skip
    base = tmp_path / "base"
    DascoForMabsa(tiny_config(vision_config=vision, qformer_config=TINY_QFORMER, text_config=TINY_TEXT)).save_pretrained(base)
    state = {key: torch.zeros(2, 2) for key in ("classifier.weight", "semW.0.weight", "depW.0.weight", "fc1.weight",
                                                "fc3.weight", "fc4.weight")}  # fmt: skip
    state["pdq.Qformer.bert.encoder.layer.0.crossattention.self.key.weight"] = torch.zeros(768, 1664)
    torch.save(state, tmp_path / "dasco.pt")

    with pytest.raises(ValueError) as error:
        convert_main(["--checkpoint", str(tmp_path / "dasco.pt"), "--base", str(base), "--output", str(tmp_path / "out")])
    assert "built for 1664-wide image features" in str(error.value)
    assert "produces 1408-wide features" in str(error.value)
    assert "--skip-qformer" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_unknown_key_stops_conversion(tmp_path, tiny_checkpoint, reference):
    state = released_state_dict(reference)
    state["adapter.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match=r"no rule of this converter maps: \['adapter.weight'\]"):
        convert_main(["--checkpoint", str(tmp_path / "edited.pt"), "--base", str(tiny_checkpoint),
                      "--output", str(tmp_path / "out")])  # fmt: skip


def test_text_encoder_shape_mismatch_suggests_flag(tmp_path, tiny_checkpoint, reference):
    state = released_state_dict(reference)
    key = "text_encoder.encoder.embeddings.word_embeddings.weight"
    state[key] = torch.zeros(250002, state[key].shape[1])
    torch.save(state, tmp_path / "big_vocab.pt")
    with pytest.raises(ValueError) as error:
        convert_main(["--checkpoint", str(tmp_path / "big_vocab.pt"), "--base", str(tiny_checkpoint),
                      "--output", str(tmp_path / "out")])  # fmt: skip
    assert "text_encoder.embeddings.word_embeddings.weight has shape (250002, 32)" in str(error.value)
    assert "Pass --text-encoder" in str(error.value)


def test_released_gcn_follows_its_equations():
    torch.manual_seed(0)
    model = DascoForMabsa(tiny_config(**RELEASED_SETTINGS, fusion_gate_scale=0.25)).eval()
    gcn = model.dual_gcn
    hidden = torch.randn(1, 5, 32)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    adjacency = torch.eye(5)[None] + torch.tensor([[0, 1, 0, 0, 0], [1, 0, 1, 0, 0], [0, 1, 0, 1, 0],
                                                    [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.float)[None]  # fmt: skip
    with torch.no_grad():
        _, state, last_semantic = gcn(hidden, mask, adjacency)

        keep = mask[0].float()
        scores = gcn.semantic_adjacency.query(hidden[0]) @ gcn.semantic_adjacency.key(hidden[0]).T / 32**0.5
        weights = scores.masked_fill(keep[None, :] == 0, -1e30).softmax(-1)
        semantic = (weights * (1 - torch.eye(5)) + torch.eye(5)) * keep[:, None]
        syntactic = adjacency[0] * keep[:, None] * keep[None, :]
        expected = hidden[0]
        for layer in range(3):
            sem = gcn.semantic_layers[layer](semantic @ expected)
            dep = gcn.syntactic_layers[layer](syntactic @ expected)
            gate = 0.25 * torch.sigmoid(dep)
            out = torch.relu(gcn.output_proj((1 - gate) * sem + gate * dep))
            if layer == 0:
                expected = gcn.input_proj(expected)
            expected = torch.sigmoid(expected) * out + (1 - torch.sigmoid(expected)) * expected
    torch.testing.assert_close(state[0], expected * keep[:, None], rtol=0, atol=1e-6)
    torch.testing.assert_close(last_semantic[0], sem * keep[:, None], rtol=0, atol=1e-6)
