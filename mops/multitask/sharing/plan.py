"""Sharing plans: which encoder pieces the tasks freeze, share, or keep for themselves.

A plan is data. It is parsed from a short string, checked against the model's depth and the
task names before any module is built, printed back in one canonical form, and read by the
model builder piece by piece. The pieces, bottom to top, are the embeddings, every encoder
layer (`layer.0` is the lowest) and the pooler.

Choices for one piece
---------------------
    F         frozen: one copy, never updated
    S         shared: one copy, updated by every task
    I         individual: one copy per task
    [a+b|c]   groups: one copy per group; here tasks a and b share a copy and c keeps its own
    L         LoRA: one frozen base shared by every task, plus one low-rank update per task on the
              piece's linear layers (the embeddings have none: under L they are simply frozen)
    B         BitFit: one frozen copy of the weight matrices shared by every task, plus one copy
              per task of the biases and layer-norm weights, which train
    L[a+b|c]  (or B[...]) one update per group instead of one per task

Grammar
-------
    plan      := layers ("," override)*
    layers    := token+                    bottom to top; each token covers one or more layers
    token     := choice count?
    choice    := "F" | "S" | "I" | group | adapted     letters in either case
    adapted   := ("L" | "B") group?        a group right after L or B gives one update per group
    group     := "[" members ("|" members)* "]"
    members   := task ("+" task)* | "*"    "*" = every task not named elsewhere in the token, each alone
    count     := digits                    right after its choice; at least 1; repeats the choice
    override  := ("emb" | "pooler") "=" choice

The layers part names every encoder layer exactly once. The embeddings take the bottom layer's
choice and the pooler the top layer's, unless an override says otherwise. Whitespace between
tokens and around separators is ignored; task names are case-sensitive and may use letters,
digits, `_` and `-`.

Examples, for a 6-layer model and tasks sst, para, sts:

    FFSSII                  layers 0-1 frozen, 2-3 shared, 4-5 individual;
                            embeddings frozen (like layer 0), pooler individual (like layer 5)
    F2S2I2                  the same, with counts (F10S2 covers 12 layers)
    FFS2I2                  the same, letters and counts mixed
    F2S2[sst+para|sts]2     layers 4-5 (and the pooler): one copy for sst and para, one for sts
    F2S2[sst+para|*]2       the same: "*" puts every task not named (here sts) alone
    SSSSSS,emb=F            freeze the embeddings, share every layer
    F4I2,pooler=S           a shared pooler on top of individual layers
    FFFLLL                  layers 3-5 (and the pooler): frozen base, one LoRA update per task
    BBBBBB                  BitFit everywhere: per-task biases and layer norms on a frozen encoder
    F3L[sst+para|sts]3      LoRA on layers 3-5 with one update for sst and para, one for sts

An L or B layer directly followed by a group token needs a count between them (`L1[a+b|c]`),
since `L[a+b|c]` is one grouped L layer; the printed form writes that count.

Normal forms, so that equal meanings compare equal and print alike:
  * a group token with one group of all tasks is S, one with every task alone is I
    (`[sst|para|sts]` == `I`); only a real split keeps the display letter G;
  * groups are ordered by the plan's task order, inside and across groups;
  * with a single task S and I both mean one copy; the letter given is kept for display;
  * L or B with every task alone prints as the bare letter (`L[sst|para|sts]` == `L`).

`str(plan)` prints the canonical form: one letter per layer, a run of equal group tokens once
with its count, and an override only where it differs from the default, e.g.
`F2S2[para+sst|sts]2,emb=F` prints as `FFSS[sst+para|sts]2` for tasks (sst, para, sts).

Errors are `PlanError` (a `ValueError`); the message quotes the plan, names the layer
(0-based, bottom to top) or the override, and says what to write instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

CHOICES = {"F": "frozen", "S": "shared", "I": "individual", "G": "groups", "L": "LoRA", "B": "BitFit"}
ADAPTED = ("L", "B")  # a frozen base shared by every task plus trainable per-copy updates
TASK_NAME = re.compile(r"[A-Za-z0-9_-]+")  # no '+', '|', '[', ']', ',', '=', '*', '.' or spaces
OVERRIDE_KEYS = {"emb": "embeddings", "embeddings": "embeddings", "pooler": "pooler"}
LAYER_INDEXING = "0-based, bottom to top"


class PlanError(ValueError):
    """A sharing plan that cannot be built; the message says what, where and what to do."""


@dataclass(frozen=True)
class PieceAssignment:
    """How one piece is held: frozen or trainable, and which tasks share each copy.

    `groups` partitions the plan's tasks in the plan's order; each group gets one copy of the
    piece. A frozen piece has a single group: untrained copies would all be identical. For L and
    B (`adapted`) the base is one frozen copy for every task and each group gets one update;
    such a piece is not `frozen`, since its updates train and need autograd.
    """

    frozen: bool
    groups: tuple[tuple[str, ...], ...]
    letter: str  # 'F', 'S', 'I', 'G', 'L' or 'B', for display

    def __post_init__(self) -> None:
        if self.letter not in CHOICES:
            raise PlanError(f"letter {self.letter!r} is not one of {', '.join(CHOICES)}")
        if self.frozen != (self.letter == "F"):
            raise PlanError(f"letter {self.letter!r} with frozen={self.frozen}: only 'F' is frozen")
        if not self.groups or not all(self.groups):
            raise PlanError(f"groups {self.groups!r} must be non-empty groups of task names")
        one_group = len(self.groups) == 1
        all_alone = all(len(group) == 1 for group in self.groups)
        consistent = {
            "F": one_group,
            "S": one_group,
            "I": all_alone,
            "G": not one_group and not all_alone,
            "L": True,
            "B": True,
        }[self.letter]
        if not consistent:
            raise PlanError(
                f"letter {self.letter!r} does not match groups {self.groups!r}; "
                "build assignments with PieceAssignment.of_letter or .of_groups"
            )

    @classmethod
    def of_letter(cls, letter: str, tasks: Sequence[str]) -> PieceAssignment:
        """F, S, I, L or B (either case) for the given tasks; L and B give one update per task."""
        letter = letter.upper() if letter in ("F", "S", "I", "L", "B", "f", "s", "i", "l", "b") else letter
        if letter in ("F", "S"):
            return cls(letter == "F", (tuple(tasks),), letter)
        if letter in ("I", *ADAPTED):
            return cls(False, tuple((task,) for task in tasks), letter)
        raise PlanError(
            f"choice {letter!r} is not a letter; use F (frozen), S (shared) or I (individual), "
            "L (LoRA) or B (BitFit), or PieceAssignment.of_groups for groups"
        )

    @classmethod
    def of_groups(cls, groups: Iterable[Iterable[str]], tasks: Sequence[str],
                  adapted: str | None = None) -> PieceAssignment:
        """Trainable copies shared inside `groups`, which must partition `tasks`; normalised.
        With `adapted` 'L' or 'B': one update per group on a frozen base shared by all."""
        groups = [list(group) for group in groups]
        return _group_assignment(groups, tuple(tasks), f"groups {groups!r}", adapted)

    @property
    def adapted(self) -> bool:
        """L or B: a frozen base shared by every task plus one trainable update per group."""
        return self.letter in ADAPTED

    @property
    def token(self) -> str:
        """The piece's choice as written in a plan: a letter, a group token like [a+b|c], or an
        L or B with groups like L[a+b|c] (the bare letter when every task is alone)."""
        groups = "[" + "|".join(self.keys) + "]"
        if self.letter == "G":
            return groups
        if self.adapted and not all(len(group) == 1 for group in self.groups):
            return self.letter + groups
        return self.letter

    @property
    def keys(self) -> tuple[str, ...]:
        """One key per copy, e.g. 'sst+para': unique within the piece, stable across runs."""
        return tuple("+".join(group) for group in self.groups)

    def key_of(self, task: str) -> str:
        """The key of the copy `task` uses."""
        for group in self.groups:
            if task in group:
                return "+".join(group)
        raise PlanError(f"task {task!r} is in none of the groups {self.groups!r}")


@dataclass(frozen=True, repr=False)
class SharingPlan:
    """A choice for every piece of the encoder, bottom to top, for a fixed list of tasks."""

    tasks: tuple[str, ...]
    embeddings: PieceAssignment
    layers: tuple[PieceAssignment, ...]  # bottom to top
    pooler: PieceAssignment

    def __post_init__(self) -> None:
        _check_tasks(self.tasks)
        if not self.layers:
            raise PlanError("a plan needs at least one encoder layer")
        for name, assignment in self.pieces():
            names = sorted(task for group in assignment.groups for task in group)
            if names != sorted(self.tasks) or _canonical(assignment.groups, self.tasks) != assignment.groups:
                raise PlanError(
                    f"{name}: groups {assignment.groups!r} are not a partition of the tasks "
                    f"{', '.join(self.tasks)} in plan order; build it with PieceAssignment.of_groups"
                )

    @classmethod
    def uniform(cls, letter: str, tasks: Sequence[str], num_layers: int) -> SharingPlan:
        """Every piece frozen, shared, individual, LoRA or BitFit: the baselines a sweep starts from."""
        tasks = _check_tasks(tasks)
        _check_num_layers(num_layers)
        piece = PieceAssignment.of_letter(letter, tasks)
        return cls(tasks, piece, (piece,) * num_layers, piece)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def pieces(self) -> Iterator[tuple[str, PieceAssignment]]:
        """(name, assignment) bottom to top: 'embeddings', 'layer.0', ..., 'pooler'."""
        yield "embeddings", self.embeddings
        for index, layer in enumerate(self.layers):
            yield f"layer.{index}", layer
        yield "pooler", self.pooler

    def assignment(self, piece: str) -> PieceAssignment:
        for name, assignment in self.pieces():
            if name == piece:
                return assignment
        raise PlanError(
            f"unknown piece {piece!r}; the pieces are embeddings, layer.0 to layer.{self.num_layers - 1}, pooler"
        )

    def group_of(self, piece: str, task: str) -> str:
        """Key of the copy of `piece` that `task` uses: tasks in one group share the key."""
        if task not in self.tasks:
            raise PlanError(f"unknown task {task!r}; the plan's tasks are {', '.join(self.tasks)}")
        return self.assignment(piece).key_of(task)

    def frozen_prefix_length(self) -> int:
        """How many pieces from the bottom are frozen without a break.

        The model runs these without autograd; a frozen piece above a trainable one still
        needs gradients to flow through it, so it does not count. The prefix ends below the
        first L or B piece: its base is frozen, but its updates train.
        """
        length = 0
        for _, assignment in self.pieces():
            if not assignment.frozen:
                break
            length += 1
        return length

    def __str__(self) -> str:
        tokens, index = [], 0
        while index < self.num_layers:
            layer, run = self.layers[index], 1
            if layer.token.endswith("]"):  # group tokens print once with their count
                while index + run < self.num_layers and self.layers[index + run] == layer:
                    run += 1
            token = layer.token + (str(run) if run > 1 else "")
            if tokens and tokens[-1] in ADAPTED and token.startswith("["):
                tokens[-1] += "1"  # a bare L or B before a group token: `L[..]` would be one grouped L
            tokens.append(token)
            index += run
        text = "".join(tokens)
        if self.embeddings != self.layers[0]:
            text += f",emb={self.embeddings.token}"
        if self.pooler != self.layers[-1]:
            text += f",pooler={self.pooler.token}"
        return text

    def __repr__(self) -> str:
        return f"SharingPlan({str(self)!r}, tasks={self.tasks!r})"

    def describe(self) -> str:
        """A table of every piece, its choice and its groups, for the command line."""
        rows = [("piece", "choice", "copies", "groups")]
        for name, a in self.pieces():
            copies = f"1 base + {len(a.groups)} update{'s' * (len(a.groups) > 1)}" if a.adapted else str(len(a.groups))
            if a.letter == "L" and name == "embeddings":
                copies = "1 (no update)"
            rows.append((name, f"{a.letter} {CHOICES[a.letter]}", copies, " | ".join(a.keys)))
        widths = [max(len(row[column]) for row in rows) for column in range(3)]
        lines = [f"plan {str(self)!r}: {self.num_layers} layers, tasks {', '.join(self.tasks)}"]
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3] for row in rows]
        names = [name for name, _ in self.pieces()]
        prefix = self.frozen_prefix_length()
        if prefix == 0:
            lines.append("frozen prefix: none")
        else:
            span = names[0] if prefix == 1 else f"{names[0]} to {names[prefix - 1]}"
            lines.append(f"frozen prefix: {span} ({prefix} piece{'s' * (prefix > 1)}, run without autograd)")
        above = [name for name, a in list(self.pieces())[prefix:] if a.frozen]
        if above:
            lines.append(f"frozen above a trainable piece: {', '.join(above)} (not updated, gradients pass through)")
        return "\n".join(lines)


def parse_plan(text: str, tasks: Sequence[str], num_layers: int) -> SharingPlan:
    """Read a plan written in the module's grammar; raise PlanError before anything is built."""
    tasks = _check_tasks(tasks)
    _check_num_layers(num_layers)
    body, *overrides = text.split(",")
    if not body.strip():
        raise PlanError(
            f"plan {text!r} names no layers; write one choice per encoder layer, bottom to top, "
            f"e.g. {'F' * (num_layers // 2) + 'S' * (num_layers - num_layers // 2)!r}"
        )

    def at_layers(first: int, count: int = 1) -> str:
        span = f"layer {first}" if count == 1 else f"layers {first}-{first + count - 1}"
        return f"plan {text!r}: {span} ({LAYER_INDEXING})"

    def wrong_length(covered: int) -> PlanError:
        return PlanError(
            f"plan {text!r} covers {covered} layer{'s' * (covered != 1)} but the model has "
            f"{num_layers}; give one choice per encoder layer, bottom to top (a count repeats a "
            "choice: F2S4 = FFSSSS)"
        )

    tokens = list(_scan(body, lambda layer, char: f"{at_layers(layer)}, character {char}"))
    covered = sum(token.count for token in tokens)
    if covered > num_layers:  # before any layer is made: S100000000 costs nothing
        raise wrong_length(covered)
    layers: list[PieceAssignment] = []
    for token in tokens:
        place = at_layers(len(layers), token.count)
        layers += [_choice_assignment(token, tasks, place)] * token.count
    if len(layers) != num_layers:
        raise wrong_length(len(layers))

    pieces = {"embeddings": layers[0], "pooler": layers[-1]}
    given: set[str] = set()
    for override in overrides:
        piece, assignment = _override(override, text, tasks)
        if piece in given:
            raise PlanError(f"plan {text!r}: two overrides for the {piece}; keep one")
        given.add(piece)
        pieces[piece] = assignment
    return SharingPlan(tasks, pieces["embeddings"], tuple(layers), pieces["pooler"])


