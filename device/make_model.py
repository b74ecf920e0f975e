#!/usr/bin/env python3
"""Writes a small llama-architecture GGUF with random weights (gguf package from PyPI).

    python device/make_model.py OUT.gguf [n_layer n_embd n_head n_head_kv n_ff]

Defaults: 4 layers, 512 wide, 8 query / 2 KV heads of 64 (GQA groups of 4), FFN 1024, F16
matrices (F32 with a last argument f32), a 512-token SPM vocabulary (3 specials, 256 byte tokens, filler). Deterministic (seed 0).
"""
import sys

import gguf
import numpy as np

out = sys.argv[1]
n_layer, n_embd, n_head, n_head_kv, n_ff = (int(x) for x in (sys.argv[2:7] or (4, 512, 8, 2, 1024)))
# F32 (8th argument "f32"): CPU and CUDA then compute the forward pass alike, to about 1e-6
# "exact" (8th argument): F32, embeddings of +-1 and matrices of multiples of 1/16 up to 3/16, so
# layer 0's Q, K and V are exact sums on every backend (F16, TF32 or F32 arithmetic alike) and
# its attention statistics can be compared across backends without the forward pass's rounding
mode = sys.argv[7] if len(sys.argv) > 7 else "f16"
dtype = np.float16 if mode == "f16" else np.float32
n_vocab, n_ctx = 512, 4096
hd = n_embd // n_head
rng = np.random.default_rng(0)

w = gguf.GGUFWriter(out, "llama")
w.add_name("rcedge-tiny-llama")
w.add_context_length(n_ctx)
w.add_embedding_length(n_embd)
w.add_block_count(n_layer)
w.add_feed_forward_length(n_ff)
w.add_head_count(n_head)
w.add_head_count_kv(n_head_kv)
w.add_rope_dimension_count(hd)
w.add_rope_freq_base(10000.0)
# exact mode: no epsilon, so the RMS of +-1 embeddings is exactly 1 and the norm changes nothing
w.add_layer_norm_rms_eps(0.0 if mode == "exact" else 1e-5)
if mode == "exact":
    # RoPE angles near 0 (cos 1, sin below half an ulp): CUDA's fast-math sin/cos of large angles
    # (about 1e-4 off at a few hundred radians) would otherwise make Q and K differ between
    # backends before attention starts, and F16 rounding of K and Q turns such differences into
    # whole F16 ulps
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(1e12)
w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == np.float32 else gguf.LlamaFileType.MOSTLY_F16)

tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
tokens += [f"tok{i}" for i in range(n_vocab - len(tokens))]
types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
types += [gguf.TokenType.NORMAL] * (n_vocab - len(types))
w.add_tokenizer_model("llama")
w.add_token_list(tokens)
w.add_token_scores([0.0] * n_vocab)
w.add_token_types(types)
w.add_bos_token_id(1)
w.add_eos_token_id(2)
w.add_unk_token_id(0)


def mat(rows, cols, std):
    if mode == "exact":
        return (rng.integers(-3, 4, (rows, cols)) / 16.0).astype(dtype)
    return (rng.standard_normal((rows, cols)) * std).astype(dtype)


def norm(n):
    if mode == "exact":
        return np.ones(n, np.float32)
    return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)


w.add_tensor("token_embd.weight", np.sign(rng.standard_normal((n_vocab, n_embd))).astype(dtype) if mode == "exact"
             else mat(n_vocab, n_embd, 1.0))
w.add_tensor("output_norm.weight", norm(n_embd))
w.add_tensor("output.weight", mat(n_vocab, n_embd, n_embd ** -0.5))
for i in range(n_layer):
    p = f"blk.{i}"
    w.add_tensor(f"{p}.attn_norm.weight", norm(n_embd))
    # q and k larger than usual: peaked attention, logits of a few units
    w.add_tensor(f"{p}.attn_q.weight", mat(n_embd, n_embd, 2.0 * n_embd ** -0.5))
    w.add_tensor(f"{p}.attn_k.weight", mat(n_head_kv * hd, n_embd, 2.0 * n_embd ** -0.5))
    w.add_tensor(f"{p}.attn_v.weight", mat(n_head_kv * hd, n_embd, n_embd ** -0.5))
    w.add_tensor(f"{p}.attn_output.weight", mat(n_embd, n_embd, n_embd ** -0.5))
    w.add_tensor(f"{p}.ffn_norm.weight", norm(n_embd))
    w.add_tensor(f"{p}.ffn_gate.weight", mat(n_ff, n_embd, n_embd ** -0.5))
    w.add_tensor(f"{p}.ffn_up.weight", mat(n_ff, n_embd, n_embd ** -0.5))
    w.add_tensor(f"{p}.ffn_down.weight", mat(n_embd, n_ff, n_ff ** -0.5))

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(out)
