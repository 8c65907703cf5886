"""Convert a checkpoint of the released DASCO code (or of a fork of it) into a DASCO checkpoint folder.

    python -m conversion.convert_dasco_checkpoint --checkpoint checkpoints/MASC_2015/masc2015.pt \
        --base checkpoints/dasco-blip2 --text-encoder Text_encoder/model_best --output checkpoints/dasco-masc2015

The released code saves bare `state_dict`s of its whole `DASCO` module (`accelerator.save`), with no config. So
the converter infers the task (classifier rows: 2 for MATE, 3 for MASC), the number of GCN layers (`depW.N`), the
GCN width, the projection width and the vision width that the Q-Former was built for from tensor shapes. The
files hold no vision tower (the released code reads precomputed features), so the vision tower, the image
processor and the Q-Former tokenizer come from `--base`: a DASCO folder made by `convert_blip2_to_dasco`.

What maps (into `fusion_style="released"`, the released layout, with `query_mode="learned"`):
- `text_encoder.encoder.*` (a BERT) to `text_encoder.*`, when its shapes match `--text-encoder`'s config;
- `pdq.Qformer.bert.*` and `pdq.query_tokens` to the Q-Former and its learned queries, when the Q-Former
  cross-attends to the vision width of `--base` (else pass `--skip-qformer` to keep the base's);
- `FSUIE_proj` to `visual_projection`; `attn.linears.{0,1}`, `semW.N`, `depW.N`, `fc3`, `fc4` to `dual_gcn`;
  `fc1`, `fc2` to `projection_head`;
- for MASC, `classifier` and the BERT pooler to `masc_head`, with the label rows reordered from the released
  POS=0, NEU=1, NEG=2 to this package's negative=0, neutral=1, positive=2.

Dropped, and listed in the report: the fuzzy-span attention layer (`text_encoder.sparse_attn_layer.*`), the
Q-Former's pretraining heads (`pdq.Qformer.cls.*`, `pdq.vision_proj`, `pdq.text_proj`, `pdq.itm_head`,
`pdq.temp`) and its text feed-forward, and for MATE the candidate classifier (this package tags BIO, so
`mate_head` starts fresh). A key that no rule covers, or a shape that differs from the config, stops the
conversion with a message; nothing is loaded leniently.
"""

import argparse
import re
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoProcessor, AutoTokenizer

from conversion.common import (
    ConversionReport,
    add_output_arguments,
    check_output_arguments,
    check_output_dir,
    load_converted_weights,
    save_checkpoint,
)
from conversion.convert_lavis_to_dasco import (
    QFORMER_LAYER_PATTERN,
    RENAMES,
    indices,
    load_state_dict_file,
    map_qformer_layer,
)
from modeling_dasco import DascoConfig, DascoForMabsa


