"""Tiny random BLIP-2 checkpoints saved by transformers itself, and a tiny BERT, for the converter tests."""

import torch
from transformers import AutoTokenizer, BertConfig, BertModel, Blip2Config, OPTConfig, T5Config
from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval

from modeling_dasco.presets import minilm_path


VISION = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "image_size": 224, "patch_size": 14,
}  # fmt: skip
QFORMER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
OPT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4, "ffn_dim": 64, "vocab_size": 64,
       "word_embed_proj_dim": 32}  # fmt: skip
T5 = {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_layers": 1, "num_heads": 4, "vocab_size": 64}


def save_itm(folder):
    """`Blip2ForImageTextRetrieval` with Q-Former word embeddings (vocabulary 30523 as in BLIP-2)."""
    torch.manual_seed(1)
    config = Blip2Config(
        vision_config=VISION, qformer_config={**QFORMER, "vocab_size": 30523}, num_query_tokens=4,
        image_text_hidden_size=16,
    )  # fmt: skip
    model = Blip2ForImageTextRetrieval(config)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return model


def save_opt(folder, max_shard_size=None):
    torch.manual_seed(2)
    config = Blip2Config(
        vision_config=VISION, qformer_config=QFORMER, text_config=OPTConfig(**OPT).to_dict(), num_query_tokens=4
    )
    model = Blip2ForConditionalGeneration(config)
    model.save_pretrained(folder, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    return model


def save_t5(folder):
    torch.manual_seed(3)
    config = Blip2Config(
        vision_config=VISION, qformer_config=QFORMER, text_config=T5Config(**T5).to_dict(), num_query_tokens=4
    )
    model = Blip2ForConditionalGeneration(config)
    model.save_pretrained(folder)
    return model


def save_tiny_bert(folder):
    """A BERT with hidden 32 and the bert-base-uncased vocabulary; text encoder and Q-Former embedding source."""
    torch.manual_seed(4)
    config = BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
