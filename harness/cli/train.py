"""``qdelta train``: train a model from a YAML config (see :mod:`qdelta.harness.train.config`)."""

from __future__ import annotations

import json

HELP = "train a model on synthetic recall data from a YAML config (resumes after interruption)"

EXAMPLES = """examples:
  qdelta train --config configs/recall_qdelta.yaml
  qdelta train --config my.yaml --set optim.lr=3e-3 --set train.steps=500 --output-dir runs/try
  qdelta train --config my.yaml --no-resume          # start over even if checkpoints exist
  torchrun --nproc_per_node 2 -m qdelta.harness.cli train --config my.yaml   # several GPUs (DDP)

  python -m qdelta.harness.train.grid configs/mqar_grid.yaml OUT --workers 12 --budget-s 280
                                                     # many small runs at once on one GPU (the MQAR grid)
A killed run continues from its last checkpoint when the same command is run again.
A list of learning rates (optim.lr: [1e-3, 3e-3]) trains each and reports the best.
"""


def add_arguments(parser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("--config", required=True, metavar="FILE.yaml", help="training config (YAML)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. optim.lr=3e-3 (repeatable)",
    )
    parser.add_argument("--output-dir", default=None, help="where to write (overrides output_dir)")
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from qdelta.harness.train.config import load_config
    from qdelta.harness.train.loop import train

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    config = load_config(args.config, overrides)
    result = train(config, resume=not args.no_resume, progress=not args.no_progress)
    out = config.resolved_output_dir()
    if "sweep" in result:
        for r in result["sweep"]["runs"]:
            print(f"lr {r['lr']:g}: eval {json.dumps(r['eval'])} final loss {r['final_loss']}")
        print(f"best lr {result['lr']:g}")
    print(f"final loss {result['final_loss']}; eval {json.dumps(result['eval'])}")
    print(f"model written to {out}")
    return 0