# The released label order is POS=0, NEU=1, NEG=2, so row i of the converted classifier is row RELEASED_TO_PACKAGE_ROWS[i] of the released one.
RELEASED_TO_PACKAGE_ROWS = [2, 1, 0]
# The released `hyper1` in DASCO's own fine-tuning scripts.
DEFAULT_GATE_SCALE = 0.2
REQUIRED_KEYS = ("classifier.weight", "semW.0.weight", "depW.0.weight", "fc1.weight", "fc3.weight", "fc4.weight")
TEXT_PREFIX = "text_encoder.encoder."
POOLER_PREFIX = "text_encoder.encoder.pooler.dense."
QFORMER_PREFIX = "pdq."
# Keys of the released model whose modules have a counterpart under another name.
GCN_RENAMES = {
    "FSUIE_proj.": "visual_projection.",
    "attn.linears.0.": "dual_gcn.semantic_adjacency.query.",
    "attn.linears.1.": "dual_gcn.semantic_adjacency.key.",
    "fc3.": "dual_gcn.output_proj.",
    "fc4.": "dual_gcn.input_proj.",
    "fc1.": "projection_head.fc1.",
    "fc2.": "projection_head.fc2.",
}
LAYER_PATTERN = re.compile(r"(semW|depW)\.(\d+)\.(weight|bias)")
LAYER_TARGETS = {"semW": "dual_gcn.semantic_layers", "depW": "dual_gcn.syntactic_layers"}
# Released modules with no counterpart here, dropped with a reason.
DROPPED_PREFIXES = {
    "text_encoder.sparse_attn_layer.": "the fuzzy-span attention layer on top of the text encoder",
    "pdq.Qformer.cls.": "the Q-Former's language-modelling head, used only in pretraining",
    "pdq.vision_proj.": "the Q-Former's contrastive projections, used only in pretraining",
    "pdq.text_proj.": "the Q-Former's contrastive projections, used only in pretraining",
    "pdq.itm_head.": "the Q-Former's image-text matching head, used only in pretraining",
    "pdq.temp": "the Q-Former's contrastive temperature, used only in pretraining",
    "layernorm.": "a LayerNorm outside the layers that this layout reproduces",
}
# Buffers that transformers rebuilds, so the stored copies carry no weights.
BUFFER_NAMES = ("position_ids", "token_type_ids")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="Released DASCO state dict (.pt), e.g. masc2015.pt.")
    parser.add_argument(
        "--base", required=True,
        help="DASCO folder that provides the vision tower, image processor and Q-Former tokenizer (and the "
        "Q-Former with --skip-qformer), e.g. the output of convert_blip2_to_dasco for Salesforce/blip2-opt-2.7b.",
    )  # fmt: skip
    parser.add_argument(
        "--text-encoder",
        help="Folder or Hub id with the config.json and tokenizer of the checkpoint's text encoder (the released "
        "code's Text_encoder/model_best). Default: the text encoder config and tokenizer of --base.",
    )

    parser.add_argument(
        "--skip-qformer", action="store_true",
        help="Keep the Q-Former and learned queries of --base and drop the checkpoint's (`pdq.*`), e.g. when they "
        "were trained on 1664-wide OpenCLIP features that a BLIP-2 vision tower does not produce.",
    )  # fmt: skip
    parser.add_argument(
        "--gate-scale", type=float,
        help="The released `hyper1`, the scale of the fusion gate: 0.2 in DASCO's scripts (the default), 0.25 in "
        "the fork's. Checkpoints do not store it.",
    )  # fmt: skip
    parser.add_argument(
        "--masc-class-weights",
        help="MASC loss weights in the released order POS,NEU,NEG (e.g. 0.14,0.46,0.4 from DASCO's Twitter-2017 "
        "script); stored reordered as negative,neutral,positive. Default: unweighted.",
    )

    parser.add_argument("--output", required=True, help="Folder to write the DASCO checkpoint to.")
    add_output_arguments(parser)
    parser.set_defaults(query_mode="learned")

    args = parser.parse_args(argv)
    check_output_arguments(parser, args)
    if args.query_mode != "learned":
        parser.error("Released DASCO checkpoints use learned queries; --query-mode must be 'learned'.")
    return args


def check_released_keys(state: dict, path: str) -> None:
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(
            f"{path} is missing {missing}, so it is not a state dict of the released DASCO model. Expected keys such "
            "as classifier.weight, semW.0.weight, depW.0.weight and text_encoder.encoder.*."
        )


def infer_task(state: dict, path: str) -> str:
    rows = state["classifier.weight"].shape[0]
    if rows not in (2, 3):
        raise ValueError(
            f"{path}: classifier.weight has {rows} output rows; expected 2 (MATE candidates) or 3 (MASC sentiments)."
        )
    return "mate" if rows == 2 else "masc"


