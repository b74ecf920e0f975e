// pyrcedge: a question probe's queries, kept so that cached cells can be scored against them
// without decoding the probe again (llama_rcedge_probe_capture and llama_rcedge_probe_max in
// include/llama-rcedge.h). Compiled into libllama by the top-level CMakeLists.txt.
//
// Question-probed reading (pyrcedge/features/probe.py, docs/probe.md) scores the cached cells of a
// prompt being read by the largest logit a probe (the prompt's question) gives each of them. The
// probe was decoded after the cached cells before every eviction, which cost as many tokens as the
// probe has. Here its queries are kept from one such decode (patch 0009 copies each layer's q, as
// attention takes it, into a store beside the statistics), and a later eviction computes the same
// logits from them and the cells' keys as the KV cache holds them: q.k for n_probe x n_head queries
// per cell and layer instead of a forward pass of the probe. The queries are moved to the positions
// the probe would have had (a RoPE rotation by the position difference, which composes with the one
// they carry: what llama_kv_cache's K shift does to keys). What this leaves out: the queries are
// those of the context they were decoded in; the cells read since did not change them.
#include "llama-rcedge.h"
#include "llama-rcedge-impl.h"

#include "llama-context.h"
#include "llama-kv-cache.h"
#include "llama-model.h"

#include "ggml-backend.h"
#include "ggml-cpp.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

ggml_tensor * llama_rcedge_graph_keep_queries(ggml_context * ctx, const llama_rcedge_layer_scores & rc,
        ggml_tensor * q, float kq_scale) {
    llama_rcedge_probe_layer & pl = *rc.probe;
    if (q->ne[0] != pl.q->ne[0] || q->ne[1] != pl.q->ne[1] || q->ne[3] != 1) {
        // the store is sized by the layer's hparams; a graph that computes another head count for
        // this layer (a per-layer head_count on an architecture whose graph reads layer 0's) keeps
        // nothing, and llama_rcedge_probe_max then refuses (LLAMA_RCEDGE_ERR_NO_QUERIES): the
        // probe is decoded instead. q is in the graph already: expanding it adds nothing.
        pl.n = 0;
        return q;
    }
    const int64_t n = std::min(q->ne[2], pl.q->ne[2]);
    pl.kq_scale = kq_scale;
    pl.n = (int32_t) n;
    ggml_tensor * src = ggml_view_3d(ctx, q, q->ne[0], q->ne[1], n, q->nb[1], q->nb[2], (q->ne[2] - n)*q->nb[2]);
    ggml_tensor * dst = ggml_view_3d(ctx, pl.q, pl.q->ne[0], pl.q->ne[1], n, pl.q->nb[1], pl.q->nb[2], 0);
    return ggml_cpy(ctx, src, dst);
}

