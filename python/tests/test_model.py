"""Loading and scoring: the logits equal the PyTorch reference's (the golden fixtures) and, bitwise,
those of `mambacpp score` (the same code); states carry a sequence across calls."""

import json

import numpy as np
import pytest

import mambacpp
from conftest import FIXTURES

CASES = json.loads((FIXTURES / "cases.json").read_text())["cases"]


def case_dirs():
    return [c["name"] for c in CASES]


@pytest.mark.parametrize("name", case_dirs())
def test_score_matches_the_reference(name):
    folder = FIXTURES / name
    m = mambacpp.Model(folder)
    ids = np.load(folder / "ids.npy")
    want = np.load(folder / "logits.npy").astype(np.float32)
    got = m.score(ids)
    assert got.dtype == np.float32
    assert got.shape == want.shape
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * max(scale, 1.0))


@pytest.mark.parametrize("name", ["official_f32_L17_tied", "hf_bf16_L64_b3_tied"])
def test_score_equals_the_cli_bitwise(cli, tmp_path, name):
    folder = FIXTURES / name
    out = tmp_path / "logits.npy"
    cli("score", folder, "--ids-file", folder / "ids.npy", "--out", out)
    got = mambacpp.Model(folder).score(np.load(folder / "ids.npy"))
    assert np.array_equal(got, np.load(out))


def test_config_and_properties():
    m = mambacpp.Model(FIXTURES / "official_f32_L17_tied")
    c = m.config
    assert (c.d_model, c.n_layer, c.vocab_size, c.d_state, c.d_conv) == (64, 2, 64, 16, 4)
    assert c.d_inner == 128 and c.parameters > 0 and c.state_bytes == 2 * 128 * (3 + 16) * 4
    assert m.device == "cpu" and m.dtype == "fp32" and not m.has_text
    assert "ModelConfig(" in repr(c) and "Model(" in repr(m)


def test_ids_in_any_integer_form():
    m = mambacpp.Model(FIXTURES / "official_f32_L17_tied")
    ids = [1, 5, 9, 2, 33]
    want = m.score(ids)
    assert want.shape == (5, 64)
    for form in (np.array(ids, np.int64), np.array(ids, np.uint16), np.array(ids, np.int32)[::1], tuple(ids)):
        assert np.array_equal(m.score(form), want)
    batch = m.score(np.array([ids, ids[::-1]]))
    assert batch.shape == (2, 5, 64)
    np.testing.assert_allclose(batch[0], want, rtol=0, atol=1e-4)  # another batch size: other BLAS blocking


def test_forward_in_pieces_and_steps_equal_one_pass():
    m = mambacpp.Model(FIXTURES / "hf_f32_L17_k2_untied")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, m.config.vocab_size, size=(2, 17))
    full = m.score(ids)
    state = m.new_state(2)
    first = m.forward(ids[:, :9], state)
    assert first.shape == (2, 9, m.config.vocab_size)
    rest = m.forward(ids[:, 9:16], state, logits="last")
    np.testing.assert_allclose(first, full[:, :9], rtol=0, atol=1e-5)
    np.testing.assert_allclose(rest, full[:, 15], rtol=0, atol=1e-4)
    last = m.step(ids[:, 16], state)
    np.testing.assert_allclose(last, full[:, 16], rtol=0, atol=1e-4)
    assert m.forward(ids[:, :1], m.new_state(2), logits="none") is None


def test_state_rows_copies_and_files(tmp_path):
    m = mambacpp.Model(FIXTURES / "hf_f32_L17_k2_untied")
    ids = np.arange(12).reshape(3, 4) % m.config.vocab_size
    state = m.new_state(3)
    m.forward(ids, state, logits="none")
    assert state.batch == 3 and state.conv.shape == (3, 3, 1, 128) and state.ssm.shape == (3, 3, 128, 16)
    one = state.row(1)
    assert one.batch == 1
    np.testing.assert_array_equal(one.ssm[:, 0], state.ssm[:, 1])
    copy = state.copy()
    m.step([1, 2, 3], copy)
    assert not np.array_equal(copy.ssm, state.ssm)
    joined = mambacpp.State.concat([state.row(2), state.row(0)])
    np.testing.assert_array_equal(joined.ssm[:, 0], state.ssm[:, 2])
    state.keep_rows([0, 2])
    np.testing.assert_array_equal(state.ssm[:, 1], joined.ssm[:, 0])
    state.save(tmp_path / "s.safetensors")
    back = m.load_state(tmp_path / "s.safetensors")
    np.testing.assert_array_equal(back.ssm, state.ssm)
    np.testing.assert_array_equal(back.conv, state.conv)
    fresh = m.new_state(2)
    fresh.set(state.conv, state.ssm)
    np.testing.assert_array_equal(fresh.ssm, state.ssm)
    fresh.reset()
    assert not fresh.ssm.any()


