"""WordPiece tokenization from a checkpoint's vocab.txt, batched and padded to the longest row."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer as _Tokenizer
from tokenizers import normalizers, pre_tokenizers
from tokenizers.models import WordPiece
from tokenizers.processors import TemplateProcessing

from mops.minbert.checkpoint import CheckpointError, resolve_checkpoint_dir


@dataclass
class Batch:
    """Token ids of a padded batch; every tensor is (B, L) with L the longest row."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor  # 1 = real token, 0 = padding
    token_type_ids: torch.Tensor  # 0 = first sentence, 1 = second

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.token_type_ids.to(device))


class BertTokenizer:
    """BERT's uncased/cased WordPiece: basic clean-up, accent stripping, [CLS] a [SEP] (b [SEP])."""

    def __init__(self, vocab_file: str | os.PathLike, lowercase: bool = True, strip_accents: bool | None = None) -> None:
        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise CheckpointError(f"no vocabulary at {vocab_file}; a checkpoint folder needs vocab.txt")
        vocab = {}
        with vocab_file.open(encoding="utf-8") as lines:
            for index, line in enumerate(lines):
                vocab[line.rstrip("\n")] = index
        for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
            if special not in vocab:
                raise CheckpointError(f"{vocab_file} lacks the special token {special}")
        self.vocab = vocab
        self.pad_id, self.cls_id, self.sep_id = vocab["[PAD]"], vocab["[CLS]"], vocab["[SEP]"]
        wordpiece = _Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        wordpiece.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
        )
        wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        wordpiece.post_processor = TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)],
        )
        self._wordpiece = wordpiece

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None) -> BertTokenizer:
        """The tokenizer of a checkpoint folder (same names as `BertModel.from_pretrained`)."""
        folder = resolve_checkpoint_dir(name_or_path)
        settings = {}
        if (folder / "tokenizer_config.json").is_file():
            settings = json.loads((folder / "tokenizer_config.json").read_text())
        return cls(
            folder / "vocab.txt",
            lowercase=settings.get("do_lower_case", True),
            strip_accents=settings.get("strip_accents"),
        )

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        return self._wordpiece.encode(text, add_special_tokens=False).tokens

    def __call__(
        self,
        texts: list[str],
        pairs: list[str] | None = None,
        max_length: int = 512,
        pad_to_multiple_of: int = 1,
    ) -> Batch:
        """Encode sentences (or sentence pairs), truncate to `max_length`, pad to the longest row
        rounded up to a multiple of `pad_to_multiple_of` (few distinct shapes for compiled kernels)."""
        if isinstance(texts, str):
            raise TypeError("pass a list of sentences, not a single string")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} first sentences but {len(pairs)} second sentences")
        if pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        if max_length < (4 if pairs is not None else 2):
            raise ValueError(f"max_length {max_length} leaves no room for tokens after [CLS]/[SEP]")
        self._wordpiece.enable_truncation(max_length, strategy="longest_first")
        encodings = (
            self._wordpiece.encode_batch(list(zip(texts, pairs)))
            if pairs is not None
            else self._wordpiece.encode_batch(list(texts))
        )
        longest = max((len(e.ids) for e in encodings), default=0)
        width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
        ids = torch.full((len(encodings), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encodings), width), dtype=torch.long)
        types = torch.zeros((len(encodings), width), dtype=torch.long)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = torch.tensor(enc.ids)
            mask[row, :n] = 1
            types[row, :n] = torch.tensor(enc.type_ids)
        return Batch(ids, mask, types)
