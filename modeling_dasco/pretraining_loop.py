"""The pretraining stage of `train.py` (`--stage pretrain`): AOE, ITM, ASSC (and ITC) on train splits.

    accelerate launch train.py --stage pretrain --preset offline-minilm --blank-missing-images \
        --data-dir data/twitter2015 data/twitter2017 --output-dir runs/pretrained
    accelerate launch train.py --model runs/pretrained --data-dir data/twitter2015 ...

Only the train split of each `--data-dir` folder is read, never dev or test. A later fine-tuning on one of
these folders is therefore still selected on unseen dev data and scored on unseen test data. The data,
images, feature cache and accelerate set-up are those of fine-tuning. The output folder contains the
backbone (a `DascoForMabsa`, without the pretraining heads) with `config.pretraining` recording the stage, the
processor, `train_log.jsonl` and `all_results.json`.
"""

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import gather_object
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .configuration_dasco import DascoConfig
from .parsing import DependencyParser, parse_records
from .pretraining import OBJECTIVES, DascoForPretraining
from .training_utils import (
    MabsaCollator,
    attach_image_embeds,
    load_splits,
    make_linear_schedule,
    model_inputs,
    write_json,
)


logger = get_logger(__name__)
STAGES = ("finetune", "pretrain")
# train.py options that have no meaning in the pretraining stage, by argparse destination.
FINETUNE_ONLY_OPTIONS = {
    "data_file": "--data-file",
    "split_file": "--split-file",
    "split_ratios": "--split-ratios",
    "eval_only": "--eval-only",
    "resume_from_checkpoint": "--resume-from-checkpoint",
    "checkpointing_steps": "--checkpointing-steps",
    "push_to_hub": "--push-to-hub",
}


def non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; pass 0 (off) or a positive weight.")
    return number


def add_pretraining_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `--stage pretrain`: one weight per objective and the ITC temperature."""
    group = parser.add_argument_group("pretraining (--stage pretrain)")
    descriptions = {
        "aoe": "aspect-oriented enhancement (is each word part of an aspect)",
        "itm": "image-text matching of aspect queries with hard negative images",
        "assc": "aspect-level sentiment from the aspect's visual tokens and words",
        "itc": "image-text contrastive loss over the tweets of a batch",
    }
    for name, description in descriptions.items():
        group.add_argument(
            f"--{name}-weight", type=non_negative_float,
            help=f"Weight of {description}; 0 turns it off. Default: the model config's pretrain_{name}_weight "
            f"({getattr(DascoConfig, f'pretrain_{name}_weight')} in a new config).",
        )  # fmt: skip
    group.add_argument(
        "--itc-temperature", type=float,
        help="Temperature of the contrastive loss. Default: the config's pretrain_itc_temperature "
        f"({DascoConfig.pretrain_itc_temperature} in a new config).",
    )  # fmt: skip


def check_stage_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the options against `--stage`; for fine-tuning, turn the one `--data-dir` into a plain string."""
    stage_options = [f"--{name}-weight" for name in OBJECTIVES if getattr(args, f"{name}_weight") is not None]
    if args.itc_temperature is not None:
        stage_options.append("--itc-temperature")
    if args.stage == "finetune":
        if stage_options:
            parser.error(f"Options of --stage pretrain were given for fine-tuning: {', '.join(stage_options)}.")
        if args.data_dir is not None and len(args.data_dir) != 1:
            parser.error(
                f"--data-dir takes one folder for fine-tuning, got {len(args.data_dir)}: {' '.join(args.data_dir)}. "
                "Several folders are for --stage pretrain, which reads the train split of each."
            )
        if args.data_dir is not None:
            args.data_dir = args.data_dir[0]
        return

    if args.data_dir is None:
        parser.error("--stage pretrain reads the train split of each --data-dir folder; pass --data-dir.")
    finetune_options = [option for key, option in FINETUNE_ONLY_OPTIONS.items() if getattr(args, key, None)]
    if finetune_options:
        parser.error(f"Options of fine-tuning were given with --stage pretrain: {', '.join(finetune_options)}; drop them.")
    if args.itc_temperature is not None and args.itc_temperature <= 0:
        parser.error(f"--itc-temperature {args.itc_temperature} is invalid; pass a positive value.")
    # Checked here as well as in the model, so that a contradiction on the command line fails before any parsing.
    if all(getattr(args, f"{name}_weight") == 0 for name in OBJECTIVES):
        parser.error("Every objective weight is 0; leave at least one of --aoe-weight, --itm-weight, --assc-weight "
                     "or --itc-weight positive.")  # fmt: skip
    if args.query_mode == "learned" and args.itm_weight != 0:
        parser.error("--query-mode learned gives every aspect the same queries, so ITM cannot tell them apart; "
                     "pass --itm-weight 0 as well.")  # fmt: skip


