"""Convert a transformers BLIP-2 checkpoint and a BERT-family text encoder into a DASCO checkpoint folder.

    python -m conversion.convert_blip2_to_dasco --blip2 Salesforce/blip2-itm-vit-g \
        --text-encoder bert-base-uncased --output checkpoints/dasco-init

Takes the vision tower, the learned query tokens and the Q-Former. The Q-Former word and position embeddings,
which turn aspect words into queries, come from the checkpoint when it has them (`Blip2ForImageTextRetrieval`,
as `Salesforce/blip2-itm-vit-g`), and from `--qformer-embeddings-from` (a BERT checkpoint) when it does not
(the OPT and T5 `Blip2ForConditionalGeneration` layouts). The text encoder comes from `--text-encoder`, and the
DASCO heads are initialized fresh. A report of copied, initialized and dropped tensors is printed and saved as
`conversion_report.json`.
"""

import argparse
import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from conversion.common import (
    add_output_arguments,
    check_output_arguments,
    ConversionReport,
    bert_embeddings,
    build_dasco_model,
    check_output_dir,
    image_processor_settings,
    load_converted_weights,
    load_text_encoder,
    make_processor,
    save_checkpoint,
)


# BLIP-2 key prefixes that DASCO keeps under the same names.
KEPT_PREFIXES = ("vision_model.", "qformer.", "query_tokens", "embeddings.word_embeddings.", "embeddings.position_embeddings.")
REQUIRED_KEYS = ("vision_model.embeddings.patch_embedding.weight", "qformer.layernorm.weight", "query_tokens")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blip2", required=True, help="BLIP-2 checkpoint: a local folder or a Hub model id.")
    parser.add_argument("--text-encoder", required=True, help="BERT-family text encoder: a local folder or Hub id.")
    parser.add_argument("--output", required=True, help="Folder to write the DASCO checkpoint to.")
    parser.add_argument(
        "--qformer-embeddings-from", default="bert-base-uncased",
        help="BERT checkpoint that provides the Q-Former word and position embeddings and tokenizer when the "
        "BLIP-2 checkpoint has none (OPT and T5 layouts).",
    )  # fmt: skip
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    check_output_arguments(parser, args)
    return args


def resolve_source(name_or_path: str) -> Path:
    """Return a local folder as is, or download a Hub id (configs, safetensors, tokenizer files only)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    return Path(snapshot_download(name_or_path, allow_patterns=patterns))


def read_blip2_config(source: Path) -> dict:
    config_file = source / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{source} has no config.json; pass a transformers BLIP-2 checkpoint folder or Hub id.")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "blip-2":
        found = f"model_type {config.get('model_type')!r} ({', '.join(config.get('architectures') or ['no architectures'])})"
        raise ValueError(
            f"{config_file} describes {found}, not a BLIP-2 checkpoint (model_type 'blip-2'). For LAVIS .pth "
            "files use conversion/convert_lavis_to_dasco.py."
        )
    return config


def safetensors_files(source: Path) -> list[Path]:
    """Return the checkpoint's safetensors files: the shards listed in the index, or the single file."""
    index = source / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [source / shard for shard in shards]
    single = source / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(
        f"{source} has no model.safetensors or model.safetensors.index.json; convert .bin checkpoints to "
        "safetensors first, or pass a LAVIS .pth file to conversion/convert_lavis_to_dasco.py."
    )


def read_blip2_tensors(source: Path, report: ConversionReport) -> dict[str, torch.Tensor]:
    """Load the tensors DASCO keeps, lazily per shard; count the others as dropped."""
    kept, dropped = {}, []
    for path in safetensors_files(source):
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                if key.startswith(KEPT_PREFIXES):
                    kept[key] = handle.get_tensor(key)
                else:
                    dropped.append(key)
    missing = [key for key in REQUIRED_KEYS if key not in kept]
    if missing:
        raise ValueError(f"{source} lacks the BLIP-2 tensors {missing}; it is not a BLIP-2 vision + Q-Former checkpoint.")
    report.add("dropped", dropped)
    return kept


def qformer_embeddings(tensors: dict, args, report: ConversionReport) -> tuple[dict, int | None]:
    """Q-Former embeddings from the checkpoint, or from the BERT checkpoint when it has none."""
    if "embeddings.word_embeddings.weight" in tensors:
        report.notes.append("Q-Former word and position embeddings copied from the BLIP-2 checkpoint.")
        return {}, None
    embeddings = bert_embeddings(args.qformer_embeddings_from)
    report.notes.append(
        f"The BLIP-2 checkpoint has no Q-Former word embeddings; copied them from {args.qformer_embeddings_from}."
    )
    return embeddings, embeddings["embeddings.word_embeddings.weight"].shape[0]


def qformer_tokenizer(source: Path, from_checkpoint: bool, args, report: ConversionReport):
    """The checkpoint's own BERT tokenizer for ITM checkpoints that ship one, else the tokenizer of
    `--qformer-embeddings-from`; the report names which."""
    if from_checkpoint and (source / "tokenizer_config.json").is_file():
        report.notes.append(f"Q-Former tokenizer: from the BLIP-2 checkpoint {source}.")
        return AutoTokenizer.from_pretrained(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.qformer_embeddings_from)
    except OSError as error:
        raise ValueError(
            f"{source} has no tokenizer files, and the Q-Former tokenizer could not be loaded from "
            f"--qformer-embeddings-from {args.qformer_embeddings_from!r} ({error.__class__.__name__}). Pass a local "
            "BERT folder (bert-base-uncased vocabulary) as --qformer-embeddings-from, or copy the BLIP-2 "
            "checkpoint's tokenizer files into its folder."
        ) from error
    report.notes.append(f"Q-Former tokenizer: from {args.qformer_embeddings_from}.")
    return tokenizer


def convert(args) -> ConversionReport:
    output = check_output_dir(args.output, args.overwrite)
    source = resolve_source(args.blip2)
    blip2_config = read_blip2_config(source)
    report = ConversionReport()
    tensors = read_blip2_tensors(source, report)

    extra, vocab_size = qformer_embeddings(tensors, args, report)
    tensors.update(extra)
    qformer_config = dict(blip2_config.get("qformer_config") or {})
    if vocab_size is not None:
        qformer_config["vocab_size"] = vocab_size

    text_config, text_state, tokenizer = load_text_encoder(args.text_encoder)
    tensors.update({f"text_encoder.{key}": value for key, value in text_state.items()})
    model = build_dasco_model(
        blip2_config.get("vision_config") or {}, qformer_config, blip2_config.get("num_query_tokens", 32),
        text_config, query_mode=args.query_mode,
    )  # fmt: skip
    load_converted_weights(model, tensors, report)

    image_size = model.config.vision_config.image_size
    processor = make_processor(
        tokenizer, qformer_tokenizer(source, vocab_size is None, args, report), image_processor_settings(source, image_size),
        args.max_length,
    )  # fmt: skip
    save_checkpoint(model, processor, output, args, report)
    return report


def main(argv=None):
    convert(parse_args(argv))


if __name__ == "__main__":
    main()
