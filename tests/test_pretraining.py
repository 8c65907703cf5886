"""The pretraining objectives against losses recomputed here with plain torch, saving, and train.py --stage."""

import json
import sys

import pytest
import torch
from torch.nn import functional as F

from modeling_dasco import DascoForMabsa
from modeling_dasco.presets import tiny_config
from modeling_dasco.pretraining import PRETRAINING_HEADS, DascoForPretraining
from test_train import SAMPLE, run_train


WORDS = [
    ["Chuck", "Bass", "is", "everything", "#", "MCM"],
    ["The", "pasta", "was", "great", "but", "the", "service", "slow"],
    ["Obama", "visits", "Berlin", "today"],
]
SPANS = [[(0, 2)], [(1, 2), (6, 7)], [(0, 1), (2, 3)]]
POLARITIES = [[2], [2, 0], [1, 1]]
# One head per word (the root points to itself); any tree serves the syntactic branch.
HEADS = [[1, 3, 3, 3, 5, 3], [1, 3, 3, 3, 3, 6, 7, 3], [1, 1, 1, 1]]
WEIGHTS = {"aoe": 0.5, "itm": 2.0, "assc": 1.5, "itc": 0.25}
ITC_TEMPERATURE = 0.07  # DascoConfig's default pretrain_itc_temperature
IMAGE_SHAPE = (257, 32)  # tiny vision tower: 16 x 16 patches + CLS, hidden 32


def make_model(query_mode: str = "aspect", **weights) -> DascoForPretraining:
    settings = {f"pretrain_{name}_weight": weight for name, weight in {**WEIGHTS, **weights}.items()}
    torch.manual_seed(0)
    return DascoForPretraining(tiny_config(query_mode=query_mode, **settings)).eval()


def make_batch(processor, num_tweets: int, image_rows: list[int]) -> dict:
    """A batch of the first tweets, tweet i showing random image `image_rows[i]` (equal rows: the same image)."""
    images = torch.randn(max(image_rows) + 1, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(1))
    batch = processor(
        WORDS[:num_tweets], aspect_spans=SPANS[:num_tweets], polarities=POLARITIES[:num_tweets],
        dependency_heads=HEADS[:num_tweets], image_embeds=images[image_rows],
    )  # fmt: skip
    return {key: value for key, value in batch.items() if key != "aspect_truncated"}


def intermediates(model, batch) -> dict:
    """The states the losses read, from the model's public sub-steps."""
    images = batch["image_embeds"]
    tweet_queries = model.query_image(model.query_tokens.expand(len(images), -1, -1), images)
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    encoder_hidden = model.encode_text(ids, mask, types, tweet_queries)
    fused, _, _ = model.fuse_branches(encoder_hidden, mask, batch["syntax_adjacency"])
    text_only = model.encode_text(ids, mask, types, None)
    return {"tweet_queries": tweet_queries, "fused": fused, "text_only": text_only}


def span_token_mean(states: torch.Tensor, batch: dict, tweet: int, start: int, end: int) -> torch.Tensor:
    """Mean of `states[tweet]` over the sub-tokens of words [start, end)."""
    first = int(batch["word_token_start"][tweet, start])
    last = int(batch["word_token_end"][tweet, end - 1])
    return states[tweet, first:last].mean(0)


def negative_log_likelihood(logits: torch.Tensor, label: int) -> torch.Tensor:
    return -torch.log_softmax(logits, dim=-1)[label]


def aspect_pooled_output(model, batch, tweet: int, aspect: int, image: torch.Tensor) -> torch.Tensor:
    """Mean Q-Former output of one aspect's real query tokens (no padding) over one image."""
    real = batch["aspect_query_mask"][tweet, aspect].bool()
    queries = model.embeddings(input_ids=batch["aspect_input_ids"][tweet, aspect][real][None])
    return model.run_qformer(queries, image[None]).last_hidden_state[0].mean(0)


def image_side(model, tweet_queries: torch.Tensor) -> torch.Tensor:
    return F.normalize(model.itm_vision_proj(tweet_queries.mean(1)), dim=-1)


def expected_aoe(model, batch, states) -> torch.Tensor:
    terms = []
    for tweet, words in enumerate(WORDS[: len(batch["input_ids"])]):
        for word in range(len(words)):
            inside = any(start <= word < end for start, end in SPANS[tweet])
            token = int(batch["word_token_start"][tweet, word])
            terms.append(negative_log_likelihood(model.aoe_head(states["fused"][tweet, token]), int(inside)))
    return torch.stack(terms).mean()


