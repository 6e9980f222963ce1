"""SharingPlan: the plan grammar, its normal forms, its errors, and the helpers the model builder uses."""

from __future__ import annotations

import random
import tracemalloc

import pytest
import torch.nn as nn

from mops.multitask.sharing.plan import PieceAssignment, PlanError, SharingPlan, parse_plan

TASKS = ("sst", "para", "sts")


def plan(text: str, tasks: tuple[str, ...] = TASKS, num_layers: int = 6) -> SharingPlan:
    return parse_plan(text, tasks, num_layers)


def letters(p: SharingPlan) -> str:
    return "".join(assignment.letter for _, assignment in p.pieces())


# --- the short form -------------------------------------------------------------------------


def test_one_letter_per_layer_bottom_to_top():
    p = plan("FFSSII")
    assert p.num_layers == 6
    assert [a.letter for a in p.layers] == list("FFSSII")
    assert [a.frozen for a in p.layers] == [True, True, False, False, False, False]
    assert p.layers[0].groups == (TASKS,)  # frozen: one copy
    assert p.layers[2].groups == (TASKS,)  # shared: one copy for all tasks
    assert p.layers[4].groups == (("sst",), ("para",), ("sts",))  # individual: a copy per task


def test_embeddings_follow_the_bottom_layer_and_the_pooler_the_top_layer():
    p = plan("FFSSII")
    assert p.embeddings == p.layers[0] and p.embeddings.frozen
    assert p.pooler == p.layers[-1] and p.pooler.letter == "I"
    assert letters(plan("SSSSSF")) == "SSSSSSFF"


def test_pieces_are_named_bottom_to_top():
    assert [name for name, _ in plan("FFSSII").pieces()] == [
        "embeddings", "layer.0", "layer.1", "layer.2", "layer.3", "layer.4", "layer.5", "pooler",
    ]  # fmt: skip


@pytest.mark.parametrize("text", ["F2S2I2", "FFS2I2", "F1F1S2I1I", "ffssii", "f2 S2 i2", "  FFSSII  "])
def test_counts_case_and_spaces_do_not_change_the_plan(text):
    assert plan(text) == plan("FFSSII")


def test_counts_may_have_several_digits():
    p = parse_plan("F10S2", TASKS, 12)
    assert [a.letter for a in p.layers] == ["F"] * 10 + ["S"] * 2


def test_a_frozen_layer_may_sit_above_a_trainable_one():
    assert [a.letter for a in plan("SFSSSS").layers] == list("SFSSSS")


# --- group sharing --------------------------------------------------------------------------


def test_group_token_shares_a_copy_inside_each_group():
    p = plan("F2S2[sst+para|sts]2")
    for piece in (p.layers[4], p.layers[5], p.pooler):
        assert piece.letter == "G" and not piece.frozen
        assert piece.groups == (("sst", "para"), ("sts",))
    assert [a.letter for a in p.layers[:4]] == list("FFSS")


@pytest.mark.parametrize("text", ["[sts|para+sst]", "[ sst + para | sts ]", "[sst+para|*]", "[*|para+sst]"])
def test_group_order_spaces_and_star_do_not_change_the_plan(text):
    assert plan(f"F2S2{text}2") == plan("F2S2[sst+para|sts]2")


def test_star_stands_for_every_task_not_named_each_alone():
    p = parse_plan("[a+b|*]", ("a", "b", "c", "d"), 1)
    assert p.layers[0].groups == (("a", "b"), ("c",), ("d",))


@pytest.mark.parametrize(
    ("group_token", "letter"),
    [("[sst|para|sts]", "I"), ("[sts|*]", "I"), ("[*]", "I"), ("[sst+para+sts]", "S"), ("[sts+para+sst]", "S")],
)
def test_groups_that_mean_shared_or_individual_are_those_letters(group_token, letter):
    assert plan(group_token * 6) == plan(letter * 6)
    assert str(plan(group_token * 6)) == letter * 6


def test_two_tasks_in_separate_groups_is_individual():
    assert parse_plan("[a|b]", ("a", "b"), 1) == parse_plan("I", ("a", "b"), 1)


# --- embeddings and pooler overrides --------------------------------------------------------


def test_overrides_set_the_embeddings_and_the_pooler():
    p = plan("SSSSSS,emb=F,pooler=[sst+para|sts]")
    assert p.embeddings.frozen
    assert all(a.letter == "S" for a in p.layers)
    assert p.pooler.groups == (("sst", "para"), ("sts",))


