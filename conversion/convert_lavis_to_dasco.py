"""Convert a LAVIS BLIP-2 checkpoint (.pth) and a BERT-family text encoder into a DASCO checkpoint folder.

    python -m conversion.convert_lavis_to_dasco --lavis blip2_pretrained.pth --vision-from eva_vit_g.pth \
        --text-encoder bert-base-uncased --output checkpoints/dasco-init

Reads the state dicts that LAVIS saves for its stage-1 models (`blip2`, `blip2_feature_extractor`,
`blip2_image_text_matching`) and its stage-2 models (`blip2_opt`, `blip2_t5`), either bare or wrapped as
`{"model": state_dict}`, with `torch.load(weights_only=True)`. Takes the EVA vision tower, `ln_vision`, the
learned query tokens and the Q-Former. A .pth file stores no config, so the sizes are inferred from tensor
shapes, except the numbers of attention heads (`--vision-num-heads`, `--qformer-num-heads`).

LAVIS saves only the parameters that were trained, so its released BLIP-2 files lack the frozen EVA ViT-g
(`visual_encoder.*`), which LAVIS loads from `eva_vit_g.pth`. Pass that file as `--vision-from`.

Stage-1 files carry the Q-Former word and position embeddings that turn aspect words into queries. Stage-2
files do not, and converting them needs `--qformer-embeddings-from` (a BERT checkpoint) on the command line.
The text encoder comes from `--text-encoder`, and the DASCO heads are initialized fresh. A report of copied,
initialized and dropped tensors is printed and saved as `conversion_report.json`.
"""

import argparse
import math
import pickle
import re
from pathlib import Path

import torch
from transformers import AutoTokenizer

from conversion.common import (
    add_output_arguments,
    check_output_arguments,
    ConversionReport,
    bert_embeddings,
    build_dasco_model,
    check_output_dir,
    load_converted_weights,
    load_text_encoder,
    make_processor,
    save_checkpoint,
)


VISION_PREFIX = "visual_encoder."
QFORMER_LAYER_PREFIX = "Qformer.bert.encoder.layer."
WORD_EMBEDDINGS = "Qformer.bert.embeddings.word_embeddings.weight"
POSITION_EMBEDDINGS = "Qformer.bert.embeddings.position_embeddings.weight"
REQUIRED_KEYS = ("query_tokens", "Qformer.bert.embeddings.LayerNorm.weight", "ln_vision.weight")
# DASCO parameters that must all come from the source, never from fresh initialization.
CONVERTED_PREFIXES = ("vision_model.", "query_tokens", "qformer.", "embeddings.")

# LAVIS keys copied under another name, outside the per-block and per-layer tensors.
RENAMES = {
    "visual_encoder.cls_token": "vision_model.embeddings.class_embedding",
    "visual_encoder.pos_embed": "vision_model.embeddings.position_embedding",
    "visual_encoder.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual_encoder.patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
    # NOTE: LAVIS builds ln_vision with eps 1e-5, while transformers' Blip2VisionModel gives post_layernorm the
    # vision config's layer_norm_eps (1e-6, shared with the EVA blocks), so its outputs differ slightly.
    "ln_vision.weight": "vision_model.post_layernorm.weight",
    "ln_vision.bias": "vision_model.post_layernorm.bias",
    "query_tokens": "query_tokens",
    "Qformer.bert.embeddings.LayerNorm.weight": "qformer.layernorm.weight",
    "Qformer.bert.embeddings.LayerNorm.bias": "qformer.layernorm.bias",
    WORD_EMBEDDINGS: "embeddings.word_embeddings.weight",
    POSITION_EMBEDDINGS: "embeddings.position_embeddings.weight",
}