def expected_negatives(model, batch, states, image_rows) -> list[int]:
    """Per aspect, the tweet with another image whose image side is most similar to the aspect's text side."""
    images = image_side(model, states["tweet_queries"])
    negatives = []
    for tweet, spans in enumerate(SPANS[: len(image_rows)]):
        for start, end in spans:
            text = F.normalize(model.itm_text_proj(span_token_mean(states["text_only"], batch, tweet, start, end)), dim=-1)
            others = [other for other in range(len(image_rows)) if image_rows[other] != image_rows[tweet]]
            similarity = {other: float(text @ images[other]) for other in others}
            negatives.append(max(similarity, key=similarity.get) if others else -1)
    return negatives


def expected_itm(model, batch, negatives) -> torch.Tensor:
    positives, negative_terms, aspect_number = [], [], 0
    images = batch["image_embeds"]
    for tweet, spans in enumerate(SPANS[: len(images)]):
        for aspect in range(len(spans)):
            pooled = aspect_pooled_output(model, batch, tweet, aspect, images[tweet])
            positives.append(negative_log_likelihood(model.itm_head(pooled), 1))
            negative = negatives[aspect_number]
            if negative >= 0:
                pooled = aspect_pooled_output(model, batch, tweet, aspect, images[negative])
                negative_terms.append(negative_log_likelihood(model.itm_head(pooled), 0))
            aspect_number += 1
    return torch.stack(positives + negative_terms).mean()


def expected_assc(model, batch, states) -> torch.Tensor:
    terms = []
    images = batch["image_embeds"]
    for tweet, spans in enumerate(SPANS[: len(images)]):
        for aspect, (start, end) in enumerate(spans):
            visual = model.project_visual(aspect_pooled_output(model, batch, tweet, aspect, images[tweet]))
            text = span_token_mean(states["fused"], batch, tweet, start, end)
            logits = model.assc_head(torch.cat([visual, text]))
            terms.append(negative_log_likelihood(logits, POLARITIES[tweet][aspect]))
    return torch.stack(terms).mean()


def expected_itc(model, batch, states, image_rows) -> torch.Tensor:
    num_tweets = len(image_rows)
    texts = torch.stack([
        F.normalize(model.itm_text_proj(span_token_mean(states["text_only"], batch, tweet, 0, len(WORDS[tweet]))), dim=-1)
        for tweet in range(num_tweets)
    ])  # fmt: skip
    similarity = texts @ image_side(model, states["tweet_queries"]).T / ITC_TEMPERATURE
    text_terms, image_terms = [], []
    for i in range(num_tweets):
        # Another tweet with the same image is no negative: keep only i itself and the tweets with other images.
        candidates = [j for j in range(num_tweets) if j == i or image_rows[j] != image_rows[i]]
        text_terms.append(negative_log_likelihood(similarity[i, candidates], candidates.index(i)))
        image_terms.append(negative_log_likelihood(similarity[candidates, i], candidates.index(i)))
    return (torch.stack(text_terms).mean() + torch.stack(image_terms).mean()) / 2


@pytest.mark.parametrize("image_rows", [[0, 1], [0, 1, 2], [0, 0, 1]], ids=["two-images", "three-images", "shared"])
def test_losses_match_plain_torch(tiny_processor, image_rows):
    model = make_model()
    batch = make_batch(tiny_processor, len(image_rows), image_rows)
    with torch.no_grad():
        output = model(**batch)
        states = intermediates(model, batch)
        negatives = expected_negatives(model, batch, states, image_rows)
        expected = {
            "aoe": expected_aoe(model, batch, states),
            "itm": expected_itm(model, batch, negatives),
            "assc": expected_assc(model, batch, states),
            "itc": expected_itc(model, batch, states, image_rows),
        }
    assert output.itm_negative_tweets.tolist() == negatives
    for name, value in expected.items():
        torch.testing.assert_close(getattr(output, f"{name}_loss"), value, atol=1e-6, rtol=0, msg=name)
    total = sum(WEIGHTS[name] * value for name, value in expected.items())
    torch.testing.assert_close(output.loss, total, atol=1e-6, rtol=0)


def test_two_tweets_negative_is_other_tweet(tiny_processor):
    model = make_model()
    with torch.no_grad():
        output = model(**make_batch(tiny_processor, 2, [0, 1]))
    # Tweet 0 has one aspect, tweet 1 two: each aspect's only other image is the other tweet's.
    assert output.itm_negative_tweets.tolist() == [1, 0, 0]
    assert output.itm_labels.tolist() == [1, 1, 1, 0, 0, 0]


