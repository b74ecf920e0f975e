"""An independent float64 reference for the fused attention statistics.

`run()` evaluates tokens on a raw llama.cpp context (llama_cpp's low-level API) with chosen
flash-attention, thread, K-cache-type and batch settings, optionally with pyrcedge scoring on,
and optionally capturing every layer's raw kq = K.Q product through the eval callback (flash
attention off). `reference_stats()` recomputes from the captured kq alone, in float64, what the
kernels should have accumulated: softmax over the causally visible cells, the A2SF recursion
query by query, and the logit moments. Nothing of the fused path is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import llama_cpp
import numpy as np
from cffi import FFI

from pyrcedge import scoring

_ffi = FFI()
_ffi.cdef("""
struct ggml_tensor {
    int type;
    void * buffer;
    int64_t ne[4];
    size_t nb[4];
    int op;
    int32_t op_params[16];
    int32_t flags;
    struct ggml_tensor * src[10];
    struct ggml_tensor * view_src;
    size_t view_offs;
    void * data;
    char name[64];
    void * extra;
    char padding[8];
};
""")

_ffi.cdef("const char * ggml_op_name(int op);")

GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
GGML_TYPE_Q8_0 = 8
_ELEM_BYTES = {GGML_TYPE_F32: 4, GGML_TYPE_F16: 2}


def _ggml() -> object:
    import llama_cpp.llama_cpp  # noqa: F401  (maps libllama, and ggml-base with it)

    # by its soname: the loader hands back the ggml-base libllama mapped, whichever file names
    # the environment has (the wheel has no unversioned libggml-base.so)
    return _ffi.dlopen("libggml-base.so.0")


def _extent(tensor) -> int:
    """Bytes from a tensor's data pointer to the end of its last element's row."""
    ne = [tensor.ne[i] for i in range(4)]
    nb = [tensor.nb[i] for i in range(4)]
    return sum((n - 1) * b for n, b in zip(ne[1:], nb[1:])) + nb[1] if ne[1] else 0


def _read(tensor) -> np.ndarray:
    """A tensor's values as float64 [ne3, ne2, ne1, ne0] (F32, F16 or Q8_0, any strides)."""
    ne = [tensor.ne[i] for i in range(4)]
    nb = [tensor.nb[i] for i in range(4)]
    raw = np.frombuffer(bytes(_ffi.buffer(_ffi.cast("char *", tensor.data), _extent(tensor))), np.uint8)
    out = np.empty((ne[3], ne[2], ne[1], ne[0]))
    for i3 in range(ne[3]):
        for i2 in range(ne[2]):
            for i1 in range(ne[1]):
                off = i3 * nb[3] + i2 * nb[2] + i1 * nb[1]
                if tensor.type == GGML_TYPE_Q8_0:
                    blocks = raw[off:off + ne[0] // 32 * 34].reshape(-1, 34)
                    d = blocks[:, :2].copy().view(np.float16).astype(np.float64)
                    qs = blocks[:, 2:].copy().view(np.int8).astype(np.float64)
                    out[i3, i2, i1] = (d * qs).reshape(-1)
                else:
                    dt = np.float32 if tensor.type == GGML_TYPE_F32 else np.float16
                    out[i3, i2, i1] = raw[off:off + ne[0] * _ELEM_BYTES[tensor.type]].view(dt)
    return out


def _q8_0_round(x: np.ndarray) -> np.ndarray:
    """x quantised to Q8_0 and back as ggml's x86 quantiser does: blocks of 32, float32
    arithmetic, q = round-half-even(x * 127/amax), scale amax/127 stored as float16."""
    b = x.astype(np.float32).reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(b).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.round(b * inv)
    d16 = (amax / np.float32(127.0)).astype(np.float16).astype(np.float64)
    return (q.astype(np.float64) * d16).reshape(x.shape)


@dataclass
class Run:
    scores: np.ndarray | None  # [layer, cell, kv head, stat] over the used cells, or None
    cells: scoring.Cells
    # [ubatch][layer] raw scaled logits (head, query, cell), read or recomputed in float64
    logits_f64: list[list[np.ndarray]] = field(default_factory=list)
    batch_pos: list[np.ndarray] = field(default_factory=list)  # positions of each ubatch's queries
    decay_only: int = 0  # the first decay_only decode calls gave no statistics (only the decay)
    logits: np.ndarray | None = None  # last token's logits


_model_cache: dict[str, int] = {}


def model(path: str) -> int:
    if path not in _model_cache:
        params = llama_cpp.llama_model_default_params()
        m = llama_cpp.llama_model_load_from_file(path.encode(), params)
        assert m, f"could not load {path}"
        _model_cache[path] = m
    return _model_cache[path]


def run(path: str, tokens: list[int], *, flash: bool, threads: int = 2, batch: int = 512,
        type_k: int = 1, type_v: int = 1, alpha: float | None = None, capture: bool = False,
        n_ctx: int = 1024, prefill: int | None = None, portable: bool | None = None,
        evict: tuple[int, int, list[int]] | None = None, moments: bool = True,
        decay_only: int = 0) -> Run:
    """Evaluate `tokens`: the first `prefill` (default: all) in ubatches of `batch`, each its own
    decode call, then the rest one at a time, as generation feeds them. portable: scoring's path
    (None: the backend's choice). evict=(p0, p1, more): after that, remove positions [p0, p1) from
    the cache and feed `more` one at a time (their tokens land in freed cells). moments=False:
    the kernels keep a2sf alone (llama_rcedge_set_moments). decay_only: the first that many decode
    calls run with llama_rcedge_set_decay_only on."""
    m = model(path)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = batch
    params.n_ubatch = batch
    params.n_threads = threads
    params.n_threads_batch = threads
    params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash
                              else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    params.type_k = type_k
    params.type_v = type_v
    params.no_perf = True

    captured: dict[int, np.ndarray] = {}
    ggml = _ggml()
    scale = 1.0 / np.sqrt(llama_cpp.llama_model_n_embd(m) / llama_cpp.llama_model_n_head(m))

    def on_tensor(t, ask, _user):
        tensor = _ffi.cast("struct ggml_tensor *", t)
        name = _ffi.string(tensor.name).decode()
        op = _ffi.string(ggml.ggml_op_name(tensor.op)).decode()
        wanted = (name.startswith("kq-") and op == "MUL_MAT") or op == "FLASH_ATTN_EXT"
        if ask:
            return wanted
        if wanted:
            # the flash attention node is unnamed: layers come in order, one node each
            il = int(name.rsplit("-", 1)[1]) if op == "MUL_MAT" else len(captured)
            if op == "MUL_MAT":  # kq = K.Q: [stream][head][query][cell]
                captured[il] = _read(tensor)[0] * scale
            else:  # recompute from the node's own inputs, rounded as the kernel rounds Q
                q = _read(tensor.src[0])[0]  # [head][query][DK]
                k = _read(tensor.src[1])[0]  # [kv head][cell][DK]
                n_q = q.shape[1]
                tiled = tensor.src[1].type == GGML_TYPE_F16 and n_q >= 64
                if tensor.src[1].type == GGML_TYPE_Q8_0:
                    q = _q8_0_round(q)
                elif not tiled:
                    q = q.astype(np.float16).astype(np.float64)
                rk = q.shape[0] // k.shape[0]
                captured[il] = np.einsum("hqd,hcd->hqc", q, np.repeat(k, rk, axis=0)) * scale
        return True

    callback = llama_cpp.ggml_backend_sched_eval_callback(on_tensor)
    if capture:
        params.cb_eval = callback
        params.cb_eval_user_data = None
    ctx = llama_cpp.llama_init_from_model(m, params)
    assert ctx, "could not create the context"
    try:
        if alpha is not None:
            scoring.enable_scoring(ctx, alpha, portable=portable)
            if not moments:
                scoring.set_moments(ctx, False)
        out = Run(scores=None, cells=None, decay_only=decay_only)  # type: ignore[arg-type]
        n_layer = scoring.n_layer(ctx)
        n_pre = len(tokens) if prefill is None else prefill
        starts = [*range(0, n_pre, batch), *range(n_pre, len(tokens))]
        ends = [*starts[1:], len(tokens)]
        for call, (start, end) in enumerate(zip(starts, ends)):
            chunk = tokens[start:end]
            arr = (llama_cpp.llama_token * len(chunk))(*chunk)
            captured.clear()
            if alpha is not None and decay_only:
                scoring.set_decay_only(ctx, call < decay_only)
            rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(chunk)))
            assert rc == 0, f"llama_decode returned {rc}"
            if capture:
                out.logits_f64.append([captured[il] for il in range(n_layer)])
                out.batch_pos.append(np.arange(start, start + len(chunk)))
        if evict is not None:
            p0, p1, more = evict
            assert llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, p0, p1)
            for i, tok in enumerate(more):
                arr = (llama_cpp.llama_token * 1)(tok)
                batch_ = llama_cpp.llama_batch_init(1, 0, 1)
                batch_.n_tokens = 1
                batch_.token[0] = tok
                batch_.pos[0] = len(tokens) + i
                batch_.n_seq_id[0] = 1
                batch_.seq_id[0][0] = 0
                batch_.logits[0] = True
                rc = llama_cpp.llama_decode(ctx, batch_)
                llama_cpp.llama_batch_free(batch_)
                assert rc == 0, f"llama_decode returned {rc}"
        n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(m))
        out.logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()
        out.cells = scoring.used_cells(ctx)
        if alpha is not None:
            out.scores = np.stack([scoring.read_scores(ctx, il) for il in range(n_layer)])
        return out
    finally:
        llama_cpp.llama_free(ctx)


