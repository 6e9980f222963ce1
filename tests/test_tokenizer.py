"""The WordPiece tokenizer gives the reference tokenizer's ids, on sentences and pairs."""

from __future__ import annotations

import pytest
import torch

from mops.minbert import BertTokenizer

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "Hello, world!",
    "The movie was surprisingly GOOD... wasn't it?",
    "Naïve café résumé über Ångström",  # accents are stripped by the uncased vocabulary
    "zxqvbnm floccinaucinihilipilification",  # unknown and very long words
    "Chinese 中文 characters and emoji 🙂 tabs\tand\nnewlines",
    "",
]
SECOND = ["A reply.", "it was.", "Resume", "??", "more text here", "non-empty"]


@pytest.fixture(scope="module")
def tokenizers(minilm_dir):
    ours = BertTokenizer.from_pretrained(minilm_dir)
    reference = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    slow = transformers.BertTokenizer.from_pretrained(str(minilm_dir))
    return ours, reference, slow


def test_single_sentences_match_reference(tokenizers):
    ours, reference, slow = tokenizers
    batch = ours(SENTENCES)
    expected = reference(SENTENCES, padding=True, return_tensors="pt")
    assert torch.equal(batch.input_ids, expected["input_ids"])
    assert torch.equal(batch.attention_mask, expected["attention_mask"])
    assert torch.equal(batch.token_type_ids, expected["token_type_ids"])
    for sentence in SENTENCES:  # the pure-Python reference agrees too
        assert ours.tokenize(sentence) == slow.tokenize(sentence), sentence


def test_pairs_match_reference(tokenizers):
    ours, reference, _ = tokenizers
    batch = ours(SENTENCES, SECOND)
    expected = reference(SENTENCES, SECOND, padding=True, return_tensors="pt")
    assert torch.equal(batch.input_ids, expected["input_ids"])
    assert torch.equal(batch.token_type_ids, expected["token_type_ids"])
    assert torch.equal(batch.attention_mask, expected["attention_mask"])


def test_unknown_and_accents(tokenizers):
    ours, _, _ = tokenizers
    assert ours.tokenize("Naïve café") == ["naive", "cafe"]
    assert "[UNK]" in ours.tokenize("🙂")


def test_truncation_matches_reference(tokenizers):
    ours, reference, _ = tokenizers
    long_a, long_b = "word " * 40, "other " * 25
    batch = ours([long_a, "short"], [long_b, "tiny"], max_length=32)
    expected = reference([long_a, "short"], [long_b, "tiny"], padding=True, truncation="longest_first",
                         max_length=32, return_tensors="pt")
    assert batch.input_ids.shape[1] == 32
    assert torch.equal(batch.input_ids, expected["input_ids"])
    assert torch.equal(batch.token_type_ids, expected["token_type_ids"])


def test_padding_only_to_longest(tokenizers):
    ours, _, _ = tokenizers
    batch = ours(["one two", "one"])
    assert batch.input_ids.shape == (2, 4)
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch.input_ids[1, 3].item() == ours.pad_id


def test_padding_to_a_multiple_matches_the_reference(tokenizers):
    ours, reference, _ = tokenizers
    texts, pairs = ["one two", "one", "a somewhat longer sentence than the others"], ["x", "y z", "w"]
    batch = ours(texts, pairs, pad_to_multiple_of=8)
    expected = reference(texts, pairs, padding=True, pad_to_multiple_of=8, return_tensors="pt")
    assert batch.input_ids.shape[1] % 8 == 0
    assert batch.input_ids.tolist() == expected["input_ids"].tolist()
    assert batch.attention_mask.tolist() == expected["attention_mask"].tolist()
    assert batch.token_type_ids.tolist() == expected["token_type_ids"].tolist()
    assert ours(["one"], pad_to_multiple_of=1).input_ids.shape == (1, 3)
    with pytest.raises(ValueError, match="pad_to_multiple_of must be >= 1, got 0"):
        ours(["one"], pad_to_multiple_of=0)


def test_bad_input_errors(tokenizers, tmp_path):
    ours, _, _ = tokenizers
    with pytest.raises(TypeError, match="list of sentences"):
        ours("a single string")
    with pytest.raises(ValueError, match="2 first sentences but 1 second"):
        ours(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="max_length"):
        ours(["a"], ["b"], max_length=3)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match=r"lacks the special token \[CLS\]"):
        BertTokenizer(tmp_path / "vocab.txt")
