"""Saved sessions: a fresh process restores an evicted cache and continues with identical logits;
bad, truncated and foreign files are refused whole; saving is atomic."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import pyrcedge
from pyrcedge import session

PROBE = Path(__file__).with_name("session_probe.py")
TEXT = b"The quick brown fox jumps over the lazy dog while the cat sleeps. " * 10


def probe(mode: str, sess: Path, out: Path, policy: str, flash: str, positions: str) -> list[int]:
    r = subprocess.run([sys.executable, str(PROBE), mode, str(sess), str(out), policy, flash,
                        positions], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return [int(x) for x in r.stdout.split()]


@pytest.mark.parametrize("policy,flash,positions", [
    ("a2sf", "1", "keep"),      # statistics restored, flash attention
    ("h2o", "0", "compact"),    # soft_max path, compacted positions
    ("random", "1", "keep"),    # the policy's own generator state travels too
])
def test_a_fresh_process_continues_with_identical_logits(tmp_path, policy, flash, positions):
    sess = tmp_path / "s.pyrcedge"
    saved = probe("save", sess, tmp_path / "a.npy", policy, flash, positions)
    loaded = probe("load", sess, tmp_path / "b.npy", policy, flash, positions)
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert saved == loaded            # evictions, history and cells agree at the end
    assert saved[0] >= 3              # it evicted before and after the save
    assert a.shape == b.shape and np.array_equal(a, b)


def make(model: Path, **kw) -> pyrcedge.Llama:
    opts = dict(kv_budget=64, policy="a2sf", n_threads=2, n_threads_batch=2, flash_attn=True, seed=0)
    return pyrcedge.Llama(str(model), **{**opts, **kw})


def continue_logits(llm: pyrcedge.Llama, text: bytes = b" and then the dog woke up.") -> np.ndarray:
    out = []
    for t in llm.tokenize(text, add_bos=False):
        llm.eval([t])
        out.append(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy())
    return np.stack(out)


def same_state(a: session.SessionState, b: session.SessionState) -> bool:
    return (a.header == b.header and a.kv == b.kv and a.arrays.keys() == b.arrays.keys()
            and all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays))


@pytest.fixture(scope="module")
def evicted(default_model):
    llm = make(default_model)
    llm.eval(llm.tokenize(TEXT))
    assert llm.kv_stats().evictions > 0
    yield llm
    llm.close()


def test_save_state_and_load_state_in_one_process(evicted):
    state = evicted.save_state()
    first = continue_logits(evicted)
    stats = evicted.kv_stats()
    evicted.load_state(state)
    assert evicted.n_tokens == state.n_tokens
    second = continue_logits(evicted)
    assert np.array_equal(first, second)
    assert evicted.kv_stats().to_dict() == stats.to_dict()
    evicted.load_state(state)


def test_generation_after_a_restore_matches(default_model, tmp_path):
    llm = make(default_model)
    try:
        llm.eval(llm.tokenize(TEXT))
        llm.save_session(tmp_path / "g.pyrcedge", metadata={"note": "hi"})
        prompt = llm.input_ids[: llm.n_tokens].tolist() + llm.tokenize(b" Next,", add_bos=False)
        a = llm.create_completion(prompt, max_tokens=12, temperature=0)["choices"][0]["text"]
        assert llm.load_session(tmp_path / "g.pyrcedge") == {"note": "hi"}
        b = llm.create_completion(prompt, max_tokens=12, temperature=0)["choices"][0]["text"]
        assert a == b and a
    finally:
        llm.close()


def damaged(path: Path, tmp: Path) -> dict[str, Path]:
    data = path.read_bytes()
    out = {}
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    for name, content in {"flipped": bytes(flipped), "truncated": data[: len(data) // 3],
                          "header-only": data[:40], "empty": b"",
                          "not-a-session": b"GGUF" + bytes(range(256)) * 4}.items():
        out[name] = tmp / name
        out[name].write_bytes(content)
    return out


@pytest.mark.parametrize("kind,match", [
    ("flipped", "checksum"), ("truncated", "checksum|truncated"), ("header-only", "too short|checksum"),
    ("empty", "too short"), ("not-a-session", "not a pyrcedge session"),
    ("missing", "cannot read"), ("directory", "cannot read")])
def test_bad_files_are_refused_and_nothing_changes(evicted, tmp_path, kind, match):
    good = tmp_path / "good.pyrcedge"
    evicted.save_session(good)
    files = damaged(good, tmp_path)
    files["missing"] = tmp_path / "nope"
    files["directory"] = tmp_path
    before = session.capture(evicted)
    with pytest.raises(pyrcedge.SessionError, match=match):
        evicted.load_session(files[kind])
    assert same_state(before, session.capture(evicted))


@pytest.mark.parametrize("kw,match", [
    ({"kv_budget": 96}, "another KV budget"),
    ({"type_k": 8}, "another KV cache type"),                 # q8_0 keys
    ({"flash_attn": False}, "another KV cache type"),
    ({"positions": "compact"}, "another positions mode"),
    ({"policy": "window"}, "another statistics setting"),
])
def test_sessions_for_another_budget_or_cache_are_refused(default_model, evicted, tmp_path, kw, match):
    path = tmp_path / "s.pyrcedge"
    evicted.save_session(path)
    other = make(default_model, **kw)
    try:
        other.eval(other.tokenize(b"Something else entirely."))
        before = session.capture(other)
        with pytest.raises(pyrcedge.SessionError, match=match):
            other.load_session(path)
        assert same_state(before, session.capture(other))
    finally:
        other.close()


def test_a_session_of_another_model_is_refused(evicted, tmp_path):
    state = evicted.save_state()
    state.header["model"] = dict(state.header["model"], desc="qwen2 0.5B Q4_K - Medium")
    path = tmp_path / "other-model.pyrcedge"
    session.write_atomic(path, session.encode(state))   # a well-formed file, for another model
    before = session.capture(evicted)
    with pytest.raises(pyrcedge.SessionError, match="another model"):
        evicted.load_session(path)
    assert same_state(before, session.capture(evicted))


def test_load_state_refuses_other_objects(evicted):
    with pytest.raises(pyrcedge.SessionError, match="takes what pyrcedge.Llama.save_state returns"):
        evicted.load_state(b"not a state")


def test_unserialisable_metadata_is_refused_before_writing(evicted, tmp_path):
    path = tmp_path / "m.pyrcedge"
    with pytest.raises(pyrcedge.SessionError, match="JSON"):
        evicted.save_session(path, metadata={"x": object()})
    assert not path.exists()


def test_a_failed_save_keeps_the_previous_file(evicted, tmp_path, monkeypatch):
    path = tmp_path / "s.pyrcedge"
    evicted.save_session(path)
    old = path.read_bytes()

    def failing(f, data, chunk=1 << 20):
        f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(session, "_write_all", failing)
    with pytest.raises(pyrcedge.SessionError, match="No space left"):
        evicted.save_session(path)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == [path.name]   # no temporary file left


def test_a_crash_mid_save_leaves_the_previous_file_intact(default_model, tmp_path):
    """A process killed half-way through writing (os._exit, no cleanup) leaves the old file."""
    path = tmp_path / "s.pyrcedge"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_session import make, TEXT
        from pyrcedge import session
        from pathlib import Path
        llm = make(Path({str(default_model)!r}))
        llm.eval(llm.tokenize(TEXT))
        llm.save_session({str(path)!r})
        print(len(Path({str(path)!r}).read_bytes()), flush=True)
        llm.eval(llm.tokenize(b" More text, so that the next save differs.", add_bos=False))
        def crash(f, data, chunk=1 << 20):
            f.write(data[: len(data) // 2]); f.flush()
            os._exit(9)
        session._write_all = crash
        llm.save_session({str(path)!r})
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 9, r.stderr
    assert path.stat().st_size == int(r.stdout.split()[0])
    llm = make(default_model)
    try:
        llm.load_session(path)        # the first save, whole
        assert llm.n_tokens == len(llm.tokenize(TEXT))
    finally:
        llm.close()


def test_write_scores_round_trips_and_checks_its_input(evicted):
    from pyrcedge import scoring

    ctx = evicted.ctx
    cells = scoring.used_cells(ctx).index
    old = scoring.read_scores(ctx, 3, cells)
    new = (old * 2 + 1).astype(np.float32)
    scoring.write_scores(ctx, 3, cells, new)
    try:
        assert np.array_equal(scoring.read_scores(ctx, 3, cells), new)
        assert np.array_equal(scoring.read_scores(ctx, 4, cells), scoring.read_scores(ctx, 4, cells))
        with pytest.raises(scoring.ScoringInputError, match="layer"):
            scoring.write_scores(ctx, 99, cells, new)
        with pytest.raises(scoring.ScoringInputError, match="cell index"):
            scoring.write_scores(ctx, 3, [-1], new[:1])
        with pytest.raises(scoring.ScoringInputError, match="shape"):
            scoring.write_scores(ctx, 3, cells, new[:, :1])
    finally:
        scoring.write_scores(ctx, 3, cells, old)
    assert np.array_equal(scoring.read_scores(ctx, 3, cells), old)


def test_a_prompt_cache_keeps_each_conversation(default_model):
    """Two chats interleaved on one Llama with llama_cpp's RAM cache: each continues from its own
    saved state (no re-read), and its replies equal those of the chat run alone."""
    import llama_cpp

    turns = {"a": ["Hi! Tell me about cats.", "What do they eat?", "And how long do they live?"],
             "b": ["Hello, what is the capital of Spain?", "Is it large?", "What is there to see?"]}

    def run(order: list[str]) -> tuple[dict[str, list[str]], list[int]]:
        llm = make(default_model, kv_budget=96)
        llm.set_cache(llama_cpp.LlamaRAMCache(capacity_bytes=1 << 30))
        fed: list[int] = []
        eval_ = llm.eval
        llm.eval = lambda tokens: (fed.append(len(tokens)), eval_(tokens))[1]   # type: ignore
        chats = {k: [{"role": "system", "content": "Be brief."}] for k in turns}
        replies: dict[str, list[str]] = {k: [] for k in turns}
        step = {k: 0 for k in turns}
        try:
            for k in order:
                chats[k].append({"role": "user", "content": turns[k][step[k]]})
                step[k] += 1
                r = llm.create_chat_completion(messages=chats[k], max_tokens=24, temperature=0)
                msg = r["choices"][0]["message"]
                chats[k].append({"role": "assistant", "content": msg["content"]})
                replies[k].append(msg["content"])
            assert llm.kv_stats().evictions > 0
        finally:
            llm.close()
        return replies, fed

    alone, _ = run(["a", "a", "a"])
    mixed, fed = run(["a", "b", "a", "b", "a", "b"])
    assert mixed["a"] == alone["a"]
    # every turn read only its new message (plus the template around it), never a whole chat
    assert max(fed[2:]) < 40

