// pyrcedge: the portable attention-scores path (docs/gpu.md). Compiled into libllama by the
// top-level CMakeLists.txt and called from the patched llm_graph_context (patch 0006).
//
// The CPU backend updates the statistics inside its attention kernels (patch 0003). Every other
// backend gets the same statistics from standard ggml ops added to the graph: arange, scale (with
// bias), relu, exp, mul, add, sqr, cast/cont, transpose, sum_rows, pool_2d, concat, repeat,
// set_rows, set, cpy, and, beside flash attention, mul_mat and soft_max. Each of them is
// implemented by the CPU, CUDA and Metal backends, so a backend runs the statistics with no kernel
// of ours. The statistics tensors live in a buffer of the KV cache's own buffer type
// (rcedge-api.cpp), so the ops run where the cache is.
//
// Layout (as the fused kernels): a layer's tensor is [kv_size, 5, n_head_kv, n_stream], usually a
// view of one tensor [kv_size, 5, n_head_kv, n_layer] for all layers; the view handed to the graph
// covers the first n_kv cells. Statistic 4 (max) holds a finite "no value" sentinel instead of
// -inf; llama_rcedge_get_scores reports -inf wherever the count is 0.
//
// Cost: a decode step is bound by the number of kernels, so what every layer shares (the mask's
// visibility, the A2SF weights, the count, the cleared values) is built once per graph, the cells
// of all layers are cleared by one set_rows, and the statistics of all layers are updated at once
// by the last layer from a stack of every layer's q.k. A prefill ubatch is bound by passes over
// [n_kv, n_queries, n_head] tensors: each layer updates its own, with one pool per statistic, and
// the statistics can be limited to the last queries of a ubatch (llama_rcedge_set_query_window),
// or to none (llama_rcedge_set_decay_only: one multiply per layer).
//
// Where the backend has kernels for it (ggml-cuda, patches 0007 and 0008; rc.device_fused), the
// statistics ops are replaced by one soft_max of their own that carries the statistics
// (ggml_attn_set_scores): the backend updates them while it computes it, in two kernels, reading
// the logits twice instead of a dozen times. The rest is shared with the graph ops: the cells
// cleared by set_rows, the logits of flash-attention contexts from a q.k of their own, and in
// decode one such soft_max for all layers over the stack of their q.k.
#include "llama-rcedge-impl.h"

#include "ggml.h"

#include <cmath>
#include <cstring>

// "no value" for the running max: below any logit, and finite so that arithmetic on it stays finite
static constexpr float RCEDGE_NO_MAX = -1e30f;

