"""Generation: the same tokens as `mambacpp generate` for the same prompt and seed (the same code),
streaming equal to the whole, sessions that continue, copy, save and load exactly, batches, stops,
and Ctrl-C between steps."""

import _thread
import threading
import time

import numpy as np
import pytest

import mambacpp
from conftest import FIXTURES

IDS_MODEL = FIXTURES / "official_f32_L17_tied"


def cli_ids(cli, *args):
    out = cli("generate", *args).stdout.decode().strip()
    return [int(x) for x in out.split(",")] if out else []


@pytest.mark.parametrize("temperature,seed", [(0, 0), (0.8, 5), (1.3, 11)])
def test_ids_equal_the_cli(cli, temperature, seed):
    m = mambacpp.Model(IDS_MODEL)
    want = cli_ids(cli, IDS_MODEL, "--ids", "1,2,3,4", "-n", "24", "--temperature", temperature, "--seed", seed,
                   "--ignore-eos")
    got = m.generate([1, 2, 3, 4], max_new_tokens=24, temperature=temperature, seed=seed, stop_at_eos=False)
    assert got.ids == want
    assert got.finish == "length" and got.text == ""


def test_text_equals_the_cli(cli, byte_model):
    m = mambacpp.Model(byte_model)
    assert m.has_text and m.config.byte_level
    printed = cli("generate", byte_model, "-p", "Fellow-Citizens", "-n", "40", "--temperature", "0.8", "--seed", "1",
                  "--top-k", "20").stdout.decode()
    got = m.generate("Fellow-Citizens", max_new_tokens=40, temperature=0.8, seed=1, top_k=20)
    assert printed == "Fellow-Citizens" + got.text + "\n"
    assert str(got) == got.text


def test_stream_pieces_make_the_whole(byte_model):
    m = mambacpp.Model(byte_model)
    whole = m.generate("The people", max_new_tokens=50, seed=2)
    pieces = list(m.generate("The people", max_new_tokens=50, seed=2, stream=True))
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == whole.text
    ids = list(mambacpp.Model(IDS_MODEL).generate([5, 6], max_new_tokens=9, seed=1, stream=True, stop_at_eos=False))
    assert len(ids) == 9 and all(isinstance(i, int) for i in ids)


def test_session_turns_copy_save_and_load(cli, tmp_path):
    m = mambacpp.Model(IDS_MODEL)
    one = m.session(temperature=0.9, seed=4, max_new_tokens=10, stop_at_eos=False)
    one.feed([3, 1, 4, 1, 5])
    assert one.logits.shape == (64,)
    first = one.generate()
    assert one.logits is None  # the last token waits to be fed
    saved = tmp_path / "session.safetensors"
    one.save(saved)
    twin = one.copy()
    one.feed([9, 2, 6])
    second = one.generate()
    # The copy and the file go on exactly as the original did.
    twin.feed([9, 2, 6])
    assert twin.generate().ids == second.ids
    loaded = m.load_session(saved, temperature=0.9, max_new_tokens=10, stop_at_eos=False)
    loaded.feed([9, 2, 6])
    assert loaded.generate().ids == second.ids
    # ... and so does the CLI from the same file.
    assert cli_ids(cli, IDS_MODEL, "--load-state", saved, "--ids", "9,2,6", "-n", "10", "--temperature", "0.9",
                   "--ignore-eos") == second.ids
    # A fresh session with the same seed repeats the first turn.
    again = m.session(temperature=0.9, seed=4, max_new_tokens=10, stop_at_eos=False)
    again.feed(np.array([3, 1, 4, 1, 5]))
    assert again.generate().ids == first.ids
    again.reset()
    again.feed([3, 1, 4, 1, 5])
    assert again.generate().ids == first.ids
    assert one.state.batch == 1 and one.state.ssm.shape == (2, 1, 128, 16)


def test_a_stream_left_early_leaves_a_usable_session(byte_model):
    m = mambacpp.Model(byte_model)
    a = m.session(seed=7, max_new_tokens=30)
    a.feed("Union")
    b = a.copy()
    it = a.generate(stream=True)
    head = "".join(next(it) for _ in range(3))
    a.feed(" and")  # ends the run where it stood: its tokens are in the state
    b_run = b.generate()
    assert b_run.text.startswith(head)
    a.generate()  # goes on without error


def test_batch_equals_prompts_one_by_one():
    m = mambacpp.Model(IDS_MODEL)
    prompts = [[1, 2, 3], [7, 7], [40, 41, 42, 43]]
    batch = m.generate(prompts, max_new_tokens=12, temperature=0.7, seed=10, stop_at_eos=False)
    assert len(batch) == 3
    for i, p in enumerate(prompts):
        alone = m.generate(p, max_new_tokens=12, temperature=0.7, seed=10 + i, stop_at_eos=False)
        assert batch[i].ids == alone.ids


def test_stop_strings_end_the_text(byte_model):
    m = mambacpp.Model(byte_model)
    full = m.generate("x", max_new_tokens=60, temperature=0, stop_at_eos=False).text
    assert len(full) > 10
    stop = full[5:8]
    got = m.generate("x", max_new_tokens=60, temperature=0, stop=[stop], stop_at_eos=False)
    assert got.finish == "stop"
    assert got.text == full[: full.index(stop)]


def test_ctrl_c_stops_between_steps_and_the_session_goes_on():
    m = mambacpp.Model(FIXTURES / "official_f32_L300_b3")
    s = m.session(temperature=0, max_new_tokens=1_000_000, stop_at_eos=False)
    s.feed([1, 2, 3])
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        s.generate()
    timer.cancel()
    assert time.monotonic() - start < 30
    done = len(s.output)
    assert 0 < done < 1_000_000
    assert s.finish == "none" and s.logits is not None
    # Greedy: the interrupted run's tokens are the start of an uninterrupted one.
    again = m.session(temperature=0, max_new_tokens=done + 5, stop_at_eos=False)
    again.feed([1, 2, 3])
    assert again.generate().ids[:done] == s.output


def test_threads_share_a_model():
    import concurrent.futures

    m = mambacpp.Model(IDS_MODEL)
    shared = m.session(temperature=1.0, seed=9, max_new_tokens=300, stop_at_eos=False)
    shared.feed([1, 2])

    def run(seed):
        if seed == 4:  # reads a session while other threads run the model
            return [len(shared.output) for _ in range(50)] and shared.generate().ids
        return m.generate([1, 2, 3], max_new_tokens=40, temperature=1.0, seed=seed, stop_at_eos=False).ids

    alone = [run(s) for s in range(4)]
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        together = list(pool.map(run, range(5)))
    assert together[:4] == alone
    assert len(together[4]) == 300
