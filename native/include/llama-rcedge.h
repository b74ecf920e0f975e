// pyrcedge's C API, compiled into libllama (native/src/rcedge-api.cpp).
//
// Everything here is named llama_rcedge_* and lives in this header only, so llama.h stays as
// upstream ships it. The Python package binds these declarations through cffi
// (pyrcedge/_native.py keeps a copy of them; tests/test_native.py checks the two agree).
#pragma once

#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

    //
    // pyrcedge: build identity and KV cache occupancy
    //

    // Version of the pyrcedge native API built into this libllama, "MAJOR.MINOR.PATCH".
    // The string is static: the caller must not free it.
    LLAMA_API const char * llama_rcedge_version(void);

    // Cells of the context's KV cache that hold at least one token, over all sequences.
    // Returns -1 when ctx is NULL or its memory is not a plain KV cache
    // (recurrent, hybrid and sliding-window models).
    LLAMA_API int32_t llama_rcedge_kv_cells_used(const struct llama_context * ctx);

    // Cells the context's KV cache was allocated with (its capacity in tokens).
    // Returns -1 in the same cases as llama_rcedge_kv_cells_used.
    LLAMA_API int32_t llama_rcedge_kv_cells_total(const struct llama_context * ctx);

    //
    // pyrcedge: KV cache memory budgets
    //

    // Ask that contexts created by this thread from now on get a KV cache of exactly the n_ctx
    // they ask for (exact != 0), instead of n_ctx rounded up to a multiple of 256 cells, so that
    // a cache sized to a memory budget is not allocated beyond it. Returns the previous setting.
    // The setting is per thread and stays until changed; the CPU backend needs no padding.
    LLAMA_API int32_t llama_rcedge_set_exact_n_ctx(int32_t exact);

    // Bytes one KV cell takes over all layers with K and V stored as ggml types type_k and
    // type_v (enum ggml_type values), as llama_kv_cache allocates them (flash_attn != 0: V stored
    // by rows, as with flash attention). Returns -1 when model is NULL or a type is invalid.
    LLAMA_API int64_t llama_rcedge_kv_cell_bytes(
            const struct llama_model * model,
                             int32_t   type_k,
                             int32_t   type_v,
                             int32_t   flash_attn);

    // Bytes the context's KV cache buffers take (K and V of all layers and streams), or -1 when
    // its memory is not a plain KV cache.
    LLAMA_API int64_t llama_rcedge_kv_bytes(const struct llama_context * ctx);

    //
    // pyrcedge: attention scoring
    //
    // While scoring is on, every prefill and decode step makes the CPU attention kernels update,
    // per model layer, per KV head (the query heads of a GQA group summed) and per KV cell:
    //   [0] a2sf   decayed attention: A <- alpha*A + p for each query in order
    //   [1] count  (query, query head) pairs that saw the cell
    //   [2] sum    of the raw scaled logits f = q.k*kq_scale (after soft-capping, before the mask)
    //   [3] sumsq  of f^2
    //   [4] max    of f (-INFINITY while count is 0)
    // A cell's statistics are cleared when a token is written into it. docs/rcstat.md says how
    // they are used. Scoring needs a plain KV cache (no sliding-window or recurrent memory); one
    // sequence per context is what it is built and tested for.
    //
    // Two paths compute the same statistics (docs/scoring.md, docs/gpu.md). With the KV cache in
    // host memory the CPU backend's attention kernels update them in place (fused). With the KV
    // cache on another backend (CUDA, Metal, ...), or when forced, the graph computes them with
    // standard ggml ops (portable): from the soft_max attention's probabilities, or beside flash
    // attention from a q.k and soft_max of their own; the statistics live in a buffer of the KV
    // cache's own type.
    //
    // Functions return LLAMA_RCEDGE_OK (0) or one of the negative codes below. Output buffers
    // belong to the caller and are only read or written during the call. None of these may run
    // concurrently with llama_decode on the same context.