def test_perplexity_equals_the_cli(cli, byte_model, tmp_path):
    text = "Fellow-Citizens of the Senate and House of Representatives: " * 4
    (tmp_path / "t.txt").write_text(text)
    out = cli("perplexity", byte_model, "-f", tmp_path / "t.txt", "--json").stdout
    want = json.loads(out)
    got = mambacpp.Model(byte_model).perplexity(text)
    assert got.tokens == want["tokens"]
    assert got.nll == pytest.approx(want["nll"], rel=1e-12)
    assert got.perplexity == pytest.approx(want["perplexity"], rel=1e-12)


def test_rows_stepped_together_sample_like_sessions():
    m = mambacpp.Model(FIXTURES / "official_f32_L17_tied")
    prompts = [[1, 2, 3], [4, 5, 6]]
    want = [m.generate(p, max_new_tokens=8, temperature=0.9, seed=20 + i, stop_at_eos=False).ids
            for i, p in enumerate(prompts)]
    # What a scheduler does: one state of both rows, one sampler each, one step for both per token.
    state = m.new_state(2)
    logits = m.forward(np.array(prompts), state, logits="last")
    samplers = [mambacpp.Sampler(m.config.vocab_size, temperature=0.9, seed=20 + i) for i in range(2)]
    for s, p in zip(samplers, prompts):
        for t in p:
            s.observe(t)
    got = [[], []]
    for _ in range(8):
        ids = [s.sample(row) for s, row in zip(samplers, logits)]
        for i, (s, t) in enumerate(zip(samplers, ids)):
            s.observe(t)
            got[i].append(t)
        logits = m.step(ids, state)
    assert got == want


def test_quantized_folder_equals_quantizing_on_load_and_memory_is_checked(tmp_path):
    folder = FIXTURES / "official_f32_L17_tied"
    config = mambacpp.quantize(folder, tmp_path / "int8")
    assert config.d_model == 64
    from_file = mambacpp.Model(tmp_path / "int8")
    assert from_file.weight_dtype == "int8"
    ids = np.arange(9) % 64
    assert np.array_equal(from_file.score(ids), mambacpp.Model(folder, dtype="int8").score(ids))
    mambacpp.set_memory_limit(1 << 20)
    try:
        with pytest.raises(mambacpp.Error, match="score: logits of 1 × 100000 tokens"):
            from_file.score(np.zeros(100000, dtype=np.int32))
    finally:
        mambacpp.set_memory_limit(0)


def test_bf16_products_stay_near_the_reference_and_equal_the_cli(cli, tmp_path):
    # BF16 weights over 3 x 64 rows: with bf16 products (CPUs with AVX-512 BF16) the activations are
    # rounded to bf16, so the logits move by bf16's rounding (3e-3 of their range, measured), not more;
    # elsewhere the switch changes nothing. The CLI's --bf16-products is the same switch.
    folder = FIXTURES / "hf_bf16_L64_b3_tied"
    ids = np.load(folder / "ids.npy")
    want = np.load(folder / "logits.npy").astype(np.float32)
    assert not mambacpp.bf16_products()
    mambacpp.set_bf16_products(True)
    try:
        assert mambacpp.bf16_products()
        got = mambacpp.Model(folder).score(ids)
    finally:
        mambacpp.set_bf16_products(False)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * scale)
    out = tmp_path / "logits.npy"
    cli("--bf16-products", "score", folder, "--ids-file", folder / "ids.npy", "--out", out)
    assert np.array_equal(got, np.load(out))