def run_pretraining(args, accelerator, build_model, check_images, make_feature_cache) -> dict:
    """Pretrain the backbone on the train splits of `args.data_dir` and save it to `args.output_dir`.

    `build_model`, `check_images` and `make_feature_cache` are train.py's set-up steps. They are passed in because
    train.py is a script, not an importable module, and they build the model and processor, the image loader and
    the vision feature cache as fine-tuning does. Returns the results written to `all_results.json`.
    """
    started = time.time()

    # 1. Data: the train split of each folder, parsed on the main process first so the others read its cache.
    with accelerator.main_process_first():
        records = load_pretraining_records(args)
    backbone, processor = build_model(args, records)
    processor.scope_hops = backbone.config.scope_hops
    set_objective_weights(backbone.config, args)
    model = DascoForPretraining.from_backbone(backbone)
    del backbone
    weights = model.objective_weights()
    logger.info(f"Pretraining on {len(records)} tweets with objectives {weights}", main_process_only=True)
    feature_cache = make_feature_cache(args, model, processor)
    image_loader = check_images({"train": records}, args, feature_cache)
    collator = MabsaCollator(processor, image_loader, feature_cache=feature_cache, aspect_queries=args.aspect_queries)
    loader = DataLoader(
        records, batch_size=args.per_device_train_batch_size, shuffle=True, collate_fn=collator,
        generator=torch.Generator().manual_seed(args.seed),
    )  # fmt: skip

    # 2. Optimizer and schedule, as in fine-tuning; the step counts are recomputed after `prepare` shards the data.
    frozen = model.freeze_untrained_modules()
    logger.info(f"Not trained in this stage: {', '.join(frozen)}", main_process_only=True)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.weight_decay)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler, _, max_steps = make_linear_schedule(args, optimizer, loader, accelerator)

    # 3. Train; each epoch's mean losses are kept, the last epoch's are the final ones.
    tracker = LossTracker(["loss"] + [f"{name}_loss" for name in weights], accelerator)
    progress = tqdm(range(max_steps), disable=not accelerator.is_local_main_process, desc="pretrain")
    history = []
    for epoch in range(args.num_train_epochs):
        pretrain_one_epoch(args, model, optimizer, scheduler, loader, accelerator, progress, tracker, epoch)
        history.append({"epoch": epoch, **tracker.epoch_means()})
        logger.info(f"epoch {epoch} mean losses: {format_losses(history[-1])}", main_process_only=True)
    progress.close()

    # 4. Save the backbone with the record of this stage, and the results.
    return save_pretraining(args, accelerator, model, processor, records, image_loader, tracker, history, max_steps,
                            started)  # fmt: skip


