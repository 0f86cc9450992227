"""``qdelta bench kernels``: argument checks and the result table (the timings need a GPU)."""

import json
from pathlib import Path

import pytest
import torch

from qdelta.harness.bench import kernels as bench_kernels
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


def test_a_cut_run_names_the_rows_it_did_not_reach(monkeypatch):
    """The files a run leaves after every row say what it has yet to measure; a finished run says nothing."""
    k = bench_kernels
    gen = torch.Generator().manual_seed(5)
    ms = lambda *a, **kw: tuple(float(x) for x in torch.rand(3, generator=gen) + 1)  # noqa: E731
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(k, "copy_bandwidth_gbps", lambda: 4000.0)
    monkeypatch.setattr(k, "fla_version", lambda: None)  # fla not importable: no fla-gdn rows
    monkeypatch.setattr(k, "load_authors", lambda folder: ms)
    for name in ("time_ours", "time_authors", "time_sdpa"):
        monkeypatch.setattr(k, name, ms)
    monkeypatch.setattr(k, "time_decode", lambda c, v, gbps: k.DecodeRow(c, v, 64, *ms(), 1, 1.0, 0.5))
    seen = []

    def stop_after_seven(report):
        seen.append(next((n for n in report.notes if n.startswith(k.UNFINISHED)), None))
        if len(seen) == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        k.run_benchmark(lengths=(2048,), configs=("340M", "1.3B"), on_progress=stop_after_seven, authors_dir="x")
    assert seen[0].startswith(k.UNFINISHED + "340M decode: official; 1.3B decode: paper, official; 340M T=2048: ")
    rest = "qdelta-paper, qdelta-official, authors, sdpa"  # no fla-gdn: fla is not importable here
    norm_on = "qdelta-paper qk_l2norm, qdelta-official qk_l2norm, authors qk_l2norm"
    assert seen[-1] == f"{k.UNFINISHED}340M T=2048: {rest}; 1.3B T=2048: {norm_on}, {rest}"  # 4 decode + 3 rows done
    seen.clear()
    report = k.run_benchmark(lengths=(2048,), configs=("1.3B",), on_progress=seen.append, authors_dir="x")
    assert len(report.rows) == 7 and not any(n.startswith(k.UNFINISHED) for n in report.notes)
    assert any(n.startswith(k.NOT_RUN) and "340M T=2048" in n for n in report.notes)


