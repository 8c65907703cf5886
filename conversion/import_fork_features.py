"""Import the hotel-review fork's `features.pkl` into the vision feature cache of a DASCO checkpoint.

    python -m conversion.import_fork_features --features image_cache/features.pkl \
        --model checkpoints/dasco-init --vision-cache-dir cache/vision --allow-pickle

The fork's `cache_images.py` pickles a dict keyed by photo URL. Each value contains `image_id`, `features` (a numpy
array [257, 1408], float16 when extracted on a GPU, else float32) and `shape` (a `torch.Size`). The features are
`Blip2VisionModel(...).last_hidden_state` of Salesforce/blip2-opt-2.7b at 224 px, which is what this package's
vision tower returns as `image_embeds`. They are stored in the cache folder that `train.py --model <checkpoint>
--vision-cache-dir <dir>` uses, under `imported_image_key(image_id)`, in the vision tower's dtype (float32).
Training then reads them for every record with that image id, and needs no image file for it.

Unpickling can run arbitrary code, so nothing is read without `--allow-pickle`. Every value is checked. The
import stops with an error naming the file and the URL for a missing `image_id`, for features that are not a
finite floating-point array of the shape that the checkpoint's vision tower produces, for a `shape` that
disagrees with the array, and for two different arrays of one image id. Nothing is written before every value
has passed.

NOTE: only the shape can be checked. The features fit the checkpoint only if its vision tower is the one that
computed them: for the fork's, convert Salesforce/blip2-opt-2.7b with `conversion.convert_blip2_to_dasco`.
"""

import argparse
import hashlib
import pickle
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoProcessor

from modeling_dasco import DascoForMabsa
from modeling_dasco.feature_cache import VisionFeatureCache, imported_image_key


ALLOW_PICKLE_HELP = (
    "Read the pickle although unpickling can run arbitrary code from the file; pass it only for files from a "
    "source you trust."
)
FEATURES_PICKLE_DESCRIPTION = (
    "a pickled dict keyed by photo URL, each value a dict with 'image_id', 'features' (a numpy array "
    "[patches + 1, vision hidden size]) and 'shape', as the fork's cache_images.py writes it"
)
# Exceptions of pickle.load for a truncated, corrupt or foreign file. A class that it cannot find raises
# AttributeError or ImportError, for example in a pickle that needs a package that is not installed.
UNPICKLING_ERRORS = (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError)


class PickleImportError(ValueError):
    """An importer input that may not or cannot be used: a pickle (unread without opt-in, unreadable, or with a value of
    the wrong type or shape), or the checkpoint that the features are imported for."""


def require_pickle_opt_in(files: str | Path, allow_pickle: bool) -> None:
    """Raise PickleImportError unless the user passed --allow-pickle; `files` names the pickles in the message."""
    if not allow_pickle:
        raise PickleImportError(
            f"Refusing to read {files}: unpickling can run arbitrary code contained in a pickle. "
            "Pass --allow-pickle if you trust its source."
        )


def load_pickle(path: Path, expected: str):
    """Unpickle `path` (call `require_pickle_opt_in` first); `expected` describes the content for errors."""
    try:
        with open(path, "rb") as file:
            return pickle.load(file)
    except FileNotFoundError:
        raise PickleImportError(f"{path} was not found. Expected {expected}.") from None
    except UNPICKLING_ERRORS as error:
        raise PickleImportError(
            f"{path} could not be unpickled ({type(error).__name__}: {error}). Expected {expected}."
        ) from None


@dataclass
class ImportCounts:
    """Entries written new, found identical in the cache, and replaced; arrays checked, by source dtype."""

    imported: int = 0
    already_present: int = 0
    replaced: int = 0
    source_dtypes: Counter = field(default_factory=Counter)