@pytest.mark.parametrize("text", ["SSSSSS,EMB=f", "SSSSSS, embeddings = F", "SSSSSS,pooler=S,emb=F"])
def test_override_keys_ignore_case_spaces_and_order(text):
    assert plan(text) == plan("SSSSSS,emb=F")


def test_an_override_equal_to_the_default_changes_nothing():
    assert plan("FFSSII,emb=F,pooler=I") == plan("FFSSII")
    assert plan("FFSSII,pooler=[sst|*]") == plan("FFSSII")


# --- one task ---------------------------------------------------------------------------------


def test_lora_and_bitfit_letters_give_one_update_per_task():
    p = plan("ffllbb")
    assert letters(p) == "FFFLLBBB"
    for name in ("layer.2", "layer.3", "layer.4", "layer.5", "pooler"):
        a = p.assignment(name)
        assert a.adapted and not a.frozen  # the updates train, though the base is frozen
        assert a.groups == (("sst",), ("para",), ("sts",))
    assert not p.assignment("layer.0").adapted


def test_a_group_token_right_after_l_or_b_gives_one_update_per_group():
    p = plan("F2 L [sst+para|sts]4")  # spaces between the letter and its groups are allowed
    assert letters(p) == "FFFLLLLL"
    assert p.assignment("layer.2").groups == (("sst", "para"), ("sts",))
    assert p.group_of("layer.5", "para") == p.group_of("pooler", "sst") == "sst+para"
    # without the letter, a group token is a grouped copy (G), not an update
    assert plan("F2L1[sst+para|sts]3").assignment("layer.3").letter == "G"
    assert plan("F2L1[sst+para|sts]3").assignment("layer.2").groups == (("sst",), ("para",), ("sts",))


def test_l_and_b_are_not_the_same_choice_as_s_or_i():
    assert plan("LLLLLL") != plan("IIIIII") and plan("BBBBBB") != plan("IIIIII")
    assert plan("L[sst+para+sts]6") != plan("SSSSSS")
    assert plan("L[sst+para+sts]6").layers[0].letter == "L"


def test_with_one_task_shared_and_individual_both_mean_one_copy():
    shared, individual = plan("SSSSSS", ("sst",)), plan("IIIIII", ("sst",))
    assert [a.groups for _, a in shared.pieces()] == [a.groups for _, a in individual.pieces()]
    assert str(shared) == "SSSSSS" and str(individual) == "IIIIII"  # the letters given are kept
    assert shared.group_of("layer.0", "sst") == individual.group_of("layer.0", "sst") == "sst"
    assert plan("[sst]6", ("sst",)) == shared


# --- SharingPlan.uniform ----------------------------------------------------------------------


@pytest.mark.parametrize("letter", ["F", "S", "I", "s", "L", "b"])
def test_uniform_gives_every_piece_the_same_choice(letter):
    assert SharingPlan.uniform(letter, TASKS, 4) == parse_plan(letter.upper() * 4, TASKS, 4)


@pytest.mark.parametrize("letter", ["G", "X", "FS"])
def test_uniform_accepts_only_f_s_i_l_or_b(letter):
    with pytest.raises(PlanError, match="F \\(frozen\\), S \\(shared\\) or I \\(individual\\), L \\(LoRA\\) or B"):
        SharingPlan.uniform(letter, TASKS, 4)


# --- printing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("FFSSII", "FFSSII"),
        ("F2S2I2", "FFSSII"),
        ("ffs2I2", "FFSSII"),
        ("F2S2[para+sst|sts]2", "FFSS[sst+para|sts]2"),
        ("F2S2[para+sst|sts]2,emb=F", "FFSS[sst+para|sts]2"),
        ("F2[sst+para|sts][sst+para|sts]S2", "FF[sst+para|sts]2SS"),
        ("[sst+sts|para][sst+para|sts]S4", "[sst+sts|para][sst+para|sts]SSSS"),
        ("SSSSSS,emb=F", "SSSSSS,emb=F"),
        ("SSSSSS,pooler=I,emb=F", "SSSSSS,emb=F,pooler=I"),
        ("F4I2,pooler=[sts|*]", "FFFFII"),
        ("I6,pooler=[sts|para+sst]", "IIIIII,pooler=[sst+para|sts]"),
        ("F3L3", "FFFLLL"),
        ("b6", "BBBBBB"),
        ("F3L[sts|para+sst]3", "FFFL[sst+para|sts]3"),
        ("L[sst|para|sts]6", "LLLLLL"),  # every task alone: the bare letter
        ("L[*]2B[sst+para+sts]4", "LLB[sst+para+sts]4"),  # one update shared by every task
        ("L1[sst+para|sts]S4", "L1[sst+para|sts]SSSS"),  # a bare L before a group token keeps its count
        ("SSSSSS,emb=B,pooler=L", "SSSSSS,emb=B,pooler=L"),
        ("L6,pooler=L[sts|para+sst]", "LLLLLL,pooler=L[sst+para|sts]"),
    ],
)
def test_str_prints_the_canonical_form_and_parses_back(text, canonical):
    assert str(plan(text)) == canonical
    assert plan(canonical) == plan(text)


