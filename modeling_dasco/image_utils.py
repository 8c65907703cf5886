"""Conversion of images of any Pillow mode to 8-bit RGB, shipped with the processor as remote code."""

import numpy as np
from PIL import Image


# Modes that can carry transparency, composited on white so transparent pixels do not turn black.
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA", "P")
_WHITE = (255, 255, 255, 255)
_UINT16_MAX = 65535


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image in any Pillow mode to 8-bit RGB.

    - RGBA, LA, PA, P (palette, with or without transparency) and any other 8-bit image with a
      `transparency` entry are converted to RGBA and composited on a white background.
    - I;16 (16-bit grayscale) is divided by 257, so 0..65535 maps onto 0..255. A `transparency`
      entry of a 16-bit or float image is ignored.
    - I (32-bit integer) is read as 16-bit grayscale, because Pillow opens some 16-bit PNG and TIFF
      files in this mode: values are clipped to 0..65535 and divided by 257.
    - F (32-bit float) has no fixed range, so it is stretched linearly from its min..max onto
      0..255; a constant image becomes black.
    - Every other mode (L, 1, CMYK, YCbCr, HSV, ...) uses Pillow's own `convert("RGB")`. For CMYK
      that is Pillow's plain formula, not an ICC profile conversion.

    An image already in RGB without transparency is returned unchanged, not copied.
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        return _sixteen_bit_to_rgb(image)
    if image.mode == "F":
        return _float_to_rgb(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(image)
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    values = np.clip(np.asarray(image).astype(np.int64), 0, _UINT16_MAX)
    # Integer rounding: (v + 128) // 257 maps 0 -> 0, 257 * k -> k and 65535 -> 255.
    gray = ((values + 128) // 257).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _float_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high > low:
        scaled = (values - low) / (high - low) * 255.0
    else:
        scaled = np.zeros_like(values)
    gray = np.rint(scaled).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")
