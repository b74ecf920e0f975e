// pyrcedge: what the patched llama.cpp sources (patches 0004-0006) and our own sources in
// native/src share, as llama-impl.h is for llama.cpp's. Private to libllama: the public C API is
// include/llama-rcedge.h. Every function the patches call is declared here, and the file that
// defines it includes this header, so the compiler checks the two against each other.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

class  llama_kv_cache;
struct llama_context;
struct ggml_cgraph;
struct ggml_context;
struct ggml_tensor;

// Attention statistics kept beside one KV cache (defined in rcedge-api.cpp; nullptr while
// scoring is off).
struct llama_rcedge_scores;

// One layer's kept queries of a question probe (rcedge-probe.cpp; llama_rcedge_probe_capture in
// llama-rcedge.h), while capture is on.
struct llama_rcedge_probe_layer {
    ggml_tensor * q = nullptr;  // [n_embd_head_k, n_head, n_max] F32, in a buffer of the cache's type
    float   kq_scale = 0.0f;    // the attention's logit scale, as the graph was built with
    int32_t n = 0;              // queries the last graph kept: the last n of its ubatch
};

// The portable path's tensors that every layer of one graph shares (the mask's visibility, the
// per-query weights, the cleared values), built once by the first layer (rcedge-graph.cpp).
// Kept beside the statistics; valid only while that graph is being built.
struct llama_rcedge_graph_shared {
    // what the tensors below were built for
    const ggml_tensor * mask = nullptr;
    int64_t n_q = 0, n_w = 0, n_head = 0, n_head_kv = 0;
    float   kq_scale = 0.0f, alpha = 0.0f;
    ggml_tensor * m       = nullptr; // [n_kv, n_w] F32: the mask rows of the window's queries, 0 / -inf
    ggml_tensor * vis_sum = nullptr; // [n_kv, n_w] visibility (0/1) * n_red * kq_scale
    ggml_tensor * vis_sq  = nullptr; // [n_kv, n_w] visibility * sqrt(n_red) * kq_scale
    ggml_tensor * count   = nullptr; // [n_kv, 1]   n_rep * the window's queries that see the cell
    ggml_tensor * weight  = nullptr; // [1, n_w]    n_red * alpha^(n_w-1-q), the A2SF weights
    ggml_tensor * decay   = nullptr; // [1]         alpha^n_q (nullptr for alpha 1)
    // the cleared values for llama_rcedge_graph_reset, and what they were built for
    ggml_tensor * cleared = nullptr; // [1, n_tokens, 5, n_head_kv]
    // one tensor for all layers: the cleared statistics (the set_rows result), and for decode the
    // stacks [n_kv, 1, n_head, n_layer] of every layer's q.k and probabilities
    ggml_tensor * all_cleared = nullptr;
    ggml_tensor * stack_kq = nullptr, * stack_p = nullptr;
    // beside flash attention: the view of the window's rows of the mask that every layer's
    // statistics read, and the mask and window it was made for
    ggml_tensor * mask_rows = nullptr;
    const ggml_tensor * mask_rows_of = nullptr;
    int64_t mask_rows_n_q = 0, mask_rows_n_w = 0;
    // decay only (llama_rcedge_set_decay_only): alpha^n_q, and the n_q it was made for
    ggml_tensor * decay_only = nullptr;
    int64_t decay_only_n_q = 0;
};

// One layer's attention statistics for one ubatch, as the KV cache hands them to the graph
// (llama_kv_cache::rcedge_get_scores). Default: scoring off.
struct llama_rcedge_layer_scores {
    // view [n_kv, GGML_ATTN_SCORES_N, n_head_kv, n_stream] of the layer's statistics over the
    // ubatch's cells, or nullptr while scoring is off
    ggml_tensor * scores = nullptr;
    // A2SF forgetting factor (ggml_attn_set_scores)
    float alpha = 1.0f;
    // patch 0006: the graph updates the statistics with standard ggml ops (statistics off the
    // host, or the portable path forced) instead of the CPU backend's fused kernels
    bool portable = false;
    // portable path on a backend with fused kernels for it (ggml-cuda; patches 0007 and 0008): the
    // statistics come from soft_max nodes of their own that carry them (ggml_attn_set_scores)
    // instead of graph ops; the cells are cleared and the layout chosen as on the portable path
    bool device_fused = false;
    // statistics from the last query_window queries of the ubatch (0: all;
    // llama_rcedge_set_query_window)
    int32_t query_window = 0;
    // no query gives statistics; the A2SF scores only decay, by alpha per query
    // (llama_rcedge_set_decay_only)
    bool decay_only = false;
    // portable path: what the layers of the graph share; `first` for the layer that builds it
    llama_rcedge_graph_shared * shared = nullptr;
    bool first = false;
    bool last  = false;
    // portable path: every layer's statistics [kv_size, 5, n_head_kv, n_layer] when they share one
    // tensor (then cleared once per graph and, in decode, updated for all layers at once by the
    // last layer), else nullptr; slot: this layer's index in it
    ggml_tensor * all = nullptr;
    int32_t slot = 0;
    // while a question probe's queries are being kept (llama_rcedge_probe_capture): this layer's
    // store for them, else nullptr
    llama_rcedge_probe_layer * probe = nullptr;
};

