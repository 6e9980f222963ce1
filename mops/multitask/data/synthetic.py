"""A small synthetic corpus for the embedded demo and for fast tests: a demo corpus, not a benchmark.

Every task gets sentences built from short lists of real English words, so the WordPiece
vocabulary covers them, with structure a model can learn in a few CPU minutes:

* sst (5 classes) and cfimdb (2 classes): reviews made of clauses like "the plot was not
  dull". Each clause adds +1, -1 or 0 to a score (a negated word flips its sign); the label is
  the score bucketed (sst: <=-2, -1, 0, +1, >=+2; cfimdb: -3 or -2 vs +2 or +3). Labels are
  balanced by construction. SST reviews have 1-3 clauses (at most ~26 words); CFIMDB reviews
  have 2-3 such sentences (at most ~70 words), so lengths vary as they do in the real data.
* para (binary): question pairs. A paraphrase keeps every meaning slot (verb, object, qualifier),
  swaps words for synonyms and may change the question template; a non-paraphrase changes one
  slot (hard) or everything (easy). Half the pairs are paraphrases.
* sts (float 0-5): caption pairs "a man is riding a bike in the park". The second caption keeps
  k of the five meaning slots (each possibly as a synonym) and replaces the rest; the label is
  k (the fraction kept, scaled to 0-5) plus Gaussian noise (sd 0.2), clipped to 0..5 and rounded
  to two decimals. Pair sentences are at most ~18 words.

The corpus is a function of the seed alone; each task and split draws from its own stream, so
changing one split's size leaves the others unchanged. Numbers measured on it say only that the
pipeline learns; they say nothing about accuracy on the real tasks.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from mops.multitask.data.examples import FILES, Example, write_file

TASKS = ("sst", "cfimdb", "para", "sts")
DEFAULT_SIZES = {"train": 1000, "dev": 200}  # examples per task and split

# --- sentiment ------------------------------------------------------------------------------

POSITIVE = ["good", "great", "wonderful", "excellent", "lovely", "brilliant", "charming", "delightful",
            "superb", "beautiful", "funny", "clever", "moving", "fresh", "smart"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "poor", "weak", "horrible", "silly", "stupid",
            "ugly", "slow", "messy", "bland", "lazy"]
NEUTRAL = ["long", "short", "simple", "familiar", "quiet", "loud", "old", "new", "strange", "different",
           "serious", "dark", "light", "modern", "typical"]
SUBJECTS = ["the movie", "the film", "the story", "the plot", "the acting", "the cast", "the music",
            "the script", "the ending", "the dialogue", "the director", "the camera work", "the lead actor",
            "the second half", "the opening scene", "this picture", "the soundtrack", "the pacing"]
VERBS = ["is", "was", "felt", "seemed", "looks", "sounds"]
INTENSIFIERS = ["", "", "", "really ", "very ", "quite ", "rather ", "truly "]
NEGATIONS = ["not", "never", "hardly"]
JOINERS = [" and ", " , but ", " , while ", " ; ", " , and ", " although "]
OPENERS = ["", "", "", "overall , ", "honestly , ", "i think ", "in the end , ", "to be fair , "]


def _clause(rng: random.Random, polarity: int) -> str:
    """'the plot was not dull': +1 from a positive word or a negated negative one, 0 from a neutral word."""
    if polarity == 0:
        word, negate = rng.choice(NEUTRAL), rng.random() < 0.2
    elif rng.random() < 0.3:
        word, negate = rng.choice(NEGATIVE if polarity > 0 else POSITIVE), True
    else:
        word, negate = rng.choice(POSITIVE if polarity > 0 else NEGATIVE), False
    adverb = rng.choice(NEGATIONS) + " " if negate else rng.choice(INTENSIFIERS)
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {adverb}{word}"


def _review(rng: random.Random, score: int, max_clauses: int) -> str:
    """A review whose clause polarities sum to `score`."""
    size = rng.randint(max(1, abs(score)), max_clauses)
    polarities = [1 if score > 0 else -1] * abs(score)
    while len(polarities) < size:
        if size - len(polarities) >= 2 and rng.random() < 0.5:
            polarities += [1, -1]  # a cancelling pair keeps the score
        else:
            polarities.append(0)
    rng.shuffle(polarities)
    text = _clause(rng, polarities[0])
    for polarity in polarities[1:]:
        text += rng.choice(JOINERS) + _clause(rng, polarity)
    return rng.choice(OPENERS) + text + " ."


SST_SCORES = {0: (-3, -2), 1: (-1,), 2: (0,), 3: (1,), 4: (2, 3)}


def _sst(rng: random.Random, index: int) -> tuple[str, None, int]:
    label = index % 5
    return _review(rng, rng.choice(SST_SCORES[label]), max_clauses=3), None, label


def _cfimdb(rng: random.Random, index: int) -> tuple[str, None, int]:
    label = index % 2
    score = rng.choice((2, 3)) * (1 if label else -1)
    # Longer, multi-sentence reviews, like CFIMDB's: the score is split over two or three sentences.
    parts = rng.randint(2, 3)
    shares = [0] * parts
    for _ in range(abs(score)):
        shares[rng.randrange(parts)] += 1 if score > 0 else -1
    return " ".join(_review(rng, share, max_clauses=3) for share in shares), None, label


# --- paraphrase -------------------------------------------------------------------------------

# Each inner list is one meaning; the words in it are interchangeable.
PARA_VERBS = [["learn", "study"], ["fix", "repair"], ["buy", "purchase"], ["sell"], ["clean", "wash"],
              ["find", "locate"], ["build", "make"], ["choose", "pick", "select"], ["start", "begin"],
              ["improve", "enhance"], ["protect", "guard"], ["paint"]]
PARA_OBJECTS = [["english", "the english language"], ["a car", "a vehicle"], ["my phone", "my mobile"],
                ["a house", "a home"], ["a bike", "a bicycle"], ["a job", "work"], ["a computer", "a pc"],
                ["a garden", "a yard"], ["a business", "a company"], ["my laptop", "my notebook"],
                ["a sofa", "a couch"], ["a boat", "a ship"], ["a guitar"], ["a website", "a web page"]]
PARA_QUALIFIERS = [["quickly", "fast"], ["at home", "at my house"], ["for free", "without paying"],
                   ["online", "on the internet"], ["in one week", "within a week"], ["as a beginner", "as a novice"],
                   ["cheaply", "for little money"], ["safely", "without risk"], ["alone", "by myself"],
                   ["this year", "in this year"]]
PARA_TEMPLATES = ["how can i {v} {o} {q} ?", "what is the best way to {v} {o} {q} ?", "how do i {v} {o} {q} ?",
                  "what should i do to {v} {o} {q} ?", "is it possible to {v} {o} {q} ?",
                  "{q} , how can someone {v} {o} ?", "can you tell me how to {v} {o} {q} ?"]


def _question(rng: random.Random, slots: tuple[int, int, int]) -> str:
    v, o, q = slots
    return rng.choice(PARA_TEMPLATES).format(
        v=rng.choice(PARA_VERBS[v]), o=rng.choice(PARA_OBJECTS[o]), q=rng.choice(PARA_QUALIFIERS[q])
    )


def _other(rng: random.Random, size: int, not_this: int) -> int:
    return rng.choice([i for i in range(size) if i != not_this])


def _para(rng: random.Random, index: int) -> tuple[str, str, int]:
    label = index % 2
    sizes = (len(PARA_VERBS), len(PARA_OBJECTS), len(PARA_QUALIFIERS))
    slots = tuple(rng.randrange(n) for n in sizes)
    if label == 1:
        other = slots
    elif rng.random() < 0.5:  # hard: one meaning slot differs
        changed = rng.randrange(3)
        other = tuple(_other(rng, n, s) if i == changed else s for i, (n, s) in enumerate(zip(sizes, slots)))
    else:  # easy: every slot differs
        other = tuple(_other(rng, n, s) for n, s in zip(sizes, slots))
    return _question(rng, slots), _question(rng, other), label


# --- similarity -------------------------------------------------------------------------------

STS_SUBJECTS = [["a man", "a guy"], ["a woman", "a lady"], ["a boy", "a young boy"], ["a girl", "a young girl"],
                ["a dog", "a puppy"], ["a cat", "a kitten"], ["a child", "a kid"], ["a cook", "a chef"],
                ["an old man", "an elderly man"], ["a student", "a pupil"]]
STS_ACTIONS = [["riding", "cycling on"], ["eating", "munching"], ["holding", "carrying"], ["cutting", "slicing"],
               ["washing", "cleaning"], ["painting"], ["throwing", "tossing"], ["pushing"], ["watching", "looking at"],
               ["kicking"]]
STS_OBJECTS = [["a bike", "a bicycle"], ["an apple", "a red apple"], ["a box", "a large box"], ["a cake"],
               ["a car", "an automobile"], ["a ball", "a football"], ["a book", "a novel"], ["a fish"],
               ["a chair", "a seat"], ["a bottle", "a water bottle"]]
STS_PLACES = [["in the park", "in a park"], ["in the kitchen"], ["on the street", "on the road"],
              ["in the garden", "in the yard"], ["on the beach", "by the sea"], ["in a room", "indoors"],
              ["in a field", "on the grass"], ["near a river", "by the river"], ["in the city", "downtown"],
              ["in the snow"]]
STS_TIMES = [["at night", "in the evening"], ["in the morning", "early in the day"], ["today"],
             ["in the rain", "while it rains"], ["on a sunny day", "in the sun"], ["after lunch"],
             ["during the winter", "in winter"], ["right now", "at the moment"]]
STS_SLOTS = (STS_SUBJECTS, STS_ACTIONS, STS_OBJECTS, STS_PLACES, STS_TIMES)


def _caption(rng: random.Random, slots: list[int]) -> str:
    subject, action, obj, place, time = (rng.choice(group[s]) for group, s in zip(STS_SLOTS, slots))
    if rng.random() < 0.5:
        return f"{subject} is {action} {obj} {place} {time} ."
    return f"{time} , {subject} is {action} {obj} {place} ."


def _sts(rng: random.Random, index: int) -> tuple[str, str, float]:
    kept = index % (len(STS_SLOTS) + 1)  # 0..5 slots in common, evenly spread
    slots = [rng.randrange(len(group)) for group in STS_SLOTS]
    keep = set(rng.sample(range(len(STS_SLOTS)), kept))
    other = [s if i in keep else _other(rng, len(STS_SLOTS[i]), s) for i, s in enumerate(slots)]
    label = 5.0 * kept / len(STS_SLOTS) + rng.gauss(0.0, 0.2)
    return _caption(rng, slots), _caption(rng, other), round(min(5.0, max(0.0, label)), 2)


# --- corpus -----------------------------------------------------------------------------------

_MAKERS = {"sst": _sst, "cfimdb": _cfimdb, "para": _para, "sts": _sts}


def _split(task: str, split: str, seed: int, size: int) -> list[Example]:
    rng = random.Random(f"mops-synthetic:{seed}:{task}:{split}")
    rows = [_MAKERS[task](rng, i) for i in range(size)]
    order = list(range(size))
    rng.shuffle(order)  # labels were drawn in a fixed cycle for balance; mix them
    return [Example(f"syn-{task}-{split}-{i:05d}", *rows[j]) for i, j in enumerate(order)]


def make_corpus(seed: int, sizes: dict[str, int] | None = None) -> dict[str, dict[str, list[Example]]]:
    """task -> split -> examples, the same for the same seed. `sizes` maps split name to examples per task."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    for split, size in sizes.items():
        if split not in ("train", "dev"):
            raise ValueError(f"synthetic corpus has splits train and dev, not {split!r}")
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"size of split {split!r} must be a whole number >= 0, not {size!r}")
    return {task: {split: _split(task, split, seed, size) for split, size in sizes.items()} for task in TASKS}


def write_corpus(
    root: str | os.PathLike, seed: int, sizes: dict[str, int] | None = None
) -> dict[str, dict[str, Path]]:
    """Write `make_corpus(seed, sizes)` as CS224N files under `root`, so it loads with `load_split`."""
    corpus = make_corpus(seed, sizes)
    return {
        task: {split: write_file(Path(root) / FILES[task][split], task, examples) for split, examples in splits.items()}
        for task, splits in corpus.items()
    }