// Clears, inside the graph, the statistics of the cells a ubatch writes its tokens into (k_idxs,
// the indices the K store uses), and returns the layer's statistics view again, now ordered after
// the clearing: every read and write of the statistics below goes through it.
ggml_tensor * llama_rcedge_graph_reset(ggml_context * ctx, const llama_rcedge_layer_scores & rc, ggml_tensor * k_idxs) {
    ggml_tensor * scores = rc.scores;
    GGML_ASSERT(rc.shared != nullptr);
    llama_rcedge_graph_shared & sh = *rc.shared;
    if (rc.first) {
        sh = {}; // a new graph: nothing built for an earlier one may be used
    }
    if (rc.all != nullptr && sh.all_cleared != nullptr) {
        // cleared already, for every layer, by the first one
        return ggml_view_4d(ctx, sh.all_cleared, scores->ne[0], scores->ne[1], scores->ne[2], scores->ne[3],
                            scores->nb[1], scores->nb[2], scores->nb[3], rc.slot*rc.all->nb[3]);
    }
    // the tensor to clear: all layers' [kv_size, 5, n_head_kv*n_layer], or this layer's
    ggml_tensor * t = rc.all != nullptr ? rc.all : scores->view_src;
    GGML_ASSERT(t != nullptr && (rc.all != nullptr || (t->ne[3] == 1 && scores->view_offs == 0)) && "portable scores: one stream");

    const int64_t kv_size = t->ne[0];
    const int64_t n_stat  = t->ne[1];
    const int64_t n_head  = t->ne[2]*t->ne[3];
    const int64_t n_tok   = k_idxs->ne[0];

    if (sh.cleared == nullptr || sh.cleared->ne[1] != n_tok || sh.cleared->ne[3] != n_head) {
        // cleared values, per statistic: 0 0 0 0 RCEDGE_NO_MAX
        ggml_tensor * c = ggml_arange(ctx, 0.0f, (float) n_stat, 1.0f);
        c = ggml_relu(ctx, ggml_scale_bias(ctx, c, 1.0f, -(float) (n_stat - 2)));
        c = ggml_scale(ctx, c, RCEDGE_NO_MAX);
        sh.cleared = ggml_repeat_4d(ctx, ggml_reshape_4d(ctx, c, 1, 1, n_stat, 1), 1, n_tok, n_stat, n_head);
    }

    // cells as rows of one value: row c of plane (stat, head) is cell c (the layers of `all` follow
    // one another as more heads: nb[3] = ne[2]*nb[2])
    ggml_tensor * dst = ggml_view_4d(ctx, t, 1, kv_size, n_stat, n_head, sizeof(float), t->nb[1], t->nb[2], 0);
    ggml_tensor * r = ggml_set_rows(ctx, dst, sh.cleared, k_idxs);
    if (rc.all != nullptr) {
        sh.all_cleared = r;
    }

    return ggml_view_4d(ctx, r, scores->ne[0], scores->ne[1], scores->ne[2], scores->ne[3],
                        scores->nb[1], scores->nb[2], scores->nb[3], rc.all != nullptr ? rc.slot*rc.all->nb[3] : 0);
}

// A one-element F32 tensor holding `value`, computed in the graph (no host buffer to upload).
static ggml_tensor * rcedge_scalar(ggml_context * ctx, float value) {
    return ggml_scale_bias(ctx, ggml_arange(ctx, 0.0f, 1.0f, 1.0f), 0.0f, value);
}

