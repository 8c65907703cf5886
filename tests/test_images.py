"""Tests for image loading, blank substitution and conversion of Pillow modes to RGB."""

import io
import logging

import numpy as np
import pytest
from PIL import Image

from modeling_dasco.images import (
    BLANK_IMAGE_COLOR,
    BLANK_IMAGE_SIZE,
    ImageLoader,
    ImageLoadError,
    ImageNotFoundError,
    to_rgb,
)
from modeling_dasco.records import MabsaRecord

WHITE = (255, 255, 255)


def make_record(image_id: str, row: int) -> MabsaRecord:
    """Return a one-word record whose source is line `row + 2` of train.tsv (after the header)."""
    source = f"train.tsv, line {row + 2}"
    return MabsaRecord(tweet_id=f"train-{row}", words=["hello"], image_id=image_id, source=source)


def save_solid_png(path, color=(10, 200, 30)):
    Image.new("RGB", (8, 6), color).save(path, format="PNG")


def write_truncated_jpeg(path):
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG")
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------------------------------------
# to_rgb


def test_rgba_composited_on_white():
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (200, 10, 20, 255))
    image.putpixel((1, 0), (200, 10, 20, 0))
    image.putpixel((2, 0), (255, 0, 0, 128))

    rgb = to_rgb(image)

    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (200, 10, 20)
    assert rgb.getpixel((1, 0)) == WHITE
    # Half-transparent red over white: green and blue are 255 * (1 - 128 / 255) = 127.
    assert rgb.getpixel((2, 0)) == (255, 127, 127)


def test_la_composited_on_white():
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (90, 255))
    image.putpixel((1, 0), (90, 0))

    rgb = to_rgb(image)

    assert rgb.getpixel((0, 0)) == (90, 90, 90)
    assert rgb.getpixel((1, 0)) == WHITE


def test_cmyk_to_rgb():
    image = Image.new("CMYK", (2, 1))
    image.putpixel((0, 0), (0, 255, 255, 0))
    image.putpixel((1, 0), (0, 0, 0, 255))

    rgb = to_rgb(image)

    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 0, 0)
    assert rgb.getpixel((1, 0)) == (0, 0, 0)


def test_grayscale_l_to_rgb():
    image = Image.new("L", (1, 1), 77)

    assert to_rgb(image).getpixel((0, 0)) == (77, 77, 77)


def test_bilevel_to_rgb():
    image = Image.new("1", (2, 1), 0)
    image.putpixel((1, 0), 1)

    rgb = to_rgb(image)

    assert rgb.getpixel((0, 0)) == (0, 0, 0)
    assert rgb.getpixel((1, 0)) == WHITE


def test_palette_with_transparency():
    image = Image.new("P", (2, 1), 0)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0, 0, 0] * 254)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0

    rgb = to_rgb(image)

    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == WHITE
    assert rgb.getpixel((1, 0)) == (10, 20, 30)


def test_palette_without_transparency():
    image = Image.new("P", (1, 1), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0, 0, 0] * 254)

    assert to_rgb(image).getpixel((0, 0)) == (10, 20, 30)


def test_sixteen_bit_divided_by_257():
    image = Image.new("I;16", (4, 1), 0)
    for x, value in enumerate([0, 257 * 100, 65535, 128]):
        image.putpixel((x, 0), value)

    rgb = to_rgb(image)

    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (0, 0, 0)
    assert rgb.getpixel((1, 0)) == (100, 100, 100)
    assert rgb.getpixel((2, 0)) == (255, 255, 255)
    # 128 / 257 = 0.498 rounds to 0.
    assert rgb.getpixel((3, 0)) == (0, 0, 0)


def test_int32_read_as_sixteen_bit():
    image = Image.new("I", (3, 1), 0)
    for x, value in enumerate([65535, 70000, -5]):
        image.putpixel((x, 0), value)

    rgb = to_rgb(image)

    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((1, 0)) == (255, 255, 255)
    assert rgb.getpixel((2, 0)) == (0, 0, 0)


def test_float_stretched_min_to_max():
    image = Image.fromarray(np.array([[2.0, 2.5, 3.0]], dtype=np.float32))

    rgb = to_rgb(image)

    assert rgb.getpixel((0, 0)) == (0, 0, 0)
    assert rgb.getpixel((1, 0)) == (128, 128, 128)
    assert rgb.getpixel((2, 0)) == (255, 255, 255)


def test_rgb_returned_unchanged():
    image = Image.new("RGB", (1, 1), (1, 2, 3))

    assert to_rgb(image) is image


# ---------------------------------------------------------------------------------------------
# ImageLoader: files on disk


def test_loader_reads_png(tmp_path):
    save_solid_png(tmp_path / "1.png")

    image = ImageLoader(tmp_path).load(make_record("1.png", 0))

    assert image.mode == "RGB"
    assert image.size == (8, 6)
    assert image.getpixel((3, 2)) == (10, 200, 30)