def test_repr_shows_the_plan_and_its_tasks():
    assert repr(plan("F2S4")) == "SharingPlan('FFSSSS', tasks=('sst', 'para', 'sts'))"


def test_describe_lists_every_piece_with_its_choice_and_groups():
    lines = plan("F2S2[sst+para|sts]2,emb=S").describe().splitlines()
    assert lines[0] == "plan 'FFSS[sst+para|sts]2,emb=S': 6 layers, tasks sst, para, sts"
    assert lines[1].split() == ["piece", "choice", "copies", "groups"]
    rows = {line.split()[0]: line.split(maxsplit=1)[1] for line in lines[2:10]}
    assert list(rows) == ["embeddings", *(f"layer.{i}" for i in range(6)), "pooler"]
    assert rows["embeddings"].split() == ["S", "shared", "1", "sst+para+sts"]
    assert rows["layer.0"].split() == ["F", "frozen", "1", "sst+para+sts"]
    assert rows["layer.4"].split() == ["G", "groups", "2", "sst+para", "|", "sts"]
    assert rows["pooler"] == rows["layer.5"]
    assert lines[10] == "frozen prefix: none"
    assert lines[11] == "frozen above a trainable piece: layer.0, layer.1 (not updated, gradients pass through)"
    assert len(lines) == 12


def test_describe_shows_the_base_and_updates_of_l_and_b_pieces():
    rows = plan("FFLL[sst+para|sts]BB,emb=L").describe().splitlines()
    assert rows[2].split() == ["embeddings", "L", "LoRA", "1", "(no", "update)", "sst", "|", "para", "|", "sts"]
    assert rows[5].split() == ["layer.2", "L", "LoRA", "1", "base", "+", "3", "updates", "sst", "|", "para", "|", "sts"]
    assert rows[6].split() == ["layer.3", "L", "LoRA", "1", "base", "+", "2", "updates", "sst+para", "|", "sts"]
    assert rows[8].split()[:5] == ["layer.5", "B", "BitFit", "1", "base"]
    assert rows[-2] == "frozen prefix: none"


def test_describe_names_the_frozen_prefix():
    assert plan("FFSSII").describe().splitlines()[-1] == (
        "frozen prefix: embeddings to layer.1 (3 pieces, run without autograd)"
    )
    assert plan("SSSSSS,emb=F").describe().splitlines()[-1] == (
        "frozen prefix: embeddings (1 piece, run without autograd)"
    )
    assert "individual" in plan("IIIIII").describe() and "frozen above" not in plan("FFSSII").describe()


# --- what the model builder reads -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "length"),
    [
        ("SSSSSS", 0),
        ("FFSSII", 3),  # embeddings + layers 0-1
        ("SSSSSS,emb=F", 1),  # only the embeddings
        ("FFSSII,emb=S", 0),  # a trainable bottom piece breaks the prefix
        ("SFFSSS,emb=F", 1),  # layers 1-2 are frozen but above trainable layer 0
        ("FFFFFF,pooler=S", 7),
        ("FFFFFF", 8),  # everything, pooler included
        ("FFLLSS", 3),  # the prefix ends below the first L piece
        ("FFFBBB", 4),
        ("FFFFFF,pooler=L", 7),
        ("LLLLLL", 0),  # L embeddings have no update, but they are an L piece
        ("FFFFFF,emb=B", 0),
    ],
)
def test_frozen_prefix_counts_frozen_pieces_from_the_bottom_up_to_the_first_trainable_one(text, length):
    assert plan(text).frozen_prefix_length() == length