// Builds (once per graph) what every layer shares, for the last n_w of n_q queries of kq_mask.
static llama_rcedge_graph_shared & rcedge_shared(ggml_context * ctx, const llama_rcedge_layer_scores & rc,
        ggml_tensor * kq_mask, int64_t n_kv, int64_t n_q, int64_t n_w, int64_t n_head, int64_t n_kvh, float kq_scale) {
    llama_rcedge_graph_shared & sh = *rc.shared;
    if (sh.m != nullptr && sh.mask == kq_mask && sh.n_q == n_q && sh.n_w == n_w && sh.n_head == n_head &&
            sh.n_head_kv == n_kvh && sh.kq_scale == kq_scale && sh.alpha == rc.alpha && sh.m->ne[0] == n_kv) {
        return sh;
    }
    const float alpha = rc.alpha;
    const int64_t n_rep = n_head / n_kvh;
    const float n_red = (float) (n_w * n_rep); // (query, query head) pairs reduced into one KV head

    sh.mask = kq_mask;
    sh.n_q = n_q;
    sh.n_w = n_w;
    sh.n_head = n_head;
    sh.n_head_kv = n_kvh;
    sh.kq_scale = kq_scale;
    sh.alpha = alpha;

    // the mask rows of the window's queries as F32 0 / -inf, and as a 0 / 1 visibility
    ggml_tensor * m = ggml_view_4d(ctx, kq_mask, n_kv, n_w, 1, 1, kq_mask->nb[1], kq_mask->nb[2], kq_mask->nb[3],
                                   (n_q - n_w)*kq_mask->nb[1]);
    sh.m = m->type == GGML_TYPE_F32 ? ggml_cont(ctx, m) : ggml_cast(ctx, m, GGML_TYPE_F32);
    ggml_tensor * vis = ggml_exp(ctx, sh.m);

    // the pool below averages over the n_red (query, query head) pairs: the factors make it a sum
    sh.vis_sum = ggml_scale(ctx, vis, n_red*kq_scale);
    sh.vis_sq  = ggml_scale(ctx, vis, sqrtf(n_red)*kq_scale);

    // count: n_rep x the queries that see the cell (exact: a sum of 0/1 over the queries)
    ggml_tensor * cnt = n_w == 1 ? vis : ggml_sum_rows(ctx, ggml_cont(ctx, ggml_transpose(ctx, ggml_reshape_2d(ctx, vis, n_kv, n_w))));
    sh.count = ggml_reshape_4d(ctx, ggml_scale(ctx, cnt, (float) n_rep), n_kv, 1, 1, 1);

    // per-query weights n_red * alpha^(n_w-1-q) of the A2SF batch recursion (q = 0 .. n_w-1)
    ggml_tensor * w = ggml_arange(ctx, 0.0f, (float) n_w, 1.0f);
    if (alpha == 1.0f) {
        w = ggml_scale_bias(ctx, w, 0.0f, n_red);
    } else if (alpha == 0.0f) {
        w = ggml_relu(ctx, ggml_scale_bias(ctx, w, n_red, n_red*(2.0f - (float) n_w))); // the last query only
    } else {
        const float la = logf(alpha);
        w = ggml_exp(ctx, ggml_scale_bias(ctx, w, -la, (float) (n_w - 1)*la + logf(n_red)));
    }
    sh.weight = ggml_reshape_4d(ctx, w, 1, n_w, 1, 1);

    // the old a2sf decays over all n_q queries of the ubatch, seen or not
    sh.decay = alpha == 1.0f ? nullptr : rcedge_scalar(ctx, powf(alpha, (float) n_q));
    return sh;
}

// Average or max of x [n_kv, n, h] over dim 1 -> [n_kv, 1, h]. Long reductions go in two pools
// (a factor of n up to 32 first): one thread per output looping over thousands of rows is
// latency-bound on a GPU.
static ggml_tensor * rcedge_reduce(ggml_context * ctx, ggml_tensor * x, ggml_op_pool op, int64_t n) {
    int64_t f = 1;
    for (int64_t d = 32; d > 1 && n > 64; --d) {
        if (n % d == 0) {
            f = d;
            break;
        }
    }
    if (f > 1) {
        x = ggml_pool_2d(ctx, x, op, 1, (int) f, 1, (int) f, 0.0f, 0.0f);
        n /= f;
    }
    return ggml_pool_2d(ctx, x, op, 1, (int) n, 1, (int) n, 0.0f, 0.0f);
}