def test_shared_image_has_no_negative(tiny_processor):
    model = make_model()
    batch = make_batch(tiny_processor, 2, [0, 0])
    with torch.no_grad():
        output = model(**batch)
        expected_itm_loss = expected_itm(model, batch, [-1, -1, -1])
    assert output.itm_negative_tweets.tolist() == [-1, -1, -1]
    assert output.itm_labels.tolist() == [1, 1, 1]
    torch.testing.assert_close(output.itm_loss, expected_itm_loss, atol=1e-6, rtol=0)
    # Each tweet's only candidate image is its own, so the contrastive loss has nothing to contrast.
    assert output.itc_loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isinf(output.itc_logits[0, 1])
    assert torch.isinf(output.itc_logits[1, 0])


def test_image_keys_decide_same_image(tiny_processor):
    model = make_model()
    batch = make_batch(tiny_processor, 2, [0, 1])
    with torch.no_grad():
        output = model(**batch, image_keys=["same.jpg", "same.jpg"])
    assert output.itm_negative_tweets.tolist() == [-1, -1, -1]


def test_zero_weight_skips_loss(tiny_processor):
    model = make_model(itm=0.0, itc=0.0)
    batch = make_batch(tiny_processor, 2, [0, 1])
    with torch.no_grad():
        output = model(**batch)
        states = intermediates(model, batch)
        aoe, assc = expected_aoe(model, batch, states), expected_assc(model, batch, states)
    assert output.itm_loss is None
    assert output.itm_logits is None
    assert output.itc_loss is None
    assert output.itc_logits is None
    # Without ITM, ASSC takes the aspects' visual tokens from aspect_visual_features: the same values.
    torch.testing.assert_close(output.assc_loss, assc, atol=1e-6, rtol=0)
    torch.testing.assert_close(output.loss, WEIGHTS["aoe"] * aoe + WEIGHTS["assc"] * assc, atol=1e-6, rtol=0)


def test_invalid_objectives_rejected():
    with pytest.raises(ValueError, match="Every pretraining weight is 0"):
        make_model(aoe=0.0, itm=0.0, assc=0.0, itc=0.0)
    with pytest.raises(ValueError, match="query_mode='learned'"):
        DascoForPretraining(tiny_config(query_mode="learned"))
    with pytest.raises(ValueError, match="use_image=False"):
        DascoForPretraining(tiny_config(use_image=False))
    with pytest.raises(ValueError, match="0 or positive"):
        tiny_config(pretrain_itm_weight=-1.0)


@pytest.mark.parametrize(
    ("query_mode", "weights"),
    [("aspect", {}), ("aspect", {"itc": 0.0}), ("aspect", {"itm": 0.0, "assc": 0.0}), ("learned", {"itm": 0.0})],
    ids=["all", "no-itc", "aoe-itc", "learned-queries"],
)
def test_every_trainable_parameter_gets_gradient(tiny_processor, query_mode, weights):
    # DDP fails on a trainable parameter without a gradient, so the untrained modules must be frozen.
    model = make_model(query_mode, **weights).train()
    frozen = model.freeze_untrained_modules()
    model(**make_batch(tiny_processor, 3, [0, 1, 2])).loss.backward()
    trainable = {key: parameter for key, parameter in model.named_parameters() if parameter.requires_grad}
    assert "aoe_head.weight" in trainable
    assert "mate_head" in frozen
    missing = [key for key, parameter in trainable.items() if parameter.grad is None]
    assert not missing
    if weights.get("itc", WEIGHTS["itc"]) > 0:
        assert trainable["itm_text_proj.weight"].grad.abs().sum() > 0
    else:
        assert "itm_text_proj.weight" not in trainable


def test_backbone_reloads_without_heads(tmp_path):
    model = make_model()
    backbone = model.to_backbone()
    backbone.config.pretraining = {"data": ["data/sample"], "objectives": WEIGHTS, "epochs": 1, "steps": 2}
    backbone.save_pretrained(tmp_path)
    reloaded, info = DascoForMabsa.from_pretrained(tmp_path, output_loading_info=True)
    assert type(reloaded) is DascoForMabsa
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    state, reloaded_state = model.state_dict(), reloaded.state_dict()
    assert not [key for key in reloaded_state if key.startswith(PRETRAINING_HEADS)]
    assert set(reloaded_state) == {key for key in state if not key.startswith(PRETRAINING_HEADS)}
    for key, value in reloaded_state.items():
        assert torch.equal(value, state[key]), key
    assert reloaded.config.pretraining == backbone.config.pretraining


