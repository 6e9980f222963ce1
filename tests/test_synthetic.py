"""mops.multitask.data.synthetic: deterministic, loads back through the real loader, balanced, and learnable."""

from collections import Counter

import pytest
import torch

from mops.minbert.tokenizer import BertTokenizer
from mops.multitask.data.examples import FILES, TASK_KINDS, load_split
from mops.multitask.data.synthetic import TASKS, make_corpus, write_corpus

SIZES = {"train": 600, "dev": 200}


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(0, SIZES)


@pytest.fixture(scope="module")
def default_corpus():
    return make_corpus(0)


def test_same_seed_same_corpus_other_seed_differs(corpus):
    assert make_corpus(0, SIZES) == corpus
    other = make_corpus(1, SIZES)
    for task in TASKS:
        assert [e.text_a for e in other[task]["train"]] != [e.text_a for e in corpus[task]["train"]]


def test_split_streams_are_independent(corpus):
    """Changing the dev size leaves train untouched, so the demo can shrink one split alone."""
    assert make_corpus(0, {"train": 600, "dev": 10})["sst"]["train"] == corpus["sst"]["train"]


def test_sizes_ids_and_default(default_corpus):
    default = default_corpus
    assert {task: {s: len(v) for s, v in splits.items()} for task, splits in default.items()} == {
        task: {"train": 1000, "dev": 200} for task in TASKS
    }
    uids = [e.uid for splits in default.values() for exs in splits.values() for e in exs]
    assert len(uids) == len(set(uids))
    with pytest.raises(ValueError, match="splits train and dev"):
        make_corpus(0, {"test": 5})
    with pytest.raises(ValueError, match="whole number"):
        make_corpus(0, {"train": -1})


def test_round_trip_through_the_loader(tmp_path, corpus):
    paths = write_corpus(tmp_path, 0, SIZES)
    for task in TASKS:
        for split in SIZES:
            assert paths[task][split] == tmp_path / FILES[task][split]
            loaded = load_split(task, split, tmp_path)
            assert loaded.skipped_blank == 0
            assert loaded.examples == corpus[task][split]


def test_labels_balanced_and_in_range(corpus):
    for task in TASKS:
        kind = TASK_KINDS[task]
        labels = [e.label for e in corpus[task]["train"]]
        assert all((e.text_b is not None) == kind.is_pair for e in corpus[task]["train"])
        if kind.is_regression:
            assert all(isinstance(v, float) and 0.0 <= v <= 5.0 for v in labels)
            buckets = Counter(min(4, int(v)) for v in labels)  # 0-1, 1-2, ..., 4-5
            assert set(buckets) == set(range(5)) and min(buckets.values()) > 0.1 * len(labels)
        else:
            counts = Counter(labels)
            assert set(counts) == set(range(kind.num_classes))
            assert all(type(v) is int for v in labels)
            expected = len(labels) / kind.num_classes
            assert all(abs(n - expected) <= 1 for n in counts.values())


def test_words_are_in_the_vocabulary_and_sentences_short(corpus):
    tokenizer = BertTokenizer.from_pretrained()
    for task in TASKS:
        for e in corpus[task]["train"][:200]:
            for text in filter(None, (e.text_a, e.text_b)):
                assert "[UNK]" not in tokenizer.tokenize(text)
                assert len(text.split()) <= (72 if task == "cfimdb" else 28)  # words and punctuation


def _bag_of_words(examples, vocab):
    def bow(text):
        v = torch.zeros(len(vocab))
        for word in text.split():
            if word in vocab:
                v[vocab[word]] = 1.0
        return v

    rows = []
    for e in examples:
        a = bow(e.text_a)
        if e.text_b is None:
            rows.append(a)
        else:  # words both sentences share, words only one has
            b = bow(e.text_b)
            rows.append(torch.cat([a * b, (a - b).abs()]))
    return torch.stack(rows)


@pytest.mark.parametrize("task, floor", [("sst", 0.35), ("cfimdb", 0.62), ("para", 0.7), ("sts", 0.6)])
def test_structure_is_learnable_by_a_linear_model(default_corpus, task, floor):
    """A bag-of-words linear model lands well above chance on dev (chance: 0.2, 0.5, 0.5, r=0).

    It stays well below perfect: negation and cancelling clauses are left for the encoder to learn.
    """
    train, dev = default_corpus[task]["train"], default_corpus[task]["dev"]
    vocab = {}
    for e in train:
        for word in f"{e.text_a} {e.text_b or ''}".split():
            vocab.setdefault(word, len(vocab))
    x_train, x_dev = _bag_of_words(train, vocab), _bag_of_words(dev, vocab)
    regression = TASK_KINDS[task].is_regression
    dtype = torch.float if regression else torch.long
    y_train = torch.tensor([e.label for e in train], dtype=dtype)
    y_dev = torch.tensor([e.label for e in dev], dtype=dtype)
    # One thread: on a busy machine, two threads on such tiny matrices mostly wait for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        score = _fit_and_score(x_train, y_train, x_dev, y_dev, regression, TASK_KINDS[task].num_classes)
    finally:
        torch.set_num_threads(threads)
    assert score > floor, f"{task}: dev score {score:.3f} not above {floor}"


def _fit_and_score(x_train, y_train, x_dev, y_dev, regression, num_classes):
    """Full-batch gradient descent on a linear model; dev accuracy, or Pearson r for regression."""
    weight = torch.zeros(x_train.shape[1], 1 if regression else num_classes, requires_grad=True)
    bias = torch.zeros(weight.shape[1], requires_grad=True)
    lr = 0.05 if regression else 0.5
    for _ in range(400):
        out = x_train @ weight + bias
        if regression:
            loss = torch.nn.functional.mse_loss(out.squeeze(1), y_train)
        else:
            loss = torch.nn.functional.cross_entropy(out, y_train)
        weight.grad = bias.grad = None
        loss.backward()
        with torch.no_grad():
            weight -= lr * weight.grad
            bias -= lr * bias.grad
    with torch.no_grad():
        out = x_dev @ weight + bias
    if regression:
        return torch.corrcoef(torch.stack([out.squeeze(1), y_dev]))[0, 1].item()
    return (out.argmax(1) == y_dev).float().mean().item()