def reference_stats(run_: Run, alpha: float, n_head_kv: int, window: int = 0) -> np.ndarray:
    """Float64 statistics [layer, cell, kv head, stat] over run_.cells, from its captured logits;
    window > 0: each batch's statistics from its last `window` queries (the A2SF decay counting
    every query); the first run_.decay_only batches give none (the decay alone)."""
    cells = run_.cells
    n_layer = len(run_.logits_f64[0])
    out = np.zeros((n_layer, len(cells), n_head_kv, 5))
    out[..., 4] = -np.inf
    for b, (layers, qpos) in enumerate(zip(run_.logits_f64, run_.batch_pos)):
        N = len(qpos)
        for il, logits in enumerate(layers):
            n_head, n_q, n_kv = logits.shape
            assert n_q == N
            rk = n_head // n_head_kv
            in_view = cells.index < n_kv  # cells past the view were not written yet
            f = np.zeros((n_head, N, len(cells)))
            f[:, :, in_view] = logits[:, :, cells.index[in_view]]  # head, query, used cell
            visible = (cells.pos[None, :] <= qpos[:, None]) & in_view[None, :]  # query, cell
            z = np.where(visible[None], f, -np.inf)
            p = np.exp(z - z.max(axis=2, keepdims=True))
            p /= p.sum(axis=2, keepdims=True)
            scored = np.arange(N) >= (N - window if 0 < window < N else 0)  # per query
            scored &= b >= run_.decay_only
            visible = visible & scored[:, None]
            w = alpha ** (N - 1 - np.arange(N, dtype=np.float64)) * scored  # per query
            o = out[il]
            o[:, :, 0] *= alpha ** N
            for g in range(n_head_kv):
                heads = slice(g * rk, (g + 1) * rk)
                vis = np.broadcast_to(visible[None], (rk, N, len(cells)))
                fg = f[heads]
                o[:, g, 0] += np.einsum("q,hqc->c", w, p[heads])
                o[:, g, 1] += vis.sum(axis=(0, 1))
                o[:, g, 2] += np.where(vis, fg, 0).sum(axis=(0, 1))
                o[:, g, 3] += np.where(vis, fg * fg, 0).sum(axis=(0, 1))
                o[:, g, 4] = np.maximum(o[:, g, 4], np.where(vis, fg, -np.inf).max(axis=(0, 1)))
    return out
