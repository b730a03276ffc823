"""The tokenizer: Hugging Face's ids on the fixture corpus, round trips, streaming decode, and a model
reading text through a tokenizer given to it."""

import json

import pytest

import mambacpp
from conftest import FIXTURES


def test_fixture_corpus_gives_hugging_faces_ids(neox_tokenizer):
    tok = mambacpp.Tokenizer(neox_tokenizer)
    def lines(name):  # split at "\n" only: the texts hold U+2028 and friends
        return [json.loads(line) for line in (FIXTURES / "tokenizer" / name).read_text().split("\n") if line]

    corpus = lines("corpus.jsonl")
    expected = {e["name"]: e for e in lines("expected.jsonl")}
    checked = 0
    for case in corpus:
        want = expected.get(case["name"])
        if want is None or "text" not in case:
            continue
        assert tok.encode(case["text"]) == want["ids"], case["name"]
        assert tok.decode(want["ids"]) == want["decoded"], case["name"]
        checked += 1
    assert checked > 10


def test_round_trips_and_lookups(neox_tokenizer):
    tok = mambacpp.Tokenizer(neox_tokenizer)
    for text in ["Hello, world", "Fellow-Citizens", "naïve café 東京 🙂", "  two  spaces\n\ttab", ""]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(tok) > 50000
    eot = tok.token_id("<|endoftext|>")
    assert eot >= 0 and tok.is_special(eot)
    assert tok.decode(tok.encode("a<|endoftext|>b"), skip_special=True) == "ab"
    assert tok.token_bytes(tok.token_id("Ġthe")) == b" the"
    assert tok.token_id("no such token, surely") == -1
    with pytest.raises(mambacpp.Error, match="token id"):
        tok.decode([10**9])
    assert "Tokenizer(" in repr(tok) and tok.path.endswith("tokenizer.json")


def test_model_with_a_tokenizer_reads_and_writes_text(neox_tokenizer, tmp_path):
    out = tmp_path / "neox-model"
    mambacpp.init(out, d_model=16, n_layer=1, vocab_size=50280, seed=1)
    tok = mambacpp.Tokenizer(neox_tokenizer)
    m = mambacpp.Model(out, tokenizer=tok)
    assert m.has_text and m.encode("Hello there") == tok.encode("Hello there")
    ids = tok.encode("Fellow-Citizens")
    text = "".join(m.generate(ids, max_new_tokens=20, temperature=0.8, stream=True))
    assert text == m.generate(ids, max_new_tokens=20, temperature=0.8).text
    dec = m.text_decoder()
    assert "".join(dec.push(i) for i in tok.encode("🙂 ok")) + dec.finish() == "🙂 ok"


def test_missing_or_bad_tokenizer_files_are_errors(tmp_path):
    with pytest.raises(mambacpp.Error, match="nope"):
        mambacpp.Tokenizer(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{ not json")
    with pytest.raises(mambacpp.Error, match="tokenizer.json"):
        mambacpp.Tokenizer(bad)