@dataclass(frozen=True)
class _Token:
    choice: str | list[list[str]]  # a letter, or group members as written
    count: int
    text: str  # the choice as written, for messages
    members: list[list[str]] | None = None  # the groups of an L or B written with them, e.g. L[a+b|c]


def _scan(source: str, place: Callable[[int, int], str]) -> list[_Token]:
    """Split `source` into tokens; `place(layer, character)` says where, for messages."""
    tokens: list[_Token] = []
    covered, i = 0, 0
    while True:
        while i < len(source) and source[i].isspace():
            i += 1
        if i == len(source):
            return tokens
        start, char = i, source[i]
        where = place(covered, i)
        members: list[list[str]] | None = None
        if char in "FSILBfsilb":
            choice: str | list[list[str]] = char.upper()
            i += 1
            while choice in ADAPTED and i < len(source) and source[i].isspace():
                i += 1
            if choice in ADAPTED and i < len(source) and source[i] == "[":  # L[a+b|c]: one update per group
                members, i = _group_token(source, i, where)
        elif char == "[":
            choice, i = _group_token(source, i, where)
        elif char == "]":
            raise PlanError(f"{where}: ']' closes no group; open the group token with '['")
        elif char.isdigit():
            raise PlanError(f"{where}: a count follows no choice; write it after a letter or group, e.g. F2")
        else:
            raise PlanError(
                f"{where}: unknown letter {char!r}; use F (frozen), S (shared), I (individual), "
                "L (LoRA), B (BitFit) or a group token like [a+b|c]"
            )
        end = i
        digits = re.match(r"\d*", source[i:]).group()
        i += len(digits)
        count = int(digits) if digits else 1
        if count == 0:
            raise PlanError(
                f"{where}: count 0 in {source[start:i]!r}; a count repeats its choice and must be at least 1"
            )
        tokens.append(_Token(choice, count, source[start:end], members))
        covered += count


