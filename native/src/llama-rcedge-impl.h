// pyrcedge: what the patched llama.cpp sources (patches 0004-0006) and our own sources in
// native/src share, as llama-impl.h is for llama.cpp's. Private to libllama: the public C API is
// include/llama-rcedge.h. Every function the patches call is declared here, and the file that
// defines it includes this header, so the compiler checks the two against each other.
#pragma once

struct ggml_cgraph;
struct ggml_context;
struct ggml_tensor;

// Attention statistics kept beside one KV cache (defined in rcedge-api.cpp; nullptr while
// scoring is off).
struct llama_rcedge_scores;

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
// indices); returns the statistics view again, ordered after the clearing.
ggml_tensor * llama_rcedge_graph_reset(ggml_context * ctx, ggml_tensor * scores, ggml_tensor * k_idxs);

// Adds one ubatch's statistics into `scores` (from llama_rcedge_graph_reset), from soft_max's input
// kq (unscaled), its scale and mask, and its output kq_soft_max.
void llama_rcedge_graph_accumulate(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * scores, float alpha,
        ggml_tensor * kq, float kq_scale, ggml_tensor * kq_mask, ggml_tensor * kq_soft_max);
