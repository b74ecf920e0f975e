// pyrcedge: the portable attention-scores path (docs/gpu.md). Compiled into libllama by the
// top-level CMakeLists.txt and called from the patched llm_graph_context (patch 0006).
//
// The CPU backend updates the statistics inside its attention kernels (patch 0003). Every other
// backend gets the same statistics from standard ggml ops added to the graph after kq_soft_max:
// arange, scale (with bias), relu, exp, mul, add, sqr, cast, transpose+cont, sum_rows, pool_2d,
// concat, repeat, set_rows and cpy. Each of them is implemented by the CPU, CUDA and Metal
// backends, so a backend runs the statistics with no kernel of ours. The statistics tensors live
// in a buffer of the KV cache's own buffer type (rcedge-api.cpp), so the ops run where the cache is.
//
// Layout (as the fused kernels): a layer's tensor is [kv_size, 5, n_head_kv, n_stream]; the view
// handed to the graph covers the first n_kv cells. Statistic 4 (max) holds a finite "no value"
// sentinel instead of -inf; llama_rcedge_get_scores reports -inf wherever the count is 0.
#include "llama-rcedge-impl.h"

#include "ggml.h"

#include <cmath>

// "no value" for the running max: below any logit, and finite so that arithmetic on it stays finite
static constexpr float RCEDGE_NO_MAX = -1e30f;

// Clears, inside the graph, the statistics of the cells a ubatch writes its tokens into (k_idxs,
// the indices the K store uses), and returns the layer's statistics view again, now ordered after
// the clearing: every read and write of the statistics below goes through it.
ggml_tensor * llama_rcedge_graph_reset(ggml_context * ctx, ggml_tensor * scores, ggml_tensor * k_idxs) {
    ggml_tensor * t = scores->view_src; // the layer's whole tensor [kv_size, 5, n_head_kv, 1]
    GGML_ASSERT(t != nullptr && t->ne[3] == 1 && scores->view_offs == 0 && "portable scores: one stream");

    const int64_t kv_size = t->ne[0];
    const int64_t n_stat  = t->ne[1];
    const int64_t n_head  = t->ne[2];
    const int64_t n_tok   = k_idxs->ne[0];

    // cells as rows of one value: row c of plane (stat, head) is cell c
    ggml_tensor * dst = ggml_view_4d(ctx, t, 1, kv_size, n_stat, n_head, sizeof(float), t->nb[1], t->nb[2], 0);

    // cleared values, per statistic: 0 0 0 0 RCEDGE_NO_MAX
    ggml_tensor * c = ggml_arange(ctx, 0.0f, (float) n_stat, 1.0f);
    c = ggml_relu(ctx, ggml_scale_bias(ctx, c, 1.0f, -(float) (n_stat - 2)));
    c = ggml_scale(ctx, c, RCEDGE_NO_MAX);
    c = ggml_repeat_4d(ctx, ggml_reshape_4d(ctx, c, 1, 1, n_stat, 1), 1, n_tok, n_stat, n_head);

    ggml_tensor * r = ggml_set_rows(ctx, dst, c, k_idxs);

    return ggml_view_4d(ctx, r, scores->ne[0], scores->ne[1], scores->ne[2], scores->ne[3],
                        scores->nb[1], scores->nb[2], scores->nb[3], 0);
}

