"""Attention maps: each tweet's image with, per aspect, where that aspect's Q-Former queries look.

Needs matplotlib (`pip install 'dasco-qformer[explain]'`), imported inside the functions that draw.
"""

import math
import re
import warnings
from pathlib import Path

from .image_utils import to_rgb
from .pipeline_dasco import load_image


# Every panel is PANEL_INCHES wide and the figure PANEL_INCHES + TITLE_INCHES high, at DPI dots per inch, so a
# tweet with n aspects gives a PNG of (n + 1) * 300 by 340 pixels.
PANEL_INCHES = 3.0
TITLE_INCHES = 0.4
DPI = 100
# The heatmaps are drawn over the image resized to a square, as the BLIP-2 image processor resizes it.
SQUARE_SIZE = 224
MAX_TITLE_CHARS = 28


def explain(
    pipe,
    inputs,
    output_dir,
    aspects: list[str] | None = None,
    names: list[str] | None = None,
    batch_size: int = 1,
) -> list[Path]:
    """Analyze tweets with a `multimodal-absa` pipeline and write one attention map PNG per tweet.

    Args:
        pipe: the pipeline, from `pipeline("multimodal-absa", model=..., trust_remote_code=True)`.
        inputs: one input or a list of inputs, each a dict `{"text": ..., "image": ..., "aspects": [...]}`
            (aspects optional) with the image as a file path or a PIL image.
        output_dir: folder for the PNG files; created when missing.
        aspects: aspects to classify in every tweet instead of extracting them.
        names: file names without extension, one per input; by default the input's "id" or its index.
        batch_size: tweets per forward pass.

    Returns:
        The paths of the PNG files, in input order. Panel 1 of each shows the image. Every other panel shows the
        cross-attention of one aspect's queries over the image patches (16 × 16 at 224 px and patch size 14)
        on top of the image, titled with the aspect and its predicted sentiment.
    """
    single = isinstance(inputs, dict)
    inputs = [inputs] if single else list(inputs)
    if names is None:
        names = [str(item.get("id", index)) for index, item in enumerate(inputs)]
    if len(names) != len(inputs):
        raise ValueError(f"Got {len(names)} names for {len(inputs)} inputs; pass one name per input.")
    images = [load_image(item.get("image")) for item in inputs]
    with_images = [{**item, "image": image} for item, image in zip(inputs, images)]
    results = pipe(with_images, aspects=aspects, output_attentions=True, batch_size=batch_size)

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, tweet_results, name in zip(images, results, names):
        paths.append(draw_attention_map(image, tweet_results, output_dir / f"{safe_file_name(name)}.png"))
    return paths


def draw_attention_map(image, results: list[dict], path) -> Path:
    """Write `path` (PNG): the image, then one heatmap panel per result of the `multimodal-absa` pipeline.

    Each result needs `image_attention`, from the pipeline called with `output_attentions=True`. Its first entry
    (the CLS token) is dropped and the remaining patches are reshaped to their square grid.
    """
    try:
        import numpy as np
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("Attention maps need matplotlib: pip install 'dasco-qformer[explain]'.") from error

    grids = [patch_grid(result) for result in results]
    if image is None:
        raise ValueError("An attention map is drawn over the tweet's image; got image=None.")
    rgb = to_rgb(image)
    square = np.asarray(rgb.resize((SQUARE_SIZE, SQUARE_SIZE)))
    panels = 1 + len(results)
    figure = Figure(figsize=(PANEL_INCHES * panels, PANEL_INCHES + TITLE_INCHES), dpi=DPI)
    top = PANEL_INCHES / (PANEL_INCHES + TITLE_INCHES)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top, wspace=0.04)
    axes = figure.subplots(1, panels, squeeze=False)[0]

    axes[0].imshow(np.asarray(rgb))
    axes[0].set_title("image" if results else "image (no aspects)", fontsize=9)
    for axis, result, grid in zip(axes[1:], results, grids):
        axis.imshow(square)
        axis.imshow(
            grid, cmap="jet", alpha=0.5, interpolation="nearest", extent=(0, SQUARE_SIZE, SQUARE_SIZE, 0)
        )
        axis.set_title(panel_title(result), fontsize=9)
    for axis in axes:
        axis.set_axis_off()

    path = Path(path)
    with warnings.catch_warnings():
        # The default font has no emoji glyphs; titles still render, with a placeholder box.
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        figure.savefig(path, dpi=DPI, format="png")
    return path


def patch_grid(result: dict):
    """Reshape the aspect's attention over the image patches, without the CLS token, into a `[side, side]` array."""
    import numpy as np

    attention = result.get("image_attention")
    if attention is None:
        raise ValueError(
            f"The result for {result.get('aspect')!r} has no image_attention. Call the pipeline with "
            "output_attentions=True, with a model that reads images and has query_mode 'aspect' or 'aspect+learned'."
        )
    patches = np.asarray(attention[1:], dtype=np.float32)
    side = math.isqrt(len(patches))
    if side * side != len(patches):
        raise ValueError(f"{len(patches)} image patches do not form a square grid; cannot draw them as a map.")
    return patches.reshape(side, side)


def panel_title(result: dict) -> str:
    aspect = result["aspect"]
    if len(aspect) > MAX_TITLE_CHARS:
        aspect = aspect[: MAX_TITLE_CHARS - 1] + "…"
    if result.get("sentiment") is None:
        return f"{aspect}\n(no sentiment)"
    return f"{aspect}\n{result['sentiment']} {result['score']:.2f}"


def safe_file_name(name: str) -> str:
    """`name` with every character other than letters, digits, ".", "_" and "-" replaced by "_"."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".")
    return cleaned or "tweet"


__all__ = ["draw_attention_map", "explain"]
