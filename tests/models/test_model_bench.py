"""``qdelta bench model``'s CPU parts: shape parsing, the report files of a partial run, refusals."""

import pytest

from qdelta.harness.bench import model as bench


def _report():
    r = bench.Report(
        card="NVIDIA H200", torch="2.11", triton="3.6", transformers="5.17", fla="0.6.0", date="2026-12-03",
        qdelta_commit="abc", authors="x", steps=10, warmup=3,
    )  # fmt: skip
    r.rows.append(bench.Row("authors", 8, 2048, 200.0, 81920.0, 20.0, 60.0, 409600.0, 4.0))
    r.rows.append(bench.Row("ours-paper", 8, 2048, 100.0, 163840.0, 10.0, error="RuntimeError: cut short"))
    r.profile["authors B=8 T=2048"] = [{"op": "TOTAL", "cuda_ms": 150.0, "calls": 0}]
    return r


def test_parse_shape():
    assert bench.parse_shape("8x2048") == (8, 2048)
    for bad in ("8y2048", "0x2048", "8x"):
        with pytest.raises(ValueError, match="BxT"):
            bench.parse_shape(bad)


def test_partial_report_round_trips_and_tabulates(tmp_path):
    paths = bench.write_report(_report(), tmp_path)
    assert paths["json"].name == "model-h200.json" and paths["md"].name == "model-h200.md"
    back = bench.load_report(paths["json"])
    assert back.rows[1].prefill_ms is None and back.rows[1].error.startswith("RuntimeError")
    md = paths["md"].read_text()
    assert "| ours-paper | 8 | 2048 | 100.0 | 163.8k | 2.00x | 10.0 | — |" in md
    assert "cut short" in md and "TOTAL" in md


def test_authors_folder_is_required(tmp_path, monkeypatch):
    monkeypatch.delenv(bench.AUTHORS_ENV, raising=False)
    with pytest.raises(ValueError, match="--authors"):
        bench.load_authors_classes(None)
    with pytest.raises(ValueError, match="modeling_qdelta.py not found"):
        bench.load_authors_classes(str(tmp_path))
