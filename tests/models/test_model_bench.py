"""``qdelta bench model``'s CPU parts: shape, group and generation parsing, the report files of a partial run,
ratios against each family's peer, error rows without fla, our Auto classes after fla's, refusals."""

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from qdelta.harness.bench import model as bench
from qdelta.harness.bench.generation import GenRow, all_logits_note, parse_gen, rates


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


# --- issue 19 items 4 and 5: the Gated DeltaNet pair, generation, groups ---


def test_parse_groups_and_plan():
    assert bench.parse_groups("gen, gdn") == ("gdn", "gen")  # GROUPS order
    for bad in ("", "gdn,train", ","):
        with pytest.raises(ValueError, match="qdelta, gdn, gen, gen-gdn"):
            bench.parse_groups(bad)
    assert bench.plan(bench.GROUPS) == {"qdelta": (True, True), "gdn": (True, True)}
    assert bench.plan(("gdn", "gen")) == {"qdelta": (False, True), "gdn": (True, False)}
    assert bench.plan(("gen-gdn",)) == {"gdn": (False, True)}
    assert bench.plan(("gdn", "gen"), with_gen=False) == {"gdn": (True, False)}


def test_parse_gen_and_rates():
    assert parse_gen("64x2048x128") == (64, 2048, 128) and parse_gen("Off") is None
    for bad in ("64x2048", "64x2048x1", "0x2048x128", "axbxc"):
        with pytest.raises(ValueError, match="BxTxN"):
            parse_gen(bad)
    decode, e2e = rates(64, 128, first_ms=500.0, total_ms=3040.0)
    assert decode == pytest.approx(64 * 127 / 2.54) and e2e == pytest.approx(64 * 128 / 3.04)
    assert rates(2, 4, first_ms=10.0, total_ms=9.0)[0] is None  # noise above the decode time: no rate


def _report_with_gdn_and_gen():
    r = _report()
    r.rows.append(bench.Row("fla-gdn", 8, 2048, 100.0, 80000.0, 15.0, 40.0, 400000.0, 2.0))
    r.rows.append(bench.Row("ours-gdn", 8, 2048, 80.0, 100000.0, 16.0, 50.0, 200000.0, 2.0))
    r.gen_repeats = 3
    r.gen.append(GenRow("authors", 64, 2048, 128, error="TypeError: generate() got an unexpected keyword"))
    r.gen.append(GenRow("ours-paper", 64, 2048, 128, 500.0, 3040.0, 3200.0, 2700.0, 12.0))
    r.gen.append(GenRow("fla-gdn", 64, 2048, 128, 400.0, 2000.0, 5080.0, 4096.0, 10.0))
    r.gen.append(GenRow("ours-gdn", 64, 2048, 128, 400.0, 2400.0, 4064.0, 3413.0, 11.0))
    r.gen.append(GenRow("ours-gdn+graphs", 64, 2048, 128, 400.0, 1000.0, 16256.0, 8192.0, 11.0))
    return r


def test_markdown_names_each_peer_and_ratios_compare_within_a_family(tmp_path):
    paths = bench.write_report(_report_with_gdn_and_gen(), tmp_path)
    md = paths["md"].read_text()
    assert "| vs authors |" in md and "| vs fla-gdn |" in md
    assert "| ours-gdn | 8 | 2048 | 80.0 | 100.0k | 1.25x | 16.0 | 50.0 | 200.0k | 0.50x | 2.0 |" in md
    assert "| fla-gdn | 8 | 2048 | 100.0 | 80.0k | 1.00x |" in md
    # generation: ours-gdn against fla-gdn; ours-paper has no peer figure (the authors' generate failed)
    assert "| ours-gdn | 64 | 2048 | 128 | 400.0 | 2400.0 | 4.1k | 0.80x | 3.4k | 0.83x | 11.0 |" in md
    assert "| ours-paper | 64 | 2048 | 128 | 500.0 | 3040.0 | 3.2k | — | 2.7k | — | 12.0 |" in md
    assert "| ours-gdn+graphs | 64 | 2048 | 128 | 400.0 | 1000.0 | 16.3k | 3.20x | 8.2k | 2.00x | 11.0 |" in md
    assert "- authors generate B=64 T=2048 new=128: TypeError" in md
    back = bench.load_report(paths["json"])
    assert back.gen[2] == GenRow("fla-gdn", 64, 2048, 128, 400.0, 2000.0, 5080.0, 4096.0, 10.0)


