// pyrcedge: attention statistics fused into the CPU attention kernels (ops.cpp).
//
// An attention node (GGML_OP_FLASH_ATTN_EXT or GGML_OP_SOFT_MAX) that carries a scores tensor
// (ggml_attn_set_scores) also accumulates, per KV cell and KV head, the A2SF decayed attention
// and the moments of the raw scaled logits f = (q.k)*scale (after soft-capping, before the mask):
//
//   scores[0] a2sf   A <- alpha^N A + sum_q alpha^(N-1-q) sum_{h in group} p_h(q)
//   scores[1] count  number of (query, query head) pairs that saw the cell
//   scores[2] sum    of f
//   scores[3] sumsq  of f^2
//   scores[4] max    of f
//
// The scores tensor is [n_kv, 5, n_head_kv, n_stream]: a row of cells per statistic; or a view
// of its first row alone, [n_kv, 1, n_head_kv, n_stream] (strides unchanged): then only a2sf is
// kept, and each step reads and writes one float per KV head and cell instead of five (what an
// A2SF policy reads; the moments stay as they were).
//
// A query window (ggml_attn_set_scores_rows' n_skip): the first n_skip queries give no
// statistics and cost nothing here; the decay alpha^N still counts every query of the batch.
//
// Rows are computed by whichever thread takes them, and query heads of one GQA group, or queries
// of one batch, land on different threads. So a finished row is added into the thread's private
// slab, and after a barrier every thread reduces a disjoint range of cells into the scores. The
// split-KV decode path, where each thread owns a range of cells, writes the scores directly.
//
// Scratch lives at the end of the op's work buffer; ggml_graph_plan reserves it through
// ggml_cpu_rcedge_work_size.
#pragma once

#include "ggml.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ggml_compute_params;

// Work buffer bytes the node's scoring needs on top of the op's own (0 when it has no scores).
size_t ggml_cpu_rcedge_work_size(const struct ggml_tensor * node, int n_threads);

#ifdef __cplusplus
}

// State of one op's scoring as seen by one thread.
struct ggml_cpu_rcedge {
    float * scores = nullptr; // scores view data, nullptr when the node is not scored
    size_t  nb1 = 0, nb2 = 0, nb3 = 0; // scores strides: statistic, KV head, stream
    float   alpha = 1.0f;
    int64_t n_kv = 0, n_head_kv = 0, n_stream = 0;
    int64_t N = 0;  // queries per stream in this batch
    int64_t n_skip = 0; // the first n_skip queries give no statistics (a query window: ggml_attn_set_scores_rows)
    int64_t rk2 = 1; // query heads per KV head
    int64_t rk3 = 1; // query streams per KV stream
    int64_t chunk = 0; // split-KV: cells per thread
    bool    moments = true; // false: a2sf alone (a scores view of one row)

    float * row_ms = nullptr; // shared: final (M, S) per query head (split-KV)
    float * logits = nullptr; // this thread's logits buffer
    float * v      = nullptr; // this thread's recorded exp(s - running max) (one_chunk, split-KV)
    int32_t * seg_at = nullptr; // where the running max changed, per recorded row
    float   * seg_m  = nullptr; // the running max from there on
    int32_t * nseg   = nullptr; // split-KV: segments of each head's record
    float * tmp    = nullptr; // this thread's buffer for exponentials
    float * slab   = nullptr; // this thread's partial sums [n_stream][n_head_kv][5][n_kv]
    float * tile_v = nullptr; // tiled flash attention: the rows' exponentials [64][n_kv]
    float * tile_m = nullptr; // and their running max per KV tile [64][n_kv_tiles]
    int64_t n_kv_tiles = 0;
    int64_t thread_stride = 0; // floats from one thread's logits + slab to the next thread's

    int ith = 0, nth = 1;

    explicit operator bool() const { return scores != nullptr; }
    // whether any of the n queries from iq1 gives statistics
    bool scores_rows(int64_t iq1, int64_t n) const { return scores != nullptr && iq1 + n > n_skip; }
};

// One flash-attention row recorded while the kernel walks its cells (one_chunk, split-KV): the
// raw logits f, the kernel's own exp(s - running max) v, and the cells where the running max
// changed. Its probabilities then cost one exp per max change, not one per cell.
struct ggml_cpu_rcedge_rec {
    float   * f      = nullptr; // nullptr: not recording
    float   * v      = nullptr;
    int32_t * seg_at = nullptr;
    float   * seg_m  = nullptr;
    int32_t   nseg   = 0;
    bool      keep_f = true;    // false: a2sf alone, which reads no logits: f is not written

    explicit operator bool() const { return f != nullptr; }

