"""Reports read every number from the job rows and render a page that needs nothing from the network."""

from __future__ import annotations

import csv
import io
import json
import re

from modelpress.report import (
    best_per_model,
    render_csv,
    render_html,
    render_json,
    render_table,
    rows_from_jobs,
    rows_from_zoo,
)


def _job(id_: str, *, model: str = "mlp", recipe: str = "dynamic-int8", backend: str = "fbgemm",
         status: str = "succeeded", size_after: int | None = 650_000, metric_after: float | None = 0.97,
         b64_after: float = 0.3, steps: tuple[str, ...] = ("quantize_dynamic",), **extra):
    done = status in ("succeeded", "rejected")
    return {
        "id": id_ * 8, "model_name": model, "recipe_name": recipe, "backend": backend, "status": status,
        "reused": False, "reused_from_job_id": None, "model_weights_uri": None, "model_sha256": "f" * 64,
        "recipe_json": json.dumps({"name": recipe, "steps": [{"type": t} for t in steps], "budget": None}),
        "size_before_bytes": 2_513_821 if done else None, "size_after_bytes": size_after if done else None,
        "metric_name": "top1_agreement" if done else None, "metric_before": 1.0 if done else None,
        "metric_after": metric_after if done else None, "latency_batch_size": 64 if done else None,
        "latency_before_median_ms": 0.9 if done else None, "latency_after_median_ms": b64_after if done else None,
        "latency_threads": 1, "error": None, "regression": None, "artifact_uri": f"/store/{id_}.mpz" if done else None,
        "measurements": {
            "latency_before": [{"batch_size": 1, "median_ms": 0.08}, {"batch_size": 64, "median_ms": 0.9}],
            "latency_after": [{"batch_size": 1, "median_ms": 0.1}, {"batch_size": 64, "median_ms": b64_after}],
            "float_layers": ["fc2"] if "keep" in recipe else [],
        } if done else None,
        **extra,
    }


JOBS = [
    _job("a"),
    _job("b", backend="qnnpack", b64_after=2.0),
    _job("c", recipe="prune50-dynamic-int8-keep", size_after=600_000, metric_after=0.95),
    _job("d", recipe="l1-sparse50", size_after=2_514_000, metric_after=0.5, steps=("prune_l1_unstructured",),
         status="rejected", error="top1_agreement fell from 1.0000 to 0.5000, more than the budget allows"),
    _job("e", recipe="static-int8", status="failed", error="no handler <registered> for 'quantize_static'"),
    _job("f", model="digits_cnn", status="running"),
    _job("g", model="digits_cnn", recipe="dynamic-int8", size_after=640_000, metric_after=0.99,
         regression={"summary": "size 600,000 → 640,000 B (+7%, allowed +1%) vs night 2026-11-24",
                     "worse": {"size_after_bytes": {"previous": 600000, "current": 640000}}}),
]


def test_latency_is_read_per_batch_size_from_the_measurements_with_ratios():
    row = rows_from_jobs([JOBS[0]])[0]
    assert row.latency_before_ms == {1: 0.08, 64: 0.9} and row.latency_after_ms == {1: 0.1, 64: 0.3}
    assert round(row.speedup(64), 2) == 3.0 and round(row.speedup(1), 2) == 0.8
    assert round(row.size_ratio, 2) == 3.87 and row.metric_delta == -0.030000000000000027
    assert row.stayed_float() == "none"


def test_what_stayed_float_distinguishes_no_quantization_from_kept_layers():
    rows = rows_from_jobs(JOBS)
    assert rows[2].stayed_float() == "fc2"
    assert rows[3].stayed_float() == "all (no quantization)"


def test_a_job_with_weights_of_its_own_is_labelled_as_a_different_model():
    row = rows_from_jobs([_job("a", model_weights_uri="/store/inputs/x.pt", model_sha256="ab12cd34" + "0" * 56)])[0]
    assert row.model_label == "mlp@ab12cd34"