#define LLAMA_RCEDGE_N_STATS 5

    enum llama_rcedge_status {
        LLAMA_RCEDGE_OK                 =  0,
        LLAMA_RCEDGE_ERR_NULL           = -1, // a required pointer is NULL
        LLAMA_RCEDGE_ERR_MEMORY_KIND    = -2, // the context's memory is not a plain KV cache
        LLAMA_RCEDGE_ERR_NOT_HOST       = -3, // the KV cache is not in host memory
        LLAMA_RCEDGE_ERR_SCORING_OFF    = -4, // scoring is not enabled on this context
        LLAMA_RCEDGE_ERR_ALPHA          = -5, // alpha is NaN or outside [0, 1]
        LLAMA_RCEDGE_ERR_LAYER          = -6, // layer index out of range, or a layer with no KV
        LLAMA_RCEDGE_ERR_CELL           = -7, // cell index out of range
        LLAMA_RCEDGE_ERR_BUFFER         = -8, // output buffer too small
        LLAMA_RCEDGE_ERR_ALLOC          = -9, // allocation failed
        LLAMA_RCEDGE_ERR_HEADS          = -10, // layers differ in KV heads (no reduction over layers)
        LLAMA_RCEDGE_ERR_PORTABLE       = -11, // the portable path cannot serve this cache
                                               // (several streams, or a quantised V cache)
        LLAMA_RCEDGE_ERR_NO_QUERIES     = -12, // no question probe's queries are kept
        LLAMA_RCEDGE_ERR_K_TYPE         = -13, // K is stored quantised (kept queries not scored)
        LLAMA_RCEDGE_ERR_STOP           = -14, // decodes cannot stop early here (the portable path,
                                               // or an eval callback of the context's own)
    };

    // Turn scoring on with forgetting factor alpha in [0, 1] (1: H2O, 0: newest query only).
    // Allocates n_layer x n_head_kv x n_ctx x 5 floats beside the KV cache, all cleared; a
    // context already scoring keeps its statistics and only takes the new alpha.
    LLAMA_API int32_t llama_rcedge_scoring_enable(struct llama_context * ctx, float alpha);

    // Ask that llama_rcedge_scoring_enable calls made by this thread from now on choose the portable
    // path even when the KV cache is in host memory (force != 0; for testing it against the fused
    // kernels). The environment variable LLAMA_RCEDGE_PORTABLE=1 does the same for every thread.
    // Returns the previous setting.
    LLAMA_API int32_t llama_rcedge_set_force_portable(int32_t force);

    // 1 when the context's scoring runs on the portable path, 0 on the fused CPU kernels, or a
    // negative code (LLAMA_RCEDGE_ERR_SCORING_OFF while scoring is off).
    LLAMA_API int32_t llama_rcedge_scoring_portable(const struct llama_context * ctx);

    // 1 when the portable path's statistics are updated by the GPU backend's own kernels (ggml-cuda:
    // a soft_max that carries them) instead of standard graph ops, 0 otherwise, or a negative code.
    // The default where the statistics live in CUDA device memory; LLAMA_RCEDGE_DEVICE_FUSED=0 in
    // the environment at llama_rcedge_scoring_enable keeps the graph ops.
    LLAMA_API int32_t llama_rcedge_scoring_device_fused(const struct llama_context * ctx);

    // Turn scoring off and free the statistics. The graph is then exactly the stock one.
    LLAMA_API int32_t llama_rcedge_scoring_disable(struct llama_context * ctx);

    // 1 when scoring is on, 0 when off, or a negative code.
    LLAMA_API int32_t llama_rcedge_scoring_enabled(const struct llama_context * ctx);

    // Change alpha (takes effect from the next decode).
    LLAMA_API int32_t llama_rcedge_set_alpha(struct llama_context * ctx, float alpha);

    // Portable path only: take the statistics of a ubatch from its last n_queries queries
    // (0: from all of them, the default; the environment variable LLAMA_RCEDGE_QUERY_WINDOW sets
    // the default of llama_rcedge_scoring_enable). Prefill then costs n_queries/n_ubatch of the
    // statistics work. The a2sf scores lose at most n_rep*alpha^n_queries/(1-alpha) per cell and
    // KV head (the decayed weight of the queries left out; 0.0012/(1-alpha)*n_rep at alpha 0.9,
    // 64 queries); count, sum, sumsq and max describe the window's queries only (a sample of the
    // prompt). Decode steps (one query) are exact either way. The fused CPU kernels take it too
    // (patch 0012). n_queries < 0 counts as 0. Returns the previous window, or a negative code.
    LLAMA_API int32_t llama_rcedge_set_query_window(struct llama_context * ctx, int32_t n_queries);

    // While on (1), no query of the next decodes gives statistics: the A2SF scores only decay,
    // by alpha per query (the decay a2sf would apply anyway), and the moments stay as they are.
    // For the chunks of a long prompt that nothing reads the statistics of before the next chunk
    // (no eviction in between, no attribution): with alpha < 1 a chunk's queries weigh at most
    // alpha^(tokens read after them) in the scores read later (below 1e-23 after a 512-token
    // chunk at alpha 0.9), and cost nothing here; the cells they write are cleared as always. Every
    // path (fused CPU kernels, portable graph ops, ggml-cuda's fused kernels). Returns the previous
    // setting (0 by default), or a negative code.
    LLAMA_API int32_t llama_rcedge_set_decay_only(struct llama_context * ctx, int32_t on);

    // Whether the fused CPU kernels keep the logit moments (count, sum, sumsq, max) as well as
    // a2sf: 1 (the default) all five statistics, 0 a2sf alone, which reads and writes one float
    // per KV head and cell per step instead of five (an A2SF policy reads nothing else). While
    // off, the moments keep what they held (a cell written since reads count 0). The portable
    // path always keeps all five. Returns the previous setting (0 or 1), or a negative code.
    LLAMA_API int32_t llama_rcedge_set_moments(struct llama_context * ctx, int32_t on);

