import pytest
import torch
from PIL import Image

from modeling_dasco import DascoForMabsa
from modeling_dasco.data import read_vlp_json
from modeling_dasco.feature_cache import BLANK_IMAGE_KEY, VisionFeatureCache
from modeling_dasco.images import ImageLoader
from modeling_dasco.presets import build_processor, tiny_config
from modeling_dasco.training_utils import MabsaCollator, attach_image_embeds, model_inputs


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return DascoForMabsa(tiny_config()).eval()


@pytest.fixture()
def records_with_images(tmp_path):
    records = read_vlp_json("data/sample/train.json")[:6]
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for index, record in enumerate(records[:5]):  # the sixth image is missing and becomes the blank image
        Image.new("RGB", (50 + index, 40), (40 * index, 10, 200)).save(image_dir / record.image_id)
    for record in records:
        record.dependency_heads = list(range(len(record.words)))
    return records, image_dir


def test_cached_features_equal_vision_tower(model, tiny_processor, tmp_path):
    cache = VisionFeatureCache(tmp_path, model.vision_model, tiny_processor.image_processor)
    pixel_values = torch.randn(2, 3, 224, 224)
    filled = cache.image_embeds(["a.jpg", "b.jpg"], ["a.jpg", "b.jpg"], pixel_values, "cpu")
    read = cache.image_embeds(["b.jpg", "a.jpg", "b.jpg"], [], None, "cpu")
    with torch.no_grad():
        expected = model.vision_model(pixel_values=pixel_values).last_hidden_state
    assert torch.equal(filled, expected)
    assert torch.equal(read[0], expected[1])
    assert torch.equal(read[2], expected[1])
    assert len(list(cache.folder.glob("*.safetensors"))) == 2
    assert (cache.hits, cache.misses) == (3, 2)


def test_cache_folder_changes_with_key_parts(model, tiny_processor, minilm_tokenizer, tmp_path):
    first = VisionFeatureCache(tmp_path, model.vision_model, tiny_processor.image_processor).folder
    again = VisionFeatureCache(tmp_path, model.vision_model, tiny_processor.image_processor).folder
    larger = build_processor(minilm_tokenizer, minilm_tokenizer, size={"height": 256, "width": 256})
    other_size = VisionFeatureCache(tmp_path, model.vision_model, larger.image_processor).folder
    with torch.no_grad():
        model.vision_model.post_layernorm.bias.add_(1e-3)
    other_weights = VisionFeatureCache(tmp_path, model.vision_model, tiny_processor.image_processor).folder
    assert again == first
    assert other_size != first
    assert other_weights != first


def test_cache_gives_identical_logits(model, tiny_processor, records_with_images, tmp_path):
    records, image_dir = records_with_images
    plain = MabsaCollator(tiny_processor, ImageLoader(image_dir, blank_missing_images=True))
    with torch.no_grad():
        expected = model(**model_inputs(plain(records), with_labels=False), task="masc").masc_logits

    cache = VisionFeatureCache(tmp_path / "cache", model.vision_model, tiny_processor.image_processor)
    cached = MabsaCollator(tiny_processor, ImageLoader(image_dir, blank_missing_images=True), feature_cache=cache)
    for run in ("fill", "read"):
        batch = attach_image_embeds(cached(records), cache, "cpu")
        with torch.no_grad():
            logits = model(**model_inputs(batch, with_labels=False), task="masc").masc_logits
        assert torch.equal(logits, expected), run
    assert batch["image_keys"][5] == BLANK_IMAGE_KEY
    assert batch["pixel_keys"] == []
    assert len(list(cache.folder.glob("*.safetensors"))) == 6  # five images and the blank one


def test_cached_features_train(model, tiny_processor, records_with_images, tmp_path):
    # Features made under no_grad (not inference_mode) can enter a training graph.
    records, image_dir = records_with_images
    cache = VisionFeatureCache(tmp_path, model.vision_model, tiny_processor.image_processor)
    collator = MabsaCollator(tiny_processor, ImageLoader(image_dir, blank_missing_images=True), feature_cache=cache)
    model.train()
    batch = attach_image_embeds(collator(records), cache, "cpu")
    outputs = model(**model_inputs(batch, with_labels=True), task="jmasa")
    outputs.loss.backward()
    assert model.qformer.layernorm.weight.grad is not None


def test_changed_image_file_not_served_stale(model, tiny_processor, records_with_images, tmp_path):
    records, image_dir = records_with_images
    cache = VisionFeatureCache(tmp_path / "cache", model.vision_model, tiny_processor.image_processor)
    collator = MabsaCollator(tiny_processor, ImageLoader(image_dir, blank_missing_images=True), feature_cache=cache)
    before = attach_image_embeds(collator(records[:1]), cache, "cpu")["image_embeds"]
    Image.new("RGB", (50, 40), (255, 255, 0)).save(image_dir / records[0].image_id)  # same name, new pixels
    batch = collator(records[:1])
    after = attach_image_embeds(batch, cache, "cpu")["image_embeds"]
    assert len(batch["pixel_keys"]) == 1
    assert not torch.equal(before, after)


def test_tiny_vision_tower_depends_on_image(model, tiny_processor):
    black = tiny_processor([["a"]], images=[Image.new("RGB", (32, 32), (0, 0, 0))])["pixel_values"]
    white = tiny_processor([["a"]], images=[Image.new("RGB", (32, 32), (255, 255, 255))])["pixel_values"]
    with torch.no_grad():
        difference = model.vision_model(pixel_values=black).last_hidden_state - model.vision_model(
            pixel_values=white
        ).last_hidden_state
    assert difference.abs().max().item() > 0.01
