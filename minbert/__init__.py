"""minBERT: a from-scratch BERT encoder that loads Hugging Face checkpoints, its tokenizer and AdamW."""

from .checkpoint import CheckpointError, resolve_checkpoint_dir, save_pretrained
from .config import BertConfig
from .model import BertLayer, BertModel
from .optim import AdamW
from .tokenizer import Batch, BertTokenizer

__all__ = [
    "AdamW", "Batch", "BertConfig", "BertLayer", "BertModel", "BertTokenizer",
    "CheckpointError", "resolve_checkpoint_dir", "save_pretrained",
]
