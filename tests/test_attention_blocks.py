"""mops.kernels.attention_blocks: the attention kernels' block sizes come from a table, tuning is opt-in and saved.

Everything here is pure Python: the GPU facts, the kernel launch and the timer are replaced by
fakes, so the choice logic is checked on any machine.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import mops.kernels.attention_blocks as lc
from mops.kernels.attention_blocks import Config, config_key, launch_config

KNOWN = [(9, 0), (8, 0)]
UNKNOWN = [(8, 6), (8, 9), (7, 5), (10, 0), (12, 0)]
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
HEAD_DIMS = [16, 32, 48, 64, 80, 128, 256]
LENGTHS = [1, 48, 128, 129, 512, 513, 4096]


@pytest.mark.parametrize("capability", KNOWN + UNKNOWN, ids=lambda c: f"sm{c[0]}{c[1]}")
def test_every_key_gives_a_config_among_the_candidates(capability):
    """Any GPU, dtype, head dim and length gets a configuration, and it is one the tuner would also try."""
    for kernel in lc.KERNELS:
        for dtype in DTYPES:
            for d in HEAD_DIMS:
                for length in LENGTHS:
                    config = launch_config(kernel, capability, dtype, d, length)
                    assert isinstance(config, Config)
                    assert config in lc.candidates(kernel, dtype, d), (kernel, capability, dtype, d, length)
                    assert min(config.BLOCK_M, config.BLOCK_N) >= 16, "tl.dot needs blocks of at least 16"


@pytest.mark.parametrize("capability", UNKNOWN, ids=lambda c: f"sm{c[0]}{c[1]}")
def test_unknown_architectures_fall_back_to_the_star_rows(capability):
    for kernel in lc.KERNELS:
        for d in (64, 128, 256):
            for length in (64, 300, 1000):
                want = lc.TABLE[("*", "half", d, "*")][kernel]
                assert launch_config(kernel, capability, torch.bfloat16, d, length) == want


def test_known_architectures_use_their_rows_and_length_buckets():
    # BERT-base on an H100: d = 64, L = 512 -> the long-sequence row; L = 48 -> the short one.
    assert launch_config("fwd", (9, 0), torch.bfloat16, 64, 512) == lc.TABLE[("9.0", "half", 64, "*")]["fwd"]
    assert launch_config("fwd", (9, 0), torch.bfloat16, 64, 48) == lc.TABLE[("9.0", "half", 64, "L<=128")]["fwd"]
    assert launch_config("dkdv", (8, 0), torch.float16, 128, 2000) == lc.TABLE[("8.0", "half", 128, "*")]["dkdv"]
    # fp16 and bf16 share tiles; fp32 has its own on every architecture
    assert launch_config("dq", (9, 0), torch.float16, 64, 300) == launch_config("dq", (9, 0), torch.bfloat16, 64, 300)
    assert launch_config("dq", (9, 0), torch.float32, 64, 300) == lc.TABLE[("*", "fp32", 64, "*")]["dq"]


def test_lengths_share_a_config_within_a_bucket():
    """Lengths are bucketed coarsely, so a run with many sequence lengths compiles few variants."""
    configs = {launch_config("fwd", (9, 0), torch.bfloat16, 64, length) for length in range(129, 513)}
    assert len(configs) == 1
    assert {lc.length_bucket(n) for n in range(1, 5000)} == {"L<=128", "L<=512", "L>512"}


# Shared memory per block each architecture row may use (bytes): sm_90 227 KB, sm_80 163 KB, "*" 99 KB.
SMEM = {"9.0": 227 * 1024, "8.0": 163 * 1024, "*": 99 * 1024}


def _smem_estimate(kernel: str, config: Config, head_dim: int, element: int) -> int:
    """A coarse model: the resident tile plus `num_stages` copies of the two streamed tiles."""
    m, n, stages = config.BLOCK_M, config.BLOCK_N, config.num_stages
    resident, streamed = {"fwd": (m, n), "dq": (2 * m, n), "dkdv": (2 * n, m)}[kernel]
    return (resident * head_dim + stages * 2 * streamed * head_dim) * element


def test_table_rows_fit_their_architecture_shared_memory():
    for (arch, family, d, _), row in lc.TABLE.items():
        element = 4 if family == "fp32" else 2
        for kernel, config in row.items():
            used = _smem_estimate(kernel, config, d, element)
            assert used <= SMEM[arch], f"{arch} {family} d{d} {kernel} {config}: ~{used} bytes of shared memory"


def test_interpreter_gets_small_fixed_blocks():
    for kernel in lc.KERNELS:
        assert launch_config(kernel, None, torch.float32, 64, 4096) == lc.INTERPRETER[kernel]
    assert lc.config_for("fwd", torch.device("cpu"), torch.float32, 64, 77, run=None) == lc.INTERPRETER["fwd"]


def test_interpreter_on_a_gpu_machine_also_gets_them(monkeypatch):
    monkeypatch.setattr(lc, "interpreter_enabled", lambda: True)
    assert lc.config_for("dq", torch.device("cuda", 0), torch.float16, 64, 77, run=None) == lc.INTERPRETER["dq"]


def test_bad_keys_say_what_is_wrong():
    with pytest.raises(ValueError, match="kernel must be one of"):
        launch_config("bwd", (9, 0), torch.float16, 64, 128)
    with pytest.raises(ValueError, match="head dims up to 256"):
        launch_config("fwd", (9, 0), torch.float16, 320, 128)
    with pytest.raises(ValueError, match="float64"):
        launch_config("fwd", (9, 0), torch.float64, 64, 128)


# ----------------------------------------------------------------------------- saved choices


def test_saved_choice_overrides_the_table():
    key = config_key("fwd", torch.bfloat16, 64, 512)
    assert key == "fwd/half/d64/L<=512"
    tuned = Config(64, 128, 4, 4)
    assert launch_config("fwd", (9, 0), torch.bfloat16, 64, 300, saved={key: tuned}) == tuned
    # other keys still come from the table
    assert launch_config("fwd", (9, 0), torch.bfloat16, 64, 100, saved={key: tuned}) != tuned
    # the interpreter ignores saved GPU choices
    assert launch_config("fwd", None, torch.bfloat16, 64, 300, saved={key: tuned}) == lc.INTERPRETER["fwd"]


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "cache" / "autotune.json"
    assert lc.load_saved(path) == {}
    lc.save_choice(path, "Fake GPU", "fwd/half/d64/L<=512", Config(128, 64, 8, 3))
    lc.save_choice(path, "Fake GPU", "dq/half/d64/L<=512", Config(64, 32, 4, 3))  # merges with the first
    assert lc.load_saved(path) == {"fwd/half/d64/L<=512": Config(128, 64, 8, 3), "dq/half/d64/L<=512": Config(64, 32, 4, 3)}
    data = json.loads(path.read_text())
    assert data["gpu"] == "Fake GPU" and "triton" in data
    assert [p.name for p in path.parent.iterdir()] == ["autotune.json"], "no temporary file left behind"


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps([1, 2]), json.dumps({"gpu": "x"}), json.dumps({"choices": [1]})],
    ids=["not-json", "a-list", "no-choices", "choices-not-an-object"],
)
def test_corrupt_cache_is_ignored_with_a_warning(tmp_path, content):
    path = tmp_path / "autotune.json"
    path.write_text(content)
    with pytest.warns(UserWarning, match="ignoring the autotuning cache .*autotune.json"):
        assert lc.load_saved(path) == {}


def test_a_bad_entry_is_skipped_and_the_rest_kept(tmp_path):
    path = tmp_path / "autotune.json"
    good = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
    path.write_text(json.dumps({"choices": {"fwd/half/d64/L<=128": good, "dq/half/d64/L<=128": {"BLOCK": 3}}}))
    with pytest.warns(UserWarning, match="dq/half/d64"):
        assert lc.load_saved(path) == {"fwd/half/d64/L<=128": Config(64, 64, 4, 3)}


def test_cache_path_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv(lc.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert lc.cache_path("NVIDIA H100 80GB HBM3") == tmp_path / "mops" / "autotune-nvidia-h100-80gb-hbm3.json"
    monkeypatch.setenv(lc.CACHE_ENV, str(tmp_path / "mine.json"))
    assert lc.cache_path("NVIDIA H100 80GB HBM3") == tmp_path / "mine.json"


# ----------------------------------------------------------------------------- opt-in tuning


def test_tune_picks_the_fastest_that_runs():
    configs = [Config(128, 64, 8, 3), Config(64, 64, 4, 3), Config(256, 256, 8, 4), Config(64, 32, 4, 3)]
    times = {configs[0]: 2.0, configs[1]: 1.5, configs[3]: 3.0}
    current = {}

    def run(config):
        if config == configs[2]:
            raise RuntimeError("out of resources: shared memory")  # as Triton reports a tile too big
        current["config"] = config

    timer = lambda fn: (fn(), times[current["config"]])[1]  # noqa: E731
    assert lc.tune(run, configs, timer) == configs[1]


def test_tune_says_why_when_nothing_runs():
    def run(config):
        raise RuntimeError("out of resources")

    with pytest.raises(RuntimeError, match="no configuration ran"):
        lc.tune(run, [Config(16, 16, 4, 1)], lambda fn: 1.0)


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """config_for on a pretend sm_90 called "Fake GPU", compiled (not interpreted), with its cache in tmp_path."""
    monkeypatch.setattr(lc, "_device_facts", lambda index: ((9, 0), "Fake GPU"))
    monkeypatch.setattr(lc, "interpreter_enabled", lambda: False)
    monkeypatch.setattr(lc, "_saved_by_path", {})
    monkeypatch.setenv(lc.CACHE_ENV, str(tmp_path / "autotune.json"))
    monkeypatch.delenv(lc.AUTOTUNE_ENV, raising=False)
    return tmp_path / "autotune.json"


def test_without_opt_in_nothing_is_timed(fake_gpu):
    def run(config):
        raise AssertionError("a launch for timing without MOPS_AUTOTUNE")

    config = lc.config_for("fwd", torch.device("cuda", 0), torch.bfloat16, 64, 512, run)
    assert config == launch_config("fwd", (9, 0), torch.bfloat16, 64, 512)
    assert not fake_gpu.exists()


def test_opt_in_tunes_once_saves_and_later_runs_read_it(fake_gpu, monkeypatch):
    monkeypatch.setenv(lc.AUTOTUNE_ENV, "1")
    fastest = lc.candidates("fwd", torch.bfloat16, 64)[-1]
    launched = []
    monkeypatch.setattr(lc, "_benchmark", lambda fn: 1.0 if launched[-1] == fastest else 2.0)

    def run(config):
        launched.append(config)

    device = torch.device("cuda", 0)
    assert lc.config_for("fwd", device, torch.bfloat16, 64, 300, run) == fastest
    assert set(launched) == set(lc.candidates("fwd", torch.bfloat16, 64))
    assert lc.load_saved(fake_gpu) == {"fwd/half/d64/L<=512": fastest}
    launched.clear()
    assert lc.config_for("fwd", device, torch.bfloat16, 64, 500, run) == fastest  # same bucket: no new sweep
    assert launched == []

    # a later process, without MOPS_AUTOTUNE: the saved choice, read from the file
    monkeypatch.setattr(lc, "_saved_by_path", {})
    monkeypatch.delenv(lc.AUTOTUNE_ENV)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lc.config_for("fwd", device, torch.bfloat16, 64, 400, run) == fastest
    assert launched == []