def infer_gcn_settings(state: dict, path: str) -> dict:
    """Number of layers, widths and projection size of the released dual GCN, from tensor shapes."""
    layers = {name: indices(state, re.compile(rf"{name}\.(\d+)\.weight")) for name in ("semW", "depW")}
    count = len(layers["depW"])
    if layers["semW"] != list(range(count)) or layers["depW"] != list(range(count)):
        raise ValueError(f"{path}: semW layers {layers['semW']} and depW layers {layers['depW']} do not match 0..N-1.")
    gcn_hidden, text_hidden = state["depW.0.weight"].shape
    classifier_width = state["classifier.weight"].shape[1]
    if classifier_width not in (2 * gcn_hidden + text_hidden,):
        raise ValueError(
            f"{path}: classifier.weight reads {classifier_width} features, but two GCN views of width {gcn_hidden} "
            f"and a pooled text state of width {text_hidden} make {2 * gcn_hidden + text_hidden}."
        )
    return {
        "num_gcn_layers": count,
        "gcn_hidden_size": gcn_hidden,
        "projection_size": state["fc1.weight"].shape[0],
        "text_hidden_size": text_hidden,
    }


def released_class_weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    values = [float(value) for value in text.split(",")]
    if len(values) != 3:
        raise ValueError(f"--masc-class-weights needs 3 values in the order POS,NEU,NEG, got {text!r}.")
    return [values[row] for row in RELEASED_TO_PACKAGE_ROWS]


def map_text_encoder(key: str, tensor: torch.Tensor, task: str, tensors: dict, dropped: list) -> bool:
    """Map one `text_encoder.encoder.*` tensor; returns False when `key` is not one."""
    if not key.startswith(TEXT_PREFIX):
        return False
    if key.startswith(POOLER_PREFIX):
        # The pooler feeds only the MASC classifier.
        if task == "masc":
            tensors["masc_head.pooler." + key[len(POOLER_PREFIX) :]] = tensor
        else:
            dropped.append(key)
    elif not key.endswith(BUFFER_NAMES):
        tensors["text_encoder." + key[len(TEXT_PREFIX) :]] = tensor
    return True


def map_gcn_and_heads(key: str, tensor: torch.Tensor, task: str, tensors: dict, dropped: list) -> bool:
    """Map one tensor of the GCN, the projection or the classifier; returns False when `key` is not one."""
    for source, target in GCN_RENAMES.items():
        if key.startswith(source):
            tensors[target + key[len(source) :]] = tensor
            return True
    if match := LAYER_PATTERN.fullmatch(key):
        name, index, kind = match.groups()
        tensors[f"{LAYER_TARGETS[name]}.{index}.{kind}"] = tensor
        return True
    if key.startswith("classifier."):
        if task == "masc":
            tensors["masc_head." + key] = tensor[RELEASED_TO_PACKAGE_ROWS]
        else:
            dropped.append(key)
        return True
    return False


def map_qformer(key: str, tensor: torch.Tensor, args, tensors: dict, report: ConversionReport) -> bool:
    """Map one `pdq.*` tensor of the released Q-Former; returns False when `key` is not one."""
    if not key.startswith(QFORMER_PREFIX) or key.startswith(tuple(DROPPED_PREFIXES)):
        return False
    lavis_key = key[len(QFORMER_PREFIX) :]
    if args.skip_qformer:
        report.add("dropped", [key])
    elif lavis_key in RENAMES:
        tensors[RENAMES[lavis_key]] = tensor
    elif match := QFORMER_LAYER_PATTERN.fullmatch(lavis_key):
        map_qformer_layer(int(match.group(1)), match.group(2), tensor, tensors, report)
    elif not lavis_key.endswith(BUFFER_NAMES):
        raise ValueError(f"{args.checkpoint}: {key} has no counterpart in transformers' Blip2QFormerModel.")
    return True


def map_released_tensors(state: dict, task: str, args, report: ConversionReport) -> dict[str, torch.Tensor]:
    """Rename every tensor of a released state dict to a DASCO key, or drop it with a reason; stop on any other."""
    tensors, dropped, unknown = {}, [], []
    for key, tensor in state.items():
        if map_text_encoder(key, tensor, task, tensors, dropped) or map_gcn_and_heads(key, tensor, task, tensors, dropped):
            continue
        if map_qformer(key, tensor, args, tensors, report):
            continue
        if key.startswith(tuple(DROPPED_PREFIXES)):
            dropped.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"{args.checkpoint} has tensors that no rule of this converter maps: {unknown[:5]} ({len(unknown)} in "
            "all). The file may come from modified code; nothing was converted."
        )
    report.add("dropped", dropped)
    for prefix, reason in DROPPED_PREFIXES.items():
        if any(key.startswith(prefix) for key in dropped):
            report.notes.append(f"Dropped {prefix}* ({reason}).")
    return tensors


