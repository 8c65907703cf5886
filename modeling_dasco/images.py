"""Loading tweet images as RGB, with an explicit opt-in blank image for missing or unreadable files."""

import logging
from pathlib import Path

from PIL import Image

from .image_utils import to_rgb
from .records import MabsaRecord

logger = logging.getLogger(__name__)

# The substitute for a missing or unreadable image. Black carries no content that could be mistaken
# for a photo, and the image processor resizes it like any other image.
BLANK_IMAGE_SIZE = (224, 224)
BLANK_IMAGE_COLOR = (0, 0, 0)

BLANK_OPTION_HINT = "pass --blank-missing-images to substitute a blank image"

# Pillow raises these for files it cannot identify or decode: UnidentifiedImageError and
# "image file is truncated" are OSErrors, some decoders raise SyntaxError or ValueError, and
# DecompressionBombError rejects images of more than twice Image.MAX_IMAGE_PIXELS.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageLoadError(ValueError):
    """An image that is missing, empty or cannot be decoded; `reason` is the short cause, e.g. "is empty (0 bytes)"."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class ImageNotFoundError(ImageLoadError, FileNotFoundError):
    """An image id with no file in the image directory."""


def blank_image() -> Image.Image:
    """Return a new RGB image of BLANK_IMAGE_SIZE filled with BLANK_IMAGE_COLOR, never a shared one."""
    return Image.new("RGB", BLANK_IMAGE_SIZE, BLANK_IMAGE_COLOR)


class ImageLoader:
    """Load the image of a `MabsaRecord` from `image_dir / record.image_id` as an RGB image.

    By default a missing, empty or undecodable image raises `ImageLoadError` (`ImageNotFoundError`
    when the file does not exist). With `blank_missing_images=True` the loader returns a blank image
    instead, counts each substitution in `num_blank` and appends the image id to `blank_image_ids`.
    Both count every call, so loading the same bad record in two epochs counts it twice.
    With `image_dir=None`, `blank_missing_images` must be True and every record gets a blank image.
    An `image_dir` that does not exist raises FileNotFoundError even with the blank option, because
    it is far more likely a wrong path than a dataset without images.

    NOTE: a truncated file is rejected only while `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is False
    (Pillow's default). This module never sets it, but another library in the process could.
    """

    def __init__(self, image_dir: str | Path | None, blank_missing_images: bool = False):
        if image_dir is None and not blank_missing_images:
            raise ValueError(f"No image directory given: pass an image directory, or {BLANK_OPTION_HINT}.")
        self.image_dir = None if image_dir is None else Path(image_dir)
        if self.image_dir is not None and not self.image_dir.is_dir():
            raise FileNotFoundError(
                f"Image directory {self.image_dir} does not exist or is not a directory. "
                f"Pass the folder that contains the tweet images, or {BLANK_OPTION_HINT}."
            )
        self.blank_missing_images = blank_missing_images
        self.num_blank = 0
        self.blank_image_ids: list[str] = []

    def load(self, record: MabsaRecord) -> Image.Image:
        """Return the record's image as RGB, or a blank image when allowed and the image cannot be loaded."""
        if self.image_dir is None:
            return self._substitute_blank(record, "no image directory was given")
        try:
            return self._read(record)
        except ImageLoadError as error:
            if not self.blank_missing_images:
                raise
            return self._substitute_blank(record, error.reason)

    def check_all(self, records: list[MabsaRecord]) -> int:
        """Load every record's image once, so that a bad image stops a run before training starts.

        Returns the number of distinct images replaced by the blank image (0 unless `blank_missing_images`).
        """
        for record in records:
            self.load(record)
        return len(set(self.blank_image_ids))

    def _read(self, record: MabsaRecord) -> Image.Image:
        path = self.image_dir / record.image_id
        if not path.is_file():
            raise ImageNotFoundError(_load_error_message(record, path, "was not found"), f"{path} was not found")
        if path.stat().st_size == 0:
            raise ImageLoadError(_load_error_message(record, path, "is empty (0 bytes)"), f"{path} is empty (0 bytes)")
        try:
            with Image.open(path) as image:
                # Image.open only reads the header; load() decodes the pixels, so a truncated
                # or corrupt file fails here rather than later inside the image processor.
                image.load()
                return to_rgb(image)
        except _DECODE_ERRORS as error:
            reason = f"could not be decoded ({type(error).__name__}: {error})"
            raise ImageLoadError(_load_error_message(record, path, reason), f"{path} {reason}") from error

    def _substitute_blank(self, record: MabsaRecord, reason: str) -> Image.Image:
        self.num_blank += 1
        self.blank_image_ids.append(record.image_id)
        if self.num_blank == 1:
            logger.warning(
                "Using a blank image for %s (%s): %s. Further substitutions are logged at DEBUG "
                "level and counted in num_blank.",
                record.image_id,
                record.source,
                reason,
            )
        else:
            logger.debug("Using a blank image for %s (%s): %s", record.image_id, record.source, reason)
        return blank_image()


def _load_error_message(record: MabsaRecord, path: Path, reason: str) -> str:
    return (
        f"Image {path} of tweet {record.tweet_id} ({record.source}) {reason}. "
        f"Check the image directory, or {BLANK_OPTION_HINT}."
    )


# ---------------------------------------------------------------------------------------------
# Mode conversion
