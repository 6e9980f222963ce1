"""mops.bench.report: the memory-accuracy table, the Pareto front, the plots, benchmark tables."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from matplotlib.image import imread

from mops.bench.records import append_record, run_id
from mops.bench.report import (
    benchmark_table,
    build_table,
    human_count,
    pareto_front,
    plot_curves,
    plot_pareto,
    report,
    seconds_per_epoch,
)

MiB = 2**20
FIXTURES = Path(__file__).parent / "fixtures" / "bench"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(plan, width=384, seed=0, status="ok", peak_mib=None, overall=None, error=None, **config_extra) -> dict:
    """A run record as the sweep writes it, with only the figures a test needs."""
    config = {"checkpoint": "minilm", "pretrained": True, "hidden_size": width, "num_layers": 6, "plan": plan,
              "tasks": ["sst", "para", "sts"], "seed": seed, "corpus": "demo", **config_extra}
    record = {"run_id": run_id(config), "status": status, "error": error, "config": config,
              "accounting": {"unique_params": 22_713_216 * width // 384, "trainable_params": 11_000_000 * width // 384,
                             "total_bytes": 345 * MiB * width // 384}}
    if peak_mib is not None:
        record["memory"] = {"peak_bytes": int(peak_mib * MiB), "source": "nvml-process"}
    if status == "ok":
        record["metrics"] = {"sst_acc": overall - 0.1, "para_acc": overall + 0.1, "sts_r": overall, "overall": overall}
        record["timing"] = {"seconds_per_epoch": 60.0 + seed, "train_seconds": 120.0 + 2 * seed}
        record["curve"] = [{"step": s, "seconds": 40.0 * s, "epoch": s / 3, "metrics": {"overall": overall * s / 3}}
                           for s in (1, 2, 3)]
    return record


@pytest.fixture
def sweep() -> list[dict]:
    return [
        run("FFFFFF", seed=0, peak_mib=1000, overall=0.50),
        run("FFFFFF", seed=1, peak_mib=1100, overall=0.52),
        run("FFSSII", seed=0, peak_mib=1500, overall=0.60),
        run("FFSSII", seed=1, peak_mib=1500, overall=0.62),
        run("FFSSII", seed=2, status="oom", peak_mib=9000, error="torch.OutOfMemoryError: CUDA out of memory."),
        run("SSSSSS", peak_mib=1600, overall=0.58),  # more memory and less accuracy than FFSSII
        run("IIIIII", status="oom", peak_mib=7000, error="Traceback (most recent call last):\nCUDA out of memory"),
        run("FFSSII", width=768, peak_mib=3000, overall=0.66),
        run("IIIIII", width=768, status="failed", error="Traceback (most recent call last):\nValueError: bad plan"),
    ]


def rows_of(text: str) -> list[dict[str, str]]:
    """A table made with fmt="tsv", as one dict per row (tabulate pads the cells)."""
    lines = list(csv.reader(io.StringIO(text), delimiter="\t"))
    header = [cell.strip() for cell in lines[0]]
    return [dict(zip(header, (cell.strip() for cell in line), strict=True)) for line in lines[1:]]


def by_label(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {f"{r['plan']} w{r['width']}": r for r in rows}


# -- pareto_front ------------------------------------------------------------------------------


def test_front_of_one_point_is_that_point():
    assert pareto_front([(100.0, 0.5)]) == [0]


def test_front_of_nothing_is_empty():
    assert pareto_front([]) == []


def test_dominated_points_leave_the_front():
    points = [(100, 0.50), (200, 0.70), (150, 0.40), (300, 0.65), (50, 0.30)]
    assert pareto_front(points) == [0, 1, 4]


def test_equal_points_do_not_dominate_each_other():
    assert pareto_front([(100, 0.5), (100, 0.5), (120, 0.5)]) == [0, 1]


def test_a_tie_on_one_axis_is_decided_by_the_other():
    assert pareto_front([(100, 0.5), (100, 0.6)]) == [1]  # same memory: the better score wins
    assert pareto_front([(100, 0.5), (90, 0.5)]) == [1]  # same score: the smaller memory wins


# -- the table ---------------------------------------------------------------------------------


def test_one_row_per_config_with_seeds_pooled(sweep):
    rows = rows_of(build_table(sweep, fmt="tsv"))
    assert sorted(by_label(rows)) == ["FFFFFF w384", "FFSSII w384", "FFSSII w768", "IIIIII w384", "IIIIII w768",
                                      "SSSSSS w384"]
    ff = by_label(rows)["FFFFFF w384"]
    assert ff["runs"] == "2/2"
    assert ff["peak MiB"] == "1050.0 ± 70.7"  # mean ± sample std over the two seeds
    assert ff["overall"] == "0.510 ± 0.014"
    assert ff["sst_acc"] == "0.410 ± 0.014" and ff["sts_r"] == "0.510 ± 0.014"
    assert ff["s/epoch"] == "60.5 ± 0.7"
    assert ff["unique"] == "22.7M" and ff["trainable"] == "11M"
    assert ff["pred MiB"] == "345.0"
    assert ff["source"] == "nvml-process"
    assert ff["status"] == "ok"


def test_the_predicted_peak_stands_beside_the_measured_one_with_their_ratio(sweep):
    record = run("FFFSSS", peak_mib=1200, overall=0.6)
    record["prediction"] = {"peak_bytes": 1000 * MiB}
    row = by_label(rows_of(build_table([record], fmt="tsv")))["FFFSSS w384"]
    assert (row["pred MiB"], row["peak MiB"], row["peak/pred"]) == ("1000.0", "1200.0", "1.20")
    older = by_label(rows_of(build_table(sweep, fmt="tsv")))["FFFFFF w384"]  # no prediction: the accounting total
    assert (older["pred MiB"], older["peak/pred"]) == ("345.0", f"{1050 / 345:.2f}")


def test_seconds_per_epoch_leave_out_the_cache_filling_first_epoch():
    timing = {"seconds_per_epoch": 40.0, "epoch_seconds": [60.0, 30.0, 30.0]}
    assert seconds_per_epoch({"timing": timing}) == 30.0
    assert seconds_per_epoch({"timing": {"seconds_per_epoch": 40.0, "epoch_seconds": [40.0]}}) == 40.0  # one epoch
    assert seconds_per_epoch({"timing": {"seconds_per_epoch": 12.5}}) == 12.5  # records from before epoch_seconds
    assert seconds_per_epoch({"status": "failed"}) is None


def test_a_single_run_shows_plain_values(sweep):
    row = by_label(rows_of(build_table(sweep, fmt="tsv")))["FFSSII w768"]
    assert row["overall"] == "0.660" and row["peak MiB"] == "3000.0" and row["unique"] == "45.4M"


def test_unfinished_seeds_are_counted_but_not_averaged(sweep):
    row = by_label(rows_of(build_table(sweep, fmt="tsv")))["FFSSII w384"]
    assert row["runs"] == "2/3"
    assert row["status"] == "ok 2/3, oom 1/3"
    assert row["peak MiB"] == "1500.0 ± 0.0"  # the OOM seed's 9000 MiB is not in the mean
    assert row["overall"] == "0.610 ± 0.014"


def test_failed_and_oom_runs_are_shown_with_their_status(sweep):
    rows = by_label(rows_of(build_table(sweep, fmt="tsv")))
    oom, failed = rows["IIIIII w384"], rows["IIIIII w768"]
    assert oom["status"] == "oom" and oom["runs"] == "0/1"
    assert oom["peak MiB"] == "7000.0"  # what was measured before the OOM is still shown
    assert oom["overall"] == "" and oom["front"] == ""
    assert failed["status"] == "failed" and failed["peak MiB"] == ""


def test_the_front_is_marked(sweep):
    rows = by_label(rows_of(build_table(sweep, fmt="tsv")))
    marked = sorted(label for label, row in rows.items() if row["front"] == "*")
    assert marked == ["FFFFFF w384", "FFSSII w384", "FFSSII w768"]


def test_rows_are_ordered_by_width_then_measured_memory(sweep):
    plans = [(r["width"], r["plan"]) for r in rows_of(build_table(sweep, fmt="tsv"))]
    assert plans == [("384", "FFFFFF"), ("384", "FFSSII"), ("384", "SSSSSS"), ("384", "IIIIII"),
                     ("768", "FFSSII"), ("768", "IIIIII")]


def test_config_keys_that_differ_between_rows_get_a_column():
    records = [run("FFSSII", peak_mib=1000, overall=0.5), run("FFSSII", peak_mib=1000, overall=0.7, corpus="cs224n")]
    rows = rows_of(build_table(records, fmt="tsv"))
    assert sorted(r["corpus"] for r in rows) == ["cs224n", "demo"]
    assert "checkpoint" not in rows[0]  # the same everywhere: no column
    assert sorted(r["front"] for r in rows) == ["", "*"]  # same memory, higher score wins


def test_launch_settings_do_not_split_seeds_but_the_machine_does():
    records = [run("FFSSII", seed=0, peak_mib=1000, overall=0.5, out_dir="runs/a", device="cuda"),
               run("FFSSII", seed=1, peak_mib=1000, overall=0.6, out_dir="runs/b", device="cuda:0")]
    rows = rows_of(build_table(records, fmt="tsv"))
    assert len(rows) == 1 and rows[0]["runs"] == "2/2" and "out_dir" not in rows[0]
    records[1]["device"], records[0]["device"] = "NVIDIA H100 80GB HBM3", "NVIDIA H200"
    rows = rows_of(build_table(records, fmt="tsv"))
    assert sorted(r["machine"] for r in rows) == ["NVIDIA H100 80GB HBM3", "NVIDIA H200"]


def test_a_failure_recorded_with_fewer_config_keys_joins_its_seeds():
    ok = run("FFSSII", seed=0, peak_mib=1000, overall=0.5)
    crashed = run("FFSSII", seed=1, status="oom")
    for key in ("corpus", "pretrained", "num_layers"):  # known only once the model was built
        del crashed["config"][key]
    crashed["config"]["hidden_size"] = None
    rows = rows_of(build_table([crashed, ok, run("SSSSSS", peak_mib=900, overall=0.4)], fmt="tsv"))
    assert [(r["plan"], r["runs"], r["status"]) for r in rows] == [("SSSSSS", "1/1", "ok"),
                                                                   ("FFSSII", "1/2", "ok 1/2, oom 1/2")]
    assert "corpus" not in rows[0]  # absent is not a different value


def test_a_sparse_record_that_fits_two_rows_stays_apart():
    sparse = {"run_id": "x", "status": "failed", "error": "boom", "config": {"plan": "FFSSII", "seed": 3}}
    rows = rows_of(build_table([run("FFSSII", width=384, peak_mib=1, overall=0.5),
                                run("FFSSII", width=768, peak_mib=2, overall=0.6), sparse], fmt="tsv"))
    assert sorted(r["runs"] for r in rows) == ["0/1", "1/1", "1/1"]


def test_optional_metrics_get_a_column_when_present(sweep):
    sweep[0]["metrics"]["cfimdb_acc"] = 0.9
    rows = by_label(rows_of(build_table(sweep, fmt="tsv")))
    assert rows["FFFFFF w384"]["cfimdb_acc"] == "0.900"
    assert rows["SSSSSS w384"]["cfimdb_acc"] == ""


def test_github_format_is_a_markdown_table(sweep):
    text = build_table(sweep)
    lines = text.splitlines()
    assert lines[0].startswith("| front") and set(lines[1]) <= set("|-: ")
    assert len(lines) == 2 + 6


def test_no_records_says_so():
    assert build_table([]) == "no runs"


def test_human_counts():
    assert [human_count(n) for n in (512, 1_234, 22_713_216, 109_482_240, 999_999, 3.4e9)] == [
        "512", "1.23K", "22.7M", "109M", "1M", "3.4B"]


# -- plots -------------------------------------------------------------------------------------


def assert_real_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 10_000
    image = imread(path)
    height, width = image.shape[:2]
    assert height >= 400 and width >= 600
    assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas
    assert not list(path.parent.glob(".*.tmp"))  # the temporary file was renamed away


def test_pareto_plot_is_a_png(sweep, tmp_path):
    assert_real_png(plot_pareto(sweep, tmp_path / "plots" / "pareto.png"))


def test_pareto_points_name_the_settings_that_differ(tmp_path, monkeypatch):
    """Two learning rates of one plan are two points: each label says which (as the table's lr column)."""
    import matplotlib.axes

    labels = []
    original = matplotlib.axes.Axes.annotate
    monkeypatch.setattr(matplotlib.axes.Axes, "annotate",
                        lambda self, text, *a, **k: labels.append(text) or original(self, text, *a, **k))
    records = [run("FFFLLL", peak_mib=1800, overall=0.45, lr=5e-5), run("FFFLLL", peak_mib=1830, overall=0.67, lr=1e-3)]
    assert_real_png(plot_pareto(records, tmp_path / "p.png"))
    assert sorted(labels) == ["FFFLLL lr=0.001", "FFFLLL lr=5e-05"]
    labels.clear()
    plot_pareto([run("FFFFFF", peak_mib=1000, overall=0.5)], tmp_path / "q.png")
    assert labels == ["FFFFFF"]  # nothing varies: the plan alone


def test_curves_plot_is_a_png(sweep, tmp_path):
    assert_real_png(plot_curves(sweep, tmp_path / "curves.png"))


def test_plots_of_only_failed_runs_still_render(tmp_path):
    failed = [run("IIIIII", status="oom")]
    assert plot_pareto(failed, tmp_path / "p.png").read_bytes()[:8] == PNG_SIGNATURE
    assert plot_curves(failed, tmp_path / "c.png").read_bytes()[:8] == PNG_SIGNATURE


# -- pytest-benchmark JSON ---------------------------------------------------------------------


def test_benchmark_table_from_pytest_benchmark_json():
    rows = {r["group"]: r for r in rows_of(benchmark_table(FIXTURES / "benchmark.json", fmt="tsv"))}
    assert list(rows) == ["attention", "layer_norm"]  # sorted by group
    ln, attn = rows["layer_norm"], rows["attention"]
    assert ln["name"] == "test_layer_norm[triton-4096x768]"
    assert ln["median"] == "13.1 µs" and ln["mean ± std"] == "13.4 ± 1.1 µs"
    assert attn["median"] == "1.23 ms" and attn["mean ± std"] == "1.25 ± 0.04 ms"
    assert ln["GB/s"] == "940.2" and attn["GB/s"] == ""
    assert attn["TFLOP/s"] == "312.5"
    assert ln["peak_bytes"] == "50.0 MiB"
    assert ln["device"] == "NVIDIA H100 80GB HBM3" and ln["rounds"] == "200"
    assert "versions" not in ln


def test_a_non_benchmark_json_is_refused(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"results": []}')
    with pytest.raises(ValueError, match="no top-level 'benchmarks' list"):
        benchmark_table(path)


# -- the whole report --------------------------------------------------------------------------


def test_report_merges_shards_writes_plots_and_lists_failures(sweep, tmp_path):
    for i, record in enumerate(sweep):
        append_record(tmp_path / f"results.shard-{i % 2}-of-2.jsonl", record)
    text = report([str(tmp_path / "results.shard-*-of-2.jsonl"), FIXTURES / "benchmark.json"],
                  plot_dir=tmp_path / "plots", fmt="github")
    assert text.count("| FFFFFF ") == 1 and "| FFSSII " in text
    assert "IIIIII w768 seed 0: failed: ValueError: bad plan" in text
    assert "IIIIII w384 seed 0: oom: CUDA out of memory" in text
    assert "test_attention[triton-b8-h12-l512]" in text
    assert_real_png(tmp_path / "plots" / "pareto.png")
    assert_real_png(tmp_path / "plots" / "curves.png")
    assert str(tmp_path / "plots" / "pareto.png") in text
