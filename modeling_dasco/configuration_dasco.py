"""Configuration of the DASCO model: a BLIP-2 vision tower, an aspect-query Q-Former and a BERT-family text encoder."""

from transformers import AutoConfig, Blip2QFormerConfig, Blip2VisionConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


# The package has one label map; checkpoints, metrics and data readers all use it.
DASCO_ID2LABEL = {0: "negative", 1: "neutral", 2: "positive"}
QUERY_MODES = ("aspect", "learned", "aspect+learned")
FUSION_STYLES = ("gated", "released")
TASKS = ("mate", "masc", "jmasa")


class DascoConfig(PreTrainedConfig):
    r"""
    Configuration of [`DascoForMabsa`].

    vision_config (`dict` or `Blip2VisionConfig`, *optional*):
        The BLIP-2 vision tower (EVA ViT-g/14 at full size: hidden 1408, 39 layers, 257 tokens at 224 px).
    qformer_config (`dict` or `Blip2QFormerConfig`, *optional*):
        The BLIP-2 Q-Former. Its `encoder_hidden_size` is always set to the vision hidden size.
    text_config (`dict` or `PreTrainedConfig`, *optional*):
        The BERT-family text encoder (`bert-base-uncased` by default).
    num_query_tokens (`int`, *optional*, defaults to 32):
        Learned query tokens of the Q-Former. They produce the tweet-level visual tokens that are prefixed
        to the text encoder input, and the per-aspect queries in `query_mode="learned"`.
    query_mode (`str`, *optional*, defaults to `"aspect"`):
        What the Q-Former receives as queries for each aspect: `"aspect"` (the Q-Former word and position
        embeddings of the aspect's words), `"learned"` (BLIP-2's learned tokens, the same for every aspect) or
        `"aspect+learned"` (the learned tokens followed by the aspect's embeddings).
    task (`str`, *optional*, defaults to `"jmasa"`):
        Default task of `forward`: `"mate"` (aspect extraction), `"masc"` (sentiment of given aspects) or
        `"jmasa"` (both: the extracted spans become the aspect queries in the same forward).
    use_image (`bool`, *optional*, defaults to `True`):
        Ablation switch. With `False` the vision tower and the Q-Former are skipped and the model is text only.
    freeze_vision_model (`bool`, *optional*, defaults to `True`):
        Keep the vision tower frozen during training.
    classifier_dropout (`float`, *optional*, defaults to 0.1):
        Dropout before the MATE and MASC heads.
    masc_class_weights (`list[float]`, *optional*):
        Cross-entropy weights of the MASC loss in label order (negative, neutral, positive). `None` means
        unweighted. `train.py` fills this from the training split.
    use_semantic_branch, use_syntactic_branch (`bool`, *optional*, defaults to `True`):
        Ablation switches of the dual GCN: the learned attention adjacency and the dependency adjacency. With
        both off, the heads read the text encoder states directly.
    use_scope_loss (`bool`, *optional*, defaults to `True`):
        Ablation switch of the scope contrastive loss.
    num_gcn_layers (`int`, *optional*, defaults to 2):
        Layers of the dual GCN.
    gcn_hidden_size (`int`, *optional*, defaults to 256):
        Width of the dual GCN.
    gcn_dropout (`float`, *optional*, defaults to 0.1):
        Dropout on each GCN layer's output.
    fusion_gate_scale (`float`, *optional*, defaults to 1.0):
        Upper bound of the gate that mixes the syntactic branch into the semantic one (DASCO's `hyper1`).
    fusion_style (`str`, *optional*, defaults to `"gated"`):
        Layout of the dual GCN and the MASC head. `"gated"` is this package's design. `"released"` is the layout
        of the released DASCO code (fixed gate, highway layers, one linear classifier over the two projected
        views and the pooled [CLS] state), so that its checkpoints convert; it needs both branches and
        `query_mode="learned"`. See `conversion/convert_dasco_checkpoint.py`.
    projection_size (`int`, *optional*, defaults to 64):
        Bottleneck of the projection head applied before the scope contrastive loss.
    scope_hops (`int`, *optional*, defaults to 2):
        An aspect's scope is the smallest contiguous word span covering every word within this many
        dependency hops of the aspect.
    scope_temperature (`float`, *optional*, defaults to 0.2):
        Temperature of the scope contrastive loss.
    scope_loss_weight (`float`, *optional*, defaults to 0.2):
        Weight of the scope contrastive loss in the total loss.
    pretrain_aoe_weight (`float`, *optional*, defaults to 1.0):
        Weight of aspect-oriented enhancement (which words belong to an aspect) in `DascoForPretraining`'s loss.
    pretrain_itm_weight (`float`, *optional*, defaults to 1.0):
        Weight of image-text matching of aspect queries, with hard negative images, in the pretraining loss.
    pretrain_assc_weight (`float`, *optional*, defaults to 1.0):
        Weight of aspect-level sentiment from the aspect's visual tokens and words in the pretraining loss.
    pretrain_itc_weight (`float`, *optional*, defaults to 0.0):
        Weight of tweet-image contrastive learning (symmetric InfoNCE) in the pretraining loss; 0 turns it off.
    pretrain_itc_temperature (`float`, *optional*, defaults to 0.07):
        Temperature of the pretraining contrastive loss.
    pretraining (`dict`, *optional*):
        Record of the pretraining stage that produced these weights (data, objectives with weights, epochs, steps,
        final losses, seed), written by `train.py --stage pretrain` and carried on by fine-tuning.

    Example:

    ```python
    >>> from modeling_dasco import DascoConfig, DascoForMabsa

    >>> config = DascoConfig(
    ...     vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    ...                    "num_attention_heads": 4, "image_size": 224, "patch_size": 14},
    ...     qformer_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    ...                     "num_attention_heads": 4},
    ...     text_config={"model_type": "bert", "hidden_size": 32, "intermediate_size": 64,
    ...                  "num_hidden_layers": 2, "num_attention_heads": 4},
    ...     num_query_tokens=4,
    ... )
    >>> model = DascoForMabsa(config)
    ```
    """

    model_type = "dasco"
    sub_configs_defaults = {
        "vision_config": Blip2VisionConfig,
        "qformer_config": Blip2QFormerConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_query_tokens: int = 32
    query_mode: str = "aspect"
    task: str = "jmasa"
    use_image: bool = True
    freeze_vision_model: bool = True
    classifier_dropout: float = 0.1
    masc_class_weights: list[float] | None = None
    use_semantic_branch: bool = True
    use_syntactic_branch: bool = True
    use_scope_loss: bool = True
    num_gcn_layers: int = 2
    gcn_hidden_size: int = 256
    gcn_dropout: float = 0.1
    fusion_gate_scale: float = 1.0
    fusion_style: str = "gated"
    projection_size: int = 64
    scope_hops: int = 2
    scope_temperature: float = 0.2
    scope_loss_weight: float = 0.2
    pretrain_aoe_weight: float = 1.0
    pretrain_itm_weight: float = 1.0
    pretrain_assc_weight: float = 1.0
    pretrain_itc_weight: float = 0.0
    pretrain_itc_temperature: float = 0.07
    pretraining: dict | None = None
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        kwargs.pop("num_labels", None)
        self._set_fixed_label_map()
        super().__post_init__(**kwargs)
        self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size
        self._validate_choices()

    def _set_fixed_label_map(self):
        # JSON turns the integer keys into strings, so compare after converting them back.
        given = None if self.id2label is None else {int(key): value for key, value in self.id2label.items()}
        if given not in (None, DASCO_ID2LABEL):
            raise ValueError(
                f"DascoConfig uses the fixed label map {DASCO_ID2LABEL}, got id2label={self.id2label}. "
                "Remove `id2label` from the config, and map your data's labels to negative/neutral/positive."
            )
        self.id2label = dict(DASCO_ID2LABEL)
        self.label2id = {label: index for index, label in DASCO_ID2LABEL.items()}

    def _validate_choices(self):
        if self.query_mode not in QUERY_MODES:
            raise ValueError(f"query_mode={self.query_mode!r} is not supported; pass one of {QUERY_MODES}.")
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not supported; pass one of {TASKS}.")
        self._validate_fusion_style()
        if self.scope_hops < 0:
            raise ValueError(f"scope_hops={self.scope_hops} is invalid; pass 0 or a positive number of hops.")
        weights = {name: getattr(self, f"pretrain_{name}_weight") for name in ("aoe", "itm", "assc", "itc")}
        negative = {name: weight for name, weight in weights.items() if weight < 0}
        if negative:
            raise ValueError(f"Pretraining weights must be 0 or positive, got {negative}.")
        if self.pretrain_itc_temperature <= 0:
            raise ValueError(f"pretrain_itc_temperature={self.pretrain_itc_temperature} is invalid; pass a positive value.")
        if self.masc_class_weights is not None and len(self.masc_class_weights) != len(DASCO_ID2LABEL):
            raise ValueError(
                f"masc_class_weights needs {len(DASCO_ID2LABEL)} values (negative, neutral, positive), "
                f"got {self.masc_class_weights}."
            )

    def _validate_fusion_style(self):
        if self.fusion_style not in FUSION_STYLES:
            raise ValueError(f"fusion_style={self.fusion_style!r} is not supported; pass one of {FUSION_STYLES}.")
        if self.fusion_style == "released":
            branches = self.use_semantic_branch and self.use_syntactic_branch
            if not branches or self.query_mode != "learned":
                raise ValueError(
                    "fusion_style='released' needs use_semantic_branch=True, use_syntactic_branch=True and "
                    f"query_mode='learned', got {self.use_semantic_branch}, {self.use_syntactic_branch} and "
                    f"{self.query_mode!r}. Use fusion_style='gated' for ablations and aspect queries."
                )


__all__ = ["DascoConfig"]
