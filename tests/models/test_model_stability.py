"""``qdelta stability`` and the diagnostics behind it."""

import json

import pytest
import torch

from qdelta.harness.cli import main
from qdelta.stability import analyse_stability
from qdelta.testing import tiny_model

pytestmark = pytest.mark.slow  # CPU-heavy: run by the full suite, skipped by -m 'not slow'


def test_stability_cli_prints_table_and_writes_plot(tmp_path, capsys):
    tiny_model("qdelta", seed=5, variant="official").save_pretrained(tmp_path / "ckpt")
    plot, table = tmp_path / "out" / "stab.png", tmp_path / "stab.json"
    code = main(
        [
            "stability",
            str(tmp_path / "ckpt"),
            "--length",
            "150",
            "--piece",
            "50",
            "--plot",
            str(plot),
            "--json",
            str(table),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:4] == ["layer", "head", "beta_a_min", "beta_a_p01"] and "rho" in header
    assert len([line for line in out.splitlines() if line.split()[:1] in (["0"], ["1"])]) == 4  # 2 layers x 2 heads
    assert "variant=official" in out and "150 tokens" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    rows = json.loads(table.read_text())
    assert len(rows) == 4 and all(0 <= r["outside"] <= 1 for r in rows)


def test_stability_numbers_match_a_direct_computation():
    model = tiny_model("qdelta", seed=6)
    ids = torch.randint(0, 96, (1, 90), generator=torch.Generator().manual_seed(1))
    report = analyse_stability(model, ids, piece=40)
    assert report.positions == [40, 80, 90]
    # direct: layer 0 sees embeddings -> attn_norm; recompute beta, lam, q, k by hand
    mixer = model.model.layers[0].attn
    with torch.no_grad():
        h = model.model.layers[0].attn_norm(model.model.embeddings(ids))
        q = (
            torch.nn.functional.silu(
                torch.nn.functional.conv1d(
                    torch.nn.functional.pad(mixer.q_proj(h).transpose(1, 2), (3, 0)),
                    mixer.q_conv1d.weight,
                    groups=mixer.q_conv1d.dim,
                )
            )
            .transpose(1, 2)
            .view(1, 90, 2, 16)
        )
        k = (
            torch.nn.functional.silu(
                torch.nn.functional.conv1d(
                    torch.nn.functional.pad(mixer.k_proj(h).transpose(1, 2), (3, 0)),
                    mixer.k_conv1d.weight,
                    groups=mixer.k_conv1d.dim,
                )
            )
            .transpose(1, 2)
            .view(1, 90, 2, 16)
        )
        q = q / (q.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()
        k = k / (k.pow(2).sum(-1, keepdim=True) + 1e-6).sqrt()
        beta = torch.sigmoid(mixer.b_proj(h))
        lam = torch.sigmoid(mixer.lamb_proj(h) - 0.9)
        beta_a = (beta * (k * (k + lam[..., None] * q)).sum(-1))[0]  # (T, H)
    torch.testing.assert_close(report.beta_a[0], beta_a, atol=1e-5, rtol=1e-5)
    row = report.rows[1]  # layer 0, head 1
    assert row["rho"] == pytest.approx(float((1 - beta_a[:, 1]).abs().max()), abs=1e-5)
    assert row["lam_p50"] == pytest.approx(float(lam[0, :, 1].median()), abs=1e-3)
    assert 0 < row["beta_a_min"] <= row["beta_a_p50"] <= row["beta_a_max"] < 2  # sigmoid beta, a in (1-lam, 1+lam)
    assert row["outside"] == 0.0
    assert report.state_norms.shape == (2, 2, 3) and bool((report.state_norms > 0).all())


def test_allow_neg_eigval_can_leave_the_contraction_interval():
    model = tiny_model("qdelta", seed=7, allow_neg_eigval=True)
    ids = torch.randint(0, 96, (1, 64), generator=torch.Generator().manual_seed(2))
    report = analyse_stability(model, ids, piece=64)
    assert max(r["beta_a_max"] for r in report.rows) > 1.0  # beta up to 2 and lam up to 2
    assert all(r["lam_p99"] <= 2.0 for r in report.rows)


def test_stability_rejects_transformers(tmp_path):
    with pytest.raises(ValueError, match="recurrent model"):
        analyse_stability(tiny_model("transformer"), torch.randint(0, 96, (1, 8)))


def test_stability_cli_reads_text_with_the_checkpoint_tokenizer_and_mqar(tmp_path, capsys):
    from qdelta.harness.train.tokenizer import build_id_tokenizer

    folder = tmp_path / "ckpt"
    tiny_model("gated_deltanet", seed=8).save_pretrained(folder)
    build_id_tokenizer(96).save_pretrained(folder)
    text = tmp_path / "input.txt"
    text.write_text(" ".join(str((7 * i) % 96) for i in range(120)))
    assert (
        main(
            [
                "stability",
                str(folder),
                "--text",
                str(text),
                "--length",
                "100",
                "--piece",
                "64",
                "--plot",
                str(tmp_path / "a.png"),
            ]
        )
        == 0
    )
    assert "gated_deltanet (variant=None), 100 tokens" in capsys.readouterr().out
    assert (
        main(
            ["stability", str(folder), "--mqar", "--length", "64", "--kv-pairs", "4", "--plot", str(tmp_path / "b.png")]
        )
        == 0
    )
    assert "64 tokens" in capsys.readouterr().out
    build_id_tokenizer(200).save_pretrained(tmp_path / "big")
    text.write_text("150 3 4")
    assert main(["stability", str(folder), "--text", str(text), "--tokenizer", str(tmp_path / "big")]) == 2
    assert "vocab_size is 96" in capsys.readouterr().err


@pytest.mark.parametrize("model_type", ["qdelta", "gated_deltanet"])
def test_initial_decay_range_follows_dt_min_dt_max(model_type):
    """dt = softplus(dt_bias) is drawn from [dt_min, dt_max]; the default keeps Mamba-2's (1e-3, 1e-1)."""
    import torch.nn.functional as F

    for dt_min, dt_max in ((1e-3, 1e-1), (1e-4, 1e-3)):
        model = tiny_model(model_type, dt_min=dt_min, dt_max=dt_max, num_heads=4, head_dim=8)
        dts = torch.cat([F.softplus(m.dt_bias.detach()) for m in model.modules() if hasattr(m, "dt_bias")])
        assert dts.numel() >= 8
        assert dts.min() >= dt_min * (1 - 1e-5) and dts.max() <= dt_max * (1 + 1e-5)
    with pytest.raises(ValueError, match="dt_min"):
        tiny_model(model_type, dt_min=1e-2, dt_max=1e-3)