def _group_token(source: str, i: int, where: str) -> tuple[list[list[str]], int]:
    """The members of the group token opening at `source[i]`, and the index just past it."""
    close, inner_open = source.find("]", i), source.find("[", i + 1)
    if close < 0:
        raise PlanError(f"{where}: '[' is never closed; end the group token with ']'")
    if 0 <= inner_open < close:
        raise PlanError(f"{where}: '[' opens a group inside a group; groups do not nest, write [a+b|c]")
    return _members(source[i : close + 1], where), close + 1


def _members(token: str, where: str) -> list[list[str]]:
    """'[a+b|c]' -> [['a', 'b'], ['c']], rejecting empty groups and names."""
    if not token[1:-1].strip():
        raise PlanError(f"{where}: empty group token {token!r}; name the tasks, e.g. [a+b|c]")
    groups = [[name.strip() for name in group.split("+")] for group in token[1:-1].split("|")]
    if any(not name for group in groups for name in group):
        raise PlanError(
            f"{where}: empty task name in {token!r}; join tasks with '+' and separate groups with '|', e.g. [a+b|c]"
        )
    return groups


def _choice_assignment(token: _Token, tasks: tuple[str, ...], place: str) -> PieceAssignment:
    if isinstance(token.choice, str) and token.members is None:
        return PieceAssignment.of_letter(token.choice, tasks)
    adapted = token.choice if isinstance(token.choice, str) else None
    groups = token.members if adapted else token.choice
    where = f"{place}: group token {token.text!r}"
    stars = [group for group in groups if "*" in group]
    if stars:
        if len(stars) > 1 or stars[0] != ["*"]:
            raise PlanError(f"{where}: '*' must appear once, alone between '|', e.g. [a+b|*]")
        named = {name for group in groups for name in group}
        star = groups.index(["*"])
        groups = groups[:star] + [[task] for task in tasks if task not in named] + groups[star + 1 :]
    return _group_assignment(groups, tasks, where, adapted)