def test_report_of_an_earlier_run_without_generation_loads(tmp_path):
    paths = bench.write_report(_report(), tmp_path)
    data = json.loads(paths["json"].read_text())
    for key in ("gen", "gen_repeats", "groups"):
        del data[key]
    paths["json"].write_text(json.dumps(data))
    back = bench.load_report(paths["json"])
    assert back.gen == [] and "## Greedy generation" not in bench.to_markdown(back)


@pytest.mark.skipif(importlib.util.find_spec("fla") is not None, reason="fla is installed here")
def test_fla_missing_gives_an_install_hint_and_error_rows():
    with pytest.raises(ImportError, match="pip install --no-deps flash-linear-attention==0.6.0"):
        bench.load_fla_gdn_classes()
    r = _report()
    bench.error_rows(r, bench.FAMILIES["gdn"], [(8, 2048), (2, 8192)], (64, 2048, 128), "ImportError: no fla")
    assert [(x.model, x.B, x.error) for x in r.rows[2:]] == [
        ("fla-gdn", 8, "ImportError: no fla"),
        ("fla-gdn", 2, "ImportError: no fla"),
        ("ours-gdn", 8, "ImportError: no fla"),
        ("ours-gdn", 2, "ImportError: no fla"),
    ]
    assert [(x.model, x.error) for x in r.gen] == [
        ("fla-gdn", "ImportError: no fla"),
        ("ours-gdn", "ImportError: no fla"),
    ]
    md = bench.to_markdown(r)
    assert "| fla-gdn | 8 | 2048 | — | — | — |" in md and "- ours-gdn generate B=64 T=2048 new=128: ImportError" in md


def test_reclaim_auto_classes_takes_our_model_types_back():
    from transformers import AutoConfig, PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    import qdelta

    class ForeignConfig(PretrainedConfig):  # what `import fla` does to "gated_deltanet"
        model_type = "gated_deltanet"

    AutoConfig.register("gated_deltanet", ForeignConfig, exist_ok=True)
    try:
        assert CONFIG_MAPPING["gated_deltanet"] is ForeignConfig
        assert bench.reclaim_auto_classes() == ["gated_deltanet"]
        assert CONFIG_MAPPING["gated_deltanet"] is qdelta.GatedDeltaNetConfig
        assert bench.reclaim_auto_classes() == []
    finally:
        qdelta.modeling._register()


def test_fla_hopper_guard_is_lifted_inside_the_block_only(monkeypatch):
    chunk_o = types.SimpleNamespace(IS_NVIDIA_HOPPER=True, TRITON_ABOVE_3_4_0=True, TRITON_ABOVE_3_7_1=False)
    monkeypatch.setitem(sys.modules, "fla.ops.common.chunk_o", chunk_o)
    with bench.fla_hopper_guard_lifted(True) as lifted:
        assert lifted and chunk_o.TRITON_ABOVE_3_7_1 is True
    assert chunk_o.TRITON_ABOVE_3_7_1 is False
    with bench.fla_hopper_guard_lifted(False) as lifted:
        assert not lifted and chunk_o.TRITON_ABOVE_3_7_1 is False


