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


def _run_from_root(code: str, **env) -> subprocess.CompletedProcess:
    """``python -c code`` in the checkout root, which puts the root first on sys.path."""
    import os
    import sys

    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env}
    )


def test_the_kernels_folder_hands_its_top_level_name_to_an_installed_kernels(tmp_path):
    # a stand-in for Hugging Face's `kernels` distribution, behind the checkout root on sys.path
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("from kernels.layer import WHERE\n")
    (tmp_path / "kernels" / "layer.py").write_text("WHERE = 'installed'\n")
    run = _run_from_root(
        "import kernels, qdelta.kernels; print(kernels.WHERE, qdelta.kernels.chunk_qdelta.__name__)",
        PYTHONPATH=str(tmp_path),
        QDELTA_LAZY_IMPORT="1",  # transformers would import the stand-in too
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["installed", "chunk_qdelta"]


def test_transformers_imports_from_the_checkout_root():
    # transformers>=5.25 imports Hugging Face's `kernels`, which this checkout's kernels/ folder shadows
    run = _run_from_root("import transformers.modeling_utils, qdelta; print(qdelta.QDeltaForCausalLM.__name__)")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "QDeltaForCausalLM"


@pytest.mark.parametrize("folder", ["harness", "tasks"])
def test_no_installed_distribution_owns_a_folders_top_level_name(folder):
    from importlib.metadata import packages_distributions

    owners = packages_distributions().get(folder)
    assert not owners, (
        f"{owners} install a top-level {folder!r}, which {folder}/ shadows when run from the checkout root; "
        f"give {folder}/__init__.py the hand-over kernels/__init__.py has (DESIGN §1)"
    )