// Every kept layer's queries as floats [n][n_head][n_embd_head], moved `shift` positions later by
// the model's own RoPE (as llama_kv_cache::build_rope_shift moves keys), on a CPU backend of its own.
static int32_t rcedge_shifted_queries(const llama_context * lctx, const std::vector<llama_rcedge_probe_layer> & layers,
        int32_t n, int32_t shift, std::vector<std::vector<float>> & out) {
    const llama_model   & model   = lctx->get_model();
    const llama_cparams & cparams = lctx->get_cparams();
    const llama_hparams & hparams = model.hparams;

    out.assign(layers.size(), {});
    for (size_t il = 0; il < layers.size(); ++il) {
        const ggml_tensor * q = layers[il].q;
        if (q == nullptr) {
            continue;
        }
        out[il].resize((size_t) q->ne[0]*q->ne[1]*n);
        ggml_backend_tensor_get(q, out[il].data(), 0, out[il].size()*sizeof(float));
    }
    if (shift == 0) {
        return LLAMA_RCEDGE_OK;
    }

    const size_t n_tensors = 3*layers.size() + 1;
    ggml_init_params params = {
        /*.mem_size   =*/ n_tensors*ggml_tensor_overhead() + ggml_graph_overhead(),
        /*.mem_buffer =*/ nullptr,
        /*.no_alloc   =*/ true,
    };
    ggml_context_ptr gctx(ggml_init(params));
    if (!gctx) {
        return LLAMA_RCEDGE_ERR_ALLOC;
    }
    ggml_context * c = gctx.get();
    ggml_cgraph * gf = ggml_new_graph(c);
    ggml_tensor * pos = ggml_new_tensor_1d(c, GGML_TYPE_I32, n);
    struct shifted { size_t il; ggml_tensor * in, * out, * factors; const ggml_tensor * factors_src; };
    std::vector<shifted> todo;
    for (size_t il = 0; il < layers.size(); ++il) {
        const ggml_tensor * q = layers[il].q;
        if (q == nullptr || !hparams.has_rope((uint32_t) il)) {
            continue;
        }
        shifted s = { il, ggml_new_tensor_3d(c, GGML_TYPE_F32, q->ne[0], q->ne[1], n), nullptr, nullptr, nullptr };
        s.factors_src = model.get_rope_factors(cparams, (int) il);
        if (s.factors_src != nullptr) {
            s.factors = ggml_dup_tensor(c, s.factors_src);
        }
        // M-RoPE keys are shifted as NEOX too (llama_kv_cache::build_rope_shift)
        const int rope_type = hparams.rope_type == LLAMA_ROPE_TYPE_MROPE || hparams.rope_type == LLAMA_ROPE_TYPE_IMROPE
                ? LLAMA_ROPE_TYPE_NEOX : hparams.rope_type;
        s.out = ggml_rope_ext(c, s.in, pos, s.factors, hparams.n_rot((uint32_t) il), rope_type, cparams.n_ctx_orig_yarn,
                model.get_rope_freq_base(cparams, (int) il), model.get_rope_freq_scale(cparams, (int) il),
                cparams.yarn_ext_factor, cparams.yarn_attn_factor, cparams.yarn_beta_fast, cparams.yarn_beta_slow);
        ggml_build_forward_expand(gf, s.out);
        todo.push_back(s);
    }
    if (todo.empty()) {
        return LLAMA_RCEDGE_OK;
    }

    ggml_backend_ptr cpu(ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, nullptr));
    if (!cpu) {
        return LLAMA_RCEDGE_ERR_ALLOC;
    }
    // a few thousand rotations: one thread, off the caller's thread pool
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(ggml_backend_get_device(cpu.get()));
    auto set_threads = (ggml_backend_set_n_threads_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads");
    if (set_threads != nullptr) {
        set_threads(cpu.get(), 1);
    }
    ggml_backend_buffer_ptr buf(ggml_backend_alloc_ctx_tensors(c, cpu.get()));
    if (!buf) {
        return LLAMA_RCEDGE_ERR_ALLOC;
    }
    const std::vector<int32_t> shifts(n, shift);
    ggml_backend_tensor_set(pos, shifts.data(), 0, shifts.size()*sizeof(int32_t));
    std::vector<uint8_t> bytes;
    for (const shifted & s : todo) {
        ggml_backend_tensor_set(s.in, out[s.il].data(), 0, out[s.il].size()*sizeof(float));
        if (s.factors != nullptr) {
            bytes.resize(ggml_nbytes(s.factors_src));
            ggml_backend_tensor_get(s.factors_src, bytes.data(), 0, bytes.size());
            ggml_backend_tensor_set(s.factors, bytes.data(), 0, bytes.size());
        }
    }
    if (ggml_backend_graph_compute(cpu.get(), gf) != GGML_STATUS_SUCCESS) {
        return LLAMA_RCEDGE_ERR_ALLOC;
    }
    for (const shifted & s : todo) {
        ggml_backend_tensor_get(s.out, out[s.il].data(), 0, out[s.il].size()*sizeof(float));
    }
    return LLAMA_RCEDGE_OK;
}

static float rcedge_dot(const float * a, const float * b, int64_t n) {
    // eight partial sums, so that the compiler keeps them in one vector register
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int j = 0; j < 8; ++j) {
            acc[j] += a[i + j]*b[i + j];
        }
    }
    float s = 0.0f;
    for (; i < n; ++i) {
        s += a[i]*b[i];
    }
    for (int j = 0; j < 8; ++j) {
        s += acc[j];
    }
    return s;
}