def _group_assignment(groups: list[list[str]], tasks: tuple[str, ...], where: str,
                      adapted: str | None = None) -> PieceAssignment:
    """Check that `groups` partition `tasks`, then normalise: one group is S, all alone is I;
    with `adapted` ('L' or 'B') the letter stays and only the groups are normalised."""
    seen: set[str] = set()
    for group in groups:
        for name in group:
            if name not in tasks:
                raise PlanError(f"{where}: unknown task {name!r}; the plan's tasks are {', '.join(tasks)}")
            if name in seen:
                raise PlanError(f"{where}: task {name!r} appears twice; put each task in exactly one group")
            seen.add(name)
    missing = [task for task in tasks if task not in seen]
    if missing:
        raise PlanError(
            f"{where}: leaves out task{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))}; every task "
            "must be in exactly one group (add it, or write '*' for every task not named, each alone)"
        )
    canonical = _canonical(groups, tasks)
    if adapted is not None:
        if adapted not in ADAPTED:
            raise PlanError(f"{where}: only L or B take groups of updates, not {adapted!r}")
        return PieceAssignment(False, canonical, adapted)
    if len(canonical) == 1:
        return PieceAssignment(False, canonical, "S")
    if all(len(group) == 1 for group in canonical):
        return PieceAssignment(False, canonical, "I")
    return PieceAssignment(False, canonical, "G")