def _partial_run(date, lengths, decode, seed, **fields):
    """A report as a run limited to ``lengths`` writes it (timings drawn at random: this checks bookkeeping)."""
    gen = torch.Generator().manual_seed(seed)
    ms = lambda: round(float(torch.rand((), generator=gen)) * 9 + 1, 3)  # noqa: E731
    r = bench_kernels.Report(
        card="NVIDIA H200", torch="2.11.0", triton="3.6.0", date=date, fla="0.6.0", copy_gbps=4000 + seed, **fields
    )
    r.rows = [
        bench_kernels.Row(c, T, impl, norm, ms(), 10 + ms(), ms(), 32768 // T)
        for c in bench_kernels.HEAD_CONFIGS
        for T in lengths
        for impl in bench_kernels.IMPLS
        for norm in ((False,) if impl == "sdpa" else (True, False))
    ]
    r.decode = (
        [
            bench_kernels.DecodeRow(c, v, 64, ms(), ms(), 1 << 20, ms(), 0.5, ms())
            for c in bench_kernels.HEAD_CONFIGS
            for v in ("paper", "official")
        ]
        if decode
        else []
    )
    r.notes = ["not run (left out by --configs / --lengths): ...", "a note both runs carry"]
    return r


def test_merge_combines_partial_runs_and_names_them(tmp_path, capsys):
    a = _partial_run("2026-01-01T00:00:00", (2048, 4096), True, 1)
    b = _partial_run("2026-01-01T00:05:00", (8192, 16384, 4096), True, 2)  # T=4096 measured again
    paths = [bench_kernels.write_report(r, tmp_path / name)["json"] for name, r in (("a", a), ("b", b))]
    assert main(["bench", "kernels", "--merge", *map(str, paths), "--out", str(tmp_path / "merged")]) == 0
    merged = bench_kernels.load_report(tmp_path / "merged" / "kernels-h200.json")
    got = {(w.config, w.T, w.impl, w.qk_l2norm): w for w in merged.rows}
    shapes = list(dict.fromkeys(key[:2] for key in got))
    assert shapes == [(c, T) for c in bench_kernels.HEAD_CONFIGS for T in bench_kernels.LENGTHS]
    key = lambda w: (w.config, w.T, w.impl, w.qk_l2norm)  # noqa: E731
    first = ("1.3B", 2048, "authors", True)
    assert got[first] == next(w for w in a.rows if key(w) == first)
    again = ("1.3B", 4096, "qdelta-paper", True)
    assert got[again] == next(w for w in b.rows if key(w) == again)  # the later run's
    assert merged.decode == b.decode and merged.copy_gbps == b.copy_gbps
    assert not any(n.startswith("not run") for n in merged.notes)  # every shape is covered now
    assert merged.notes.count("a note both runs carry") == 1
    assert a.date in merged.notes[0] and b.date in merged.notes[0]
    assert "merged from 2 runs" in capsys.readouterr().out


def test_merge_refuses_runs_that_differ_and_bad_arguments(tmp_path, capsys):
    a = _partial_run("d1", (2048,), False, 1)
    b = _partial_run("d2", (4096,), False, 2, launch_overrides='{"state": {"BV": 32}}')
    with pytest.raises(ValueError, match="different launch_overrides"):
        bench_kernels.merge_reports([a, b])
    other_code = _partial_run("d2", (4096,), False, 2, launch_settings={"340M": {"state": {"BV": 32}}})
    with pytest.raises(ValueError, match="different launch_settings"):  # e.g. a commit with other defaults
        bench_kernels.merge_reports([a, other_code])
    merged = bench_kernels.merge_reports([a, _partial_run("d2", (4096,), False, 2)])
    assert "340M decode" in merged.notes[-1] and "1.3B T=8192" in merged.notes[-1]
    assert main(["bench", "kernels", "--merge", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    path = bench_kernels.write_report(a, tmp_path)["json"]
    assert main(["bench", "kernels", "--merge", str(path), "--lengths", "2048"]) == 2
    assert "do not apply" in capsys.readouterr().err


def test_committed_results_render_and_cover_every_shape(tmp_path):
    files = sorted(RESULTS.glob("kernels-*.json"))
    assert files, f"no committed benchmark JSON under {RESULTS}"
    for path in files:
        raw = json.loads(path.read_text())
        report = bench_kernels.load_report(path)
        # every shape is there with all its rows, or the report's notes name what a limited or cut run lacks
        notes = " ".join(report.notes)
        shapes = {(r.config, r.T) for r in report.rows}
        assert shapes <= {(c, T) for c in bench_kernels.HEAD_CONFIGS for T in bench_kernels.LENGTHS}
        for c in bench_kernels.HEAD_CONFIGS:
            for T in bench_kernels.LENGTHS:
                complete = len({(r.impl, r.qk_l2norm) for r in report.rows if (r.config, r.T) == (c, T)}) == 9
                assert complete or f"{c} T={T}" in notes, f"{c} T={T} neither measured in full nor noted"
            decoded = {d.variant for d in report.decode if d.config == c}
            assert decoded == {"paper", "official"} or f"{c} decode" in notes, f"{c} decode neither measured nor noted"
        assert {r.impl for r in report.rows} <= set(bench_kernels.IMPLS)
        ours = [r for r in report.rows if r.impl.startswith("qdelta")]
        assert ours and all(r.fwd_ms and r.fwd_bwd_ms and r.fwd_ms < r.fwd_bwd_ms for r in ours)
        # every implementation named is measured, or the notes say why not
        for impl in ("authors", "fla-gdn"):
            assert any(r.impl == impl and r.fwd_ms for r in report.rows) or impl.split("-")[0] in notes
        text = bench_kernels.to_markdown(report)
        assert report.card in text and report.triton in text and "DESIGN §5" not in text
        shapes_13 = {r.T for r in report.rows if r.config == "1.3B"}
        assert text.count("\n| 1.3B |") == len([r for r in report.rows if r.config == "1.3B"]) + len(shapes_13) + len(
            [d for d in report.decode if d.config == "1.3B"]
        )
        written = bench_kernels.write_report(report, tmp_path)
        assert json.loads(written["json"].read_text())["rows"] == raw["rows"]


def test_reports_record_the_launch_settings_in_force(monkeypatch):
    from qdelta.kernels.triton import launch

    monkeypatch.setattr(launch, "OVERRIDES", {"state": {"BV": 32}})
    got = bench_kernels.resolved_launch_settings()
    assert set(got) == set(bench_kernels.HEAD_CONFIGS)
    assert got["1.3B"]["state"] == launch.settings("state", 256, 512) and got["1.3B"]["state"]["BV"] == 32
    assert {"intra", "state", "output", "reverse", "intra_bwd", "kq_bwd", "recurrent"} == set(got["340M"])


@pytest.mark.parametrize(
    "argv, message", [(["--T", "3000"], "--T must divide"), (["--configs", "7B"], "invalid choice")]
)
def test_profile_refuses_bad_arguments_before_touching_a_gpu(argv, message, capsys):
    from qdelta.harness.bench import profile

    with pytest.raises(SystemExit) as exit_:
        profile.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_readme_and_notes_quote_the_committed_benchmark():
    """The kernel numbers of README.md and kernels/triton/NOTES.md are the summary of the committed JSON
    (regenerated, never typed in): ``python -m qdelta.harness.bench.kernels summary <json>``."""
    root = RESULTS.parents[1]
    report = bench_kernels.load_report(RESULTS / "kernels-h200.json")
    block = bench_kernels.SUMMARY_BEGIN + "\n" + bench_kernels.summary(report) + "\n" + bench_kernels.SUMMARY_END
    for doc in (root / "README.md", root / "kernels" / "triton" / "NOTES.md"):
        assert block in doc.read_text(), f"{doc.name}: regenerate its kernel numbers from kernels-h200.json"


def test_benchmark_rows_use_the_issue_schema():
    raw = json.loads((RESULTS / "kernels-h200.json").read_text())
    want = {"config", "T", "impl", "qk_l2norm", "fwd_ms", "fwd_bwd_ms"}
    assert raw["rows"] and all(want <= set(r) for r in raw["rows"])
    assert {r["impl"] for r in raw["rows"]} == set(bench_kernels.IMPLS)
