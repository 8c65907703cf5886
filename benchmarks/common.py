"""Shared setup of the benchmarks: a model whose vision tower dominates the cost, and deterministic images."""

import hashlib
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoTokenizer

from modeling_dasco import DascoForMabsa
from modeling_dasco.data import find_split_file, read_split
from modeling_dasco.parsing import DependencyParser, parse_records
from modeling_dasco.presets import TINY_QFORMER, build_processor, minilm_path
from modeling_dasco.configuration_dasco import DascoConfig


# Vision towers by size, estimated forward cost per 224 px image (257 tokens): ViT-S/14 about 6 GFLOPs,
# ViT-B/14 about 23, EVA ViT-g/14 (BLIP-2) about 521. The MiniLM text encoder costs about 1 GFLOP per tweet.
VISION_SIZES = {
    "vit-s": {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 12, "num_attention_heads": 6},
    "vit-b": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
    "vit-g": {"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39, "num_attention_heads": 16},
}


def build_bench_model(vision_size: str, text_encoder: str = "minilm"):
    """A randomly initialized DASCO model with the named vision tower, the MiniLM text encoder config and a
    small Q-Former; returns the model (eval mode) and its processor."""
    path = minilm_path()
    vision = {**VISION_SIZES[vision_size], "image_size": 224, "patch_size": 14}
    config = DascoConfig(
        vision_config=vision, qformer_config=TINY_QFORMER, text_config=AutoConfig.from_pretrained(path).to_dict(),
        num_query_tokens=8,
    )  # fmt: skip
    torch.manual_seed(0)
    model = DascoForMabsa(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, build_processor(tokenizer, AutoTokenizer.from_pretrained(path))


def synthetic_image(image_id: str) -> Image.Image:
    """A deterministic noise image per image id (the benchmark data sets ship without images)."""
    seed = int(hashlib.sha256(image_id.encode()).hexdigest()[:8], 16)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(256, 320, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def load_records(data_dir: str, split: str, max_tweets: int | None, parser_model: str):
    records = read_split(find_split_file(data_dir, split))
    records = records[:max_tweets] if max_tweets else records
    parse_records(records, DependencyParser(parser_model, cache_dir=Path.home() / ".cache" / "dasco_qformer" / "parses"))
    return records


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_mode_in_subprocess(script: str, mode: str, argv: list[str]) -> dict:
    """Run one mode of a benchmark in a fresh process, so that its peak memory is its own; returns its JSON line."""
    result = subprocess.run([sys.executable, script, "--mode", mode, *argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{script} --mode {mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