def check_vision_width(state: dict, base_config: DascoConfig, args) -> None:
    """Stop when the checkpoint's Q-Former cross-attends to another width than the base vision tower produces."""
    if args.skip_qformer:
        return
    keys = sorted(key for key in state if key.startswith(QFORMER_PREFIX) and key.endswith("crossattention.self.key.weight"))
    if not keys:
        raise ValueError(f"{args.checkpoint} has no Q-Former cross-attention (pdq.*); pass --skip-qformer.")
    width = state[keys[0]].shape[1]
    base_width = base_config.vision_config.hidden_size
    if width != base_width:
        raise ValueError(
            f"The checkpoint's Q-Former was built for {width}-wide image features ({keys[0]} has shape "
            f"{tuple(state[keys[0]].shape)}), but the vision tower of {args.base} produces {base_width}-wide "
            f"features. DASCO's released Q-Former reads 1664-wide OpenCLIP ViT-bigG features, which no BLIP-2 "
            "tower produces. Pass --skip-qformer to keep the base's Q-Former, or a --base with a matching tower."
        )


def build_config(base: Path, state: dict, task: str, gcn: dict, args, report: ConversionReport) -> DascoConfig:
    settings = DascoConfig.from_pretrained(base).to_dict()
    for key in ("architectures", "auto_map", "custom_pipelines", "transformers_version", "model_type"):
        settings.pop(key, None)
    if args.text_encoder:
        settings["text_config"] = AutoConfig.from_pretrained(args.text_encoder).to_dict()
    if not args.skip_qformer:
        settings["num_query_tokens"] = state["pdq.query_tokens"].shape[1]
        settings["qformer_config"]["vocab_size"] = state["pdq.Qformer.bert.embeddings.word_embeddings.weight"].shape[0]
    text_hidden = settings["text_config"]["hidden_size"]
    if text_hidden != gcn["text_hidden_size"]:
        raise ValueError(
            f"The checkpoint's GCN reads {gcn['text_hidden_size']}-wide text states, but the text encoder config "
            f"has hidden size {text_hidden}. Pass --text-encoder with the checkpoint's text encoder config."
        )
    gate_scale = DEFAULT_GATE_SCALE if args.gate_scale is None else args.gate_scale
    settings.update(
        fusion_style="released", query_mode="learned", task=task, num_gcn_layers=gcn["num_gcn_layers"],
        gcn_hidden_size=gcn["gcn_hidden_size"], projection_size=gcn["projection_size"],
        fusion_gate_scale=gate_scale, masc_class_weights=released_class_weights(args.masc_class_weights),
    )  # fmt: skip
    report.notes.append(
        f"Inferred from tensor shapes: task {task}, {gcn['num_gcn_layers']} GCN layers of width "
        f"{gcn['gcn_hidden_size']}, projection size {gcn['projection_size']}."
    )
    if args.gate_scale is None:
        report.notes.append(
            f"Gate scale {DEFAULT_GATE_SCALE} (default, as in DASCO's scripts); the fork's runs used 0.25: pass "
            "--gate-scale 0.25 for its checkpoints."
        )
    else:
        report.notes.append(f"Gate scale {args.gate_scale} (from --gate-scale).")
    return DascoConfig(**settings)