def test_fla_gdn_config_of_the_benchmark_shape_loads_as_ours(tmp_path):
    """The config.json fla 0.6's GatedDeltaNetConfig(**GDN_340M) saves (its __init__ fields; shrunk here) and
    our model's weights (fla's names are ours) load with qdelta.load_model: no field is refused."""
    from safetensors.torch import save_file

    import qdelta
    from qdelta.testing import tiny_model

    fields = dict(bench.GDN_340M, hidden_size=32, num_hidden_layers=2, num_heads=2, head_dim=16, vocab_size=96)
    fields.update(  # the other fields fla's config writes, at its defaults
        model_type="gated_deltanet", architectures=["GatedDeltaNetForCausalLM"], allow_neg_eigval=False,
        num_v_heads=None, max_position_embeddings=2048, attn=None, use_cache=True, pad_token_id=None,
        bos_token_id=1, eos_token_id=2, fuse_linear_cross_entropy=False, use_l2warp=False,
        attnres_block_size=None, output_gate_activation="swish", transformers_version="5.24.0", dtype="bfloat16",
    )  # fmt: skip
    source = tiny_model("gated_deltanet", seed=0, num_heads=2, head_dim=16, expand_v=2, intermediate_size=None)
    (tmp_path / "config.json").write_text(json.dumps(fields))
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    model = qdelta.load_model(tmp_path)
    assert type(model) is qdelta.GatedDeltaNetForCausalLM and model.config.hidden_ratio == 4
    ids = torch.randint(0, 96, (1, 8), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(ids).logits, source(ids).logits)


def test_cli_refuses_generation_off_with_nothing_else_and_model_options_for_kernels(capsys):
    from qdelta.harness.cli import main

    assert main(["bench", "model", "--only", "gen", "--gen", "off"]) == 2
    assert "--gen off leaves nothing" in capsys.readouterr().err
    assert main(["bench", "model", "--only", "gen,train"]) == 2
    assert "--only takes" in capsys.readouterr().err
    assert main(["bench", "kernels", "--only", "gdn"]) == 2
    assert "belong to 'qdelta bench model'" in capsys.readouterr().err


def test_all_logits_note_names_a_model_without_logits_to_keep():
    from qdelta.testing import tiny_model

    class AllLogits(torch.nn.Module):
        def forward(self, input_ids):
            return input_ids

    note = all_logits_note(AllLogits(), "peer")
    assert note.startswith("peer: forward takes no logits_to_keep")
    assert all_logits_note(tiny_model("qdelta"), "ours-paper") is None


def test_summary_adds_generation_and_the_readme_quotes_the_committed_report():
    text = bench.summary(_report_with_gdn_and_gen())
    assert "Greedy generation, 64 prompts of 2048 tokens + 128: ours-paper 3.2k decode tok/s." in text
    assert (
        "fla-gdn 5.1k decode tok/s; ours-gdn 4.1k decode tok/s (0.80x); ours-gdn+graphs 16.3k decode tok/s (3.20x)"
        in text
    )
    root = Path(__file__).resolve().parents[2]
    report = bench.load_report(root / "results" / "bench" / "model-h200.json")
    block = bench.SUMMARY_BEGIN + "\n" + bench.summary(report) + "\n" + bench.SUMMARY_END
    assert block in (root / "README.md").read_text(), "regenerate: python -m qdelta.harness.bench.model summary ..."


def test_models_take_turns_and_one_that_fails_drops_out():
    order = []

    def call(name, fail_in=None):
        def run(r):
            order.append((r, name))
            if r == fail_in:
                raise RuntimeError("out of memory")
            return 10.0 * r + len(name)

        return run

    values, errors = bench.take_turns({"a": call("a"), "bb": call("bb", fail_in=1), "ccc": call("ccc")}, 3)
    assert [n for _, n in order] == ["a", "bb", "ccc", "ccc", "bb", "a", "a", "ccc"]
    assert values == {"a": [1.0, 11.0, 21.0], "bb": [2.0], "ccc": [3.0, 13.0, 23.0]}
    assert errors == {"bb": "RuntimeError: out of memory"}