class FeatureImporter:
    """Check precomputed vision features against a checkpoint's vision tower and store them in its feature cache.

    `check` validates one array and queues it, and `write` stores the queued arrays under `imported_image_key`,
    in the vision tower's dtype. The cache folder is the one that `train.py --model <model_dir>
    --vision-cache-dir <cache_dir>` opens, because the model is loaded as train.py loads it (float32).
    `wrong_shape_hint` is appended to the error for features of the wrong shape.
    """

    def __init__(
        self, model_dir: str | Path, cache_dir: str | Path, overwrite: bool = False, wrong_shape_hint: str = ""
    ):
        self.model_dir = str(model_dir)
        try:
            model = DascoForMabsa.from_pretrained(model_dir, dtype=torch.float32)
        except OSError as error:
            raise PickleImportError(f"--model {model_dir} could not be loaded as a DASCO checkpoint: {error}") from error
        if not (model.config.use_image and model.config.freeze_vision_model):
            raise PickleImportError(
                f"{model_dir} has use_image={model.config.use_image} and freeze_vision_model="
                f"{model.config.freeze_vision_model}; train.py uses a vision feature cache only for a frozen vision "
                "tower, so imported features would never be read."
            )
        processor = AutoProcessor.from_pretrained(model_dir)
        vision = model.config.vision_config
        self.expected_shape = ((vision.image_size // vision.patch_size) ** 2 + 1, vision.hidden_size)
        self.dtype = model.vision_model.embeddings.patch_embedding.weight.dtype
        self.cache = VisionFeatureCache(cache_dir, model.vision_model, processor.image_processor)
        self.overwrite = overwrite
        self.wrong_shape_hint = wrong_shape_hint
        self.counts = ImportCounts()
        self.queued: list[tuple[str, np.ndarray]] = []
        # Image id -> (SHA-256 of its converted features, source), to detect one id given two different arrays.
        self.seen: dict[str, tuple[str, str]] = {}

    def check(self, image_id: str, features: object, source: str) -> None:
        """Validate one image's features and queue them for `write`; `source` names the file and key in errors."""
        tensor = self._to_tensor(features, source)
        digest = hashlib.sha256(tensor.numpy().tobytes()).hexdigest()
        if image_id in self.seen:
            if self.seen[image_id][0] != digest:
                raise PickleImportError(
                    f"{source}: image id {image_id!r} has different features than at {self.seen[image_id][1]}; "
                    "one image id must name one image."
                )
            return  # The same image again (two URLs of one photo): one entry serves both.
        self.seen[image_id] = (digest, source)
        self.counts.source_dtypes[str(features.dtype)] += 1

        key = imported_image_key(image_id)
        if not self.cache.contains(key):
            self.counts.imported += 1
        elif torch.equal(self.cache.load(key), tensor):
            self.counts.already_present += 1
            return
        elif self.overwrite:
            self.counts.replaced += 1
        else:
            raise PickleImportError(
                f"{source}: the cache folder {self.cache.folder} already contains different features for image id "
                f"{image_id!r}. Pass --overwrite to replace them."
            )
        self.queued.append((key, features))

    def write(self) -> None:
        """Store every queued array in the cache, converted to the vision tower's dtype."""
        for key, features in self.queued:
            self.cache.store(key, self._convert(features))
        self.queued = []

    def report(self, source: str | Path) -> str:
        """Describe the entries imported from `source`, the cache folder and the dtype conversions made."""
        counts = self.counts
        lines = [
            f"Imported {counts.imported} new image features from {source} ({counts.already_present} already "
            f"present, {counts.replaced} replaced) into {self.cache.folder}."
        ]
        target = str(self.dtype).removeprefix("torch.")
        for dtype, count in sorted(counts.source_dtypes.items()):
            if dtype != target:
                lines.append(
                    f"Converted {count} array{'s' if count != 1 else ''} from {dtype} to {target}, the dtype of the "
                    "checkpoint's vision tower."
                )
        return "\n".join(lines)

    def _to_tensor(self, features: object, source: str) -> torch.Tensor:
        if not isinstance(features, np.ndarray):
            raise PickleImportError(f"{source}: the features are a {type(features).__name__}; expected a numpy array.")
        if features.dtype.kind != "f":
            raise PickleImportError(
                f"{source}: the features have dtype {features.dtype}; expected floating point (float16 or float32)."
            )
        if tuple(features.shape) != self.expected_shape:
            raise PickleImportError(
                f"{source}: the features have shape {tuple(features.shape)}, but the vision tower of {self.model_dir} "
                f"produces {self.expected_shape}.{self.wrong_shape_hint}"
            )
        tensor = self._convert(features)
        if not torch.isfinite(tensor).all():
            raise PickleImportError(
                f"{source}: the features contain NaN or infinite values (after conversion to {self.dtype})."
            )
        return tensor

    def _convert(self, features: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(features)).to(self.dtype)


def import_fork_features(
    features_path: str | Path, model_dir: str | Path, cache_dir: str | Path, allow_pickle: bool, overwrite: bool = False
) -> FeatureImporter:
    """Import the fork's `features.pkl` into the feature cache of `model_dir`; returns the importer with its counts.

    Raises PickleImportError, before anything is written, for a refused, unreadable or malformed file.
    """
    features_path = Path(features_path)
    require_pickle_opt_in(features_path, allow_pickle)
    if not features_path.is_file():
        raise PickleImportError(f"{features_path} was not found. Expected {FEATURES_PICKLE_DESCRIPTION}.")
    hint = (
        " Use features from the vision tower of this checkpoint (the fork's come from Salesforce/blip2-opt-2.7b), "
        "or train from the images with --image-dir."
    )
    importer = FeatureImporter(model_dir, cache_dir, overwrite=overwrite, wrong_shape_hint=hint)
    entries = load_pickle(features_path, FEATURES_PICKLE_DESCRIPTION)
    if not isinstance(entries, dict):
        raise PickleImportError(
            f"{features_path} contains a {type(entries).__name__}. Expected {FEATURES_PICKLE_DESCRIPTION}."
        )
    for url, value in entries.items():
        source = f"{features_path}, key {url!r}"
        image_id = _image_id(value, source)
        importer.check(image_id, value["features"], source)
        _check_shape_field(value, source)
    importer.write()
    return importer


def _image_id(value: object, source: str) -> str:
    """Return the image id of one features.pkl value, after checking that the value has the fields needed."""
    if not isinstance(value, dict):
        raise PickleImportError(f"{source}: the value is a {type(value).__name__}; expected a dict.")
    missing = [name for name in ("image_id", "features") if name not in value]
    if missing:
        raise PickleImportError(f"{source}: the value has no {' or '.join(repr(name) for name in missing)}.")
    image_id = value["image_id"]
    # The fork's review reader turns an integer id into a string the same way (str), so the two still match.
    if isinstance(image_id, int) and not isinstance(image_id, bool):
        return str(image_id)
    if not isinstance(image_id, str) or not image_id:
        raise PickleImportError(f"{source}: 'image_id' is {image_id!r}; expected a non-empty string.")
    return image_id


def _check_shape_field(value: dict, source: str) -> None:
    """Check the optional 'shape' (a torch.Size in the fork's file) against the features it describes."""
    if "shape" not in value:
        return
    shape = value["shape"]
    if not isinstance(shape, (tuple, list)) or tuple(shape) != value["features"].shape:
        raise PickleImportError(
            f"{source}: 'shape' is {shape!r}, but the features have shape {value['features'].shape}."
        )


def print_summary(importer: FeatureImporter, features_path: Path, args) -> None:
    print(importer.report(features_path))
    print(
        "Training reads these features for the records with these image ids, without their image files:\n"
        f"    accelerate launch train.py --model {args.model} --vision-cache-dir {args.vision_cache_dir} "
        "--data-dir ... --task ...\n"
        "Records whose image id has no imported features still need --image-dir (or --blank-missing-images)."
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", required=True, help="The fork's image_cache/features.pkl.")
    parser.add_argument("--model", required=True, help="DASCO checkpoint folder whose vision tower the features fit.")
    parser.add_argument("--vision-cache-dir", required=True, help="Feature cache folder to pass to train.py.")
    parser.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace imported cache entries that contain other features."
    )
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        importer = import_fork_features(
            args.features, args.model, args.vision_cache_dir, allow_pickle=args.allow_pickle, overwrite=args.overwrite
        )
    except PickleImportError as error:
        # Bad input, not a bug: the message alone states what to fix.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print_summary(importer, Path(args.features), args)


if __name__ == "__main__":
    main()