# Tensors of one EVA block, as LAVIS names them, and their names in a transformers Blip2EncoderLayer.
# `attn.q_bias` and `attn.v_bias` are merged into `self_attn.qkv.bias` separately.
BLOCK_RENAMES = {
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "attn.qkv.weight": "self_attn.qkv.weight",
    "attn.proj.weight": "self_attn.projection.weight",
    "attn.proj.bias": "self_attn.projection.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
# Modules of the EVA ViT that LAVIS's BLIP-2 never runs: its forward ends after the last block.
UNUSED_VISION_PREFIXES = ("visual_encoder.norm.", "visual_encoder.fc_norm.", "visual_encoder.head.")

# Sub-modules of one LAVIS Q-Former layer and their names in a transformers Blip2QFormerLayer.
QFORMER_LAYER_RENAMES = {
    "attention.self.": "attention.attention.",
    "attention.output.": "attention.output.",
    "crossattention.self.": "crossattention.attention.",
    "crossattention.output.": "crossattention.output.",
    "intermediate_query.": "intermediate_query.",
    "output_query.": "output_query.",
}
# The feed-forward for text tokens. DASCO feeds aspect words as queries, which go through `*_query` instead.
TEXT_FFN_PREFIXES = ("intermediate.", "output.")
TEXT_FFN_GROUP = "Qformer text FFN"
UNUSED_BLOCKS_GROUP = "visual_encoder blocks beyond --vision-num-layers"

BLOCK_PATTERN = re.compile(r"visual_encoder\.blocks\.(\d+)\.(.+)")
QFORMER_LAYER_PATTERN = re.compile(r"Qformer\.bert\.encoder\.layer\.(\d+)\.(.+)")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lavis", required=True, help="LAVIS BLIP-2 state dict (.pth), bare or as {'model': ...}.")
    parser.add_argument(
        "--vision-from",
        help="EVA ViT state dict (.pth) for files without `visual_encoder.*` tensors, e.g. LAVIS eva_vit_g.pth; "
        "keys may carry the `visual_encoder.` prefix or not.",
    )
    parser.add_argument(
        "--vision-num-layers", type=positive_int,
        help="Number of EVA blocks to keep. Later blocks are dropped. Default: all blocks in the file. LAVIS "
        "BLIP-2 runs 39 blocks of EVA ViT-g.",
    )  # fmt: skip
    parser.add_argument(
        "--vision-num-heads", type=positive_int, default=16,
        help="Number of attention heads in the vision tower, which the file does not store (EVA ViT-g: 16).",
    )  # fmt: skip
    parser.add_argument(
        "--qformer-num-heads", type=positive_int, default=12,
        help="Number of attention heads in the Q-Former, which the file does not store (BLIP-2: 12).",
    )  # fmt: skip

    parser.add_argument("--text-encoder", required=True, help="BERT-family text encoder: a local folder or Hub id.")
    parser.add_argument("--output", required=True, help="Folder to write the DASCO checkpoint to.")
    parser.add_argument(
        "--qformer-embeddings-from",
        help="BERT checkpoint that provides the Q-Former word and position embeddings; required for stage-2 "
        "files (blip2_opt, blip2_t5), which lack them, and unused for stage-1 files.",
    )
    parser.add_argument(
        "--qformer-tokenizer",
        help="Tokenizer for the Q-Former: a local folder or Hub id. Default: --qformer-embeddings-from when "
        "given, else bert-base-uncased.",
    )

    add_output_arguments(parser)

    args = parser.parse_args(argv)
    check_output_arguments(parser, args)
    if args.qformer_tokenizer is None:
        args.qformer_tokenizer = args.qformer_embeddings_from or "bert-base-uncased"
    return args


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict saved with `torch.save`, bare or as LAVIS wraps it (`{"model": state_dict, ...}`).

    Only plain tensors and containers are accepted (`weights_only=True`), so loading runs no code from the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"State dict file {path} not found.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} is not a plain state dict: torch.load(weights_only=True) rejected it "
            f"({unpickling_reason(error)}). Re-save only its tensors, e.g. torch.save(model.state_dict(), path), "
            "in an environment that trusts the file."
        ) from error

    state = loaded
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        state = loaded["model"]
    if not isinstance(state, dict) or not state:
        raise ValueError(
            f"{path} contains {type(state).__name__}, not a state dict: expected a non-empty dict of tensors or "
            "{'model': dict of tensors}."
        )
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{path} is not a plain state dict: the values of {not_tensors[:5]} are not tensors.")
    return state


