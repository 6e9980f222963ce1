"""minBERT: a from-scratch BERT encoder that loads Hugging Face checkpoints, its tokenizer and AdamW."""

from mops.minbert.checkpoint import CheckpointError, resolve_checkpoint_dir, save_pretrained
from mops.minbert.config import BertConfig
from mops.minbert.model import BertLayer, BertModel
from mops.minbert.optim import AdamW
from mops.minbert.tokenizer import Batch, BertTokenizer

__all__ = [
    "AdamW", "Batch", "BertConfig", "BertLayer", "BertModel", "BertTokenizer",
    "CheckpointError", "resolve_checkpoint_dir", "save_pretrained",
]