def test_the_best_artifact_is_the_smallest_that_kept_its_budget_per_model_and_backend():
    best = best_per_model(rows_from_jobs(JOBS))
    assert {k: r.job_id[0] for k, r in best.items()} == {("mlp", "fbgemm"): "c", ("mlp", "qnnpack"): "b",
                                                         ("digits_cnn", "fbgemm"): "g"}


def test_a_tie_in_size_goes_to_the_faster_artifact():
    rows = rows_from_jobs([_job("a", b64_after=0.5), _job("b", recipe="other", b64_after=0.2)])
    assert best_per_model(rows)[("mlp", "fbgemm")].job_id.startswith("b")


def test_the_html_page_is_self_contained_with_plots_tables_best_artifacts_and_regressions():
    page = render_html(rows_from_jobs(JOBS), title="batch <weekly>", subtitle="from zoo.yaml")
    for forbidden in ("http:", "https:", "<script", "<link", "src=", "url(", "@import"):
        assert forbidden not in page.lower(), forbidden
    assert page.count('aria-label="artifact size against') == 2  # one scatter per model
    assert 'aria-label="latency before and after at batch 64"' in page
    assert "Best artifact per model" in page and "/store/c.mpz" in page
    assert "Regressions" in page and "size 600,000 → 640,000 B (+7%, allowed +1%)" in page
    assert "2,513,821" in page and "650,000" in page  # sizes in bytes
    assert "more than the budget allows" in page and "b-rejected" in page
    assert "&lt;registered&gt;" in page and "<registered>" not in page  # error text is escaped
    assert "batch &lt;weekly&gt;" in page


def test_svg_coordinates_are_finite_numbers_even_when_every_metric_is_equal():
    page = render_html(rows_from_jobs([_job("a", metric_after=1.0), _job("b", recipe="x", metric_after=1.0)]),
                       title="t")
    coords = re.findall(r'\s(?:cx|cy|x|y|x1|y1|x2|y2|width|height)="([^"]+)"', page)
    assert coords and all(float(c) == float(c) and abs(float(c)) < 1e6 for c in coords)


def test_a_batch_without_any_finished_job_still_renders_and_says_so():
    page = render_html(rows_from_jobs([_job("f", status="queued")]), title="t")
    assert "No finished result to plot yet" in page and "No artifact within budget (yet) for: mlp" in page


def test_csv_has_one_line_per_job_and_latency_columns_per_measured_batch_size():
    lines = list(csv.DictReader(io.StringIO(render_csv(rows_from_jobs(JOBS)))))
    assert len(lines) == len(JOBS)
    assert lines[0]["b64_ms_after"] == "0.3" and lines[0]["b1_ms_before"] == "0.08"
    assert lines[4]["status"] == "failed" and "quantize_static" in lines[4]["error"]
    assert lines[6]["regression"].startswith("size 600,000")


def test_json_keeps_every_field_and_the_derived_ratios():
    data = json.loads(render_json(rows_from_jobs(JOBS)))
    assert data[0]["speedup"]["64"] == 3.0 and data[0]["latency_after_ms"] == {"1": 0.1, "64": 0.3}
    assert data[3]["status"] == "rejected" and data[5]["size_after_bytes"] is None


def test_the_text_table_lists_reasons_and_regressions_as_notes():
    text = render_table(rows_from_jobs(JOBS))
    assert "b64 ms before" in text and "3.00x" in text
    assert "dddddddd: top1_agreement fell" in text and "gggggggg: REGRESSION size" in text


def test_zoo_rows_render_like_job_rows():
    from modelpress.zoo.report import ReportRow

    zoo = [ReportRow(model="mlp", recipe="dynamic-int8", engine="fbgemm", status="succeeded",
                     size_before_bytes=2_513_821, size_after_bytes=654_143, metric_name="top1_agreement",
                     metric_before=1.0, metric_after=0.97, latency_before_ms={64: 0.9}, latency_after_ms={64: 0.3},
                     quantized=True),
           ReportRow(model="mlp", recipe="distill-w0.5", engine="fbgemm", status="error", error="no width")]
    rows = rows_from_zoo(zoo)
    assert rows[0].size_ratio == 2_513_821 / 654_143 and rows[0].stayed_float() == "none"
    assert "no width" in render_html(rows, title="zoo")


