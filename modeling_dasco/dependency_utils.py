"""Dependency graphs and aspect scopes from head indices.

Shipped as remote code with the model and the processor, so it imports only torch and the standard library.
A parse is a list `heads` with one entry per word: the 0-based index of the word's head, and the word's own
index for the root (spaCy's convention).
"""

from collections import deque

import torch


def word_adjacency(heads: list[int]) -> list[set[int]]:
    """Neighbours of each word in the undirected dependency graph, each word included (self-loop)."""
    neighbours = [{index} for index in range(len(heads))]
    for child, head in enumerate(heads):
        if not 0 <= head < len(heads):
            raise ValueError(f"Head index {head} of word {child} is outside the sentence of {len(heads)} words.")
        neighbours[child].add(head)
        neighbours[head].add(child)
    return neighbours


def span_scope(heads: list[int], start: int, end: int, hops: int) -> tuple[int, int]:
    """Scope of the aspect at words `[start, end)`: the smallest contiguous word span `[first, last + 1)` that
    covers every word within `hops` dependency hops of any aspect word (undirected, the aspect included).

    An empty span (`start == end`, an aspect that does not occur in the text) has the whole sentence as its scope.
    """
    if start == end:
        return 0, len(heads)
    neighbours = word_adjacency(heads)
    distance = {word: 0 for word in range(start, end)}
    queue = deque(range(start, end))
    while queue:
        word = queue.popleft()
        if distance[word] == hops:
            continue
        for neighbour in neighbours[word]:
            if neighbour not in distance:
                distance[neighbour] = distance[word] + 1
                queue.append(neighbour)
    return min(distance), max(distance) + 1


def subtoken_adjacency(
    heads: list[int], word_token_start: list[int], word_token_end: list[int], num_tokens: int
) -> torch.Tensor:
    """Expand the word graph to sub-tokens: every sub-token of word i links to every sub-token of word j when
    i and j are linked. Tokens that belong to no word (`[CLS]`, `[SEP]`, padding) keep only a self-loop.

    `heads` may be longer than the word spans (words cut by the maximum length); links to cut words are dropped.
    Returns a `[num_tokens, num_tokens]` 0/1 float matrix.
    """
    adjacency = torch.eye(num_tokens)
    kept = len(word_token_start)
    for word, neighbours in enumerate(word_adjacency(heads)[:kept]):
        rows = slice(word_token_start[word], word_token_end[word])
        for neighbour in neighbours:
            if neighbour < kept:
                adjacency[rows, word_token_start[neighbour] : word_token_end[neighbour]] = 1.0
    return adjacency