def test_group_of_gives_tasks_in_one_group_the_same_key():
    p = plan("F2S2[sst+para|sts]I,emb=S")
    assert p.group_of("layer.4", "sst") == p.group_of("layer.4", "para") == "sst+para"
    assert p.group_of("layer.4", "sts") == "sts"
    assert {p.group_of("layer.5", task) for task in TASKS} == {"sst", "para", "sts"}  # individual
    assert {p.group_of("layer.0", task) for task in TASKS} == {"sst+para+sts"}  # frozen: one copy
    assert {p.group_of("embeddings", task) for task in TASKS} == {"sst+para+sts"}  # shared: one copy
    assert p.group_of("pooler", "para") == "para"


def test_group_keys_are_valid_module_names_one_per_copy():
    p = plan("[sst+para|sts]I[sst|para+sts]F2S")
    for _, assignment in p.pieces():
        copies = nn.ModuleDict({key: nn.Identity() for key in assignment.keys})  # rejects '.' and ''
        assert len(copies) == len(assignment.groups)
        assert {assignment.key_of(task) for task in TASKS} == set(copies)


def test_group_of_rejects_unknown_pieces_and_tasks():
    p = plan("FFSSII")
    with pytest.raises(PlanError, match=r"unknown piece 'layer\.6'.*layer\.0 to layer\.5"):
        p.group_of("layer.6", "sst")
    with pytest.raises(PlanError, match="unknown task 'qa'; the plan's tasks are sst, para, sts"):
        p.group_of("layer.0", "qa")


# --- errors: what, where, what to do ----------------------------------------------------------

LAYER = "(0-based, bottom to top)"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        # wrong length
        ("FFSS", ["plan 'FFSS' covers 4 layers but the model has 6", "one choice per encoder layer"]),
        ("F7", ["plan 'F7' covers 7 layers but the model has 6"]),
        ("F2S2[sst|para|sts]", ["covers 5 layers but the model has 6"]),
        # unknown letter
        ("FFXSII", [f"layer 2 {LAYER}", "character 2", "unknown letter 'X'", "use F (frozen), S (shared)"]),
        ("F2S2G2", [f"layer 4 {LAYER}", "unknown letter 'G'"]),
        # groups that are not a partition of the tasks
        ("F2S2[sst+foo|sts]2", [f"layers 4-5 {LAYER}", "'[sst+foo|sts]'", "unknown task 'foo'", "sst, para, sts"]),
        ("F2S2[sst|para]2", [f"layers 4-5 {LAYER}", "leaves out task 'sts'", "exactly one group"]),
        ("[sst]SSSSS", [f"layer 0 {LAYER}", "leaves out tasks 'para', 'sts'"]),
        ("FFS[sst|sst+para|sts]SS", [f"layer 3 {LAYER}", "task 'sst' appears twice"]),
        ("S5[SST|para|sts]", [f"layer 5 {LAYER}", "unknown task 'SST'"]),  # task names keep their case
        # counts
        ("F0S6", [f"layer 0 {LAYER}", "count 0 in 'F0'", "at least 1"]),
        ("F2S00S4", [f"layer 2 {LAYER}", "count 0 in 'S00'"]),
        ("2FFSSII", [f"layer 0 {LAYER}", "a count follows no choice"]),
        # empty tokens
        ("", ["names no layers", "one choice per encoder layer"]),
        (",emb=F", ["names no layers"]),
        ("FF[]SSII", [f"layer 2 {LAYER}", "empty group token '[]'"]),
        ("[sst+|para+sts]S5", [f"layer 0 {LAYER}", "empty task name in '[sst+|para+sts]'"]),
        ("[sst||para+sts]S5", ["empty task name"]),
        # brackets
        ("F2S2[sst+para|sts2", [f"layer 4 {LAYER}", "character 4", "'[' is never closed"]),
        ("FFSS]II", [f"layer 4 {LAYER}", "']' closes no group"]),
        ("[[sst+para]|sts]S5", [f"layer 0 {LAYER}", "groups do not nest"]),
        # star
        ("[*|*]S5", ["'*' must appear once"]),
        ("[sst+*]S5", ["'*' must appear once, alone"]),
        # overrides
        ("FFSSII,pool=S", ["override 'pool=S'", "unknown override key 'pool'", "emb=", "pooler="]),
        ("FFSSII,emb", ["override 'emb'", "needs '='"]),
        ("FFSSII,", ["empty override after ','"]),
        ("FFSSII,emb=", ["override 'emb='", "exactly one choice"]),
        ("FFSSII,emb=F2", ["override 'emb=F2'", "exactly one choice without a count"]),
        ("FFSSII,emb=FS", ["exactly one choice"]),
        ("FFSSII,emb=X", ["override 'emb=X'", "unknown letter 'X'"]),
        ("FFSSII,pooler=[sst|qa]", ["override 'pooler=[sst|qa]'", "unknown task 'qa'"]),
        ("FFSSII,emb=F,embeddings=S", ["two overrides for the embeddings"]),
        # L and B
        ("FFLLSX", [f"layer 5 {LAYER}", "unknown letter 'X'", "L (LoRA), B (BitFit)"]),
        ("FFL[sst+foo|sts]3", [f"layers 2-4 {LAYER}", "group token 'L[sst+foo|sts]'", "unknown task 'foo'"]),
        ("FFB[sst|para]4", [f"layers 2-5 {LAYER}", "group token 'B[sst|para]'", "leaves out task 'sts'"]),
        ("FFL[sst|sst+para|sts]4", [f"layers 2-5 {LAYER}", "task 'sst' appears twice"]),
        ("FFL[sst+para|sts4", [f"layer 2 {LAYER}", "'[' is never closed"]),
        ("FFL0S4", [f"layer 2 {LAYER}", "count 0 in 'L0'"]),
        ("FFL[]4", [f"layer 2 {LAYER}", "empty group token '[]'"]),
        ("FFSSII,emb=L2", ["override 'emb=L2'", "exactly one choice without a count"]),
        ("FFSSII,pooler=B[sst|qa]", ["override 'pooler=B[sst|qa]'", "unknown task 'qa'"]),
        ("L[sst+para|sts]5", ["covers 5 layers but the model has 6"]),
    ],
)
def test_bad_plans_fail_with_a_message_saying_what_and_where(text, fragments):
    with pytest.raises(PlanError) as error:
        plan(text)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_plan_error_is_a_value_error():
    assert issubclass(PlanError, ValueError)