//
// KV cache memory budgets (rcedge-api.cpp; patch 0005)
//

// Whether this thread asked for a KV cache of exactly n_ctx cells (llama_rcedge_set_exact_n_ctx
// in llama-rcedge.h): read by the llama_context constructor, which otherwise pads n_ctx.
bool llama_rcedge_exact_n_ctx_requested();

//
// the portable attention-scores path (rcedge-graph.cpp; patch 0006)
//

// Clears, inside the graph, the statistics of the cells a ubatch writes (k_idxs, the K store's
// indices); returns the statistics view (rc.scores) again, ordered after the clearing.
ggml_tensor * llama_rcedge_graph_reset(ggml_context * ctx, const llama_rcedge_layer_scores & rc, ggml_tensor * k_idxs);

// Soft_max path: adds one ubatch's statistics into rc.scores (from llama_rcedge_graph_reset), from
// soft_max's input kq (unscaled), its scale and mask, and its output kq_soft_max.
void llama_rcedge_graph_accumulate(ggml_context * ctx, ggml_cgraph * gf, const llama_rcedge_layer_scores & rc,
        ggml_tensor * kq, float kq_scale, ggml_tensor * kq_mask, ggml_tensor * kq_soft_max);

// How many of a ubatch's last n_q queries give statistics: the query window's, none while the
// statistics only decay.
inline int64_t llama_rcedge_window(const llama_rcedge_layer_scores & rc, int64_t n_q) {
    if (rc.decay_only) {
        return 0;
    }
    return rc.query_window > 0 && rc.query_window < n_q ? rc.query_window : n_q;
}

// Fused CPU kernels (patch 0012; rcedge-api.cpp): the query window (llama_rcedge_window) on the node
// that carries the statistics (ggml_attn_set_scores), n_q: the node's queries per stream.
void llama_rcedge_set_fused_window(ggml_tensor * node, const llama_rcedge_layer_scores & rc, int64_t n_q);

// Flash-attention path: the same, from a q.k and soft_max of its own over the window's queries
// (q, k and kq_mask as flash attention takes them; softcap 0: none).
void llama_rcedge_graph_accumulate_flash(ggml_context * ctx, ggml_cgraph * gf, const llama_rcedge_layer_scores & rc,
        ggml_tensor * q, ggml_tensor * k, ggml_tensor * kq_mask, ggml_tensor * sinks,
        float kq_scale, float softcap, float max_bias);

//
// question probes' queries (rcedge-probe.cpp; patch 0009)
//

// Copies the last queries of the ubatch (q as attention takes it, [n_embd_head, n_head, n_tokens])
// into rc.probe's store, recording kq_scale; returns the copy node for the graph to compute.
ggml_tensor * llama_rcedge_graph_keep_queries(ggml_context * ctx, const llama_rcedge_layer_scores & rc,
        ggml_tensor * q, float kq_scale);

// For llama_rcedge_probe_max (llama-rcedge.h): every layer's largest logit of the kept queries on
// each cell, out[il][i][g], from `layers` (indexed by model layer) and the keys kv holds; layers
// from n_layer on (n_layer > 0) are left -INFINITY.
int32_t llama_rcedge_probe_max_logits(const llama_context * lctx, const llama_kv_cache & kv,
        const std::vector<llama_rcedge_probe_layer> & layers, const int32_t * cells, int32_t n_cells,
        int32_t shift, int32_t n_layer, float * out, size_t n_out);
