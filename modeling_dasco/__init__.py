"""dasco-qformer: DASCO multimodal aspect-based sentiment analysis with an aspect-query BLIP-2 Q-Former."""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .configuration_dasco import DascoConfig
from .modeling_dasco import DascoForMabsa, DascoOutput, DascoPreTrainedModel
from .processing_dasco import DascoProcessor
from .records import ID2LABEL, LABEL2ID, AspectSpan, MabsaRecord


# Auto classes in this process, and `auto_map` entries in saved folders so that they load with
# `trust_remote_code=True` where this package is not installed.
AutoConfig.register("dasco", DascoConfig, exist_ok=True)
AutoModel.register(DascoConfig, DascoForMabsa, exist_ok=True)
AutoProcessor.register(DascoConfig, DascoProcessor, exist_ok=True)
DascoConfig.register_for_auto_class()
DascoForMabsa.register_for_auto_class("AutoModel")
DascoProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "ID2LABEL",
    "LABEL2ID",
    "AspectSpan",
    "DascoConfig",
    "DascoForMabsa",
    "DascoOutput",
    "DascoPreTrainedModel",
    "DascoProcessor",
    "MabsaRecord",
]
