"""On-disk cache of the frozen vision tower's features, one safetensors file per image.

The vision tower is about 97% of the cost of image + Q-Former at full size, and frozen by default, so its
output for an image never changes during fine-tuning. The cache folder is keyed by the image processor's
settings and a hash of the vision weights. Inside it, each image's features are stored under its image id
and a hash of the image file's bytes. Changing the weights or the preprocessing selects a new folder, and
changing an image file (even under the same name) selects a new entry, so stale features are not reused.

Features computed elsewhere (the hotel-review fork's `features.pkl`, DASCO-format pickles) are imported by the
`conversion.import_*` commands under `imported_image_key(image_id)`, which needs no image file: the collator
uses such an entry for a record whose image file is missing or not cached.
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


# Key of the one blank image that substitutes missing images; real image ids never start with "<".
BLANK_IMAGE_KEY = "<blank>"
FEATURE_NAME = "image_embeds"
PREPROCESSING_KEYS = ("size", "image_mean", "image_std", "resample", "rescale_factor", "do_normalize", "do_resize")


def image_file_key(image_id: str, path: Path) -> str:
    """Cache key of an image file: its id and the SHA-256 of its bytes."""
    return f"{image_id}:{hashlib.sha256(path.read_bytes()).hexdigest()}"


def imported_image_key(image_id: str) -> str:
    """Cache key of features imported for an image id, for records that have no image file.

    It ends in ":imported", and an `image_file_key` ends in a 64-digit hex digest, so the two cannot collide.
    """
    return f"{image_id}:imported"


def vision_weights_hash(vision_model: torch.nn.Module) -> str:
    """SHA-256 over the vision tower's parameter names, shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vision_model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def preprocessing_hash(image_processor) -> str:
    settings = image_processor.to_dict()
    chosen = {key: settings.get(key) for key in PREPROCESSING_KEYS}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()


class VisionFeatureCache:
    """Vision features by image id, stored in `cache_dir/<preprocessing hash>-<weights hash>/`.

    Files are written to a temporary name in the same folder and then renamed, so a reader never sees a
    partial file and two processes filling the cache at once both end with a complete file.
    """

    def __init__(self, cache_dir: str | Path, vision_model: torch.nn.Module, image_processor):
        key = f"{preprocessing_hash(image_processor)[:16]}-{vision_weights_hash(vision_model)[:16]}"
        self.folder = Path(cache_dir) / key
        self.folder.mkdir(parents=True, exist_ok=True)
        self.vision_model = vision_model
        self.hits = 0
        self.misses = 0

    def path(self, image_key: str) -> Path:
        # Image ids are file names; hashing keeps any character out of the path.
        return self.folder / f"{hashlib.sha256(image_key.encode()).hexdigest()[:32]}.safetensors"

    def contains(self, image_key: str) -> bool:
        return self.path(image_key).is_file()

    def load(self, image_key: str) -> torch.Tensor:
        return load_file(self.path(image_key))[FEATURE_NAME]

    def store(self, image_key: str, features: torch.Tensor) -> None:
        handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        os.close(handle)
        try:
            save_file({FEATURE_NAME: features.detach().cpu().contiguous()}, temporary)
            os.replace(temporary, self.path(image_key))
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)

    def image_embeds(
        self, image_keys: list[str], pixel_keys: list[str], pixel_values: torch.Tensor | None, device
    ) -> torch.Tensor:
        """Features `[batch, patches + 1, vision_hidden]` for the images `image_keys` of a batch.

        `pixel_values` contains one row per key of `pixel_keys`: the images that were not cached when the batch
        was collated. Their features are computed under `no_grad` (not `inference_mode`, so that they can enter
        the training graph) and stored; all features are then read back from the cache, so a batch gives the
        same tensors whether its images were cached or not.
        """
        if pixel_keys:
            if pixel_values is None or pixel_values.shape[0] != len(pixel_keys):
                received = 0 if pixel_values is None else pixel_values.shape[0]
                raise ValueError(f"Expected {len(pixel_keys)} images to fill the vision feature cache, got {received}.")
            weight = self.vision_model.embeddings.patch_embedding.weight
            with torch.no_grad():
                computed = self.vision_model(pixel_values=pixel_values.to(weight.device, weight.dtype)).last_hidden_state
            for key, features in zip(pixel_keys, computed):
                self.store(key, features)
        self.misses += len(pixel_keys)
        self.hits += len(image_keys) - len(pixel_keys)
        return torch.stack([self.load(key) for key in image_keys]).to(device)