// Adds the statistics of the window's queries into rc.scores ([n_kv, 5, n_head_kv, 1]):
//   kq  [n_kv, n_w, n_head]  q.k of the window's queries (after soft-capping), unscaled; rows contiguous
//   p   [n_kv, n_w, n_head]  their attention probabilities; rows contiguous
// Query heads h = g*R + r share KV head g (as ggml_mul_mat broadcasts K over them).
static void rcedge_accumulate(ggml_context * ctx, ggml_cgraph * gf, const llama_rcedge_layer_scores & rc,
        ggml_tensor * kq, ggml_tensor * p, ggml_tensor * kq_mask, int64_t n_q, float kq_scale) {
    ggml_tensor * scores = rc.scores;
    const int64_t n_kv   = kq->ne[0];
    const int64_t n_w    = kq->ne[1];
    const int64_t n_head = kq->ne[2];
    const int64_t n_kvh  = scores->ne[2];
    GGML_ASSERT(kq->ne[3] == 1 && scores->ne[3] == 1 && "portable scores: one stream");
    GGML_ASSERT(scores->ne[0] == n_kv && n_head % n_kvh == 0 && ggml_are_same_shape(kq, p));
    const int64_t n_red = n_w * (n_head / n_kvh);

    const llama_rcedge_graph_shared & sh = rcedge_shared(ctx, rc, kq_mask, n_kv, n_q, n_w, n_head, n_kvh, kq_scale);

    // [n_kv, n_w, n_head] as [n_kv, n_red, n_kvh]: the (query, query head) pairs of a KV head
    auto pairs = [&](ggml_tensor * x) { return ggml_reshape_4d(ctx, x, n_kv, n_red, n_kvh, 1); };
    auto old = [&](int k, int n) {
        return ggml_view_4d(ctx, scores, n_kv, n, n_kvh, 1, scores->nb[1], scores->nb[2], scores->nb[3], k*scores->nb[1]);
    };

    // a2sf, sum and sumsq increments, [n_kv, 3, n_kvh]
    ggml_tensor * x0 = ggml_mul(ctx, p, sh.weight);                      // n_red * w_q * p
    ggml_tensor * x2 = ggml_mul(ctx, kq, sh.vis_sum);                    // n_red * f * vis
    ggml_tensor * x3 = ggml_sqr(ctx, ggml_mul(ctx, kq, sh.vis_sq));      // n_red * f^2 * vis
    ggml_tensor * x;
    if (n_w == 1) {
        // decode: small tensors, the kernel count matters: one pool over the three
        x = ggml_concat(ctx, ggml_concat(ctx, pairs(x0), pairs(x2), 1), pairs(x3), 1);
        x = rcedge_reduce(ctx, x, GGML_OP_POOL_AVG, n_red);
    } else {
        // prefill: large tensors, the passes over them matter: a pool each, no copies
        x = ggml_concat(ctx, ggml_concat(ctx, rcedge_reduce(ctx, pairs(x0), GGML_OP_POOL_AVG, n_red),
                                              rcedge_reduce(ctx, pairs(x2), GGML_OP_POOL_AVG, n_red), 1),
                             rcedge_reduce(ctx, pairs(x3), GGML_OP_POOL_AVG, n_red), 1);
    }
    auto inc = [&](int k, int n) {
        return ggml_view_4d(ctx, x, n_kv, n, n_kvh, 1, x->nb[1], x->nb[2], x->nb[3], k*x->nb[1]);
    };

    ggml_tensor * a2sf = sh.decay ? ggml_mul(ctx, old(0, 1), sh.decay) : old(0, 1);
    ggml_build_forward_expand(gf, ggml_cpy(ctx, ggml_add(ctx, a2sf, inc(0, 1)), old(0, 1)));
    ggml_build_forward_expand(gf, ggml_cpy(ctx, ggml_add(ctx, old(1, 1), sh.count), old(1, 1)));
    ggml_build_forward_expand(gf, ggml_cpy(ctx, ggml_add(ctx, old(2, 2), inc(1, 2)), old(2, 2)));

    // max: of the visible scaled logits (masked ones are -inf) and the old max
    ggml_tensor * mx = ggml_add(ctx, kq, sh.m);
    if (n_w == 1) {
        mx = ggml_concat(ctx, old(4, 1), pairs(ggml_scale(ctx, mx, kq_scale)), 1);
        mx = ggml_pool_2d(ctx, mx, GGML_OP_POOL_MAX, 1, (int) n_red + 1, 1, (int) n_red + 1, 0.0f, 0.0f);
    } else {
        mx = ggml_scale(ctx, rcedge_reduce(ctx, pairs(mx), GGML_OP_POOL_MAX, n_red), kq_scale);
        mx = ggml_pool_2d(ctx, ggml_concat(ctx, old(4, 1), mx, 1), GGML_OP_POOL_MAX, 1, 2, 1, 2, 0.0f, 0.0f);
    }
    ggml_build_forward_expand(gf, ggml_cpy(ctx, mx, old(4, 1)));
}