    // cell i (relative to the row's first) is masked
    void masked(int64_t i) {
        if (keep_f) {
            f[i] = 0.0f;
        }
        v[i] = 0.0f;
    }

    // cell i has logit fv, the kernel's exp value vs, and the running max went from Mold to M
    void key(int64_t i, float fv, float vs, float Mold, float M) {
        if (keep_f) {
            f[i] = fv;
        }
        v[i] = vs;
        if (M != Mold) {
            seg_at[nseg] = (int32_t) i;
            seg_m[nseg]  = M;
            ++nseg;
        }
    }
};

// The record for slot 0 (one_chunk rows) or slot h (split-KV: head h's chunk).
ggml_cpu_rcedge_rec ggml_cpu_rcedge_rec_row(const ggml_cpu_rcedge & rc, int64_t slot);

// split-KV: keep the record's segment count until the partials are reduced.
void ggml_cpu_rcedge_rec_done(const ggml_cpu_rcedge & rc, int64_t slot, const ggml_cpu_rcedge_rec & rec);

// Add a finished recorded row (one_chunk): as ggml_cpu_rcedge_fa_row, from its record.
void ggml_cpu_rcedge_fa_rec_row(const ggml_cpu_rcedge & rc, int64_t iq1, int64_t iq2, int64_t iq3,
                                int64_t ic0, int64_t ic1, const ggml_cpu_rcedge_rec & rec,
                                const ggml_fp16_t * mp, float M, float S);

// Set up `rc` for this thread; zero its slab unless the op runs the split-KV path.
void ggml_cpu_rcedge_begin(const ggml_compute_params * params, const ggml_tensor * dst,
                           bool split_kv, ggml_cpu_rcedge & rc);


// Tiled flash attention, after a KV tile's softmax step: keep the exponentials of its rows
// (kq: row r at kq + r*kq_stride, exp(s + mask - M[r]) for the kv_tile cells from ic) and the
// running max M[r] they are relative to; skip[r]: the row saw no visible cell in the tile. The
// tile's rows are queries [iq1, iq1 + n_rows); those before the query window are left out.
void ggml_cpu_rcedge_fa_tile_exp(const ggml_cpu_rcedge & rc, int64_t iq1, int64_t n_rows, int64_t ic,
                                 int64_t kv_tile, const float * kq, int64_t kq_stride, const float * M,
                                 const bool * skip);
// Tiled flash attention, after a KV tile's raw logits (scaled, soft-capped, before the mask; row r
// at kq + r*kq_stride, kv_tile cells from ic) are computed: add the moments of the windowed rows
// among queries [iq1, iq1 + n_rows) of head iq2, stream iq3 (masked cells excluded): unlike a2sf,
// they need no final max or sum, so no row of logits is kept for them.
void ggml_cpu_rcedge_fa_tile_moments(const ggml_cpu_rcedge & rc, int64_t iq1, int64_t n_rows, int64_t iq2,
                                     int64_t iq3, int64_t ic, int64_t kv_tile, const float * kq, int64_t kq_stride,
                                     const ggml_tensor * mask);
// Add the a2sf of the finished rows [iq1, iq1 + n_rows) of a tiled flash-attention tile (head iq2,
// stream iq3) over cells [0, n), from each row's final max M[r] and sum S[r] and the sink (-inf if
// none) that the row's max is taken with. The probabilities come from the exponentials kept by
// ggml_cpu_rcedge_fa_tile_exp (one expf per row and KV tile); the rows' contributions are summed
// per block of cells and added to the slab once per block.
void ggml_cpu_rcedge_fa_tile(const ggml_cpu_rcedge & rc, int64_t iq1, int64_t n_rows, int64_t iq2, int64_t iq3,
                             int64_t n, const float * M, const float * S, float sink);
// Add a finished soft_max row: logits f and probabilities p over all cells, row mask (f16 or f32).
void ggml_cpu_rcedge_softmax_row(const ggml_cpu_rcedge & rc, int64_t iq1, int64_t iq2, int64_t iq3,
                                 const float * f, const float * p, const void * mp, bool mask_f16);

// All threads: barrier, then reduce the slabs into the scores (decay included).
void ggml_cpu_rcedge_end(const ggml_compute_params * params, const ggml_cpu_rcedge & rc);

// Split-KV decode, all threads, after the partials are reduced and rc.row_ms filled: barrier,
// then each thread scores its own cells [ith*chunk, ...) for every head.
void ggml_cpu_rcedge_split_end(const ggml_compute_params * params, const ggml_tensor * dst,
                               const ggml_cpu_rcedge & rc);
#endif
