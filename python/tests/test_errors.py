"""Bad arguments give a Python exception naming the argument or the file, never a crash."""

import numpy as np
import pytest

import mambacpp
from conftest import FIXTURES

MODEL = FIXTURES / "official_f32_L17_tied"


@pytest.fixture(scope="module")
def m():
    return mambacpp.Model(MODEL)


def test_loading(tmp_path):
    with pytest.raises(mambacpp.Error, match="config.json"):
        mambacpp.Model(tmp_path)
    with pytest.raises(mambacpp.Error, match='device "tpu"'):
        mambacpp.Model(MODEL, device="tpu")
    with pytest.raises(mambacpp.Error, match='dtype "fp8"'):
        mambacpp.Model(MODEL, dtype="fp8")
    if not mambacpp.cuda_available():
        with pytest.raises(mambacpp.Error, match="cuda"):
            mambacpp.Model(MODEL, device="cuda")
    assert issubclass(mambacpp.Error, RuntimeError)


def test_ids(m):
    with pytest.raises(mambacpp.Error, match="token id 64"):
        m.score([1, 64])
    with pytest.raises(ValueError, match="out of range"):
        m.score(np.array([1, 2**33]))
    with pytest.raises(ValueError, match="out of range"):
        m.score([-1, 2])
    with pytest.raises(TypeError, match="integers"):
        m.score([1.5, 2.0])
    with pytest.raises(ValueError, match="1 or 2-D"):
        m.score(np.zeros((1, 2, 3), np.int32))
    with pytest.raises(ValueError, match="no token ids"):
        m.score([])
    with pytest.raises(mambacpp.Error, match="no tokenizer.json"):
        m.generate("text for a model without text")
    with pytest.raises(TypeError, match="token ids"):
        m.session().feed(object())


def test_options(m):
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate([1], max_new_tokens=-1)
    with pytest.raises(mambacpp.Error, match="top_p|top-p"):
        m.generate([1], top_p=0)
    with pytest.raises(mambacpp.Error, match="temperature"):
        m.session(temperature=-1)
    with pytest.raises(mambacpp.Error, match="stop strings need text"):
        m.generate([1], stop=["x"])
    with pytest.raises(ValueError, match="stream"):
        m.generate([[1], [2]], stream=True)
    with pytest.raises(mambacpp.Error, match="longer than the limit"):
        m.session(max_prompt_tokens=2).feed([1, 2, 3])


def test_states(m, tmp_path):
    other = mambacpp.Model(FIXTURES / "hf_f32_L1_tied")
    with pytest.raises(mambacpp.Error, match="another model"):
        m.step([1], other.new_state(1))
    with pytest.raises(ValueError, match="3 ids for a state of 1"):
        m.step([1, 2, 3], m.new_state(1))
    with pytest.raises(ValueError, match="logits"):
        m.forward([[1]], m.new_state(1), logits="some")
    with pytest.raises(mambacpp.Error, match="row 5"):
        m.new_state(2).row(5)
    with pytest.raises(mambacpp.Error, match="holds"):
        m.new_state(2).set(np.zeros(3, np.float32), np.zeros(3, np.float32))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(mambacpp.Error, match="junk.safetensors"):
        m.load_state(tmp_path / "junk.safetensors")
    with pytest.raises(mambacpp.Error, match="junk.safetensors"):
        m.load_session(tmp_path / "junk.safetensors")