#define LLAMA_RCEDGE_RESET_A2SF    1u
#define LLAMA_RCEDGE_RESET_MOMENTS 2u

    // Clear the A2SF scores and/or the logit moments of every cell (a new statistics window).
    LLAMA_API int32_t llama_rcedge_reset_stats(struct llama_context * ctx, uint32_t what);

    // Layers of the model (valid layer indices are 0..n-1), or a negative code.
    LLAMA_API int32_t llama_rcedge_n_layer(const struct llama_context * ctx);

    // KV heads of layer il, or a negative code.
    LLAMA_API int32_t llama_rcedge_n_head_kv(const struct llama_context * ctx, int32_t il);

    // The used cells of sequence 0's stream, in cell order: their indices, positions and sequence
    // ids (the lowest, when a cell holds several). Any of the arrays may be NULL. Returns how
    // many cells are used, writing at most n_max; call with n_max = 0 to size the arrays.
    LLAMA_API int32_t llama_rcedge_get_cells(
            const struct llama_context * ctx,
                             int32_t   * cells,
                           llama_pos   * pos,
                        llama_seq_id   * seq,
                             int32_t     n_max);

    // Statistics of the given cells: out[i][g][k] for cell cells[i], KV head g, statistic k, so
    // n_out must be at least n_cells * n_head_kv * LLAMA_RCEDGE_N_STATS. il >= 0 reads one layer;
    // il = -1 reduces over all layers (sums, and the max of maxima).
    LLAMA_API int32_t llama_rcedge_get_scores(
            const struct llama_context * ctx,
                             int32_t     il,
                       const int32_t   * cells,
                             int32_t     n_cells,
                               float   * out,
                              size_t     n_out);

    // Overwrite the statistics of the given cells of layer il (il >= 0), laid out as
    // llama_rcedge_get_scores returns them: in[i][g][k] for cell cells[i], KV head g, statistic k.
    // For restoring a saved session, whose cells a state restore renumbers (pyrcedge/session.py).
    LLAMA_API int32_t llama_rcedge_set_scores(
                  struct llama_context * ctx,
                             int32_t     il,
                       const int32_t   * cells,
                             int32_t     n_cells,
                         const float   * in,
                              size_t     n_in);

    //
    // pyrcedge: question probes
    //
    // Reading a prompt longer than the budget, pyrcedge evicts by the logits that the prompt's
    // question (a probe) gives the cached cells (pyrcedge/features/probe.py). Decoding the probe
    // again before every eviction costs a forward pass of its tokens each time; instead its queries
    // can be kept from one decode, and later the cells scored against them from the keys the cache
    // holds (q.k only). The queries are those of the context they were decoded in.

    // Keep, from the next decode on, every layer's queries (after RoPE, as attention takes them) of
    // the last n_max tokens of each ubatch, replacing those kept before (n_max > 0); stop keeping,
    // holding on to what was kept (n_max = 0); or stop and free them (n_max < 0). Needs scoring on:
    // they live beside the statistics, in a buffer of the KV cache's type (n_layer x n_max x n_head
    // x n_embd_head floats), and go with them. Starting and stopping change the graph (the next
    // decode builds it anew; while keeping it has one copy per layer more).
    LLAMA_API int32_t llama_rcedge_probe_capture(struct llama_context * ctx, int32_t n_max);

    // Queries kept by the last decode while keeping (0 before one), or a negative code.
    LLAMA_API int32_t llama_rcedge_probe_n_kept(const struct llama_context * ctx);

    // For every layer, cell and KV head: the largest logit f = q.k*kq_scale (soft-capped as attention
    // does; no mask or ALiBi bias) that a kept query of the head's GQA group gives the cell, with the
    // queries moved `shift` positions later than where they were decoded (the model's RoPE rotation
    // by shift; 0 leaves them). This is the max statistic a decode of the probe at those positions
    // would give the cells, had its queries been the same. Only the first n_layer layers are scored
    // (0: every layer). out[il][i][g] for every layer of the model, so n_out must be at least
    // n_layer(model)*n_cells*n_head_kv; -INFINITY for layers without KV or not scored.
    // LLAMA_RCEDGE_ERR_NO_QUERIES before any is kept; LLAMA_RCEDGE_ERR_K_TYPE for a quantised K
    // cache (which may be stored rotated).
    LLAMA_API int32_t llama_rcedge_probe_max(
            const struct llama_context * ctx,
                       const int32_t   * cells,
                             int32_t     n_cells,
                             int32_t     shift,
                             int32_t     n_layer,
                               float   * out,
                              size_t     n_out);

    // From the next decode on, stop each decode after the attention of its first n_layer layers
    // (0, or the model's layer count or more: decode the whole model again); returns the previous
    // n_layer. For a probe read only for what attention gives in those layers (the statistics,
    // the kept queries): the later layers, the output and the logits are not computed, and the
    // probe's cells hold K and V for the first n_layer layers only, so they must be removed before
    // anything else is decoded. It ends the computation through the scheduler's eval callback
    // (patch 0014): LLAMA_RCEDGE_ERR_STOP when the context has one of its own, and on the
    // portable path (which updates every layer's decode statistics in the last layer's nodes).
    LLAMA_API int32_t llama_rcedge_set_stop_layer(struct llama_context * ctx, int32_t n_layer);

#ifdef __cplusplus
}
#endif
