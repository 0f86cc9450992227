"""RULER's NIAH family (``build_ruler_niah``): lm-eval's prompts character for character where its
generator runs offline, the shipped YAMLs solvable by exact recall, RULER's scoring, bad input."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import yaml

from qdelta.tasks.needle import build_ruler_niah
from qdelta.tasks.oracle_models import OracleLM
from qdelta.tasks.scoring import score

pytest.importorskip("wonderwords", reason="RULER's key words come from wonderwords: pip install 'qdelta[ruler]'")

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = str(REPO / "results" / "checkpoints" / "qdelta-tiny-recall")
RECALL = REPO / "tasks" / "recall"
FAMILY = ["single_1", "single_2", "single_3", "multikey_1", "multikey_2", "multikey_3", "multivalue", "multiquery"]


def _yaml_metadata(name: str) -> dict:
    text = (RECALL / f"qd_niah_{name}.yaml").read_text()
    return yaml.safe_load(text.replace("!function", ""))["metadata"]


@pytest.fixture(scope="module")
def lm_eval_ruler():
    """lm-eval's own RULER modules, imported offline (nltk's punkt download is skipped)."""
    pytest.importorskip("nltk", reason="lm-eval's prepare_niah imports nltk")
    import nltk

    saved = nltk.download
    nltk.download = lambda *args, **kwargs: False  # the import tries to fetch punkt_tab; no network here
    try:
        from lm_eval.tasks.ruler import niah_utils, prepare_niah
    finally:
        nltk.download = saved
    return prepare_niah, niah_utils


def test_s_niah_1_prompts_equal_lm_evals_niah_single_1(lm_eval_ruler):
    """Our qd_niah_single_1 against lm-eval's niah_single_1 dataset function, same seed and tokenizer."""
    _, niah_utils = lm_eval_ruler
    random.seed(0)  # what lm_eval.simple_evaluate does (random_seed=0) before it builds the tasks
    theirs = niah_utils.niah_single_1(tokenizer=TOKENIZER, max_seq_lengths=[1024])["test"]
    meta = dict(_yaml_metadata("single_1"), context_lengths=[1024], num_samples=500, tokenizer=TOKENIZER)
    ours = build_ruler_niah(**meta)["test"]
    assert len(ours) == len(theirs) == 500
    for a, b in zip(theirs, ours):
        assert b["context"] == a["input"]
        assert (b["outputs"], b["gen_prefix"], b["length"], b["context_length"]) == (
            a["outputs"],
            a["gen_prefix"],
            a["length"],
            a["max_length"],
        )


@pytest.mark.parametrize("name, key, value", [("multikey_2", "words", "numbers"), ("multikey_3", "uuids", "uuids")])
def test_needle_haystack_prompts_equal_lm_evals(lm_eval_ruler, name, key, value):
    prepare_niah, niah_utils = lm_eval_ruler
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    random.seed(7)
    theirs = prepare_niah.generate_samples(
        prepare_niah.get_haystack("needle"),
        TOKENIZER=tok,
        max_seq_length=1024,
        template=niah_utils.TEMPLATE,
        type_haystack="needle",
        type_needle_k=key,
        type_needle_v=value,
        num_samples=20,
    )
    meta = dict(_yaml_metadata(name), seed=7, context_lengths=[1024], num_samples=20, tokenizer=TOKENIZER)
    ours = build_ruler_niah(**meta)["test"]
    assert [d["context"] for d in ours] == [d["input"] for d in theirs]
    assert [d["outputs"] for d in ours] == [d["outputs"] for d in theirs]


def test_essay_draws_equal_lm_evals_for_the_same_text_and_sentences(lm_eval_ruler, monkeypatch):
    """Essay haystack with 4 keys and 4 queries (MQ-NIAH): lm-eval's generate_input_output on the
    same words with the same sentence split gives the same prompt, answers and depths."""
    prepare_niah, niah_utils = lm_eval_ruler
    from qdelta.tasks import ruler_niah

    words = list(ruler_niah.essay_words(""))
    monkeypatch.setattr(prepare_niah, "cached_sent_tokenize", lambda text: ruler_niah._split(text))
    spec = ruler_niah.RulerNIAHSpec(haystack="essay", num_needle_k=4, num_needle_q=4)
    for units in (500, 1500):
        random.seed(units)
        theirs = prepare_niah.generate_input_output(
            units,
            words,
            type_haystack="essay",
            num_needle_k=4,
            type_needle_k="words",
            num_needle_v=1,
            type_needle_v="numbers",
            template=niah_utils.TEMPLATE,
            num_needle_q=4,
        )
        ours = ruler_niah.render(spec, units, random.Random(units))
        assert ours[:3] == theirs
    assert ruler_niah.DEPTHS == [int(d) for d in prepare_niah.DEPTHS]
    assert ruler_niah.ruler_words() == tuple(prepare_niah.WORDS)


@pytest.mark.parametrize("name", FAMILY)
def test_shipped_family_is_solved_by_exact_recall_and_fits(name):
    meta = dict(_yaml_metadata(name), context_lengths=[2048], num_samples=3, tokenizer=TOKENIZER)
    docs = list(build_ruler_niah(**meta)["test"])
    assert len(docs) == 3
    for doc in docs:
        assert doc["length"] <= 2048 and doc["slice"] == "len2048" and doc["match"] == "all"
        recalled = OracleLM.recall(doc["context"], doc)
        assert score(doc, " " + recalled + "\n") == 1.0
        assert all(value in doc["context"] for value in doc["outputs"])
        assert len(doc["outputs"]) == (4 if name in ("multivalue", "multiquery") else 1)


def test_string_match_all_gives_partial_credit():
    doc = {"match": "all", "outputs": ["1234567", "7654321", "abcdef-ab", "9999999"]}
    assert score(doc, "\t1234567 and ABCDEF-AB\x01") == 0.5
    assert score(doc, "nothing") == 0.0


def test_haystack_file_in_rulers_format_and_substitute_note(tmp_path):
    essay = tmp_path / "essays.json"
    essay.write_text(json.dumps({"text": "Zebras run fast.  Owls fly at night. " * 400}))
    doc = build_ruler_niah(haystack="essay", haystack_file=str(essay), context_lengths=[1024], num_samples=1)["test"][0]
    assert "Zebras run fast." in doc["context"] and doc["haystack_source"] == str(essay)
    shipped = build_ruler_niah(haystack="essay", context_lengths=[1024], num_samples=1)["test"][0]
    assert "substitute" in shipped["haystack_source"] and shipped["length_unit"] == "words"


@pytest.mark.parametrize(
    "meta, field",
    [
        (dict(haystack="repeat"), "metadata.haystack"),
        (dict(value_kind="number"), "metadata.value_kind"),
        (dict(haystack="noise", haystack_file="x.json"), "metadata.haystack_file"),
        (dict(context_lengths=[150]), "metadata.context_lengths[0]"),
        (dict(num_needle_q=0), "metadata.num_needle_q"),
    ],
)
def test_bad_parameters_name_the_field(meta, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        build_ruler_niah(**meta)


def test_bad_haystack_file_is_refused(tmp_path):
    (tmp_path / "bad.json").write_text('["not", "an", "object"]')
    for path in (tmp_path / "missing.json", tmp_path / "bad.json"):
        with pytest.raises(ValueError, match="metadata.haystack_file"):
            build_ruler_niah(haystack="essay", haystack_file=str(path), context_lengths=[1024], num_samples=1)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
