"""``qdelta bench kernels``: argument checks and the result table (the timings need a GPU)."""
import json
from pathlib import Path

import pytest
import torch

from qdelta.harness import bench_kernels
from qdelta.harness.cli import main

RESULTS = Path(__file__).resolve().parents[2] / "results" / "bench"


def test_rejects_lengths_that_do_not_divide_the_batch(capsys):
    assert main(["bench", "kernels", "--lengths", "3000"]) == 2
    assert "--lengths" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_without_gpu_says_so(capsys):
    assert main(["bench", "kernels", "--lengths", "2048"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_a_limited_run_names_what_it_left_out():
    assert bench_kernels.left_out(tuple(bench_kernels.HEAD_CONFIGS), bench_kernels.LENGTHS) == []
    missing = bench_kernels.left_out(("1.3B",), (2048, 4096))
    assert "1.3B T=8192" in missing and "340M T=2048" in missing and "340M decode" in missing
    assert "1.3B T=2048" not in missing and "1.3B decode" not in missing


def test_committed_results_render_and_cover_every_shape(tmp_path):
    files = sorted(RESULTS.glob("kernels-*.json"))
    assert files, f"no committed benchmark JSON under {RESULTS}"
    for path in files:
        raw = json.loads(path.read_text())
        report = bench_kernels.Report(**{k: v for k, v in raw.items() if k not in ("rows", "decode")})
        report.rows = [bench_kernels.Row(**r) for r in raw["rows"]]
        report.decode = [bench_kernels.DecodeRow(**d) for d in raw["decode"]]
        # every shape is there, or the report's notes name the ones a cut run did not measure
        notes = " ".join(report.notes)
        shapes = {(r.config, r.T) for r in report.rows}
        assert shapes <= {(c, T) for c in bench_kernels.HEAD_CONFIGS for T in bench_kernels.LENGTHS}
        for c in bench_kernels.HEAD_CONFIGS:
            for T in bench_kernels.LENGTHS:
                assert (c, T) in shapes or f"{c} T={T}" in notes, f"{c} T={T} neither measured nor noted"
            decoded = {d.variant for d in report.decode if d.config == c}
            assert decoded == {"paper", "official"} or f"{c} decode" in notes, f"{c} decode neither measured nor noted"
        assert all(r.ours_fwd_ms and r.ours_fwdbwd_ms and r.ours_fwd_ms < r.ours_fwdbwd_ms for r in report.rows)
        text = bench_kernels.to_markdown(report)
        assert report.card in text and report.triton in text
        assert text.count("\n| 1.3B |") == len([r for r in report.rows if r.config == "1.3B"]) + len(
            [d for d in report.decode if d.config == "1.3B"])
        written = bench_kernels.write_report(report, tmp_path)
        assert json.loads(written["json"].read_text())["rows"] == raw["rows"]
