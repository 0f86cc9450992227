"""The tree keeps its shape: imports run one way (kernels <- qdelta <- tasks / harness), results/ holds
generated output only, and every "DESIGN §N" citation names a section of docs/DESIGN.md."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> installed package name prefixes it may not import
FORBIDDEN = {
    "kernels": ("qdelta.harness", "qdelta.tasks", "qdelta.modeling", "qdelta.layers", "qdelta.configuration"),
    "qdelta": ("qdelta.harness", "qdelta.tasks"),
    "tasks": ("qdelta.harness",),
}


def _tracked(pattern: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / line for line in out.stdout.splitlines()]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_run_one_way(folder):
    bad = []
    for path in _tracked(f"{folder}/*.py"):
        for name in _imported_modules(path):
            if any(name == p or name.startswith(p + ".") for p in FORBIDDEN[folder]):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_results_hold_generated_output_only():
    files = _tracked("results")
    assert files, "nothing tracked under results/"
    from qdelta.remote_code import REMOTE_MODULE

    # a checkpoint's qdelta_remote.py is written by save_pretrained (qdelta.remote_code), not a script
    generated = {f"{REMOTE_MODULE}.py"}
    scripts = [
        p for p in files if p.suffix in (".py", ".sh") and not (p.name in generated and "checkpoints" in p.parts)
    ]
    versioned = [p for p in files if re.search(r"-v\d+([-.]|$)", p.name)]
    assert not scripts and not versioned, [str(p.relative_to(ROOT)) for p in scripts + versioned]


def test_every_design_citation_names_a_section():
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    sections = set(re.findall(r"(?m)^##+ (\d+(?:\.\d+)?)[. ]", design))
    cited = {}
    for pattern in ("*.py", "*.md", "*.toml", "*.yaml"):
        for path in _tracked(pattern):
            if path.parts[len(ROOT.parts)] == "results":
                continue
            for number in re.findall(r"DESIGN §(\d+(?:\.\d+)?)", path.read_text(errors="replace")):
                cited.setdefault(number, str(path.relative_to(ROOT)))
    assert cited, "no citations found: the pattern is wrong"
    missing = {n: where for n, where in cited.items() if n not in sections}
    assert not missing, f"cited sections missing from docs/DESIGN.md: {missing}"
