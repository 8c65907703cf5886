"""dasco-qformer: DASCO multimodal aspect-based sentiment analysis with an aspect-query BLIP-2 Q-Former."""

from transformers import AutoConfig, AutoModel, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_dasco import DascoConfig
from .modeling_dasco import DascoForMabsa, DascoOutput, DascoPreTrainedModel
from .pipeline_dasco import PIPELINE_TASK, DascoMabsaPipeline
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
# `pipeline("multimodal-absa", ...)` in this process; saved folders carry the pipeline in `custom_pipelines`.
PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK, pipeline_class=DascoMabsaPipeline, pt_model=AutoModel, type="multimodal"
)

__all__ = [
    "ID2LABEL",
    "LABEL2ID",
    "AspectSpan",
    "DascoConfig",
    "DascoForMabsa",
    "DascoMabsaPipeline",
    "DascoOutput",
    "DascoPreTrainedModel",
    "DascoProcessor",
    "MabsaRecord",
]
