"""``metrics.csv`` carries what ``metrics.jsonl`` does: every key, including ones that first appear
mid-run, and across a resume (no models: the logger alone)."""

import csv

from kto_lab.sd.metrics_log import CSV_COLUMNS, MetricsLogger, read_metrics


def csv_rows(run):
    with open(run / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def as_jsonl(fieldnames, rows):
    """The CSV's rows with their empty cells dropped, numbers parsed: comparable to read_metrics."""
    return [{k: (int(v) if k == "step" else float(v)) for k, v in r.items() if v != ""} for r in rows]


def test_csv_has_every_jsonl_key_even_one_first_seen_mid_run_and_after_a_resume(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log(1, {"loss": 0.5, "z_ref": 0.1})
    log.log(2, {"loss": 0.4, "z_ref": 0.2, "saturated": 0.25})  # a key outside CSV_COLUMNS, mid-run
    log.log(3, {"loss": 0.3, "saturated": 0.5, "my/extra": float("nan")})
    log.close()
    header, rows = csv_rows(tmp_path)
    assert header == ["step", *CSV_COLUMNS[1:], "saturated", "my/extra"]
    assert not list(tmp_path.glob(".*tmp"))  # the rewrite left no temp file
    jsonl = read_metrics(tmp_path)
    assert as_jsonl(header, rows)[:2] == jsonl[:2]
    assert rows[2]["my/extra"] == "nan" and jsonl[2]["my/extra"] == "nan"

    # resume after step 2: rows after it are dropped from both files; the header keeps the keys seen
    log = MetricsLogger(tmp_path, resume_step=2)
    log.log(3, {"loss": 0.35, "saturated": 0.4, "late": 1.0})
    log.close()
    header, rows = csv_rows(tmp_path)
    assert header == ["step", *CSV_COLUMNS[1:], "saturated", "late"]
    assert as_jsonl(header, rows) == read_metrics(tmp_path)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]

    # a fresh run in the same directory starts both files again
    MetricsLogger(tmp_path).close()
    assert csv_rows(tmp_path) == (list(CSV_COLUMNS), []) and read_metrics(tmp_path) == []


def test_plot_metrics_labels_each_panel_with_the_metric_display_name(tmp_path):
    from figure_checks import drawn_texts

    from kto_lab.plotting import label
    from kto_lab.sd.metrics_log import plot_metrics

    log = MetricsLogger(tmp_path)
    for step in (1, 2, 3):
        log.log(step, {"loss": 0.5 / step, "rewards/accuracy": 0.5, "z_ref": 0.1 * step})
    log.close()
    fig = plot_metrics(tmp_path, ["loss", "rewards/accuracy", "z_ref", "saturated"])
    axes = fig.get_axes()
    assert [ax.get_ylabel() for ax in axes] == [label(k) for k in ("loss", "rewards/accuracy", "z_ref", "saturated")]
    assert {ax.get_xlabel() for ax in axes} == {"optimizer step"}
    assert label("rewards/accuracy") != "rewards/accuracy" and label("z_ref") != "z_ref"
    texts = [t.get_text() for t in drawn_texts(fig)]
    assert "rewards/accuracy" not in texts and "not logged by this run" in texts  # no raw key; an absent metric says so
    assert [len(line.get_xdata()) for ax in axes for line in ax.get_lines()] == [3, 3, 3, 0]