def save_pretraining(args, accelerator, model, processor, records, image_loader, tracker, history, steps, started):
    """Save the backbone with `config.pretraining`, the processor and `all_results.json`; returns the results."""
    blank_ids = gather_object(sorted(set(image_loader.blank_image_ids)))
    itm_pairs = tracker.itm_pair_counts()
    accelerator.wait_for_everyone()
    final_losses = {key: value for key, value in history[-1].items() if key != "epoch"}
    unwrapped = accelerator.unwrap_model(model)
    record = pretraining_record(args, unwrapped.config, records, steps, final_losses, len(set(blank_ids)))
    record["itm_pairs"] = itm_pairs
    record["effective_batch_size"] = (
        args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    )

    results = {
        "stage": "pretrain", "final_losses": final_losses, "epoch_losses": history, "itm_pairs": itm_pairs,
        "train_tweets": len(records), "train_aspects": sum(len(record.aspects) for record in records),
        "epochs": args.num_train_epochs, "steps": steps, "objectives": record["objectives"],
        "blank_images": len(set(blank_ids)), "num_processes": accelerator.num_processes,
        "train_runtime_seconds": round(time.time() - started, 1),
    }  # fmt: skip

    every_image_blank = results["blank_images"] == len({tweet.image_id for tweet in records})
    if record["objectives"]["itc"] > 0 and every_image_blank:
        logger.warning(
            "ITC compared only blank images (no image was read), so its loss is 0 and it trained nothing. Pass "
            "--itc-weight 0 when the images are missing.", main_process_only=True,
        )  # fmt: skip
    if record["objectives"]["itm"] > 0 and itm_pairs["negative"] == 0:
        logger.warning(
            "ITM saw no negative pair: in every batch all tweets showed the same image (with --blank-missing-images "
            "and no images, every image is the one blank image), so ITM only learned to predict 'match'. Pass "
            "--itm-weight 0 when the images are missing.", main_process_only=True,
        )  # fmt: skip

    if accelerator.is_main_process:
        backbone = unwrapped.to_backbone()
        backbone.config.pretraining = record
        backbone.save_pretrained(args.output_dir)
        processor.save_pretrained(args.output_dir)
        write_json(Path(args.output_dir) / "all_results.json", results)
        print(f"final losses: {format_losses(final_losses)}\nsaved the pretrained backbone to {args.output_dir}")
    return results


def load_pretraining_records(args) -> list:
    """Read and parse the train split of each `--data-dir` folder, in the given order.

    With several folders, each tweet id gets the folder's position as a prefix ("0/train-12", "1/train-12"),
    because every reader numbers the tweets of a file from 0. `--max-train-samples` keeps the first N tweets
    of the concatenation.
    """
    records = []
    for index, folder in enumerate(args.data_dir):
        train = load_splits(folder, args.data_format, splits=("train",), unknown_polarity=args.unknown_polarity)
        folder_records = train["train"]
        if len(args.data_dir) > 1:
            for record in folder_records:
                record.tweet_id = f"{index}/{record.tweet_id}"
        records += folder_records
    if args.max_train_samples:
        records = records[: args.max_train_samples]
    parse_records(records, DependencyParser(args.parser_model, cache_dir=args.parse_cache_dir))
    return records


def set_objective_weights(config, args) -> None:
    """Copy the `--<objective>-weight` and `--itc-temperature` options that were given into the config."""
    for name in OBJECTIVES:
        weight = getattr(args, f"{name}_weight")
        if weight is not None:
            setattr(config, f"pretrain_{name}_weight", weight)
    if args.itc_temperature is not None:
        config.pretrain_itc_temperature = args.itc_temperature


class LossTracker:
    """Sum each objective's loss over the optimizer steps of an epoch and over all processes.

    `add` takes one micro-batch's output. `end_step` turns the micro-batches of an optimizer step into that step's
    mean losses, and `epoch_means` returns the mean over the epoch's steps and starts a new epoch. A loss that is
    None for a batch (ITM and ASSC in a batch without aspects) is left out of its mean.
    """

    def __init__(self, names: list[str], accelerator):
        self.names = names
        self.accelerator = accelerator
        self.step_values = {name: [] for name in names}
        self.epoch_totals = torch.zeros(2, len(names), dtype=torch.float64, device=accelerator.device)
        self.itm_pairs = torch.zeros(2, dtype=torch.long, device=accelerator.device)

    def add(self, outputs) -> None:
        for name in self.names:
            value = getattr(outputs, name)
            if value is not None:
                self.step_values[name].append(value.item())
        if outputs.itm_labels is not None:
            positives = int(outputs.itm_labels.sum())
            self.itm_pairs += torch.tensor([positives, len(outputs.itm_labels) - positives], device=self.itm_pairs.device)

    def end_step(self) -> dict[str, float]:
        means = {name: sum(values) / len(values) for name, values in self.step_values.items() if values}
        for column, name in enumerate(self.names):
            if name in means:
                self.epoch_totals[0, column] += means[name]
                self.epoch_totals[1, column] += 1
        self.step_values = {name: [] for name in self.names}
        return means

    def epoch_means(self) -> dict[str, float]:
        totals = self.accelerator.reduce(self.epoch_totals.clone(), reduction="sum")
        self.epoch_totals.zero_()
        return {name: float(totals[0, column] / totals[1, column]) for column, name in enumerate(self.names)
                if totals[1, column] > 0}  # fmt: skip

    def itm_pair_counts(self) -> dict[str, int]:
        """Positive and negative ITM pairs over the whole run and all processes."""
        counts = self.accelerator.reduce(self.itm_pairs.clone(), reduction="sum").tolist()
        return {"positive": counts[0], "negative": counts[1]}