def unpickling_reason(error: pickle.UnpicklingError) -> str:
    """Extract the line of torch's weights-only message that names the rejected object, else its first line."""
    message = str(error)
    for line in message.splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip()
    return message.splitlines()[0] if message else type(error).__name__


def add_vision_tower(state: dict, vision_path: str, report: ConversionReport) -> None:
    """Add the EVA ViT tensors of `vision_path` under `visual_encoder.` to a file that has none."""
    present = [key for key in state if key.startswith(VISION_PREFIX)]
    if present:
        raise ValueError(
            f"--vision-from {vision_path} was given, but the LAVIS checkpoint already has a vision tower "
            f"({len(present)} `visual_encoder.*` tensors). Drop --vision-from to use the checkpoint's own."
        )
    # NOTE: LAVIS loads eva_vit_g.pth into a 39-block EVA ViT-g with strict=False, so blocks beyond the 39th would be
    # ignored there. Whether the released file contains more is unverified, so --vision-num-layers 39 is the safe
    # choice for it.
    for key, tensor in load_state_dict_file(vision_path).items():
        state[key if key.startswith(VISION_PREFIX) else VISION_PREFIX + key] = tensor
    report.notes.append(f"Vision tower (visual_encoder.*) taken from {vision_path}.")


def check_lavis_keys(state: dict, args) -> None:
    """Reject files that are not BLIP-2, lack the vision tower, or lack the Q-Former embeddings, before any
    heavy loading."""
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(
            f"{args.lavis} is missing the LAVIS BLIP-2 tensors {missing}, so it is not a LAVIS BLIP-2 checkpoint. "
            "For transformers checkpoints use conversion/convert_blip2_to_dasco.py."
        )
    if "visual_encoder.patch_embed.proj.weight" not in state:
        raise ValueError(
            f"{args.lavis} has no vision tower (no `visual_encoder.*` tensors). LAVIS saves only trained "
            "parameters and loads the frozen EVA ViT-g from eva_vit_g.pth. Pass that file as --vision-from."
        )
    if WORD_EMBEDDINGS not in state and args.qformer_embeddings_from is None:
        raise ValueError(
            f"{args.lavis} is a stage-2 LAVIS checkpoint (blip2_opt / blip2_t5 layout) without Q-Former word "
            "embeddings, which DASCO needs to turn aspect words into queries. Pass --qformer-embeddings-from "
            "bert-base-uncased to take them from BERT, or convert a stage-1 checkpoint (e.g. LAVIS "
            "blip2_pretrained.pth) instead."
        )


def indices(state: dict, pattern: re.Pattern) -> list[int]:
    return sorted({int(match.group(1)) for key in state if (match := pattern.fullmatch(key))})


def check_contiguous(found: list[int], component: str) -> int:
    """Return the number of numbered layers, which must run from 0 without gaps."""
    if not found or found != list(range(len(found))):
        shown = f"{found[:10]}{' ...' if len(found) > 10 else ''}"
        raise ValueError(f"{component} are not numbered 0..N-1 without gaps: found {shown}.")
    return len(found)


def check_heads(hidden_size: int, num_heads: int, component: str, flag: str) -> None:
    if hidden_size % num_heads:
        raise ValueError(
            f"The {component} width {hidden_size} is not divisible by {num_heads} attention heads; pass the source "
            f"model's head count as {flag}."
        )