// Device-fused: a soft_max of the statistics' own carries them; the backend updates them in its
// kernels (ggml_attn_set_scores). Its output is never read, so the backend need not write it.
// Rows before n_skip give no statistics, and n_before queries before the first row count in the
// A2SF decay (a query window: llama_rcedge_set_query_window).
static void rcedge_fused(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * scores, float alpha, ggml_tensor * kq,
        ggml_tensor * kq_mask, float kq_scale, ggml_tensor * sinks, int64_t n_skip, int64_t n_before) {
    ggml_tensor * p = ggml_soft_max_ext(ctx, kq, kq_mask, kq_scale, 0.0f);
    ggml_soft_max_add_sinks(p, sinks);
    ggml_attn_set_scores(p, scores, alpha);
    ggml_attn_set_scores_rows(p, (int32_t) n_skip, (int32_t) n_before, true);
    ggml_set_name(p, "rcedge_scores");
    ggml_build_forward_expand(gf, p);
}

// Decode (one query) with all layers' statistics in one tensor: this layer's q.k goes into a stack
// [n_kv, 1, n_head, n_layer], and the last layer updates the statistics of every layer at once,
// its layers taken as more KV heads: a few kernels per decode step instead of a few per layer.
// The probabilities come from one soft_max over the stack (p == nullptr), or, where a layer's
// soft_max has what a stacked one cannot repeat (attention sinks, ALiBi), from a stack of the
// layers' own. Otherwise (prefill, or one tensor per layer) the layer's statistics are updated here.
static bool rcedge_batched(const llama_rcedge_layer_scores & rc, int64_t n_q) {
    return rc.all != nullptr && n_q == 1;
}

static void rcedge_add(ggml_context * ctx, ggml_cgraph * gf, const llama_rcedge_layer_scores & rc,
        ggml_tensor * kq, ggml_tensor * p, ggml_tensor * kq_mask, int64_t n_q, float kq_scale) {
    if (!rcedge_batched(rc, n_q)) {
        rcedge_accumulate(ctx, gf, rc, kq, p, kq_mask, n_q, kq_scale);
        return;
    }
    llama_rcedge_graph_shared & sh = *rc.shared;
    GGML_ASSERT(sh.all_cleared != nullptr && ggml_is_contiguous(kq) && (p == nullptr || ggml_is_contiguous(p)));
    const int64_t n_kv = kq->ne[0], n_head = kq->ne[2], n_layer = rc.all->ne[3];
    auto stack = [&](ggml_tensor *& st, ggml_tensor * x) {
        if (st == nullptr || st->ne[0] != n_kv || st->ne[2] != n_head) {
            st = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, n_kv, 1, n_head, n_layer);
        }
        st = ggml_set_inplace(ctx, st, x, st->nb[1], st->nb[2], st->nb[3], rc.slot*st->nb[3]);
    };
    GGML_ASSERT(!rc.device_fused || p == nullptr);
    stack(sh.stack_kq, kq);
    if (p != nullptr) {
        stack(sh.stack_p, p);
    }
    if (!rc.last) {
        return;
    }
    llama_rcedge_layer_scores all = rc;
    all.scores = ggml_view_4d(ctx, sh.all_cleared, n_kv, rc.all->ne[1], rc.all->ne[2]*n_layer, 1,
                              rc.all->nb[1], rc.all->nb[2], rc.all->nb[3]*n_layer, 0);
    auto heads = [&](ggml_tensor * st) { return ggml_reshape_4d(ctx, st, n_kv, 1, n_head*n_layer, 1); };
    ggml_tensor * kq_all = heads(sh.stack_kq);
    if (rc.device_fused) {
        rcedge_fused(ctx, gf, all.scores, rc.alpha, kq_all, kq_mask, kq_scale, nullptr, 0, 0);
        return;
    }
    ggml_tensor * p_all  = p != nullptr ? heads(sh.stack_p) : ggml_soft_max_ext(ctx, kq_all, kq_mask, kq_scale, 0.0f);
    rcedge_accumulate(ctx, gf, all, kq_all, p_all, kq_mask, n_q, kq_scale);
}