int32_t llama_rcedge_probe_max_logits(const llama_context * lctx, const llama_kv_cache & kv,
        const std::vector<llama_rcedge_probe_layer> & layers_all, const int32_t * cells, int32_t n_cells,
        int32_t shift, int32_t n_layer, float * out, size_t n_out) {
    const llama_hparams & hparams = lctx->get_model().hparams;
    // the first n_layer layers are scored; out keeps a row of every layer, the others -INFINITY
    const size_t n_scored = n_layer > 0 ? std::min(layers_all.size(), (size_t) n_layer) : layers_all.size();
    const std::vector<llama_rcedge_probe_layer> layers(layers_all.begin(), layers_all.begin() + n_scored);
    const size_t n_out_layers = layers_all.size();
    int32_t n = 0;
    int64_t n_head_kv = -1;
    for (size_t il = 0; il < layers.size(); ++il) {
        if (layers[il].q == nullptr) {
            continue;
        }
        if (n_head_kv >= 0 && (int64_t) hparams.n_head_kv((uint32_t) il) != n_head_kv) {
            return LLAMA_RCEDGE_ERR_HEADS;
        }
        n_head_kv = hparams.n_head_kv((uint32_t) il);
        n = n == 0 ? layers[il].n : std::min(n, layers[il].n);
    }
    if (n_head_kv < 0 || n <= 0) {
        return LLAMA_RCEDGE_ERR_NO_QUERIES;
    }
    if (n_out < n_out_layers*n_cells*n_head_kv) {
        return LLAMA_RCEDGE_ERR_BUFFER;
    }
    if (ggml_is_quantized(kv.type_k())) {
        // a quantised K cache may be stored rotated (llama_kv_cache's attn_rot_k): not handled
        return LLAMA_RCEDGE_ERR_K_TYPE;
    }
    const uint32_t kv_size = kv.get_size();
    for (int32_t i = 0; i < n_cells; ++i) {
        if (cells[i] < 0 || (uint32_t) cells[i] >= kv_size) {
            return LLAMA_RCEDGE_ERR_CELL;
        }
    }
    std::vector<std::vector<float>> qs;
    const int32_t status = rcedge_shifted_queries(lctx, layers, n, shift, qs);
    if (status != LLAMA_RCEDGE_OK) {
        return status;
    }

    const float softcap = hparams.attn_soft_cap ? hparams.f_attn_logit_softcapping : 0.0f;
    const uint32_t stream = kv.get_stream(0);
    std::fill(out, out + n_out_layers*n_cells*n_head_kv, -INFINITY);
    std::vector<float> krow;
    std::vector<uint8_t> raw;
    for (size_t il = 0; il < layers.size(); ++il) {
        const llama_rcedge_probe_layer & pl = layers[il];
        const ggml_tensor * k = pl.q != nullptr ? kv.get_k_storage((int32_t) il) : nullptr;
        if (k == nullptr) {
            continue;
        }
        const int64_t d      = pl.q->ne[0];
        const int64_t n_head = pl.q->ne[1];
        const int64_t n_rep  = n_head/n_head_kv;
        if (k->ne[0] != d*n_head_kv) {
            return LLAMA_RCEDGE_ERR_HEADS;
        }
        const auto * traits = ggml_get_type_traits(k->type);
        const bool host = k->buffer != nullptr && ggml_backend_buffer_is_host(k->buffer);
        krow.resize(k->ne[0]);
        raw.resize(k->nb[1]);
        const float * q = qs[il].data();
        for (int32_t i = 0; i < n_cells; ++i) {
            const size_t offs = stream*k->nb[2] + (size_t) cells[i]*k->nb[1];
            const void * row = (const char *) k->data + offs;
            if (!host) {
                ggml_backend_tensor_get(k, raw.data(), offs, raw.size());
                row = raw.data();
            }
            if (k->type == GGML_TYPE_F32) {
                memcpy(krow.data(), row, krow.size()*sizeof(float));
            } else {
                traits->to_float(row, krow.data(), k->ne[0]);
            }
            for (int64_t g = 0; g < n_head_kv; ++g) {
                const float * kg = krow.data() + g*d;
                float best = -INFINITY;
                for (int32_t t = 0; t < n; ++t) {
                    for (int64_t r = 0; r < n_rep; ++r) {
                        float f = rcedge_dot(q + ((int64_t) t*n_head + g*n_rep + r)*d, kg, d)*pl.kq_scale;
                        if (softcap != 0.0f) {
                            f = softcap*tanhf(f/softcap);
                        }
                        best = std::max(best, f);
                    }
                }
                out[(il*n_cells + i)*n_head_kv + g] = best;
            }
        }
    }
    return LLAMA_RCEDGE_OK;
}
