"""`--model qdelta` where users set it beside lm-eval's HFLM (`--model hf`, trust_remote_code): it
stops at the end ids of config.json and generation_config.json, reads generation_kwargs as HFLM
does (greedy only; sampling, beams and unknown keys refused), and truncates over-length prompts on
the left only when asked (truncation=left), counting them. Each parity claim is checked against
HFLM itself on the same checkpoint folder."""

from __future__ import annotations

import json

import pytest
import torch
from lm_eval.api.instance import Instance

from qdelta.harness.eval.adapter import QDeltaLM
from qdelta.harness.eval.generation import eos_token_ids, greedy_settings
from qdelta.testing import tiny_model

PROMPT = "the key 3 is 5 . the key 4 is"


def _request(kind, args, task="qd_task", doc_id=0):
    return Instance(kind, {}, args, doc_id, metadata=(task, doc_id, 1))


def _hflm(folder):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(folder), trust_remote_code=True, device="cpu", batch_size=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, save_word_tokenizer):
    """A tiny random Q-Delta whose vocabulary is the word tokenizer's (every id decodes to a word)."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("parity") / "qdelta"
    save_word_tokenizer(folder)
    vocab = len(AutoTokenizer.from_pretrained(str(folder)))
    tiny_model("qdelta", seed=0, vocab_size=vocab).save_pretrained(str(folder))
    return folder


def _greedy_ids(folder, prompt, n):
    """n greedy tokens without any stop, one uncached forward per token (the reference)."""
    from transformers import AutoTokenizer

    import qdelta

    model, tok = qdelta.load_model(str(folder)), AutoTokenizer.from_pretrained(str(folder))
    ids, gen = tok.encode(prompt, add_special_tokens=False), []
    for _ in range(n):
        with torch.no_grad():
            gen.append(int(model(torch.tensor([ids + gen])).logits[0, -1].argmax()))
    return gen, tok


@pytest.mark.parametrize("source", ["generation_config.json", "config.json"])
def test_generation_stops_at_the_checkpoint_eos_ids_like_hflm(source, checkpoint, tmp_path):
    """Fresh random weights, their greedy path known: the k-th token (first time it appears) is made
    an extra end id in generation_config.json or config.json; both adapters stop there."""
    import shutil

    gen, tok = _greedy_ids(checkpoint, PROMPT, 12)
    k = next(i for i in range(2, len(gen)) if gen[i] not in gen[:i] and gen[i] > 3)
    extra = gen[k]
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder)
    request = _request("generate_until", (PROMPT, {"until": [], "max_gen_toks": 12, "do_sample": False}))
    full = QDeltaLM(str(folder), device="cpu").generate_until([request])
    assert full == [tok.decode(gen, skip_special_tokens=True)]  # tokenizer eos only: runs the budget

    file = folder / source
    config = json.loads(file.read_text())
    file.write_text(json.dumps({**config, "eos_token_id": [2, extra]}))
    if source == "config.json":
        (folder / "generation_config.json").unlink()  # transformers then derives it from config.json
    lm = QDeltaLM(str(folder), device="cpu")
    assert extra in lm.stop_token_ids and 2 in lm.stop_token_ids
    stopped = lm.generate_until([request])
    assert stopped == [tok.decode(gen[: k + 1], skip_special_tokens=True)]  # the end word is kept, as in HFLM
    assert stopped == _hflm(folder).generate_until([request])


def test_eos_ids_union_of_tokenizer_config_and_generation_config(tmp_path):
    class Obj:
        def __init__(self, eos):
            self.eos_token_id = eos

    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    assert eos_token_ids(Obj(2), Obj(3), tmp_path) == (2, 3, 7, 9)
    assert eos_token_ids(Obj(2), Obj([2, 5]), None, Obj(11)) == (2, 5, 11)
    assert eos_token_ids(Obj(None), Obj(None)) == ()
    (tmp_path / "generation_config.json").write_text("{")
    with pytest.raises(ValueError, match="generation_config.json: not valid JSON"):
        eos_token_ids(Obj(2), Obj(3), tmp_path)


def test_greedy_settings_read_generation_kwargs_as_hflm():
    assert greedy_settings({}, 256) == ([], 256)
    assert greedy_settings(None, 32) == ([], 32)
    assert greedy_settings({"until": "\n", "max_new_tokens": 7}, 256) == (["\n"], 7)
    assert greedy_settings({"until": ["."], "do_sample": False, "temperature": 0.7}, 9) == (["."], 9)
    assert greedy_settings({"temperature": 0.0, "top_p": 0.9, "top_k": 5, "num_beams": 1}, 9) == ([], 9)
    refused = {
        "temperature": ({"temperature": 0.7}, r"task qd_x: sampling asked for \(generation_kwargs temperature=0.7\)"),
        "do_sample": ({"do_sample": True, "temperature": 1.0}, "do_sample=True, temperature=1.0"),
        "num_beams": ({"num_beams": 4}, "num_beams=4: beam search is not implemented.*num_beams=1"),
        "unknown": ({"repetition_penalty": 1.1, "until": []}, "repetition_penalty: not implemented by --model qdelta"),
        "not_a_number": ({"temperature": "hot"}, "temperature='hot' is not a number"),
        "negative": ({"max_gen_toks": -1}, "max_gen_toks=-1 must be >= 0"),
    }
    for kwargs, message in refused.values():
        with pytest.raises(ValueError, match=message):
            greedy_settings(kwargs, 16, task="qd_x")
    with pytest.raises(ValueError, match="--gen_kwargs do_sample=false"):
        greedy_settings({"do_sample": True}, 16)


def test_generate_until_refuses_sampling_and_ignores_top_k_when_greedy(save_word_tokenizer, tmp_path):
    folder = save_word_tokenizer(tmp_path / "tok")
    lm = QDeltaLM(tiny_model("qdelta", seed=3), tokenizer=str(folder), device="cpu")
    greedy = {"until": ["."], "max_gen_toks": 6, "do_sample": False}
    plain = lm.generate_until([_request("generate_until", (PROMPT, greedy))])
    assert plain == lm.generate_until([_request("generate_until", (PROMPT, {**greedy, "top_k": 3, "top_p": 0.5}))])
    sampling = _request("generate_until", (PROMPT, {"until": ["."], "temperature": 0.8}), task="qd_sampled")
    with pytest.raises(ValueError, match=r"task qd_sampled: sampling asked for \(generation_kwargs temperature=0.8\)"):
        lm.generate_until([sampling])


@pytest.fixture(scope="module")
def short_transformer(tmp_path_factory, save_short_transformer):
    """A tiny Transformer with a 16-token limit (max_position_embeddings) and the word tokenizer."""
    return save_short_transformer(tmp_path_factory.mktemp("short") / "transformer", max_positions=16, seed=5)


LONG_CONTEXT = "the key 3 is 5 . the key 4 is 7 . the key 9 is 2 . query"  # 19 words
CONTINUATIONS = (" 3 is 5", " 4")


def test_over_length_errors_by_default_naming_task_length_and_fix(short_transformer):
    lm = QDeltaLM(str(short_transformer), device="cpu")
    request = _request("loglikelihood", (LONG_CONTEXT, CONTINUATIONS[0]), task="qd_long")
    with pytest.raises(ValueError, match=r"task qd_long: a loglikelihood request needs 21 tokens but max_length is 16"):
        lm.loglikelihood([request])
    with pytest.raises(ValueError, match="truncation=left in --model_args"):
        lm.generate_until([_request("generate_until", (LONG_CONTEXT, {"max_gen_toks": 4}), task="qd_long")])
    assert lm.take_stats()["truncated"] == {}


def test_left_truncation_equals_hflm_and_is_counted(short_transformer):
    lm = QDeltaLM(str(short_transformer), device="cpu", truncation="left")
    hflm = _hflm(short_transformer)
    assert hflm.max_length == lm.max_length == 16
    scored = [
        _request("loglikelihood", (LONG_CONTEXT, c), task="qd_long", doc_id=i) for i, c in enumerate(CONTINUATIONS)
    ]
    ours, theirs = lm.loglikelihood(scored), hflm.loglikelihood(scored)
    for (a, greedy_a), (b, greedy_b) in zip(ours, theirs):
        assert a == pytest.approx(b, abs=1e-4) and greedy_a == greedy_b
    generated = _request("generate_until", (LONG_CONTEXT, {"until": [], "max_gen_toks": 5}), task="qd_gen")
    assert lm.generate_until([generated]) == hflm.generate_until([generated])
    # 19-word context: loglikelihood keeps 17 - len(cont) (5 dropped, then 3); generation keeps 16 - 5 (8 dropped)
    assert lm.take_stats()["truncated"] == {
        "qd_long": {"prompts": 2, "tokens_dropped": 5 + 3},
        "qd_gen": {"prompts": 1, "tokens_dropped": 8},
    }
    with pytest.raises(ValueError, match="max_gen_toks=16 leaves no room"):
        lm.generate_until([_request("generate_until", ("the key", {"max_gen_toks": 16}))])


def test_max_length_and_truncation_arguments(short_transformer, save_word_tokenizer, tmp_path):
    tok = str(save_word_tokenizer(tmp_path / "tok"))
    recurrent = QDeltaLM(tiny_model("qdelta", seed=0), tokenizer=tok, device="cpu", max_length=8, truncation="left")
    assert recurrent.max_length == 8 and QDeltaLM(tiny_model("qdelta"), tokenizer=tok).max_length is None
    recurrent.loglikelihood([_request("loglikelihood", (LONG_CONTEXT, " 3"), task="qd_r")])
    assert recurrent.take_stats()["truncated"] == {"qd_r": {"prompts": 1, "tokens_dropped": 19 - 8}}
    assert recurrent.get_model_info()["truncation"] == "left"
    for kwargs, message in (
        ({"truncation": "right"}, "truncation must be one of .*'none', 'left'"),
        ({"truncation": "left", "on_overflow": "count"}, "pass one of them"),
        ({"max_length": 32}, "max_length=32 exceeds the model's max_sequence_length 16"),
        ({"max_length": "long"}, "max_length must be a number of tokens"),
    ):
        with pytest.raises(ValueError, match=message):
            QDeltaLM(str(short_transformer), device="cpu", **kwargs)
