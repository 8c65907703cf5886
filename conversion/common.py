"""Pieces shared by the converters: the output-folder check, the conversion report, and building and saving
a DASCO checkpoint from BLIP-2 tensors plus a BERT-family text encoder."""

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from modeling_dasco import DascoConfig, DascoForMabsa
from modeling_dasco.presets import build_processor


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_output_arguments(parser) -> None:
    """Add the converters' shared options: output dtype, query mode, processor length, overwrite, Hub push."""
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="Data type of the saved weights.")
    parser.add_argument("--query-mode", choices=("aspect", "learned", "aspect+learned"), default="aspect")
    parser.add_argument("--max-length", type=int, default=128, help="Processor's maximum text length in sub-tokens.")
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty output folder.")
    parser.add_argument("--push-to-hub", action="store_true", help="Upload the converted folder to the Hub.")
    parser.add_argument("--hub-model-id", help="Hub repository for --push-to-hub, e.g. org/dasco-qformer-init.")
    parser.add_argument("--hub-revision", help="Branch to push to (created when missing); default: main.")


def check_output_arguments(parser, args) -> None:
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push-to-hub needs --hub-model-id.")


def check_output_dir(output: str | Path, overwrite: bool) -> Path:
    """Reject a non-empty output folder unless `overwrite` is set, before any work is done."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise FileExistsError(f"Output folder {output} already exists and is not empty; pass --overwrite to replace it.")
    return output


def module_group(key: str) -> str:
    """Report group of a state-dict key: its first component, two for the text encoder and language model."""
    parts = key.split(".")
    if parts[0] in ("text_encoder", "language_model", "opt_model", "t5_model", "Qformer") and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


@dataclass
class ConversionReport:
    """Tensors copied into the DASCO model, initialized fresh, and dropped from the source, by module."""

    copied: Counter = field(default_factory=Counter)
    initialized: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, keys) -> None:
        counter = getattr(self, kind)
        for key in keys:
            counter[module_group(key)] += 1

    def render(self) -> str:
        groups = sorted(set(self.copied) | set(self.initialized) | set(self.dropped))
        width = max([len(group) for group in groups] + [6])
        lines = [f"{'module':<{width}}  copied  initialized  dropped"]
        for group in groups:
            lines.append(
                f"{group:<{width}}  {self.copied[group]:>6}  {self.initialized[group]:>11}  {self.dropped[group]:>7}"
            )
        totals = (sum(self.copied.values()), sum(self.initialized.values()), sum(self.dropped.values()))
        lines.append(f"{'total':<{width}}  {totals[0]:>6}  {totals[1]:>11}  {totals[2]:>7}")
        return "\n".join(lines + [f"note: {note}" for note in self.notes])

    def to_dict(self) -> dict:
        return {
            "copied": dict(self.copied),
            "initialized": dict(self.initialized),
            "dropped": dict(self.dropped),
            "notes": self.notes,
        }


def load_text_encoder(name_or_path: str):
    """Config, weights (without pooler) and tokenizer of a BERT-family encoder."""
    config = AutoConfig.from_pretrained(name_or_path)
    encoder = AutoModel.from_pretrained(name_or_path, add_pooling_layer=False, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return config, encoder.state_dict(), tokenizer


def bert_embeddings(name_or_path: str) -> dict[str, torch.Tensor]:
    """Word and position embeddings of a BERT checkpoint, keyed as the Q-Former embeddings of DASCO."""
    encoder = AutoModel.from_pretrained(name_or_path, add_pooling_layer=False, dtype=torch.float32)
    state = encoder.state_dict()
    return {
        "embeddings.word_embeddings.weight": state["embeddings.word_embeddings.weight"],
        "embeddings.position_embeddings.weight": state["embeddings.position_embeddings.weight"],
    }


def build_dasco_model(
    vision_config: dict, qformer_config: dict, num_query_tokens: int, text_config, **config_overrides
) -> DascoForMabsa:
    config = DascoConfig(
        vision_config=vision_config,
        qformer_config=qformer_config,
        text_config=text_config.to_dict(),
        num_query_tokens=num_query_tokens,
        **config_overrides,
    )
    return DascoForMabsa(config)


def load_converted_weights(model: DascoForMabsa, tensors: dict[str, torch.Tensor], report: ConversionReport) -> None:
    """Copy `tensors` (already in DASCO key names) into the model; every other parameter stays freshly initialized.

    A tensor whose key the model lacks, or whose shape differs, is an error naming both, never a silent skip.
    """
    expected = model.state_dict()
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise ValueError(f"Converted tensors have no place in the DASCO model: {unknown[:5]} ({len(unknown)} in all).")
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"Tensor {key} has shape {tuple(tensor.shape)} in the source but {tuple(expected[key].shape)} in the "
                "DASCO config built from it; the source config and its weights disagree."
            )
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected, unexpected
    report.add("copied", tensors)
    report.add("initialized", missing)


def save_checkpoint(model, processor, output: Path, args, report: ConversionReport) -> None:
    """Save the model in `args.dtype`, the processor and the report; print the report; push when asked."""
    output.mkdir(parents=True, exist_ok=True)
    model.to(DTYPES[args.dtype]).save_pretrained(output)
    processor.save_pretrained(output)
    (output / "conversion_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(report.render())
    print(f"saved to {output}")
    if args.push_to_hub:
        from modeling_dasco.hub_utils import push_checkpoint

        commit = push_checkpoint(output, args.hub_model_id, revision=args.hub_revision)
        print(f"pushed to {args.hub_model_id} (commit {commit})")


def image_processor_settings(source_dir: Path, image_size: int) -> dict:
    """BLIP-2 image settings (`size`, `image_mean`, `image_std`) from the source's preprocessor_config.json,
    or the vision config's image size with CLIP's mean and std."""
    settings = {"size": {"height": image_size, "width": image_size}}
    path = source_dir / "preprocessor_config.json"
    if path.exists():
        saved = json.loads(path.read_text())
        settings.update({key: saved[key] for key in ("size", "image_mean", "image_std") if key in saved})
    return settings


def make_processor(tokenizer, qformer_tokenizer, image_settings: dict, max_length: int):
    return build_processor(tokenizer, qformer_tokenizer, max_length=max_length, **image_settings)