// No query gives statistics (llama_rcedge_set_decay_only): the layer's a2sf decays by alpha^n_q,
// one multiply; nothing else is computed.
static void rcedge_decay_only(ggml_context * ctx, ggml_cgraph * gf, const llama_rcedge_layer_scores & rc, int64_t n_q) {
    if (rc.alpha == 1.0f) {
        return;
    }
    llama_rcedge_graph_shared & sh = *rc.shared;
    if (sh.decay_only == nullptr || sh.decay_only_n_q != n_q) {
        sh.decay_only = rcedge_scalar(ctx, powf(rc.alpha, (float) n_q));
        sh.decay_only_n_q = n_q;
    }
    ggml_tensor * s = rc.scores;
    ggml_tensor * a = ggml_view_4d(ctx, s, s->ne[0], 1, s->ne[2], s->ne[3], s->nb[1], s->nb[2], s->nb[3], 0);
    ggml_build_forward_expand(gf, ggml_cpy(ctx, ggml_mul(ctx, a, sh.decay_only), a));
}

void llama_rcedge_graph_accumulate(ggml_context * ctx, ggml_cgraph * gf, const llama_rcedge_layer_scores & rc,
        ggml_tensor * kq, float kq_scale, ggml_tensor * kq_mask, ggml_tensor * kq_soft_max) {
    const int64_t n_q = kq->ne[1];
    const int64_t n_w = llama_rcedge_window(rc, n_q);
    if (n_w == 0) {
        rcedge_decay_only(ctx, gf, rc, n_q);
        return;
    }
    // the window's rows of each head
    auto rows = [&](ggml_tensor * x) {
        return n_w == n_q ? x : ggml_view_4d(ctx, x, x->ne[0], n_w, x->ne[2], x->ne[3], x->nb[1], x->nb[2], x->nb[3], (n_q - n_w)*x->nb[1]);
    };
    // a plain soft_max (no sinks, no ALiBi) is repeated once over all layers when batched
    float max_bias = 0.0f;
    memcpy(&max_bias, (const float *) kq_soft_max->op_params + 1, sizeof(float));
    const bool plain = kq_soft_max->op == GGML_OP_SOFT_MAX && kq_soft_max->src[2] == nullptr && max_bias == 0.0f;
    if (rc.device_fused && (!rcedge_batched(rc, n_q) || !plain)) {
        // a soft_max of the statistics' own beside the model's: kq then has two readers, so
        // neither runs in place, and the model's probabilities are computed exactly as without
        rcedge_fused(ctx, gf, rc.scores, rc.alpha, kq, kq_mask, kq_scale, kq_soft_max->src[2], n_q - n_w, 0);
        return;
    }
    rcedge_add(ctx, gf, rc, rows(kq), plain && rcedge_batched(rc, n_q) ? nullptr : rows(kq_soft_max), kq_mask, n_q, kq_scale);
}