def check_shapes_and_completeness(model: DascoForMabsa, tensors: dict[str, torch.Tensor], args) -> None:
    """Stop on a tensor whose shape differs from the config, or on a part that would stay randomly initialized.

    Only `mate_head` and `visual_layernorm` (and for MATE `masc_head`) have no released counterpart.
    """
    expected = model.state_dict()
    for key, tensor in tensors.items():
        if key in expected and tuple(tensor.shape) != tuple(expected[key].shape):
            hint = "Pass --text-encoder with the checkpoint's text encoder config." if key.startswith("text_encoder.") else (
                "The checkpoint and the config built from it disagree."
            )
            raise ValueError(
                f"{args.checkpoint}: {key} has shape {tuple(tensor.shape)}, but the converted config needs "
                f"{tuple(expected[key].shape)}. {hint}"
            )
    fresh = ("mate_head.", "visual_layernorm.") + (("masc_head.",) if model.config.task == "mate" else ())
    missing = sorted(name for name, _ in model.named_parameters() if name not in tensors and not name.startswith(fresh))
    unknown = sorted(set(tensors) - set(expected))
    if missing or unknown:
        raise ValueError(
            f"{args.checkpoint} does not fit the converted config: missing {missing[:5]} ({len(missing)} in all), "
            f"no place for {unknown[:5]} ({len(unknown)} in all). Check that --text-encoder has the checkpoint's "
            "number of layers."
        )


def base_tensors(base_model: DascoForMabsa, skip_qformer: bool) -> dict[str, torch.Tensor]:
    """Tensors that come from the base folder: the vision tower and Q-Former embeddings, plus the Q-Former when
    the checkpoint's is skipped."""
    prefixes = ("vision_model.", "embeddings.") + (("qformer.", "query_tokens") if skip_qformer else ())
    return {key: value for key, value in base_model.state_dict().items() if key.startswith(prefixes)}


def make_processor(base: Path, args):
    processor = AutoProcessor.from_pretrained(base)
    if args.text_encoder:
        processor.tokenizer = AutoTokenizer.from_pretrained(args.text_encoder)
    processor.max_length = args.max_length
    return processor


def convert(args) -> ConversionReport:
    output = check_output_dir(args.output, args.overwrite)
    report = ConversionReport()
    state = load_state_dict_file(args.checkpoint)
    check_released_keys(state, args.checkpoint)
    base = Path(args.base)
    if not (base / "config.json").is_file():
        raise FileNotFoundError(
            f"--base {base} is not a DASCO checkpoint folder (no config.json). Make one with "
            "conversion.convert_blip2_to_dasco."
        )
    base_model = DascoForMabsa.from_pretrained(base, dtype=torch.float32)
    check_vision_width(state, base_model.config, args)

    task = infer_task(state, args.checkpoint)
    config = build_config(base, state, task, infer_gcn_settings(state, args.checkpoint), args, report)
    mapped = map_released_tensors(state, task, args, report)
    from_base = base_tensors(base_model, args.skip_qformer)
    if not args.skip_qformer:
        # The released Q-Former vocabulary has one more token ([DEC]); its own embeddings replace the base's.
        from_base = {key: value for key, value in from_base.items() if key not in mapped}
    del state, base_model

    model = DascoForMabsa(config)
    check_shapes_and_completeness(model, {**from_base, **mapped}, args)
    scratch = ConversionReport()
    load_converted_weights(model, {**from_base, **mapped}, scratch)
    report.add("copied", mapped)
    report.initialized = scratch.initialized
    report.notes.append(f"{len(from_base)} tensors (vision tower, Q-Former embeddings) taken from {base}.")
    if args.skip_qformer:
        report.notes.append("--skip-qformer: the Q-Former and learned queries are the base's, not the checkpoint's.")
    if task == "masc":
        report.notes.append("Classifier rows reordered from POS, NEU, NEG to negative, neutral, positive.")
    else:
        report.notes.append("MATE candidate classifier dropped: this package tags BIO, so mate_head starts fresh.")
    save_checkpoint(model, make_processor(base, args), output, args, report)
    return report


def main(argv=None):
    convert(parse_args(argv))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        # Errors about the user's files are reported without a traceback.
        sys.exit(f"error: {error}")