def test_the_html_table_shows_the_eval_batch_the_batch_1_metric_and_the_load_while_timed_and_marks_rejected_rows():
    jobs = [_job("a", metric_eval_batch_size=256, metric_after_b1=0.9844, metric_b1_rows=512, timing_load_avg=1.25),
            _job("r", status="rejected", metric_after=0.4556, error="top1_agreement fell from 1.0000 to 0.4556, "
                 "more than the budget allows (0.0100)")]
    page = render_html(rows_from_jobs(jobs), title="t")
    assert "<th>eval batch</th>" in page and "<th>after at batch 1 (rows)</th>" in page
    assert "0.9844 (512)" in page and "1.25" in page
    assert re.search(r'<tr class="rejected">.*?more than the budget allows', page, re.S)


def test_emulated_rows_are_flagged_in_every_format_and_never_compared_with_native_ones():
    native = _job("n", backend="qnnpack", size_after=650_000, b64_after=2.0, worker_arch="x86_64", emulated=None)
    # Smaller and "faster" than the native row: it must still not win, be plotted, or get a speed ratio.
    emu = _job("m", backend="qnnpack", size_after=640_000, b64_after=900.0, worker_arch="aarch64", emulated="qemu-user")
    rows = rows_from_jobs([native, emu])
    assert [r.speedup(64) is None for r in rows] == [False, True]
    assert best_per_model(rows)[("mlp", "qnnpack")].job_id == "n" * 8
    table = render_table(rows)
    line = next(ln for ln in table.splitlines() if ln.startswith("mmmmmmmm"))
    assert "qnnpack (aarch64, emulated)" in line and "900.000*" in line and "emulated" in line.split("900.000*")[1]
    assert "never compare it with native rows" in table
    html = render_html(rows, title="t")
    assert "b-emulated" in html and "Not plotted: 1 emulated job(s)" in html
    assert html.count("900.000") == 1  # in the results table only: not on the shared latency scale
    recs = {r["job_id"]: r for r in csv.DictReader(io.StringIO(render_csv(rows)))}
    assert recs["m" * 8]["emulated"] == "qemu-user" and recs["m" * 8]["b64_speedup"] == ""
    assert recs["n" * 8]["emulated"] == "" and recs["n" * 8]["worker_arch"] == "x86_64"
    assert {d["job_id"]: d["emulated"] for d in json.loads(render_json(rows))} == {"n" * 8: None, "m" * 8: "qemu-user"}


def test_the_cli_jobs_table_marks_emulated_latency_and_names_the_cpu():
    from modelpress.cli import jobs_table

    base = {"size_before_bytes": 10, "size_after_bytes": 4, "latency_batch_size": 64, "latency_before_median_ms": 4.0,
            "latency_after_median_ms": 2.0, "metric_name": "accuracy", "metric_before": 0.9, "metric_after": 0.9,
            "engine_used": "qnnpack", "worker_host": "h", "model_name": "mlp", "recipe_name": "r",
            "backend": "qnnpack", "status": "succeeded", "error": None}
    native = jobs_table([{**base, "id": "a" * 32, "worker_arch": "x86_64", "emulated": None}])
    assert "2.00x" in native and "*" not in native
    mixed = jobs_table([{**base, "id": "a" * 32, "worker_arch": "x86_64", "emulated": None},
                        {**base, "id": "b" * 32, "worker_arch": "aarch64", "emulated": "qemu-user"}])
    emu_line = next(ln for ln in mixed.splitlines() if ln.startswith("bbbbbbbb"))
    assert "2.000*" in emu_line and "2.00x" not in emu_line and "aarch64 (emulated: qemu-user)" in emu_line
    assert "never compare it with native rows" in mixed