def _override(override: str, text: str, tasks: tuple[str, ...]) -> tuple[str, PieceAssignment]:
    """'emb=F' -> ('embeddings', frozen assignment)."""
    where = f"plan {text!r}: override {override.strip()!r}"
    if not override.strip():
        raise PlanError(f"plan {text!r}: empty override after ','; write emb=<choice> or pooler=<choice>")
    key, equals, value = override.partition("=")
    if not equals:
        raise PlanError(f"{where}: an override needs '='; write emb=<choice> or pooler=<choice>")
    piece = OVERRIDE_KEYS.get(key.strip().lower())
    if piece is None:
        raise PlanError(
            f"{where}: unknown override key {key.strip()!r}; write emb=<choice> (embeddings) or pooler=<choice>"
        )
    tokens = _scan(value, lambda layer, char: where)
    if len(tokens) != 1 or tokens[0].count != 1:
        raise PlanError(f"{where}: an override takes exactly one choice without a count, e.g. emb=F")
    return piece, _choice_assignment(tokens[0], tasks, where)


def _canonical(groups: Iterable[Iterable[str]], tasks: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """Groups sorted by plan task order, inside and across groups (unknown names sort last)."""
    order = {task: index for index, task in enumerate(tasks)}
    rank = lambda name: (order.get(name, len(order)), name)  # noqa: E731
    inner = [tuple(sorted(group, key=rank)) for group in groups]
    return tuple(sorted(inner, key=lambda group: [rank(name) for name in group]))


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    if isinstance(tasks, str):
        raise PlanError(f"tasks must be a sequence of names, got the string {tasks!r}; write ({tasks!r},)")
    tasks = tuple(tasks)
    if not tasks:
        raise PlanError("a plan needs at least one task")
    for task in tasks:
        if not isinstance(task, str) or not TASK_NAME.fullmatch(task):
            raise PlanError(
                f"task name {task!r} cannot appear in a plan; use letters, digits, '_' and '-' only"
            )
    duplicates = sorted({task for task in tasks if tasks.count(task) > 1})
    if duplicates:
        raise PlanError(f"task names must be distinct; {', '.join(map(repr, duplicates))} repeated")
    return tasks


def _check_num_layers(num_layers: int) -> None:
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise PlanError(f"num_layers must be a positive integer, got {num_layers!r}")
