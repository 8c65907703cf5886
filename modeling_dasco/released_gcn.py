"""The dual GCN and MASC head in the layout of the released DASCO code (`fusion_style="released"`).

This layout exists so that checkpoints of the released code convert into this package (see
`conversion/convert_dasco_checkpoint.py`). It follows the released model's MATE path: a fixed fusion gate, highway
layers and one linear classifier. The released MASC path differs in two ways: its highway gate and residual always
use the layer-0 projection, and an untrained LayerNorm follows each layer. Besides, the released text encoder
adds a fuzzy-span attention layer that has no counterpart here. Converted checkpoints therefore do not reproduce
the released logits exactly and are meant as a starting point for fine-tuning. Shipped as remote code with the model, so it imports only torch and siblings.
"""

import torch
from torch import nn

from .dual_gcn import DascoSemanticAdjacency
from .span_utils import masked_mean


class DascoReleasedDualGCN(nn.Module):
    """Dual GCN of the released DASCO code.

    For layers l = 0..L-1, starting from H_0 = H (the text encoder states):
        I_sem = W_sem[l](A_sem · H_l)            (W_sem[0] reads the text width, the others `gcn_hidden_size`)
        I_dep = W_dep[l](A_dep · H_l)            (A_dep the 0/1 sub-token dependency graph with self-loops)
        g     = s · σ(I_dep)                     (s = `fusion_gate_scale`, DASCO's `hyper1`; no learned gate)
        O     = ReLU(W_out(I_com)),  I_com = (1 − g) ⊙ I_sem + g ⊙ I_dep
        H_l   ← W_in · H_l when l = 0            (text width to `gcn_hidden_size`)
        H_l+1 = σ(H_l) ⊙ O + (1 − σ(H_l)) ⊙ H_l  (highway)
    Module names map to the released keys: `semantic_adjacency` = `attn.linears.{0,1}`, `semantic_layers` =
    `semW`, `syntactic_layers` = `depW`, `output_proj` = `fc3`, `input_proj` = `fc4`.
    """

    def __init__(self, text_hidden_size: int, config):
        super().__init__()
        hidden = config.gcn_hidden_size
        widths = [text_hidden_size] + [hidden] * (config.num_gcn_layers - 1)
        self.gate_scale = config.fusion_gate_scale
        self.semantic_adjacency = DascoSemanticAdjacency(text_hidden_size)
        self.semantic_layers = nn.ModuleList([nn.Linear(width, hidden) for width in widths])
        self.syntactic_layers = nn.ModuleList([nn.Linear(width, hidden) for width in widths])
        self.output_proj = nn.Linear(hidden, hidden)
        self.input_proj = nn.Linear(text_hidden_size, hidden)

    def forward(
        self, hidden: torch.Tensor, token_mask: torch.Tensor, syntax_adjacency: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the encoder states unchanged (the BIO head reads them), H_L and the last I_sem, the latter two
        `[batch, tokens, gcn_hidden]` and zero at masked tokens."""
        mask = token_mask.to(hidden.dtype)[..., None]
        semantic = self.semantic_adjacency(hidden, token_mask)
        syntactic = syntax_adjacency.to(hidden.dtype) * mask * mask.transpose(1, 2)

        state = hidden
        branch_sem = None
        for layer in range(len(self.semantic_layers)):
            branch_sem = self.semantic_layers[layer](semantic @ state)
            branch_dep = self.syntactic_layers[layer](syntactic @ state)
            gate = self.gate_scale * torch.sigmoid(branch_dep)
            output = torch.relu(self.output_proj((1 - gate) * branch_sem + gate * branch_dep))
            if layer == 0:
                state = self.input_proj(state)
            carry = torch.sigmoid(state)
            state = carry * output + (1 - carry) * state
        return hidden, state * mask, branch_sem * mask


class DascoReleasedMascHead(nn.Module):
    """MASC classifier of the released code: one linear layer over three L2-normalized parts.

    The parts are the mean over the aspect's sub-tokens of the two projected views (h1 from H_L, h2 from the last
    I_sem) and the pooled [CLS] state (BERT pooler: dense + tanh, then dropout). `pooler` maps to the released
    `text_encoder.encoder.pooler.dense`, `classifier` to `classifier`.
    """

    def __init__(self, gcn_hidden_size: int, text_hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.pooler = nn.Linear(text_hidden_size, text_hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * gcn_hidden_size + text_hidden_size, num_labels)

    def forward(
        self, first_view: torch.Tensor, second_view: torch.Tensor, cls_state: torch.Tensor, span_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits `[batch, aspects, num_labels]` from views `[batch, tokens, gcn_hidden]`, `cls_state [batch,
        text_hidden]` and `span_mask [batch, aspects, tokens]`."""
        pooled = self.dropout(torch.tanh(self.pooler(cls_state)))
        parts = [
            masked_mean(first_view, span_mask),
            masked_mean(second_view, span_mask),
            pooled[:, None, :].expand(-1, span_mask.shape[1], -1),
        ]
        features = torch.cat([nn.functional.normalize(part, dim=-1) for part in parts], dim=-1)
        return self.classifier(features)
