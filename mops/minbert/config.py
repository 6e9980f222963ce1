"""BertConfig: every size of the encoder, readable from a Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class BertConfig:
    vocab_size: int = 30522  # WordPiece vocabulary entries
    hidden_size: int = 768  # width of every token vector
    num_hidden_layers: int = 12  # encoder layers
    num_attention_heads: int = 12  # heads per layer; must divide hidden_size
    intermediate_size: int = 3072  # feed-forward inner width
    hidden_act: str = "gelu"  # exact erf GELU, the only activation BERT checkpoints use here
    hidden_dropout_prob: float = 0.1  # dropout on embeddings and sub-layer outputs
    attention_probs_dropout_prob: float = 0.1  # dropout on attention probabilities
    max_position_embeddings: int = 512  # longest sequence the position table covers
    type_vocab_size: int = 2  # segment ids (sentence A / sentence B)
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02  # std of the normal init for a randomly initialised model

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.hidden_act != "gelu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; minBERT implements exact 'gelu'")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def scaled(cls, base: BertConfig, hidden_size: int | None = None, num_layers: int | None = None) -> BertConfig:
        """`base`'s vocabulary and positions with another width and depth, for encoders trained from
        scratch: heads of 64 dimensions (32 where the width is no multiple of 64), a feed-forward
        four times as wide, as BERT's own sizes have."""
        width = base.hidden_size if hidden_size is None else hidden_size
        if width <= 0 or width % 32:
            raise ValueError(f"hidden_size {width} must be a positive multiple of 32 (heads of 64 or 32 dimensions)")
        return cls(
            vocab_size=base.vocab_size,
            hidden_size=width,
            num_hidden_layers=base.num_hidden_layers if num_layers is None else num_layers,
            num_attention_heads=width // 64 if width % 64 == 0 else width // 32,
            intermediate_size=4 * width,
            max_position_embeddings=base.max_position_embeddings,
            type_vocab_size=base.type_vocab_size,
            pad_token_id=base.pad_token_id,
        )

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> BertConfig:
        """Keep the fields minBERT knows; reject settings it cannot honour."""
        kind = raw.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(f"{source}: position_embedding_type {kind!r} is not supported (only 'absolute')")
        if raw.get("model_type", "bert") != "bert":
            raise ValueError(f"{source}: model_type {raw['model_type']!r} is not a BERT checkpoint")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        return cls.from_dict(raw, source=str(path))

    def to_dict(self) -> dict:
        return {"model_type": "bert", "architectures": ["BertModel"], **dataclasses.asdict(self)}
