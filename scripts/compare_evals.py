"""Evaluate MQAR checkpoints two ways and compare: the native evaluator
(`qdelta.tasks.mqar.evaluate_mqar`) and the `qdelta eval --tasks qd_mqar` run records.

For each checkpoint folder: (1) the native accuracy on the held-out set of the training run
(its train_config's eval seed and size, fp32 on CPU; the GPU run's bf16 number is in its
metrics.json); (2) the native accuracy on qd_mqar's own data (seed 0 + slice index, 8 sequences
per slice); (3) per query of the harness run record (samples.jsonl), the harness log-likelihood of
the answer against the native log-softmax at the same position, and whether both call it greedy.
Writes a JSON summary. Usage::

    python scripts/compare_evals.py OUT.json CKPT:RUN_RECORD_DIR ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml


def compare(ckpt: Path, record: Path) -> dict:
    import qdelta
    from qdelta.tasks.mqar import GENERATORS, evaluate_mqar, mqar_examples
    from qdelta.tasks.synthetic import mqar_symbol

    cfg = yaml.safe_load((ckpt / "train_config.yaml").read_text())
    vocab, settings = int(cfg["data"]["vocab_size"]), [tuple(s) for s in cfg["data"]["configs"]]
    model = qdelta.load_model(str(ckpt)).eval()
    with torch.no_grad():
        held_out = evaluate_mqar(
            model,
            vocab,
            settings=settings,
            num_examples=int(cfg["eval"]["num_examples"]),
            seed=int(cfg["eval"]["seed"]),
            batch_size=64,
            generator=cfg["data"].get("generator", "qdelta"),  # records without the field predate zoology's
        )
        summary = json.loads((record / "summary.json").read_text())
        meta = summary["tasks"]["qd_mqar"]
        samples = [json.loads(line) for line in (record / "tasks" / "qd_mqar" / "samples.jsonl").open()]
        task_settings = sorted({(s["doc"]["seq_len"], s["doc"]["num_kv_pairs"]) for s in samples})
        task_settings = [s for s in settings if s in task_settings]
        n = 1 + max(s["doc"]["example"] for s in samples)

        def renders_the_record(generator):  # qd_mqar 1.0 used make_mqar, 2.0 zoology's draws
            for i, (L, K) in enumerate(task_settings):
                _, labels = mqar_examples(generator, vocab, L, K, n, seed=i)
                for s in (s for s in samples if (s["doc"]["seq_len"], s["doc"]["num_kv_pairs"]) == (L, K)):
                    t = s["doc"]["query_offset"] + 2 * K
                    if mqar_symbol(int(labels[s["doc"]["example"], t]), vocab // 2) != s["doc"]["answer"]:
                        return False
            return True

        generator = next(g for g in GENERATORS if renders_the_record(g))
        same_data = evaluate_mqar(
            model, vocab, settings=task_settings, num_examples=n, seed=0, batch_size=64, generator=generator
        )
        worst, disagree = 0.0, 0
        for i, (L, K) in enumerate(task_settings):
            inputs, labels = mqar_examples(generator, vocab, L, K, n, seed=i)
            logp = torch.log_softmax(model(inputs).logits.float(), -1)
            for s in (s for s in samples if (s["doc"]["seq_len"], s["doc"]["num_kv_pairs"]) == (L, K)):
                e, t = s["doc"]["example"], s["doc"]["query_offset"] + 2 * K
                target = int(labels[e, t])
                native_ll, native_greedy = float(logp[e, t, target]), bool(logp[e, t].argmax() == target)
                harness_ll, harness_greedy = s["resps"][0][0]
                worst = max(worst, abs(native_ll - harness_ll))
                disagree += native_greedy != harness_greedy
    metrics = json.loads((ckpt / "metrics.json").read_text())
    return {
        "checkpoint": ckpt.name,
        "gpu_bf16_held_out": metrics["eval"],
        "cpu_fp32_held_out": held_out,
        "cpu_fp32_on_qd_mqar_data": same_data,
        "harness_qd_mqar": {
            k.split(",")[0]: v for k, v in meta["metrics"].items() if k.startswith("acc") and "stderr" not in k
        },
        "harness_queries": len(samples),
        "max_abs_loglik_diff": worst,
        "greedy_disagreements": disagree,
    }


def main(argv) -> int:
    out, pairs = Path(argv[0]), [a.split(":", 1) for a in argv[1:]]
    rows = [compare(Path(c), Path(r)) for c, r in pairs]
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n")
    tmp.replace(out)
    for r in rows:
        print(
            r["checkpoint"],
            "native held-out mean",
            round(r["cpu_fp32_held_out"]["mean"], 4),
            "native on qd_mqar data",
            round(r["cpu_fp32_on_qd_mqar_data"]["mean"], 4),
            "harness",
            round(r["harness_qd_mqar"]["acc"], 4),
            "max |dll|",
            f"{r['max_abs_loglik_diff']:.2e}",
            "greedy disagreements",
            r["greedy_disagreements"],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