@pytest.mark.parametrize(
    ("tasks", "num_layers", "fragment"),
    [
        ((), 6, "at least one task"),
        (("sst", "sst"), 6, "'sst' repeated"),
        (("sst", "a+b"), 6, "task name 'a+b'"),
        (("sst", "layer.0"), 6, "task name 'layer.0'"),
        ("sst", 6, "got the string 'sst'"),
        (TASKS, 0, "num_layers must be a positive integer"),
    ],
)
def test_bad_tasks_or_depth_fail_before_the_plan_is_read(tasks, num_layers, fragment):
    with pytest.raises(PlanError, match=fragment.replace("+", r"\+").replace(".", r"\.")):
        parse_plan("S", tasks, num_layers)


def test_assignments_built_by_hand_are_checked_too():
    shared = PieceAssignment.of_letter("S", TASKS)
    with pytest.raises(PlanError, match="does not match groups"):
        PieceAssignment(False, (("sst",), ("para", "sts")), "I")
    with pytest.raises(PlanError, match="only 'F' is frozen"):
        PieceAssignment(True, (TASKS,), "S")
    with pytest.raises(PlanError, match="layer.1: groups .* are not a partition"):
        SharingPlan(TASKS, shared, (shared, PieceAssignment.of_letter("S", ("sst", "para"))), shared)
    with pytest.raises(PlanError, match="pooler: groups .* in plan order"):
        SharingPlan(TASKS, shared, (shared,), PieceAssignment(False, (("sts",), ("para", "sst")), "G"))
    with pytest.raises(PlanError, match="leaves out task 'sts'"):
        PieceAssignment.of_groups([["sst"], ["para"]], TASKS)


# --- property: any valid plan prints, parses back, and reads the same however it is written ---

TASK_POOL = ("sst", "para", "sts", "nli", "qa-1", "ner_2")


def random_partition(rng: random.Random, tasks: tuple[str, ...]) -> list[list[str]]:
    labels = {task: rng.randrange(len(tasks)) for task in tasks}
    groups = [[t for t in tasks if labels[t] == label] for label in set(labels.values())]
    for group in groups:
        rng.shuffle(group)
    rng.shuffle(groups)
    return groups