def test_from_backbone_copies_weights():
    torch.manual_seed(0)
    backbone = DascoForMabsa(tiny_config())
    model = DascoForPretraining.from_backbone(backbone)
    for key, value in backbone.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.fixture
def small_data(tmp_path):
    """The first 8 tweets of each split of the bundled sample, so that fine-tuning evaluates quickly."""
    folder = tmp_path / "small"
    folder.mkdir()
    for split in ("train", "dev", "test"):
        records = json.loads((SAMPLE / f"{split}.json").read_text(encoding="utf-8"))[:8]
        (folder / f"{split}.json").write_text(json.dumps(records), encoding="utf-8")
    return folder


def test_pretrain_then_finetune_card(tiny_checkpoint, small_data, tmp_path):
    pretrained = tmp_path / "pretrained"
    common = ["--blank-missing-images", "--num-train-epochs", "1", "--per-device-train-batch-size", "4"]
    result = run_train(
        "--stage", "pretrain", "--model", tiny_checkpoint, "--data-dir", small_data, SAMPLE,
        "--output-dir", pretrained, "--max-train-samples", "12", "--itc-weight", "0.5", *common,
        launcher=(sys.executable,),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((pretrained / "all_results.json").read_text())
    assert set(results["final_losses"]) == {"loss", "aoe_loss", "itm_loss", "assc_loss", "itc_loss"}
    log = [json.loads(line) for line in (pretrained / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3]
    # Tweet ids carry the position of their --data-dir folder: 8 tweets of the first, then 4 of the second.
    tweet_ids = sorted(tweet_id for entry in log for tweet_id in entry["tweet_ids"])
    assert tweet_ids == sorted([f"0/train-{index}" for index in range(8)] + [f"1/train-{index}" for index in range(4)])
    assert all(set(entry) >= {"aoe_loss", "itm_loss", "assc_loss", "itc_loss", "tweet_ids"} for entry in log)
    record = json.loads((pretrained / "config.json").read_text())["pretraining"]
    assert record["objectives"] == {"aoe": 1.0, "itm": 1.0, "assc": 1.0, "itc": 0.5}
    assert record["data"] == [str(small_data), str(SAMPLE)]
    assert record["steps"] == 3
    assert record["train_tweets"] == 12
    assert record["tweets_per_folder"] == [8, 4]

    finetuned = tmp_path / "finetuned"
    result = run_train(
        "--model", pretrained, "--data-dir", small_data, "--output-dir", finetuned, *common,
        launcher=(sys.executable,),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((finetuned / "config.json").read_text())["pretraining"] == record
    card = (finetuned / "README.md").read_text()
    assert "## Pretraining" in card
    assert "AOE 1.0, ITM 1.0, ASSC 1.0, ITC 0.5" in card
    assert f"`{SAMPLE}` (4 tweets)" in card


def test_finetune_rejects_two_data_dirs(tmp_path, capsys):
    import train

    with pytest.raises(SystemExit) as error:
        train.parse_args(["--preset", "offline-minilm", "--data-dir", str(SAMPLE), str(SAMPLE), "--output-dir", "out"])
    assert error.value.code == 2
    assert "--data-dir takes one folder for fine-tuning, got 2" in capsys.readouterr().err


def test_pretrain_rejects_finetune_options(capsys):
    import train

    with pytest.raises(SystemExit):
        train.parse_args(["--stage", "pretrain", "--preset", "offline-minilm", "--data-dir", str(SAMPLE),
                          "--output-dir", "out", "--eval-only"])  # fmt: skip
    assert "Options of fine-tuning were given with --stage pretrain: --eval-only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--preset", "offline-minilm", "--data-dir", str(SAMPLE), "--output-dir", "out",
                          "--itm-weight", "0"])  # fmt: skip
    assert "Options of --stage pretrain were given for fine-tuning: --itm-weight" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--aoe-weight", "0", "--itm-weight", "0", "--assc-weight", "0", "--itc-weight", "0"],
         "Every objective weight is 0"),
        (["--query-mode", "learned"], "--query-mode learned gives every aspect the same queries"),
    ],
    ids=["all-zero", "learned-with-itm"],
)
def test_pretrain_rejects_contradicting_weights(capsys, options, message):
    import train

    with pytest.raises(SystemExit) as error:
        train.parse_args(["--stage", "pretrain", "--preset", "offline-minilm", "--data-dir", str(SAMPLE),
                          "--output-dir", "out", *options])  # fmt: skip
    assert error.value.code == 2
    assert message in capsys.readouterr().err
