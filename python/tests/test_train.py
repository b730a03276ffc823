"""Training from Python: a tiny model for a few steps with a callback, stopping early, resuming, and
the run folder the CLI reads."""

import json

import pytest

import mambacpp


def tiny(texts, out, **options):
    base = dict(d_model=16, n_layer=1, batch=2, seq_len=32, steps=4, warmup=1, eval_every=2, eval_batches=1,
                seed=1)
    base.update(options)
    return mambacpp.train(data=texts, out=out, **base)


def test_a_few_steps_with_a_callback(texts, tmp_path):
    seen = []
    summary = tiny(texts, tmp_path / "run", on_step=seen.append)
    assert [s.step for s in seen] == [1, 2, 3, 4]
    assert all(s.steps == 4 and s.loss > 0 and s.lr > 0 and s.tokens_per_s > 0 for s in seen)
    assert [s.evaluated for s in seen] == [False, True, False, True]
    assert seen[-1].val_bits == pytest.approx(seen[-1].val_loss / 0.6931471805599453)
    assert "TrainStep(step=4/4" in repr(seen[-1])
    assert summary.steps == 4 and not summary.interrupted
    assert summary.loss == pytest.approx(seen[-1].loss)
    assert summary.checkpoint.endswith("step-00000004")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [1, 2, 3, 4]
    assert log[-1]["loss"] == pytest.approx(seen[-1].loss, rel=1e-12)
    m = mambacpp.Model(tmp_path / "run")
    assert m.config.byte_level and m.config.d_model == 16
    assert isinstance(m.generate("the", max_new_tokens=5).text, str)


def test_returning_false_stops_and_resume_goes_on(texts, tmp_path):
    summary = tiny(texts, tmp_path / "run", steps=6, on_step=lambda s: s.step < 2)
    assert summary.interrupted and summary.steps == 2
    seen = []
    summary = mambacpp.train(data=texts, resume=tmp_path / "run", on_step=seen.append)
    assert [s.step for s in seen] == [3, 4, 5, 6] and summary.steps == 6
    # The same run without the stop gives the same parameters: resuming is exact.
    tiny(texts, tmp_path / "straight", steps=6)
    a = mambacpp.Model(tmp_path / "run").score([1, 2, 3])
    b = mambacpp.Model(tmp_path / "straight").score([1, 2, 3])
    assert (a == b).all()


def test_an_exception_in_the_callback_saves_and_propagates(texts, tmp_path):
    def boom(step):
        if step.step == 2:
            raise ValueError("enough")

    with pytest.raises(ValueError, match="enough"):
        tiny(texts, tmp_path / "run", on_step=boom)
    assert (tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer.json").exists()


def test_bad_options(texts, tmp_path):
    with pytest.raises(TypeError, match="unexpected keyword argument 'stepz'"):
        mambacpp.train(data=texts, out=tmp_path / "r", d_model=16, n_layer=1, stepz=3)
    with pytest.raises(mambacpp.Error, match="give one of data"):
        mambacpp.train(out=tmp_path / "r", d_model=16, n_layer=1)
    with pytest.raises(mambacpp.Error, match="preset"):
        mambacpp.train(data=texts, out=tmp_path / "r")
    with pytest.raises(mambacpp.Error, match="schedule"):
        tiny(texts, tmp_path / "r", schedule="linear")
    with pytest.raises(TypeError, match="on_step"):
        tiny(texts, tmp_path / "r", on_step=3)


def test_mixed_precision_and_bad_precisions(texts, tmp_path):
    seen = []
    summary = tiny(texts, tmp_path / "run", dtype="fp16", on_step=seen.append)
    assert summary.steps == 4 and summary.skipped_steps == 0
    assert [s.loss_scale for s in seen] == [65536.0] * 4 and not any(s.skipped for s in seen)
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-00000004" / "trainer.json").read_text())
    assert state["options"]["dtype"] == "fp16"
    # Resumed in bf16: the checkpoint holds the fp32 masters, and the change is logged.
    summary = mambacpp.train(data=texts, resume=tmp_path / "run", steps=5, dtype="bf16")
    assert summary.steps == 5
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [line["changed"]["dtype"] for line in log if "resume" in line] == [["fp16", "bf16"]]
    with pytest.raises(mambacpp.Error, match='dtype "fp8": the precision must be fp32, bf16'):
        tiny(texts, tmp_path / "bad", dtype="fp8")


def test_resume_applies_the_options_given_and_refuses_the_rest(texts, tmp_path):
    tiny(texts, tmp_path / "run", steps=2)
    with pytest.raises(mambacpp.Error, match="batch 4 cannot change"):
        mambacpp.train(data=texts, resume=tmp_path / "run", steps=4, batch=4)
    summary = mambacpp.train(data=texts, resume=tmp_path / "run", steps=4, lr=2e-3, batch=2)
    assert summary.steps == 4
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    changed = [line["changed"] for line in log if "resume" in line]
    assert changed == [{"lr": [0.001, 0.002], "steps": [2, 4]}]


def test_memory_limit_refuses_a_run_that_cannot_fit(texts, tmp_path):
    mambacpp.set_memory_limit(1 << 20)
    try:
        with pytest.raises(mambacpp.Error, match="needed"):
            tiny(texts, tmp_path / "run", d_model=256, n_layer=4)
    finally:
        mambacpp.set_memory_limit(0)