def test_loader_converts_sixteen_bit_png(tmp_path):
    Image.new("I;16", (2, 2), 65535).save(tmp_path / "deep.png", format="PNG")

    image = ImageLoader(tmp_path).load(make_record("deep.png", 0))

    assert image.mode == "RGB"
    assert image.getpixel((1, 1)) == (255, 255, 255)


def test_loader_converts_cmyk_tiff(tmp_path):
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "print.tif", format="TIFF")

    image = ImageLoader(tmp_path).load(make_record("print.tif", 0))

    assert image.getpixel((0, 0)) == (255, 0, 0)


def test_loader_composites_rgba_png(tmp_path):
    Image.new("RGBA", (2, 2), (0, 0, 255, 0)).save(tmp_path / "clear.png", format="PNG")

    image = ImageLoader(tmp_path).load(make_record("clear.png", 0))

    assert image.getpixel((0, 0)) == WHITE


def test_missing_image_error(tmp_path):
    record = make_record("404.jpg", 3)

    with pytest.raises(ImageNotFoundError) as error:
        ImageLoader(tmp_path).load(record)
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    assert isinstance(error.value, ImageLoadError)
    assert str(tmp_path / "404.jpg") in message
    assert "train.tsv, line 5" in message
    assert "pass --blank-missing-images to substitute a blank image" in message


def test_empty_image_error(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")

    with pytest.raises(ImageLoadError) as error:
        ImageLoader(tmp_path).load(make_record("empty.jpg", 1))
    message = str(error.value)
    assert str(tmp_path / "empty.jpg") in message
    assert "train.tsv, line 3" in message
    assert "0 bytes" in message
    assert "pass --blank-missing-images to substitute a blank image" in message


def test_truncated_jpeg_error(tmp_path):
    write_truncated_jpeg(tmp_path / "cut.jpg")

    with pytest.raises(ImageLoadError) as error:
        ImageLoader(tmp_path).load(make_record("cut.jpg", 2))
    message = str(error.value)
    assert str(tmp_path / "cut.jpg") in message
    assert "train.tsv, line 4" in message
    assert "truncated" in message
    assert "pass --blank-missing-images to substitute a blank image" in message


def test_non_image_file_error(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image", encoding="utf-8")

    with pytest.raises(ImageLoadError) as error:
        ImageLoader(tmp_path).load(make_record("notes.jpg", 0))
    assert "could not be decoded" in str(error.value)
    assert "train.tsv, line 2" in str(error.value)


# ---------------------------------------------------------------------------------------------
# ImageLoader: blank substitution


def test_blank_option_counts_bad_images(tmp_path, caplog):
    (tmp_path / "empty.jpg").write_bytes(b"")
    write_truncated_jpeg(tmp_path / "cut.jpg")
    save_solid_png(tmp_path / "good.png", color=(10, 200, 30))
    records = [
        make_record("404.jpg", 0),
        make_record("empty.jpg", 1),
        make_record("good.png", 2),
        make_record("cut.jpg", 3),
    ]
    loader = ImageLoader(tmp_path, blank_missing_images=True)

    with caplog.at_level(logging.WARNING, logger="modeling_dasco.images"):
        images = [loader.load(record) for record in records]

    assert loader.num_blank == 3
    assert loader.blank_image_ids == ["404.jpg", "empty.jpg", "cut.jpg"]
    assert images[2].size == (8, 6)
    assert images[2].getpixel((0, 0)) == (10, 200, 30)
    for index in (0, 1, 3):
        assert images[index].mode == "RGB"
        assert images[index].size == BLANK_IMAGE_SIZE
        assert images[index].getpixel((100, 100)) == BLANK_IMAGE_COLOR
    assert len(caplog.records) == 1
    assert "404.jpg" in caplog.records[0].getMessage()


def test_blank_images_are_separate_objects(tmp_path):
    loader = ImageLoader(tmp_path, blank_missing_images=True)
    first = loader.load(make_record("a.jpg", 0))
    first.putpixel((0, 0), (255, 255, 255))

    second = loader.load(make_record("b.jpg", 1))

    assert first is not second
    assert second.getpixel((0, 0)) == BLANK_IMAGE_COLOR


def test_no_image_dir_with_blank_option(tmp_path):
    loader = ImageLoader(None, blank_missing_images=True)

    image = loader.load(make_record("1.jpg", 0))

    assert image.size == BLANK_IMAGE_SIZE
    assert loader.num_blank == 1
    assert loader.blank_image_ids == ["1.jpg"]


def test_no_image_dir_without_option_rejected():
    with pytest.raises(ValueError, match="--blank-missing-images"):
        ImageLoader(None)


def test_nonexistent_image_dir_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        ImageLoader(tmp_path / "does-not-exist", blank_missing_images=True)
