"""Text recall generators: pure functions of (parameters, seed), lengths and depths as specified."""

import json
import re
import subprocess
import sys

import pytest

from qdelta.tasks.docs import data_hash
from qdelta.tasks.needle import build_niah, build_passkey, spread_depths
from qdelta.tasks.synthetic import build_ar, build_kv_recall, build_mqar

SMALL = {
    "mqar": (build_mqar, dict(settings=[[32, 4], [64, 8]], num_examples=2)),
    "ar": (build_ar, dict(settings=[[8, 4]], num_examples=3)),
    "kv": (build_kv_recall, dict(num_pairs=[3, 5], num_examples=2, filler="text", filler_sentences=1)),
    "niah_noise": (build_niah, dict(context_lengths=[120], num_depths=3, haystack="noise")),
    "niah_text_uuid": (build_niah, dict(context_lengths=[150], num_depths=2, haystack="text", value_kind="uuid")),
    "passkey": (build_passkey, dict(context_lengths=[100], num_depths=2)),
}


def _rows(name, **override):
    fn, kw = SMALL[name]
    return fn(**{**kw, **override})["test"].to_list()


def _digests():
    from qdelta.tasks.mqar import make_mqar, mqar_hash

    out = {name: data_hash(_rows(name, seed=3)) for name in SMALL}
    out["mqar_native"] = mqar_hash(*make_mqar(128, 64, 8, 50, seed=7))
    return out


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_same_data_other_seed_differs(name):
    a, b, c = _rows(name, seed=3), _rows(name, seed=3), _rows(name, seed=4)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a[0]["data_hash"] == data_hash(a) != data_hash(c)
    assert [d["context"] for d in a] != [d["context"] for d in c]


@pytest.mark.slow
def test_same_data_in_another_process():
    """Every text generator and the native MQAR generator, in one fresh interpreter (this file run as a script)."""
    out = subprocess.run([sys.executable, __file__], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == _digests()


def test_every_doc_answer_is_findable_by_its_key_and_targets_are_consistent():
    for name in SMALL:
        for doc in _rows(name):
            found = re.search(doc["answer_pattern"], doc["context"])
            assert found and found.group(1) == doc["answer"], (name, doc["slice"])
            assert doc["target"].strip() == doc["answer"] and doc["target"].startswith(" ")
            assert not doc["context"].endswith(doc["answer"])  # the answer is not given away at the end


def test_mqar_text_renders_zoology_sequences():
    rows = _rows("mqar")
    assert [r["slice"] for r in rows] == ["L32_K4"] * 8 + ["L64_K8"] * 16  # one doc per query
    first = rows[0]["context"].split()
    keys, values = first[0:8:2], first[1:8:2]
    assert all(k.isalpha() for k in keys) and all(v.isdigit() for v in values)
    for r in rows[:4]:  # queries of example 0
        words = r["context"].split()
        assert words[-1] in keys and values[keys.index(words[-1])] == r["answer"]
        assert len(words) == 2 * 4 + r["query_offset"] + 1


def test_niah_depths_spread_evenly_and_lengths_fit_in_words():
    assert spread_depths(5) == [0.0, 0.25, 0.5, 0.75, 1.0] and spread_depths(1) == [0.5]
    rows = _rows("niah_noise", context_lengths=[200, 400])
    assert sorted({(r["context_length"], r["depth"]) for r in rows}) == [
        (a, d) for a in (200, 400) for d in (0, 0.5, 1)
    ]
    for r in rows:
        n = len(r["context"].split())
        assert r["length_unit"] == "words" and r["length"] == n and r["context_length"] - 12 <= n <= r["context_length"]
        needle = r["context"].index("One of the special magic numbers")
        rel = needle / len(r["context"])
        assert abs(rel - r["depth"]) < 0.2, (rel, r["depth"])
    text = _rows("niah_text_uuid")
    assert all(
        re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", r["answer"]) for r in text
    )
    from qdelta.tasks.haystack import HAYSTACK_FILE

    book = " ".join(HAYSTACK_FILE.read_text().split())
    for r in text:  # the haystack after the needle is a verbatim run of the shipped text
        body = r["context"].split("\n")[1]
        after = body.split(r["answer"] + ". ", 1)[-1] if r["depth"] < 1 else body.split(" One of the")[0]
        assert len(after.split()) > 20 and after[:200] in book


def _tiny_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from qdelta.tasks.haystack import HAYSTACK_FILE

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<unk>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([HAYSTACK_FILE.read_text()[:60000]], trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(tmp_path)
    return PreTrainedTokenizerFast.from_pretrained(tmp_path)


def test_niah_lengths_in_model_tokens_when_tokenizer_given(tmp_path):
    tok = _tiny_tokenizer(tmp_path)
    rows = build_niah(context_lengths=[300, 600], num_depths=2, haystack="text", tokenizer=str(tmp_path))[
        "test"
    ].to_list()
    for r in rows:
        n = len(tok(r["context"], add_special_tokens=False)["input_ids"])
        assert r["length_unit"] == f"tokens:{tmp_path}" and r["length"] == n
        assert r["context_length"] - 80 <= n <= r["context_length"], (n, r["context_length"])
    words = _rows("niah_noise")
    assert words[0]["data_hash"] != rows[0]["data_hash"]
    with pytest.raises(ValueError, match="metadata.tokenizer"):
        build_niah(context_lengths=[300], tokenizer=str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "fn, kw, field",
    [
        (build_mqar, dict(settings=[[16, 8]]), "metadata.settings[0]"),
        (build_ar, dict(settings=[[40, 30]], key_kind="letter"), "metadata.settings[0]"),
        (build_kv_recall, dict(pair_template="{value} is {key}"), "metadata.pair_template"),
        (build_niah, dict(num_depths="5"), "metadata.num_depths"),
        (build_passkey, dict(context_lengths=[10]), "metadata.context_lengths[0]"),
    ],
)
def test_bad_parameters_name_the_field(fn, kw, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        fn(**kw)


def test_runtime_ignores_keys_lm_eval_adds():
    rows = build_ar(settings=[[8, 4]], num_examples=1, pretrained="x", config_source="y", version=1.0)["test"]
    assert len(rows) == 1


def test_tokenizer_that_cannot_read_text_is_named(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({str(i): i for i in range(10)}, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="metadata.tokenizer: .* cannot encode"):
        build_passkey(context_lengths=[128], tokenizer=str(tmp_path))


if __name__ == "__main__":
    print(json.dumps(_digests()))
