"""Rebuild the v7 table (kernels-h200-v7.{json,md}) from the log of a benchmark run that was cut before it wrote them.

The 2026-11-27 run (kernels/triton/device_check.sh, step ``bench``) hit its 330 s step timeout
during the 1.3B T=8192 row, before ``qdelta bench kernels`` wrote its files (it now writes after
every row). Every measured row is in its log, ``bench-h200-v7.log`` beside this file, as the
dataclass it would have written; this script reads those rows back, adds the DESIGN §5 anchors as
the benchmark does, and states what is missing. Run from the repo root:

    python results/bench/recover_from_log.py results/bench/bench-h200-v7.log /tmp/v7
    (writes kernels-h200.{json,md} there; committed here renamed with the -v7 suffix)
"""
import ast
import re
import sys
from pathlib import Path

from qdelta.harness import bench_kernels as bk


def _from_repr(text: str, cls):
    """A dataclass back from its logged repr ``Name(field=literal, ...)``, literals only (no eval)."""
    call = ast.parse(text, mode="eval").body
    return cls(**{kw.arg: ast.literal_eval(kw.value) for kw in call.keywords})


def recover(log_text: str) -> bk.Report:
    rows = [_from_repr(m, bk.Row) for m in re.findall(r": (Row\(.*\))$", log_text, re.M)]
    decode = [_from_repr(m, bk.DecodeRow) for m in re.findall(r": (DecodeRow\(.*\))$", log_text, re.M)]
    copy = decode[0].gbps / decode[0].fraction_of_copy  # the run's measured copy rate
    report = bk.Report(card="NVIDIA H200", torch="2.11.0+cu130", triton="3.6.0", date="2026-11-27",
                       fla="0.6.0", copy_gbps=copy, rows=rows, decode=decode, fla_note=bk.FLA_GUARD_NOTE,
                       launch_overrides='{"state":{"LOWP":true},"reverse":{"LOWP":true,"BV":64}} '
                                        "(the launch.py defaults since this run)")
    anchors = bk.AUTHORS.get("H200", {})
    for row in rows:
        row.authors_fwd_ms, row.authors_fwdbwd_ms = anchors.get((row.config, row.T), (None, None))
    done = {(r.config, r.T) for r in rows}
    missing = [f"{c} T={T}" for c in bk.HEAD_CONFIGS for T in bk.LENGTHS if (c, T) not in done]
    report.notes.append("rebuilt from the run's log (bench-h200-v7.log) by recover_from_log.py: the run hit its "
                        "330 s step timeout; not measured in it: " + ", ".join(missing)
                        + ("" if any(d.config == "1.3B" for d in decode) else ", 1.3B decode")
                        + " (see kernels/triton/NOTES.md for the earlier run of those rows)")
    return report


if __name__ == "__main__":
    report = recover(Path(sys.argv[1]).read_text())
    print(bk.to_markdown(report))
    bk.write_report(report, Path(sys.argv[2]))