void llama_rcedge_graph_accumulate_flash(ggml_context * ctx, ggml_cgraph * gf, const llama_rcedge_layer_scores & rc,
        ggml_tensor * q, ggml_tensor * k, ggml_tensor * kq_mask, ggml_tensor * sinks,
        float kq_scale, float softcap, float max_bias) {
    // q [head_dim, n_q, n_head, 1], k [head_dim, n_kv, n_head_kv, 1] (views of the cache)
    const int64_t n_q = q->ne[1];
    const int64_t n_w = llama_rcedge_window(rc, n_q);
    if (n_w == 0) {
        rcedge_decay_only(ctx, gf, rc, n_q);
        return;
    }
    ggml_tensor * qw = ggml_view_4d(ctx, q, q->ne[0], n_w, q->ne[2], q->ne[3], q->nb[1], q->nb[2], q->nb[3], (n_q - n_w)*q->nb[1]);

    // as the soft_max path computes them (llm_graph_context::build_attn_mha)
    ggml_tensor * kq;
    const int64_t n_rep = q->ne[2] / k->ne[2];
    if (n_w == 1 && n_rep > 1 && q->ne[3] == 1) {
        // one query: the n_rep query heads of a KV head as n_rep columns of one product per KV head,
        // [n_kv, n_rep, n_head_kv], which is [n_kv, 1, n_head] in memory. The same dot products, but
        // a small matrix product instead of a matrix-vector product broadcast over the heads, for
        // which ggml-cuda takes a kernel that costs ~19 us more per layer at n_kv <= 512
        // (docs/bench/gpu-cost.md)
        ggml_tensor * qg = ggml_view_3d(ctx, q, q->ne[0], n_rep, k->ne[2], q->nb[2], n_rep*q->nb[2], (n_q - 1)*q->nb[1]);
        kq = ggml_mul_mat(ctx, k, qg);
        ggml_prec_set_acc(kq, GGML_PREC_F32);
        kq = ggml_reshape_3d(ctx, kq, kq->ne[0], 1, q->ne[2]);
    } else {
        kq = ggml_mul_mat(ctx, k, qw);
        ggml_prec_set_acc(kq, GGML_PREC_F32);
    }
    ggml_set_name(kq, "rcedge_kq");
    if (softcap != 0.0f) {
        kq = ggml_scale(ctx, ggml_tanh(ctx, ggml_scale(ctx, kq, 1.0f / softcap)), softcap);
    }
    if (rcedge_batched(rc, n_q) && sinks == nullptr && max_bias == 0.0f) {
        rcedge_add(ctx, gf, rc, kq, nullptr, kq_mask, n_q, kq_scale); // one soft_max for all layers
        return;
    }
    // The mask is a graph input, computed on the host: the scheduler uploads every tensor made from
    // it that a GPU node reads, each on its own, a view per layer included (a synchronous copy of
    // [n_kv, n_w] F16 per layer and ubatch: 110 MB and 2.5 ms of a 135M-shape ubatch at 3.5k
    // cells, docs/bench/gpu-cost.md). So every query reads the mask itself, which flash attention
    // has uploaded already (soft_max takes a mask with more rows than its input), and a window
    // reads one view of its rows that all layers share.
    ggml_tensor * m = kq_mask;
    if (n_w < n_q) {
        llama_rcedge_graph_shared & sh = *rc.shared;
        if (sh.mask_rows == nullptr || sh.mask_rows_of != kq_mask || sh.mask_rows_n_q != n_q || sh.mask_rows_n_w != n_w) {
            sh.mask_rows = ggml_view_4d(ctx, kq_mask, kq_mask->ne[0], n_w, kq_mask->ne[2], kq_mask->ne[3],
                                        kq_mask->nb[1], kq_mask->nb[2], kq_mask->nb[3], (n_q - n_w)*kq_mask->nb[1]);
            sh.mask_rows_of = kq_mask;
            sh.mask_rows_n_q = n_q;
            sh.mask_rows_n_w = n_w;
        }
        m = sh.mask_rows;
    }
    if (rc.device_fused) {
        GGML_ASSERT(max_bias == 0.0f && "device-fused scores: no ALiBi");
        rcedge_fused(ctx, gf, rc.scores, rc.alpha, kq, m, kq_scale, sinks, 0, n_q - n_w);
        return;
    }
    ggml_tensor * p = ggml_soft_max_ext(ctx, kq, m, kq_scale, max_bias);
    ggml_soft_max_add_sinks(p, sinks);

    rcedge_add(ctx, gf, rc, kq, p, kq_mask, n_q, kq_scale);
}
