"""`qdelta tasks validate` catches each class of mistake with the field name and a fix."""

import re
from pathlib import Path

import pytest
import yaml

from qdelta.harness.cli import main
from qdelta.tasks import TASKS_DIR
from qdelta.tasks.validate import validate_task_file

README = Path(__file__).resolve().parents[2] / "tasks" / "README.md"


def readme_example() -> str:
    text = README.read_text()
    block = text.split("<!-- worked-example: qd_locker_codes.yaml -->", 1)[1]
    return re.search(r"```yaml\n(.*?)```", block, re.S).group(1)


def _write(tmp_path, text, name="task.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _mutate(tmp_path, edit):
    cfg_text = readme_example()
    cfg = yaml.load(cfg_text.replace("!function ", "__fn__"), Loader=yaml.SafeLoader)
    edit(cfg)
    out = yaml.safe_dump(cfg, sort_keys=False).replace("__fn__", "!function ")
    return validate_task_file(_write(tmp_path, out))


@pytest.mark.slow
def test_shipped_files_and_readme_example_are_valid(tmp_path):
    for path in sorted(TASKS_DIR.rglob("*.yaml")):
        assert validate_task_file(path) == [], path
    assert validate_task_file(_write(tmp_path, readme_example())) == []


@pytest.mark.parametrize(
    "edit, expected",
    [
        # unknown fields (top level and metadata), with the nearest name
        (
            lambda c: c.update(doc_to_txt=c.pop("doc_to_text")),
            r"doc_to_txt: unknown task field; did you mean 'doc_to_text'",
        ),
        (
            lambda c: c["metadata"].update(num_pair=c["metadata"].pop("num_pairs")),
            r"metadata\.num_pair: unknown field; did you mean 'num_pairs'",
        ),
        # wrong types
        (lambda c: c["metadata"].update(num_examples="ten"), r"metadata\.num_examples: expected an integer"),
        (lambda c: c.update(test_split=3), r"test_split: expected string"),
        (
            lambda c: c["generation_kwargs"].update(max_gen_toks=-1),
            r"generation_kwargs\.max_gen_toks: expected a positive",
        ),
        # impossible combinations
        (
            lambda c: c["metadata"].update(key_kind="letter", num_pairs=[8, 30]),
            r"metadata\.num_pairs\[1\]: needs 30 distinct key_kind items but 'letter' has only 26",
        ),
        (
            lambda c: c["metadata"].update(pair_template="{value} opens locker {key}"),
            r"metadata\.pair_template: \{key\} must come before \{value\}",
        ),
        (lambda c: c["metadata"].update(filler="none"), r"metadata\.filler_sentences: is 1 but filler is 'none'"),
        (
            lambda c: c.update(output_type="loglikelihood"),
            r"generation_kwargs: only used with output_type: generate_until",
        ),
        (
            lambda c: c.update(output_type="generate"),
            r"output_type: 'generate' is not one of .*did you mean 'generate_until'",
        ),
        (lambda c: c.pop("custom_dataset"), r"custom_dataset: the task has no data"),
        (lambda c: c.pop("test_split"), r"test_split: no evaluation split"),
        (lambda c: c.update(doc_to_text="{{contex}}"), r"doc_to_text: uses \{\{contex\}\} .* did you mean 'context'"),
        (
            lambda c: c.update(custom_dataset="__fn__qdelta.tasks.synthetic.build_kvrecall"),
            r"custom_dataset: .*has no 'build_kvrecall'; did you mean qdelta\.tasks\.synthetic\.build_kv_recall",
        ),
        (lambda c: c.update(task="piqa"), r"task: 'piqa' is also one of lm-eval's built-in tasks"),
    ],
)
def test_each_mistake_is_named_with_a_fix(tmp_path, edit, expected):
    problems = _mutate(tmp_path, edit)
    assert any(re.search(expected, p) for p in problems), problems


@pytest.mark.parametrize(
    "metadata, expected",
    [
        ({"settings": [[16, 8]]}, r"metadata\.settings\[0\]: 8 pairs do not fit in seq_len=16 .* use seq_len >= 32"),
        (
            {"vocab_size": 8, "settings": [[64, 4]]},
            r"metadata\.settings\[0\]: 4 pairs need 4 distinct keys but vocab_size=8",
        ),
        ({"settings": [[64]]}, r"metadata\.settings\[0\]: must be \[seq_len, num_kv_pairs\]"),
    ],
)
def test_mqar_impossible_combinations(tmp_path, metadata, expected):
    text = (
        f"task: qd_mine\ninclude: {TASKS_DIR / 'recall' / 'qd_mqar.yaml'}\n"
        f"metadata: {yaml.safe_dump(metadata, default_flow_style=True).strip()}\n"
    )
    problems = validate_task_file(_write(tmp_path, text))
    assert any(re.search(expected, p) for p in problems), problems


def test_broken_files(tmp_path):
    assert "does not exist" in validate_task_file(tmp_path / "nope.yaml")[0]
    (unparsable,) = validate_task_file(_write(tmp_path, "task: qd_x\nmetadata:\n  seed: 1\n   num_pairs: [4]\n"))
    assert unparsable.startswith(f"{tmp_path / 'task.yaml'}:4: YAML syntax error: mapping values are not allowed")
    assert validate_task_file(_write(tmp_path, "task: x\ninclude: missing.yaml\n"))[0].startswith(
        "include: 'missing.yaml' not found"
    )
    assert "neither a task" in validate_task_file(_write(tmp_path, "metadata: {}\n"))[0]
    group = _write(tmp_path, "group: g\ntask: [a]\naggregate_metrics: []\n")
    assert validate_task_file(group) == [
        "aggregate_metrics: unknown group field; did you mean 'aggregate_metric_list'?"
    ]


def test_cli_exit_codes_and_messages(tmp_path, capsys):
    good = _write(tmp_path, readme_example(), "good.yaml")
    bad = _write(tmp_path, readme_example().replace("num_pairs:", "num_pair:"), "bad.yaml")
    assert main(["tasks", "validate", str(good)]) == 0
    assert main(["tasks", "validate", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{good}: ok" in out and "metadata.num_pair: unknown field; did you mean 'num_pairs'?" in out
    assert main(["tasks", "list"]) == 0
    listing = capsys.readouterr().out
    assert "qd_recall_quick" in listing and "qd_niah_single_3" in listing and "Hugging Face hub" in listing


def test_offline_note_names_hub_tasks(monkeypatch):
    from qdelta.tasks import HUB_TASKS, offline_note

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert "piqa" in offline_note(["piqa", "qd_recall"]) and "Hugging Face hub" in offline_note(["piqa"])
    assert all(t in offline_note(["qd_lm"]) for t in HUB_TASKS)
    assert offline_note(["qd_recall_quick"]) is None
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert offline_note(["piqa"]) is None


def test_every_problem_of_a_file_is_reported(tmp_path):
    def edit(c):
        c.update(doc_to_txt=c.pop("doc_to_text"), colour="red")
        c["metadata"].update(num_pair=c["metadata"].pop("num_pairs"), num_examples="ten", key_kind=3)

    problems = _mutate(tmp_path, edit)
    for expected in (
        "doc_to_txt: unknown task field",
        "colour: unknown task field",
        "metadata.num_pair: unknown field",
        "metadata.num_examples: expected an integer",
        "metadata.key_kind: expected a string",
    ):
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_shipped_task_included_by_name_from_any_folder(tmp_path):
    """`include: qd_mqar` in the user's own folder: validated here and run by lm-eval's loader."""
    import lm_eval.tasks._yaml_loader as loader

    from qdelta.tasks.includes import enable_include_by_name

    mine = _write(tmp_path, "task: qd_my_mqar\ninclude: qd_mqar\nmetadata:\n  settings: [[64, 4]]\n  num_examples: 3\n")
    assert validate_task_file(mine) == []
    broken = _write(tmp_path, "task: qd_y\ninclude: qd_no_such_task\nmetadata: {num_pair: 3}\n", "y.yaml")
    problems = validate_task_file(broken)
    assert any(p.startswith("include: 'qd_no_such_task' not found") for p in problems), problems
    enable_include_by_name()
    merged = loader.load_yaml(mine, resolve_func=False)
    assert merged["task"] == "qd_my_mqar" and merged["metadata"]["settings"] == [[64, 4]]
    assert merged["output_type"] == "loglikelihood" and "custom_dataset" in merged