def pretrain_one_epoch(args, model, optimizer, scheduler, loader, accelerator, progress, tracker, epoch) -> None:
    """Train one pass over the records. The main process appends each optimizer step's mean losses (overall and
    per objective, over the step's micro-batches on that process) and tweet ids to `train_log.jsonl`."""
    model.train()
    loader.set_epoch(epoch)
    completed = epoch * math.ceil(len(loader) / args.gradient_accumulation_steps)
    step_tweets = []
    for batch in loader:
        step_tweets += batch["tweet_ids"]
        batch = attach_image_embeds(batch, loader.collate_fn.feature_cache, accelerator.device)
        with accelerator.accumulate(model):
            outputs = model(**model_inputs(batch, with_labels=True))
            # The loss is None for a batch without aspects when AOE is off; such a batch has nothing to learn from.
            # NOTE: with several processes, DDP then expects gradients that this process does not produce.
            if outputs.loss is not None:
                accelerator.backward(outputs.loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        tracker.add(outputs)
        if not accelerator.sync_gradients:
            continue
        completed += 1
        step_losses = tracker.end_step()
        progress.update(1)
        progress.set_postfix(epoch=epoch, loss=f"{step_losses.get('loss', float('nan')):.4f}")
        if accelerator.is_main_process:
            entry = {"step": completed, "epoch": epoch, **step_losses, "tweet_ids": step_tweets}
            with open(Path(args.output_dir) / "train_log.jsonl", "a", encoding="utf-8") as log:
                log.write(json.dumps(entry) + "\n")
        step_tweets = []


def pretraining_record(args, config, records, steps: int, final_losses: dict, blank_images: int) -> dict:
    """Build the plain dict stored as `config.pretraining`, which fine-tuning carries on into its model and card."""
    objectives = {name: getattr(config, f"pretrain_{name}_weight") for name in OBJECTIVES}
    record = {
        "data": [str(folder) for folder in args.data_dir],
        "tweets_per_folder": tweets_per_folder(args.data_dir, records),
        "split": "train",
        "data_format": args.data_format,
        "train_tweets": len(records),
        "objectives": objectives,
        "epochs": args.num_train_epochs,
        "steps": steps,
        "final_losses": {key: round(value, 6) for key, value in final_losses.items()},
        "seed": args.seed,
        "learning_rate": args.learning_rate,
        "initial_model": args.model or args.preset,
        "blank_images": blank_images,
    }
    if objectives["itc"] > 0:
        record["itc_temperature"] = config.pretrain_itc_temperature
    return record


def tweets_per_folder(folders: list, records: list) -> list[int]:
    """Count the pretraining tweets of each folder; with `--max-train-samples` a later folder may give none."""
    if len(folders) == 1:
        return [len(records)]
    counts = Counter(record.tweet_id.split("/", 1)[0] for record in records)
    return [counts[str(index)] for index in range(len(folders))]


def format_losses(losses: dict) -> str:
    return ", ".join(f"{name}={value:.4f}" for name, value in losses.items() if name != "epoch")


__all__ = ["add_pretraining_arguments", "check_stage_arguments", "run_pretraining"]
