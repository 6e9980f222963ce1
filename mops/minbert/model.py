"""minBERT: the BERT encoder written out, with Hugging Face parameter names.

Every op that has a Triton kernel (attention, add & norm, bias + GELU) goes through
`kernels`, the one dispatch point per op, with the backend chosen at construction.
Each piece (`embeddings`, `encoder.layer[i]`, `pooler`) is callable on its own so the
multitask model can assemble its own stacks from them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mops import kernels
from mops.kernels.dispatch import BACKENDS
from mops.minbert.checkpoint import load_state_into, read_checkpoint
from mops.minbert.config import BertConfig


class LayerNorm(nn.Module):
    """LayerNorm(x + residual) through `mops.kernels.layer_norm`; named like HF's `LayerNorm`."""

    def __init__(self, width: int, eps: float, backend: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.eps = eps
        self.backend = backend

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return kernels.layer_norm(x, self.weight, self.bias, self.eps, residual=residual, backend=self.backend)


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig, backend: str) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps, backend)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings), persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, L)
        token_type_ids: torch.Tensor | None = None,  # (B, L)
    ) -> torch.Tensor:  # (B, L, H)
        length = input_ids.shape[1]
        if length > self.position_ids.numel():
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings {self.position_ids.numel()}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        words = self.word_embeddings(input_ids)
        positions = self.position_embeddings(self.position_ids[:length])  # (L, H), broadcast over B
        segments = self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(words + segments, residual=positions))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig, backend: str) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob
        self.backend = backend

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, H*D) -> (B, H, L, D)
        b, length, _ = x.shape
        return x.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._heads(self.query(hidden)), self._heads(self.key(hidden)), self._heads(self.value(hidden))
        context = kernels.attention(
            q, k, v, attention_mask, dropout_p=self.dropout_p if self.training else 0.0, backend=self.backend
        )  # (B, H, L, D)
        b, _, length, _ = context.shape
        return context.transpose(1, 2).reshape(b, length, self.num_heads * self.head_dim)


class BertSelfOutput(nn.Module):
    """Projection, dropout, then add & norm with the attention block's input."""

    def __init__(self, config: BertConfig, backend: str) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps, backend)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, block_input: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)), residual=block_input)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig, backend: str) -> None:
        super().__init__()
        self.self = BertSelfAttention(config, backend)
        self.output = BertSelfOutput(config, backend)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(hidden, attention_mask), hidden)


class BertIntermediate(nn.Module):
    """Feed-forward up-projection; the bias add is fused into the GELU kernel."""

    def __init__(self, config: BertConfig, backend: str) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.backend = backend

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, L, I)
        return kernels.bias_gelu(F.linear(hidden, self.dense.weight), self.dense.bias, backend=self.backend)


class BertOutput(BertSelfOutput):
    """Feed-forward down-projection, dropout, add & norm."""

    def __init__(self, config: BertConfig, backend: str) -> None:
        super().__init__(config, backend)
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig, backend: str) -> None:
        super().__init__()
        self.attention = BertAttention(config, backend)
        self.intermediate = BertIntermediate(config, backend)
        self.output = BertOutput(config, backend)

    def forward(
        self,
        hidden: torch.Tensor,  # (B, L, H)
        attention_mask: torch.Tensor | None = None,  # (B, L), 1 = real token
    ) -> torch.Tensor:  # (B, L, H)
        attended = self.attention(hidden, attention_mask)
        return self.output(self.intermediate(attended), attended)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig, backend: str) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config, backend) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, attention_mask)
        return hidden


class BertPooler(nn.Module):
    """tanh(dense(first token)): the sentence vector BERT's classifiers read."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, H)
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(nn.Module):
    def __init__(self, config: BertConfig, backend: str = "auto") -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.config = config
        self.backend = backend
        self.embeddings = BertEmbeddings(config, backend)
        self.encoder = BertEncoder(config, backend)
        self.pooler = BertPooler(config)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation, used when a model is built without a checkpoint."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, L)
        attention_mask: torch.Tensor | None = None,  # (B, L), 1 = real token, 0 = padding
        token_type_ids: torch.Tensor | None = None,  # (B, L)
    ) -> dict[str, torch.Tensor]:
        hidden = self.encoder(self.embeddings(input_ids, token_type_ids), attention_mask)
        return {"last_hidden_state": hidden, "pooler_output": self.pooler(hidden)}

    def set_dropout(self, p: float) -> BertModel:
        """Use dropout probability `p` everywhere (embeddings, attention, sub-layer outputs)."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.config.hidden_dropout_prob = self.config.attention_probs_dropout_prob = p
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
            elif isinstance(module, BertSelfAttention):
                module.dropout_p = p
        return self

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, backend: str = "auto") -> BertModel:
        """Load a checkpoint folder, a hub name from the local cache, or `minilm` (the default)."""
        config, state, source = read_checkpoint(name_or_path)
        model = cls(config, backend=backend)
        load_state_into(model, state, source)
        return model.eval()
