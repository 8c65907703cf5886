"""DASCO's semantic and syntactic branches, their gated fusion, and the scope contrastive loss.

Shipped as remote code with the model, so it imports only torch and the standard library.
"""

import math

import torch
from torch import nn


class DascoSemanticAdjacency(nn.Module):
    """Learned dense adjacency: single-head scaled dot-product attention over the encoder states.

    The diagonal is replaced by self-loops (weight 1) and rows of masked tokens are zeroed, so each row contains
    a self-loop plus a softmax over the other real tokens.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        scores = self.query(hidden) @ self.key(hidden).transpose(1, 2) / math.sqrt(hidden.shape[-1])
        scores = scores.masked_fill(token_mask[:, None, :] == 0, torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1)
        eye = torch.eye(hidden.shape[1], device=hidden.device, dtype=weights.dtype)
        adjacency = weights * (1 - eye) + eye
        return adjacency * token_mask[:, :, None].to(weights.dtype)


class DascoDualGCN(nn.Module):
    """Graph convolutions over the semantic and the syntactic adjacency, fused by a gate at every layer.

    For layers l = 0..L-1, starting from H_0 = W_in·H (text width to `gcn_hidden_size`):
        I_sem = W_sem[l](A_sem · H_l)            (A_sem from `DascoSemanticAdjacency` on H)
        I_dep = W_dep[l](D⁻¹ A_dep · H_l)        (A_dep the sub-token dependency graph, row-normalized by degree)
        g     = s · σ(W_g[l] [I_sem ; I_dep])    (s = `fusion_gate_scale`)
        H_l+1 = LayerNorm(H_l + ReLU((1 − g) ⊙ I_sem + g ⊙ I_dep))
    With one branch switched off, the other one's output is used alone (g plays no role).
    The output H' = H + W_out·H_L keeps the encoder states and adds the scope-aware part.
    """

    def __init__(self, text_hidden_size: int, config):
        super().__init__()
        hidden = config.gcn_hidden_size
        self.use_semantic = config.use_semantic_branch
        self.use_syntactic = config.use_syntactic_branch
        self.gate_scale = config.fusion_gate_scale
        self.input_proj = nn.Linear(text_hidden_size, hidden)
        self.semantic_adjacency = DascoSemanticAdjacency(text_hidden_size) if self.use_semantic else None
        self.semantic_layers = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(config.num_gcn_layers)])
        self.syntactic_layers = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(config.num_gcn_layers)])
        self.gates = nn.ModuleList([nn.Linear(2 * hidden, hidden) for _ in range(config.num_gcn_layers)])
        self.layer_norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(config.num_gcn_layers)])
        self.dropout = nn.Dropout(config.gcn_dropout)
        self.output_proj = nn.Linear(hidden, text_hidden_size)

    def forward(
        self, hidden: torch.Tensor, token_mask: torch.Tensor, syntax_adjacency: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the fused states H' `[batch, tokens, text_hidden]`, and the two views for the contrastive
        loss: H_L and the last I_sem (or I_dep without the semantic branch), both `[batch, tokens, gcn_hidden]`."""
        mask = token_mask.to(hidden.dtype)[..., None]
        semantic = self.semantic_adjacency(hidden, token_mask) if self.use_semantic else None
        syntactic = None
        if self.use_syntactic:
            syntactic = syntax_adjacency.to(hidden.dtype) * mask * mask.transpose(1, 2)
            syntactic = syntactic / syntactic.sum(-1, keepdim=True).clamp(min=1.0)

        state = self.input_proj(hidden) * mask
        second_view = state
        for layer in range(len(self.semantic_layers)):
            branch_sem = self.semantic_layers[layer](semantic @ state) if semantic is not None else None
            branch_dep = self.syntactic_layers[layer](syntactic @ state) if syntactic is not None else None
            fused = self.fuse(layer, branch_sem, branch_dep)
            state = self.layer_norms[layer](state + self.dropout(torch.relu(fused))) * mask
            second_view = branch_sem if branch_sem is not None else branch_dep
        return hidden + self.output_proj(state) * mask, state, second_view * mask

    def fuse(self, layer: int, branch_sem: torch.Tensor | None, branch_dep: torch.Tensor | None) -> torch.Tensor:
        if branch_dep is None:
            return branch_sem
        if branch_sem is None:
            return branch_dep
        gate = self.gate_scale * torch.sigmoid(self.gates[layer](torch.cat([branch_sem, branch_dep], -1)))
        return (1 - gate) * branch_sem + gate * branch_dep


class DascoProjectionHead(nn.Module):
    """Two-layer projection (Linear, ELU, Linear) applied to both views before the contrastive loss."""

    def __init__(self, hidden_size: int, projection_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, projection_size)
        self.fc2 = nn.Linear(projection_size, hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.elu(self.fc1(hidden)))


def scope_contrastive_loss(
    first_view: torch.Tensor,
    second_view: torch.Tensor,
    span_mask: torch.Tensor,
    scope_mask: torch.Tensor,
    word_token_mask: torch.Tensor,
    aspect_mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Pull each aspect toward the tokens of its scope and away from the rest of its tweet.

    For aspect a of a tweet, with z_a the mean of the first view over the aspect's sub-tokens, v_j the second
    view at sub-token j, and sim = cosine similarity:

        L_a = −log( Σ_{j ∈ scope(a)} exp(sim(z_a, v_j) / τ) / Σ_{j ∈ words} exp(sim(z_a, v_j) / τ) )

    `words` are the sub-tokens of the tweet's words. Special tokens, padding and masked positions are dropped
    from both sums, so they add nothing (the released DASCO code instead let zero vectors add exp(0) terms).
    The loss is the mean of L_a over the real aspects of the batch.

    Shapes: views `[batch, tokens, dim]`; span and scope masks `[batch, aspects, tokens]`; word_token_mask
    `[batch, tokens]`; aspect_mask `[batch, aspects]`.
    """
    anchors = torch.einsum("bat,btd->bad", span_mask, first_view) / span_mask.sum(-1, keepdim=True).clamp(min=1.0)
    similarity = nn.functional.cosine_similarity(anchors[:, :, None, :], second_view[:, None, :, :], dim=-1)
    logits = similarity / temperature
    words = word_token_mask[:, None, :].bool()
    in_scope = scope_mask.bool() & words
    all_terms = torch.logsumexp(logits.masked_fill(~words, float("-inf")), dim=-1)
    positive_terms = torch.logsumexp(logits.masked_fill(~in_scope, float("-inf")), dim=-1)
    per_aspect = all_terms - positive_terms
    real = aspect_mask.bool() & in_scope.any(-1)
    if not real.any():
        return first_view.sum() * 0.0
    return per_aspect[real].mean()