def test_measure_family_fills_rows_from_the_rounds_medians(monkeypatch):
    from qdelta.testing import tiny_model

    ms = iter(range(100, 200))  # every timed call reads the next value: the rounds differ
    monkeypatch.setattr(bench, "median_ms", lambda fn, steps, warmup: (fn(), float(next(ms)))[1])
    monkeypatch.setattr(bench, "_timed", lambda fn, steps, warmup, resident: (bench.median_ms(fn, steps, 0), 1.0))
    monkeypatch.setattr(bench.torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(bench, "count_syncs", lambda fn: (fn(), 2)[1])
    models = {"authors": tiny_model("qdelta", seed=1), "ours-paper": tiny_model("qdelta", seed=2)}
    broken = tiny_model("qdelta", seed=3)
    broken.forward = lambda **kw: (_ for _ in ()).throw(RuntimeError("boom"))
    models["ours-official"] = broken
    rows = {name: bench.Row(name, 2, 8) for name in models}
    guarded = []
    ids = torch.randint(3, 96, (2, 8), generator=torch.Generator().manual_seed(0))
    bench.measure_family(models, rows, ids, 3, 1, 0, lambda name: _Entered(guarded, name))
    paper = rows["ours-paper"]
    # training: authors 100, paper 101 (the broken model fails, dropped); paper 102, authors 103; 104, 105
    assert paper.train_ms_rounds == [101.0, 102.0, 105.0] and paper.train_ms == 102.0
    assert (
        paper.train_tokens_s == pytest.approx(16 / 102.0 * 1e3) and paper.train_peak_gb == 1.0 and paper.error is None
    )
    assert rows["authors"].train_ms_rounds == [100.0, 103.0, 104.0]
    assert len(paper.prefill_ms_rounds) == 3 and paper.prefill_ms == sorted(paper.prefill_ms_rounds)[1]
    assert rows["ours-official"].error == "training: RuntimeError: boom; prefill: RuntimeError: boom"
    assert rows["ours-official"].train_ms is None and rows["ours-official"].train_ms_rounds == []
    assert guarded.count("ours-paper") == 6  # every call ran inside its model's guard
    assert (paper.train_syncs, paper.prefill_syncs, rows["ours-official"].train_syncs) == (2, 2, None)
    md = bench.to_markdown(_rounds_report(rows))
    assert "| ours-paper | 2 | 8 | 102.0 [101.0-105.0] |" in md and "3 rounds of 1 calls" in md
    assert md.count(" 2 / 2 |") == 2 and "| — / — |" in md and "GPU waits" in md


class _Entered:
    def __init__(self, seen, name):
        self.seen, self.name = seen, name

    def __enter__(self):
        self.seen.append(self.name)

    def __exit__(self, *exc):
        return False


def _rounds_report(rows):
    r = _report()
    r.rows, r.rounds, r.steps = list(rows.values()), 3, 1
    return r


def test_resident_bytes_counts_each_tensor_once():
    layer = torch.nn.Linear(4, 4)
    shared = torch.nn.Sequential(layer, layer)
    opt = torch.optim.AdamW(shared.parameters())
    shared(torch.randn(2, 4)).sum().backward()
    opt.step()
    weights = (4 * 4 + 4) * 4
    assert bench.resident_bytes(shared) == weights
    # AdamW keeps two moments per parameter (and a step counter per parameter)
    assert bench.resident_bytes(shared, opt) == 3 * weights + 2 * 4


def test_cli_refuses_model_timing_flags_for_kernels(capsys):
    from qdelta.harness.cli import main

    assert main(["bench", "kernels", "--rounds", "2"]) == 2
    assert "--rounds" in capsys.readouterr().err
    assert main(["bench", "model", "--rounds", "0"]) == 2
    assert "--rounds must be a positive integer" in capsys.readouterr().err
