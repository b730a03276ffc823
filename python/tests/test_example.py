"""The example of the README's Python section, as written there (with small sizes)."""

import shutil

import numpy as np

import mambacpp


def test_the_readme_example(neox_tokenizer, texts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A (random) model folder as Hugging Face has them: GPT-NeoX ids, its tokenizer.json beside it.
    mambacpp.init("runs/a", d_model=16, n_layer=2, vocab_size=50280, seed=1)
    shutil.copy(neox_tokenizer, "runs/a/tokenizer.json")
    shutil.copy(neox_tokenizer, "tokenizer.json")
    steps = []

    m = mambacpp.Model("runs/a", device="cpu")
    tok = mambacpp.Tokenizer("tokenizer.json")
    pieces = []
    for piece in m.generate(tok.encode("Fellow-Citizens"), max_new_tokens=20, temperature=0.8, stream=True):
        pieces.append(piece)
    ids = tok.encode("We the People")
    logits = m.score(ids)
    s = m.session(); s.feed(ids); s2 = s.copy(); s.save("state.safetensors")  # noqa: E702
    mambacpp.train(data=str(texts), out="runs/b", d_model=16, n_layer=2, steps=3, batch=2, seq_len=32,
                   on_step=steps.append)

    assert pieces and all(isinstance(p, str) for p in pieces)  # text, through runs/a/tokenizer.json
    assert logits.shape == (len(ids), 50280) and logits.dtype == np.float32
    assert s2.logits is not None and (tmp_path / "state.safetensors").exists()
    assert [t.step for t in steps] == [1, 2, 3]
    # A byte-level model reads and writes text itself.
    b = mambacpp.Model("runs/b")
    text = "".join(b.generate("Fellow-Citizens", max_new_tokens=30, stream=True))
    assert isinstance(text, str)
