"""Which GGUF file a model argument names, and checks that turn a bad file into a clear error.

llama.cpp validates the file itself and fails cleanly for most damage; the checks here catch
what it reports poorly (a missing path, a directory, a file of another format) and the
hyper-parameters its loader asserts on (GGML_ASSERT aborts the whole process: a block count of
0 or 100000, an epsilon that is NaN or negative) before it runs, per-layer KV head counts that
disagree with the layer's weights (the first store into that layer's cache aborts), and the
tokenizers that load but abort the first tokenization (a vocabulary with a token twice, none at
all, or an SPM vocabulary that cannot spell every byte).
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from .gguf_header import FLOAT_TYPES, STRING, Field, read_header
from .models import MODELS, model_path

# llama.cpp's limits (src/llama-hparams.h): more aborts the loader
MAX_LAYERS = 512
MAX_EXPERTS = 1024
# n_ctx_train is an int32 in llama.h
MAX_CONTEXT_LENGTH = 2**31 - 1
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")


def resolve_model(model: str | os.PathLike[str] | None) -> Path:
    """A model given as a path, as a registry name (see pyrcedge.assets.models) or None (the
    default)."""
    if model is None or str(model) in MODELS:
        path = model_path() if model is None else model_path(str(model))
        if not path.exists():
            name = "" if model is None else f" {model}"
            raise ModelLoadError(f"model file {path} is missing: run `pyrcedge models fetch{name}`")
        return path
    return Path(model)


def check_gguf(path: str | os.PathLike[str]) -> None:
    """ModelLoadError unless `path` is a readable GGUF file whose hyper-parameters llama.cpp can
    load without aborting."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model path does not exist: {path}")
    if not path.is_file():
        raise ModelLoadError(f"model path is not a file: {path}")
    try:
        st = path.stat()
    except OSError as e:
        raise ModelLoadError(f"cannot read model file {path}: {e.strerror}") from e
    _check_file(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _check_file(path: str, size: int, mtime_ns: int) -> None:
    """check_gguf's reading, once per file version (a command checks, then pyrcedge.Llama)."""
    header = read_header(path)
    check_hyperparameters(header.fields, path)
    check_layer_heads(header.fields, header.shapes, path)
    check_head_sizes(header.fields, header.shapes, path)
    check_tensor_types(header.shapes, header.types, path)
    check_tokenizer(header.fields, path)


def _ints(field: Field | None) -> tuple[int, ...]:
    """The integer value(s) of a scalar or per-layer key; () when absent or not an integer
    (llama.cpp refuses a key of the wrong type itself, cleanly)."""
    if field is None or field.type in FLOAT_TYPES or field.type == STRING:
        return ()
    values = field.value if field.is_array else (field.value,)
    return tuple(int(v) for v in values)


def _damaged(source: str, what: str) -> ModelLoadError:
    return ModelLoadError(f"{source}: GGUF {what}; the file is damaged or was not written by a "
                          "GGUF converter")


def _architecture(meta: dict[str, Field]) -> str | None:
    """general.architecture, the prefix of the model's own keys (None when missing)."""
    field = meta.get("general.architecture")
    return field.value if field is not None and field.type == STRING else None


def check_hyperparameters(meta: dict[str, Field], source: str) -> None:
    """ModelLoadError for the metadata llama.cpp's loader would abort on (GGML_ASSERT in
    llama_model::load_hparams) or compute with (an epsilon or a rope base that is not a finite
    number)."""

    def bad(key: str, value: Any, want: str) -> ModelLoadError:
        return _damaged(source, f"metadata {key} = {value!r} is invalid ({want})")

    arch = _architecture(meta)
    if arch is None:
        return      # llama.cpp reports a missing architecture itself
    for key, f in meta.items():
        if key.startswith(arch + ".") and f.type in FLOAT_TYPES:
            values = f.value if f.is_array else (f.value,)
            if not all(math.isfinite(v) for v in values):
                raise bad(key, f.value, "a finite number")
            if key.endswith("epsilon") and min(values, default=0.0) < 0:
                raise bad(key, f.value, "an epsilon >= 0")
    k = f"{arch}."
    layers = _ints(meta.get(k + "block_count"))
    if layers and not 1 <= layers[0] <= MAX_LAYERS:
        raise bad(k + "block_count", layers[0], f"1 to {MAX_LAYERS} layers")
    n_layer = layers[0] if layers else MAX_LAYERS
    nextn = _ints(meta.get(k + "nextn_predict_layers"))
    if nextn and not 0 <= nextn[0] <= n_layer:
        raise bad(k + "nextn_predict_layers", nextn[0], f"at most block_count = {n_layer}")
    ctx = _ints(meta.get(k + "context_length"))
    if ctx and not 0 <= ctx[0] <= MAX_CONTEXT_LENGTH:
        raise bad(k + "context_length", ctx[0], f"at most {MAX_CONTEXT_LENGTH} tokens")
    base = meta.get(k + "rope.freq_base")
    if base is not None and base.type in FLOAT_TYPES and not base.is_array and base.value <= 0:
        raise bad(k + "rope.freq_base", base.value, "a rope base > 0")
    scaling = meta.get(k + "rope.scaling.type")
    if scaling is not None and scaling.type == STRING and scaling.value not in ROPE_SCALING_TYPES:
        raise bad(k + "rope.scaling.type", scaling.value, f"one of {ROPE_SCALING_TYPES}")
    _check_experts(meta, k, bad)


def _check_experts(meta: dict[str, Field], k: str, bad: Any) -> None:
    """The mixture-of-experts counts llama_model::load_hparams asserts on."""
    experts = (_ints(meta.get(k + "expert_count")) or (0,))[0]
    used = max(_ints(meta.get(k + "expert_used_count")) or (0,))
    groups = (_ints(meta.get(k + "expert_group_count")) or (0,))[0]
    group_used = (_ints(meta.get(k + "expert_group_used_count")) or (0,))[0]
    if not 0 <= experts <= MAX_EXPERTS:
        raise bad(k + "expert_count", experts, f"0 to {MAX_EXPERTS}")
    if experts == 0:
        if used or groups:
            raise bad(k + "expert_used_count", used, "0 without experts")
        return
    if not 0 < used <= experts:
        raise bad(k + "expert_used_count", used, f"1 to expert_count = {experts}")
    if not 0 <= groups < experts:
        raise bad(k + "expert_group_count", groups, f"below expert_count = {experts}")
    if groups > 1 and (experts % groups or not 0 < group_used < groups):
        raise bad(k + "expert_group_used_count", group_used,
                  f"expert groups dividing {experts} experts, 1 to {groups - 1} used")


# tokenizer.ggml.model values that give llama.cpp no tokenizer (llama_tokenize then aborts)
NO_TOKENIZER = ("none", "no_vocab")
# tokenizer models whose byte fallback looks each byte up and aborts when one is missing
# (llama_vocab::byte_to_token: "<0xNN>", else the byte itself)
BYTE_FALLBACK = ("llama",)


def check_tokenizer(meta: dict[str, Field], source: str) -> None:
    """ModelLoadError for a vocabulary that llama.cpp loads but aborts or loops on: a token
    text twice (GGML_ASSERT in llama_vocab::impl::load; llama.cpp reads a text up to its first
    NUL, and names an empty one "[EMPTY_<id>]"), no tokenizer (llama_tokenize asserts one), an
    SPM vocabulary missing a byte that its byte fallback looks up (an uncaught
    std::out_of_range), the "whitespace" pre-tokenizer on another model's vocabulary (it skips
    the byte encoding that BPE merges assume: GGML_ASSERT in find_bpe_rank), or an RWKV
    vocabulary where a byte begins a token but is not one itself (the greedy tokenizer then
    restarts from the text's start for ever, growing its output until memory runs out)."""

    def bad(what: str) -> ModelLoadError:
        return _damaged(source, f"tokenizer {what}")

    model = meta.get("tokenizer.ggml.model")
    kind = model.value if model is not None and model.type == STRING else None
    if kind in NO_TOKENIZER:
        raise bad(f"tokenizer.ggml.model = {kind!r} has no tokenizer, and pyrcedge reads text")
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is None or not tokens.strings:
        return      # llama.cpp refuses a missing or empty vocabulary itself
    pre = meta.get("tokenizer.ggml.pre")
    if pre is not None and pre.value == "whitespace" and kind != "whitespace":
        raise bad(f"tokenizer.ggml.pre 'whitespace' goes with the 'whitespace' model, not {kind!r}")
    ids: dict[bytes, int] = {}
    for i, t in enumerate(tokens.strings):
        t = t.split(b"\0", 1)[0] or f"[EMPTY_{i}]".encode()
        if ids.setdefault(t, i) != i:
            raise bad(f"tokenizer.ggml.tokens holds {t!r} twice (ids {ids[t]} and {i}; a text "
                      "ends at its first NUL)")
    if kind == "rwkv":
        texts = {_unescape_rwkv(t) for t in ids}
        for first in sorted({t[:1] for t in texts if t} - texts):
            raise bad(f"'rwkv' vocabulary has tokens that begin with byte {first!r} but no token "
                      "for that byte alone, which its greedy tokenizer needs")
    if kind in BYTE_FALLBACK:
        for b in range(256):
            if f"<0x{b:02X}>".encode() not in ids and bytes([b]) not in ids:
                raise bad(f"{kind!r} has no token for byte 0x{b:02X} (neither <0x{b:02X}> nor the "
                          "byte itself), which its byte fallback needs")


def _unescape_rwkv(text: bytes) -> bytes:
    """An RWKV token's bytes, as llama.cpp's llama_unescape_rwkv_token reads its text:
    backslash escapes \\t \\n \\r and \\xNN (any other escaped byte stands for itself),
    the hex digits taken as it takes them."""
    out, i = bytearray(), 0
    while i < len(text):
        c = text[i]
        if c == 0x5C and i + 1 < len(text):     # a backslash
            e = text[i + 1]
            i += 2
            if e == ord("x"):
                digits, value = text[i:i + 2], 0
                for d in digits:
                    value = (value * 16 + (d - 87 if d >= ord("a") else d - 48)) & 0xFF
                if len(digits) == 2:        # a code cut short by the text's end is dropped
                    out.append(value)
                i += 2
            else:
                out.append({ord("t"): 9, ord("n"): 10, ord("r"): 13}.get(e, e))
        else:
            if c != 0x5C:
                out.append(c)
            i += 1
    return bytes(out)


def _head_size(meta: dict[str, Field], k: str, length_key: str, layer: int) -> int | None:
    """A layer's key or value head size (length_key "key_length" or "value_length"), as
    llama.cpp takes it: the attention.* key, else embedding_length / that layer's head_count;
    None when neither is known."""
    length = _ints(meta.get(k + "attention." + length_key))
    if length:
        return length[0]
    heads = _ints(meta.get(k + "attention.head_count"))
    embd = _ints(meta.get(k + "embedding_length"))
    n_head = heads[min(layer, len(heads) - 1)] if heads else 0
    return embd[0] // n_head if embd and n_head else None


def check_layer_heads(meta: dict[str, Field], shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """ModelLoadError when a per-layer head_count_kv disagrees with that layer's K or V weight.
    llama.cpp checks each weight's shape against layer 0's head count, but sizes every layer's
    KV cache by its own, and the first store into a layer that differs aborts (GGML_ASSERT in
    ggml_set_rows). Layers whose K and V come from another tensor (fused QKV, MLA) are skipped."""
    arch = _architecture(meta)
    if arch is None:
        return
    k = f"{arch}."
    heads_kv = meta.get(k + "attention.head_count_kv")
    if heads_kv is None or not heads_kv.is_array or len(set(_ints(heads_kv))) <= 1:
        return      # one count for every layer: llama.cpp checks the weights against it
    for kind, length_key in (("k", "key_length"), ("v", "value_length")):
        for i, n_kv in enumerate(_ints(heads_kv)):
            shape = shapes.get(f"blk.{i}.attn_{kind}.weight")
            head = _head_size(meta, k, length_key, i)
            if head is None:
                return
            if shape is not None and len(shape) == 2 and shape[1] != n_kv * head:
                raise _damaged(source, f"metadata {k}attention.head_count_kv[{i}] = {n_kv} does not "
                               f"match blk.{i}.attn_{kind}.weight ({shape[1]} = "
                               f"{shape[1] // max(head, 1)} heads of {head})")


# ggml types that hold no model weight: the integer and double types, and the blocks ggml-cpu
# quantises activations into for a dot product (ggml.h's numbering)
NOT_WEIGHT_TYPES = {9: "Q8_1", 15: "Q8_K", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64"}
GGML_TYPE_F32 = 0


def check_tensor_types(shapes: dict[str, tuple[int, ...]], types: dict[str, int],
                       source: str) -> None:
    """ModelLoadError for a tensor type that llama.cpp loads but the CPU backend aborts or jumps
    to a null kernel on at the first decode (or, for token_embd, as it reserves its graph): a
    1-D tensor (a norm's weight, a bias: applied by element-wise ops, which take F32 only with
    F32 activations; every converter writes them in F32), or any tensor of a type in
    NOT_WEIGHT_TYPES (no matrix product or row lookup takes it). llama.cpp refuses unknown types
    itself."""
    for name, ggml_type in types.items():
        if ggml_type in NOT_WEIGHT_TYPES:
            raise _damaged(source, f"tensor {name} has type {NOT_WEIGHT_TYPES[ggml_type]}, "
                           "which holds no model weight")
        if len(shapes.get(name, ())) == 1 and ggml_type != GGML_TYPE_F32:
            raise _damaged(source, f"tensor {name} is 1-D of ggml type {ggml_type}, not F32 "
                           "(llama.cpp applies it element-wise, in F32 only)")


def check_head_sizes(meta: dict[str, Field], shapes: dict[str, tuple[int, ...]],
                     source: str) -> None:
    """ModelLoadError for attention head sizes that llama.cpp loads but aborts on as it reserves
    its graph: a rope.dimension_count that no head can hold (0, odd, or over the key head
    size: GGML_ASSERT(n_embd_head == n_rot) in qwen2's graph), and an attention.key_length that
    disagrees with layer 0's K weight (key_length x head_count_kv columns; qwen2 sizes K by the
    value head, so its graph asserted n_embd_head == n_embd_head_k). Skipped where K comes from
    another tensor (fused QKV, MLA) or sliding-window layers have head sizes of their own."""
    arch = _architecture(meta)
    if arch is None:
        return
    k = f"{arch}."
    heads_kv = _ints(meta.get(k + "attention.head_count_kv")) \
        or _ints(meta.get(k + "attention.head_count"))
    key_length = _ints(meta.get(k + "attention.key_length"))
    head = _head_size(meta, k, "key_length", 0)
    rot = _ints(meta.get(k + "rope.dimension_count"))
    if rot and head and not (0 < rot[0] <= head and rot[0] % 2 == 0):
        raise _damaged(source, f"metadata {k}rope.dimension_count = {rot[0]} does not fit a head "
                       f"of {head} (RoPE turns an even number of a head's dimensions, at most all)")
    shape = shapes.get("blk.0.attn_k.weight")
    own_swa = any(key.startswith(k) and key.endswith("_swa") for key in meta)
    if key_length and heads_kv and shape is not None and len(shape) == 2 and not own_swa \
            and shape[1] != key_length[0] * heads_kv[0]:
        raise _damaged(source, f"metadata {k}attention.key_length = {key_length[0]} does not match "
                       f"blk.0.attn_k.weight ({shape[1]} columns for {heads_kv[0]} KV heads)")
