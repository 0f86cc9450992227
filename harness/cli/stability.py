"""``qdelta stability CHECKPOINT``: per layer and head, beta*a, rho, lam and state-norm growth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "stability diagnostics of a recurrent checkpoint (DESIGN §2): beta*a, rho, lam, state-norm growth"

EPILOG = """The input is one long sequence: a text file (tokenised with the checkpoint's tokenizer, or
--tokenizer), one MQAR example (--mqar), or uniformly random tokens (default).

examples:
  qdelta stability results/checkpoints/qdelta-tiny-recall
  qdelta stability CKPT --text essay.txt --length 8192 --plot stab.png --json stab.json
  qdelta stability CKPT --mqar --length 1024 --kv-pairs 64 --variant paper
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder (config.json + model.safetensors)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--text", metavar="FILE", help="read the input from a text file")
    source.add_argument("--mqar", action="store_true", help="use one token-level MQAR example as input")
    parser.add_argument("--tokenizer", help="tokenizer path for --text (default: the checkpoint folder)")
    parser.add_argument("--length", type=int, default=2048, help="tokens to run (default 2048)")
    parser.add_argument("--kv-pairs", type=int, default=None, help="MQAR key-value pairs (default length // 8)")
    parser.add_argument(
        "--piece",
        type=int,
        default=256,
        help="tokens per cached call; state norms are read between pieces (default 256)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random / MQAR input (default 0)")
    parser.add_argument("--variant", choices=("paper", "official"), help="override a Q-Delta checkpoint's variant")
    parser.add_argument("--device", default="cpu", help="device (default cpu)")
    parser.add_argument("--plot", default=None, help="PNG path (default ./stability_<checkpoint name>.png)")
    parser.add_argument("--json", default=None, help="also write the table rows as JSON here")
    parser.epilog = EPILOG


def _input_ids(args, model):
    import torch

    if args.length < 1:
        raise ValueError(f"--length must be >= 1, got {args.length}")
    vocab = model.config.vocab_size
    if args.text:
        path = Path(args.text)
        if not path.is_file():
            raise FileNotFoundError(f"--text {path} does not exist")
        from transformers import AutoTokenizer

        source = args.tokenizer or args.checkpoint
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot load a tokenizer from {source!r} ({err}); pass --tokenizer PATH") from err
        ids = tokenizer(path.read_text(), return_tensors="pt")["input_ids"][:, : args.length]
        if int(ids.max()) >= vocab:
            raise ValueError(
                f"the tokenizer produced ids up to {int(ids.max())} but the model's vocab_size is "
                f"{vocab}; pass the checkpoint's own tokenizer with --tokenizer"
            )
        return ids
    if args.mqar:
        from qdelta.tasks.mqar import make_mqar

        pairs = args.kv_pairs or max(1, args.length // 8)
        inputs, _ = make_mqar(vocab, args.length, pairs, 1, args.seed)
        return inputs
    gen = torch.Generator().manual_seed(args.seed)
    return torch.randint(0, vocab, (1, args.length), generator=gen)


def _write_json(rows, path) -> None:
    from qdelta.harness.eval.records import atomic_write_text

    atomic_write_text(Path(path), json.dumps(rows, indent=1))


def run(args) -> int:
    import qdelta
    from qdelta.stability import analyse_stability, format_table, plot_stability

    model = qdelta.load_model(args.checkpoint, device=args.device, variant=args.variant)
    ids = _input_ids(args, model)
    report = analyse_stability(model, ids, piece=args.piece)
    print(format_table(report))
    plot = args.plot or f"stability_{Path(args.checkpoint).resolve().name}.png"
    print(f"plot: {plot_stability(report, plot)}")
    if args.json:
        _write_json(report.rows, args.json)
        print(f"table: {args.json}")
    return 0