def random_assignment(rng: random.Random, tasks: tuple[str, ...]) -> PieceAssignment:
    kind = rng.choice("FSIGLB")
    if kind == "G":
        return PieceAssignment.of_groups(random_partition(rng, tasks), tasks)
    if kind in "LB" and rng.random() < 0.5:
        return PieceAssignment.of_groups(random_partition(rng, tasks), tasks, adapted=kind)
    return PieceAssignment.of_letter(kind, tasks)


def random_plan(rng: random.Random) -> SharingPlan:
    tasks = tuple(rng.sample(TASK_POOL, rng.randint(1, len(TASK_POOL))))
    layers = [random_assignment(rng, tasks)]
    for _ in range(rng.randint(0, 11)):
        layers.append(layers[-1] if rng.random() < 0.4 else random_assignment(rng, tasks))
    embeddings = layers[0] if rng.random() < 0.6 else random_assignment(rng, tasks)
    pooler = layers[-1] if rng.random() < 0.6 else random_assignment(rng, tasks)
    return SharingPlan(tasks, embeddings, tuple(layers), pooler)


def write_loosely(rng: random.Random, assignment: PieceAssignment, tasks: tuple[str, ...]) -> str:
    """One of the many ways to write `assignment`: any case, any group order, '*', spaces."""
    alone = all(len(group) == 1 for group in assignment.groups)
    if assignment.adapted:
        letter = rng.choice([assignment.letter, assignment.letter.lower()])
        if alone and rng.random() < 0.5:
            return letter
        return letter + rng.choice(["", " "]) + write_groups_loosely(rng, assignment)
    if assignment.letter == "F" or len(tasks) == 1 or rng.random() < 0.5:
        if assignment.letter != "G":
            return rng.choice([assignment.letter, assignment.letter.lower()])
    return write_groups_loosely(rng, assignment)


def write_groups_loosely(rng: random.Random, assignment: PieceAssignment) -> str:
    groups = [list(group) for group in assignment.groups]
    for group in groups:
        rng.shuffle(group)
    rng.shuffle(groups)
    if rng.random() < 0.5 and any(len(group) == 1 for group in groups):
        groups = [group for group in groups if len(group) > 1] + [["*"]]
    return "[" + rng.choice(["|", " | "]).join(rng.choice(["+", " + "]).join(group) for group in groups) + "]"


def write_plan_loosely(rng: random.Random, p: SharingPlan) -> str:
    tokens, index = [], 0
    while index < p.num_layers:
        run = 1
        while index + run < p.num_layers and p.layers[index + run] == p.layers[index]:
            run += 1
        take = rng.randint(1, run)
        count = str(take) if take > 1 or rng.random() < 0.2 else ""
        token = write_loosely(rng, p.layers[index], p.tasks) + count
        if tokens and tokens[-1][-1] in "LBlb" and token.startswith("["):
            tokens[-1] += "1"  # else the group token would be read as the L's or B's groups
        tokens.append(token)
        index += take
    overrides = []
    if p.embeddings != p.layers[0] or rng.random() < 0.3:
        overrides.append(rng.choice(["emb", "EMB", "embeddings"]) + "=" + write_loosely(rng, p.embeddings, p.tasks))
    if p.pooler != p.layers[-1] or rng.random() < 0.3:
        overrides.append(rng.choice(["pooler", "Pooler"]) + "=" + write_loosely(rng, p.pooler, p.tasks))
    rng.shuffle(overrides)
    return rng.choice(["", " "]).join(tokens) + "".join("," + override for override in overrides)


@pytest.mark.parametrize("seed", range(4))
def test_random_plans_round_trip_through_their_printed_form(seed):
    rng = random.Random(seed)
    for _ in range(250):
        p = random_plan(rng)
        text = str(p)
        assert parse_plan(text, p.tasks, p.num_layers) == p, text
        assert str(parse_plan(text, p.tasks, p.num_layers)) == text
        loose = write_plan_loosely(rng, p)
        assert parse_plan(loose, p.tasks, p.num_layers) == p, (loose, text)


def test_a_huge_count_is_refused_before_any_layer_is_made():
    """`S100000000` once allocated gigabytes of layer assignments before it was refused."""
    tracemalloc.start()
    with pytest.raises(PlanError, match="plan 'S100000000' covers 100000000 layers but the model has 6"):
        parse_plan("S100000000", ["sst", "para", "sts"], 6)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2**20