// Adds one ubatch's statistics into `scores` ([n_kv, 5, n_head_kv, 1], from llama_rcedge_graph_reset)
//   kq          [n_kv, n_tokens, n_head, 1]  soft_max's input: q.k (after soft-capping), unscaled
//   kq_mask     [n_kv, >= n_tokens, 1, 1]    0 where visible, -inf where not (F32 or F16)
//   kq_soft_max [n_kv, n_tokens, n_head, 1]  the attention probabilities
// Query heads h = g*R + r share KV head g (as ggml_mul_mat broadcasts K over them).
void llama_rcedge_graph_accumulate(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * scores, float alpha,
        ggml_tensor * kq, float kq_scale, ggml_tensor * kq_mask, ggml_tensor * kq_soft_max) {
    const int64_t n_kv   = kq->ne[0];
    const int64_t n_q    = kq->ne[1];
    const int64_t n_head = kq->ne[2];
    const int64_t n_kvh  = scores->ne[2];
    GGML_ASSERT(kq->ne[3] == 1 && scores->ne[3] == 1 && "portable scores: one stream");
    GGML_ASSERT(scores->ne[0] == n_kv && n_head % n_kvh == 0);
    GGML_ASSERT(ggml_is_contiguous(kq) && ggml_is_contiguous(kq_soft_max));
    const int64_t n_rep = n_head / n_kvh;
    const int64_t n_red = n_q * n_rep; // (query, query head) pairs reduced into one KV head

    // the raw scaled logits, and the mask as 0 / -inf and as a 0 / 1 visibility
    ggml_tensor * f = ggml_scale(ctx, kq, kq_scale);
    ggml_tensor * m = ggml_view_4d(ctx, kq_mask, n_kv, n_q, 1, 1, kq_mask->nb[1], kq_mask->nb[2], kq_mask->nb[3], 0);
    m = m->type == GGML_TYPE_F32 ? ggml_cont(ctx, m) : ggml_cast(ctx, m, GGML_TYPE_F32);
    ggml_tensor * vis = ggml_exp(ctx, m);

    // reduce [n_kv, n_q, n_head] over queries and the query heads of each KV head:
    // [n_kv, n_q*n_rep, n_kvh] pooled over dim 1 -> [n_kv, 1, n_kvh]
    auto pool = [&](ggml_tensor * x, ggml_op_pool op) {
        x = ggml_reshape_4d(ctx, x, n_kv, n_red, n_kvh, 1);
        return ggml_pool_2d(ctx, x, op, 1, (int) n_red, 1, (int) n_red, 0.0f, 0.0f);
    };
    auto sum = [&](ggml_tensor * x) {
        return ggml_scale(ctx, pool(x, GGML_OP_POOL_AVG), (float) n_red);
    };

    ggml_tensor * fv = ggml_mul(ctx, f, vis); // masked -> 0

    // per-query weights alpha^(n_q-1-q) of the A2SF batch recursion
    ggml_tensor * p = kq_soft_max;
    if (alpha < 1.0f) {
        ggml_tensor * w = ggml_arange(ctx, 0.0f, (float) n_q, 1.0f); // q
        if (alpha == 0.0f) {
            w = ggml_relu(ctx, ggml_scale_bias(ctx, w, 1.0f, 2.0f - (float) n_q)); // 1 for the last query only
        } else {
            const float la = logf(alpha);
            w = ggml_exp(ctx, ggml_scale_bias(ctx, w, -la, (float) (n_q - 1)*la));
        }
        p = ggml_mul(ctx, p, ggml_reshape_4d(ctx, w, 1, n_q, 1, 1));
    }

    // count: n_rep x the queries that see the cell (exact: sum_rows of 0/1 over queries)
    ggml_tensor * cnt = ggml_cont(ctx, ggml_transpose(ctx, ggml_reshape_2d(ctx, vis, n_kv, n_q)));
    cnt = ggml_scale(ctx, ggml_sum_rows(ctx, cnt), (float) n_rep); // [1, n_kv]
    cnt = ggml_reshape_4d(ctx, cnt, n_kv, 1, 1, 1);

    auto old = [&](int k) {
        return ggml_view_4d(ctx, scores, n_kv, 1, n_kvh, 1, scores->nb[1], scores->nb[2], scores->nb[3], k*scores->nb[1]);
    };

    ggml_tensor * upd[GGML_ATTN_SCORES_N];
    upd[0] = ggml_add(ctx, ggml_scale(ctx, ggml_cont(ctx, old(0)), powf(alpha, (float) n_q)), sum(p));
    upd[1] = ggml_add(ctx, old(1), cnt);
    upd[2] = ggml_add(ctx, old(2), sum(fv));
    upd[3] = ggml_add(ctx, old(3), sum(ggml_sqr(ctx, fv)));
    // max: of the visible logits (masked ones are -inf), then with the old max
    ggml_tensor * mx = pool(ggml_add(ctx, f, m), GGML_OP_POOL_MAX);
    mx = ggml_concat(ctx, old(4), mx, 1);
    upd[4] = ggml_pool_2d(ctx, mx, GGML_OP_POOL_MAX, 1, 2, 1, 2, 0.0f, 0.0f);

    for (int k = 0; k < GGML_ATTN_SCORES_N; ++k) {
        ggml_build_forward_expand(gf, ggml_cpy(ctx, upd[k], old(k)));
    }
}
