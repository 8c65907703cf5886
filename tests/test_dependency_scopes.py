import math
from pathlib import Path

import pytest
import torch

from modeling_dasco.dependency_utils import span_scope, subtoken_adjacency, word_adjacency
from modeling_dasco.dual_gcn import scope_contrastive_loss


# "the camera of Chuck Bass is great": the -> camera, camera -> is, of -> camera, Chuck -> Bass,
# Bass -> of, is = root, great -> is.
HEADS = [1, 5, 1, 4, 2, 5, 5]


def test_word_graph_is_undirected_with_self_loops():
    assert word_adjacency([1, 1, 1]) == [{0, 1}, {0, 1, 2}, {1, 2}]


def test_subtoken_adjacency_hand_worked(tiny_processor):
    # "Chuck loves the MCM show": MCM splits into mc ##m. Heads: Chuck -> loves, loves = root,
    # the -> show, MCM -> show, show -> loves. Tokens: [CLS] chuck loves the mc ##m show [SEP].
    words = ["Chuck", "loves", "the", "MCM", "show"]
    encoding = tiny_processor([words], dependency_heads=[[1, 1, 4, 4, 1]])
    expected = [
        [1, 0, 0, 0, 0, 0, 0, 0],  # [CLS]: self-loop only
        [0, 1, 1, 0, 0, 0, 0, 0],  # chuck - loves
        [0, 1, 1, 0, 0, 0, 1, 0],  # loves - chuck, show
        [0, 0, 0, 1, 0, 0, 1, 0],  # the - show
        [0, 0, 0, 0, 1, 1, 1, 0],  # mc - ##m (same word), show
        [0, 0, 0, 0, 1, 1, 1, 0],  # ##m - mc, show
        [0, 0, 1, 1, 1, 1, 1, 0],  # show - loves, the, mc, ##m
        [0, 0, 0, 0, 0, 0, 0, 1],  # [SEP]: self-loop only
    ]
    assert encoding["syntax_adjacency"][0].int().tolist() == expected
    assert encoding["word_heads"][0].tolist() == [1, 1, 4, 4, 1]


def test_subtoken_adjacency_drops_cut_words():
    # Three words, the last one cut by the maximum length: its links are dropped.
    adjacency = subtoken_adjacency([1, 1, 1], word_token_start=[1, 2], word_token_end=[2, 3], num_tokens=4)
    assert adjacency.int().tolist() == [[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]]


@pytest.mark.parametrize(
    ("span", "hops", "scope"),
    [
        ((3, 5), 0, (3, 5)),  # Chuck Bass alone
        ((3, 5), 1, (2, 5)),  # + of (head of Bass)
        ((3, 5), 2, (1, 5)),  # + camera (head of of)
        ((1, 2), 1, (0, 6)),  # camera: the, of, is
        ((6, 7), 1, (5, 7)),  # great: is
        ((6, 7), 2, (1, 7)),  # great: is, then camera (child of is), so the span runs camera .. great
    ],
)
def test_scope_by_hops(span, hops, scope):
    assert span_scope(HEADS, span[0], span[1], hops) == scope


def test_processor_scopes_follow_hops(tiny_processor):
    words = ["the", "camera", "of", "Chuck", "Bass", "is", "great"]
    tiny_processor.scope_hops = 1
    one_hop = tiny_processor([words], aspect_spans=[[(3, 5)]], dependency_heads=[HEADS])
    tiny_processor.scope_hops = 2
    two_hops = tiny_processor([words], aspect_spans=[[(3, 5)]], dependency_heads=[HEADS])
    assert one_hop["aspect_scopes"].tolist() == [[[2, 5]]]
    assert two_hops["aspect_scopes"].tolist() == [[[1, 5]]]


def test_heads_must_match_words(tiny_processor):
    with pytest.raises(ValueError, match="has 3 words but 2 dependency heads"):
        tiny_processor([["a", "b", "c"]], dependency_heads=[[1, 1]])


def test_scope_contrastive_loss_three_tokens():
    # Three word tokens plus one padding token; the aspect is token 0, its scope tokens 0 and 1.
    first = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]]])
    second = torch.tensor([[[0.6, 0.8], [1.0, 0.0], [-1.0, 0.0], [9.0, 9.0]]])
    span = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    scope = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    words = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss = scope_contrastive_loss(first, second, span, scope, words, torch.tensor([[1]]), temperature=0.5)

    # Independent computation: anchor (1, 0); cosines with the second view 0.6, 1.0, -1.0; padding left out.
    tau = 0.5
    positives = math.exp(0.6 / tau) + math.exp(1.0 / tau)
    everything = positives + math.exp(-1.0 / tau)
    assert loss.item() == pytest.approx(-math.log(positives / everything), abs=1e-6)


def test_scope_loss_zero_when_scope_is_everything():
    views = torch.randn(1, 3, 4)
    mask = torch.ones(1, 1, 3)
    loss = scope_contrastive_loss(views, views, mask, mask, torch.ones(1, 3), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_scope_loss_mean_over_real_aspects():
    first = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    second = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    span = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    scope = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    words = torch.ones(1, 2)
    both = scope_contrastive_loss(first, second, span, scope, words, torch.tensor([[1, 1]]), 1.0)
    only_first = scope_contrastive_loss(first, second, span, scope, words, torch.tensor([[1, 0]]), 1.0)
    # Each aspect: -log(e^1 / (e^1 + e^0)); symmetric, so the mean equals either term.
    expected = -math.log(math.e / (math.e + 1.0))
    assert both.item() == pytest.approx(expected, abs=1e-6)
    assert only_first.item() == pytest.approx(expected, abs=1e-6)
