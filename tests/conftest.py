import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from modeling_dasco.presets import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="session")
def tiny_processor(minilm_tokenizer):
    from transformers import AutoTokenizer

    from modeling_dasco.presets import build_processor, minilm_path

    return build_processor(minilm_tokenizer, AutoTokenizer.from_pretrained(minilm_path()), max_length=64)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_processor):
    """A saved DASCO folder with a tiny random model and the MiniLM tokenizers."""
    from modeling_dasco import DascoForMabsa
    from modeling_dasco.presets import tiny_config

    folder = tmp_path_factory.mktemp("tiny_checkpoint")
    torch.manual_seed(0)
    DascoForMabsa(tiny_config()).save_pretrained(folder)
    tiny_processor.save_pretrained(folder)
    return folder