def infer_vision_config(state: dict, num_heads: int, num_layers: int | None = None) -> dict:
    """Infer the Blip2VisionConfig settings of the EVA ViT in `state` from tensor shapes.

    Width and patch size come from the patch embedding, the image size from the position embedding
    (num_patches + 1 = (image_size / patch_size)^2 + 1), the layer count from the block numbers and the MLP width
    from `mlp.fc1`. The head count is not stored, so it is `num_heads`.
    """
    patch_weight = state["visual_encoder.patch_embed.proj.weight"]
    hidden_size, channels, patch_height, patch_width = patch_weight.shape
    if channels != 3 or patch_height != patch_width:
        raise ValueError(
            f"visual_encoder.patch_embed.proj.weight has shape {tuple(patch_weight.shape)}; Blip2VisionModel needs "
            "3 input channels and square patches."
        )
    num_positions = state["visual_encoder.pos_embed"].shape[1]
    grid = math.isqrt(num_positions - 1)
    if grid * grid != num_positions - 1:
        raise ValueError(
            f"visual_encoder.pos_embed has {num_positions} positions; a square image needs num_patches + 1 = "
            "grid^2 + 1 positions."
        )

    available = check_contiguous(indices(state, BLOCK_PATTERN), "The visual_encoder blocks")
    if num_layers is not None and num_layers > available:
        raise ValueError(f"--vision-num-layers {num_layers} is more than the {available} EVA blocks in the file.")
    check_heads(hidden_size, num_heads, "vision", "--vision-num-heads")
    return {
        "hidden_size": hidden_size,
        "intermediate_size": state["visual_encoder.blocks.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": num_layers or available,
        "num_attention_heads": num_heads,
        "image_size": grid * patch_width,
        "patch_size": patch_width,
        "qkv_bias": "visual_encoder.blocks.0.attn.q_bias" in state,
    }


def infer_cross_attention_frequency(cross_layers: list[int], num_layers: int) -> int:
    """Infer the `cross_attention_frequency` f of a Q-Former whose layers `cross_layers` cross-attend.

    transformers gives layer i cross-attention when i % f == 0, so f is the first cross-attending layer after 0,
    or `num_layers` when only layer 0 cross-attends.
    """
    frequency = cross_layers[1] if len(cross_layers) > 1 else num_layers
    if [index for index in range(num_layers) if index % frequency == 0] != cross_layers:
        raise ValueError(
            f"Q-Former layers {cross_layers} of {num_layers} have cross-attention; transformers' Blip2QFormerModel "
            "can only place it on every n-th layer starting at layer 0."
        )
    return frequency


def infer_qformer_config(state: dict, num_heads: int, vision_hidden_size: int) -> tuple[dict, int]:
    """Infer the Blip2QFormerConfig settings and the number of query tokens from tensor shapes.

    The vocabulary and position count are added later, from wherever the word embeddings come from.
    """
    _, num_query_tokens, hidden_size = state["query_tokens"].shape
    num_layers = check_contiguous(indices(state, QFORMER_LAYER_PATTERN), "The Q-Former layers")
    cross_layers = [
        index for index in range(num_layers) if f"{QFORMER_LAYER_PREFIX}{index}.crossattention.self.key.weight" in state
    ]
    if not cross_layers:
        raise ValueError("No Q-Former layer has cross-attention weights; the file is not a BLIP-2 Q-Former.")
    encoder_hidden_size = state[f"{QFORMER_LAYER_PREFIX}{cross_layers[0]}.crossattention.self.key.weight"].shape[1]
    if encoder_hidden_size != vision_hidden_size:
        raise ValueError(
            f"The Q-Former cross-attends to width {encoder_hidden_size}, but the vision tower has width "
            f"{vision_hidden_size}; the vision tower does not belong to this Q-Former."
        )
    check_heads(hidden_size, num_heads, "Q-Former", "--qformer-num-heads")
    config = {
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": state[f"{QFORMER_LAYER_PREFIX}0.intermediate_query.dense.weight"].shape[0],
        "cross_attention_frequency": infer_cross_attention_frequency(cross_layers, num_layers),
        "encoder_hidden_size": encoder_hidden_size,
    }
    return config, num_query_tokens


def map_vision_block(index: int, name: str, tensor, num_layers: int, tensors: dict, report) -> None:
    key = f"visual_encoder.blocks.{index}.{name}"
    if index >= num_layers:
        report.dropped[UNUSED_BLOCKS_GROUP] += 1
    elif name in BLOCK_RENAMES:
        tensors[f"vision_model.encoder.layers.{index}.{BLOCK_RENAMES[name]}"] = tensor
    elif name not in ("attn.q_bias", "attn.v_bias"):
        raise ValueError(
            f"{key} has no counterpart in transformers' Blip2VisionModel (an EVA variant with layer scale or "
            "relative position bias?); this converter supports the EVA ViT that LAVIS BLIP-2 uses."
        )


def merge_qkv_biases(state: dict, num_layers: int, tensors: dict) -> None:
    """Build each `self_attn.qkv.bias` as (q_bias, zeros, v_bias): the EVA attention has no key bias."""
    for index in range(num_layers):
        prefix = f"visual_encoder.blocks.{index}.attn."
        q_bias, v_bias = state.get(prefix + "q_bias"), state.get(prefix + "v_bias")
        if q_bias is None and v_bias is None:
            continue
        if q_bias is None or v_bias is None:
            raise ValueError(f"{prefix}q_bias and {prefix}v_bias should both be present or both absent.")
        tensors[f"vision_model.encoder.layers.{index}.self_attn.qkv.bias"] = torch.cat(
            (q_bias, torch.zeros_like(v_bias), v_bias)
        )


def map_qformer_layer(index: int, name: str, tensor, tensors: dict, report) -> None:
    for source, target in QFORMER_LAYER_RENAMES.items():
        if name.startswith(source):
            tensors[f"qformer.encoder.layer.{index}.{target}{name[len(source):]}"] = tensor
            return
    if name.startswith(TEXT_FFN_PREFIXES):
        report.dropped[TEXT_FFN_GROUP] += 1
        return
    raise ValueError(f"{QFORMER_LAYER_PREFIX}{index}.{name} has no counterpart in transformers' Blip2QFormerModel.")


def map_lavis_tensors(state: dict, num_vision_layers: int, report: ConversionReport) -> dict[str, torch.Tensor]:
    """Rename the LAVIS tensors that DASCO keeps to DASCO keys, and count every other tensor as dropped.

    A tensor inside the vision tower or the Q-Former encoder that has no counterpart is an error, because
    dropping it would change what the converted model computes.
    """
    tensors, dropped = {}, []
    for key, tensor in state.items():
        if key in RENAMES:
            tensors[RENAMES[key]] = tensor
        elif match := BLOCK_PATTERN.fullmatch(key):
            map_vision_block(int(match.group(1)), match.group(2), tensor, num_vision_layers, tensors, report)
        elif match := QFORMER_LAYER_PATTERN.fullmatch(key):
            map_qformer_layer(int(match.group(1)), match.group(2), tensor, tensors, report)
        elif key.startswith(UNUSED_VISION_PREFIXES) or key == "Qformer.bert.embeddings.position_ids":
            dropped.append(key)
        elif key.startswith((VISION_PREFIX, "Qformer.bert.embeddings.", "Qformer.bert.encoder.")):
            raise ValueError(f"{key} has no counterpart in the BLIP-2 vision tower or Q-Former of transformers.")
        else:
            dropped.append(key)
    merge_qkv_biases(state, num_vision_layers, tensors)
    report.add("dropped", dropped)
    return tensors


def add_qformer_embeddings(state: dict, tensors: dict, qformer_config: dict, args, report) -> None:
    """Set the Q-Former vocabulary and positions from the checkpoint's embeddings, or copy BERT's when it has none."""
    if WORD_EMBEDDINGS in state:
        report.notes.append("Q-Former word and position embeddings copied from the LAVIS checkpoint.")
    else:
        tensors.update(bert_embeddings(args.qformer_embeddings_from))
        report.notes.append(
            "The LAVIS checkpoint is a stage-2 file without Q-Former word embeddings; copied them from "
            f"{args.qformer_embeddings_from}."
        )
    qformer_config["vocab_size"] = tensors["embeddings.word_embeddings.weight"].shape[0]
    qformer_config["max_position_embeddings"] = tensors["embeddings.position_embeddings.weight"].shape[0]


def inferred_sizes_note(vision: dict, qformer: dict, num_query_tokens: int) -> str:
    return (
        f"Sizes inferred from tensor shapes: vision width {vision['hidden_size']}, {vision['num_hidden_layers']} "
        f"blocks, image size {vision['image_size']}, patch size {vision['patch_size']}; Q-Former width "
        f"{qformer['hidden_size']}, {qformer['num_hidden_layers']} layers, cross-attention every "
        f"{qformer['cross_attention_frequency']} layers, {num_query_tokens} query tokens."
    )


def check_complete(model, tensors: dict, source: str) -> None:
    """Reject a conversion that would leave part of the vision tower, the Q-Former or its embeddings random."""
    expected = [name for name, _ in model.named_parameters() if name.startswith(CONVERTED_PREFIXES)]
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(
            f"{source} is missing the tensors for {missing[:5]} ({len(missing)} in all), which the conversion "
            "would leave randomly initialized. Check that the file is a complete LAVIS BLIP-2 checkpoint."
        )


def convert(args) -> ConversionReport:
    output = check_output_dir(args.output, args.overwrite)
    report = ConversionReport()
    state = load_state_dict_file(args.lavis)
    if args.vision_from:
        add_vision_tower(state, args.vision_from, report)
    check_lavis_keys(state, args)

    vision_config = infer_vision_config(state, args.vision_num_heads, args.vision_num_layers)
    qformer_config, num_query_tokens = infer_qformer_config(state, args.qformer_num_heads, vision_config["hidden_size"])
    report.notes.append(
        "LAVIS applies ln_vision with LayerNorm eps 1e-5; the converted post_layernorm uses the vision "
        "layer_norm_eps (1e-6), so image features differ slightly from LAVIS's."
    )
    report.notes.append(
        f"Attention heads are not stored in LAVIS files: used {args.vision_num_heads} for the vision tower and "
        f"{args.qformer_num_heads} for the Q-Former."
    )
    report.notes.append(inferred_sizes_note(vision_config, qformer_config, num_query_tokens))
    tensors = map_lavis_tensors(state, vision_config["num_hidden_layers"], report)
    add_qformer_embeddings(state, tensors, qformer_config, args, report)
    del state

    text_config, text_state, tokenizer = load_text_encoder(args.text_encoder)
    tensors.update({f"text_encoder.{key}": value for key, value in text_state.items()})
    model = build_dasco_model(vision_config, qformer_config, num_query_tokens, text_config, query_mode=args.query_mode)
    check_complete(model, tensors, args.lavis)
    load_converted_weights(model, tensors, report)

    # LAVIS's BLIP-2 image processors use CLIP's mean and std, which make_processor applies by default.
    image_size = vision_config["image_size"]
    image_settings = {"size": {"height": image_size, "width": image_size}}
    qformer_tokenizer = AutoTokenizer.from_pretrained(args.qformer_tokenizer)
    processor = make_processor(tokenizer, qformer_tokenizer, image_settings, args.max_length)
    save_checkpoint(model, processor, output, args, report)
    return report


def main(argv=None):
    convert(parse_args(argv))


if __name__ == "__main__":
    main()
