// pyrcedge: attention statistics fused into the CPU attention kernels. See ggml-cpu-rcedge.h.
//
// Layout: statistics are stored structure-of-arrays, a row of n_kv cells per statistic, so every
// update below is a plain loop over contiguous cells that the compiler vectorises. Masked cells
// are excluded with selects, not branches: their logits in the row buffers are never written by
// the kernels and may hold anything.
#include "ggml-cpu-rcedge.h"

#include "ggml-cpu.h"
#include "ggml-cpu-impl.h"
#include "simd-mappings.h"
#include "common.h"
#include "vec.h"

#include <algorithm>
#include <cmath>
#include <cstring>

static constexpr int64_t RC_NSTAT = GGML_ATTN_SCORES_N; // a2sf, count, sum, sumsq, max
static constexpr size_t  RC_ALIGN = 64;                 // bytes: each thread's areas on their own lines

static size_t rc_pad(size_t n_floats) {
    const size_t per_line = RC_ALIGN/sizeof(float);
    return (n_floats + per_line - 1)/per_line*per_line;
}

// f16 -INFINITY: masked cells carry it, whatever the ALiBi slope
static inline bool rc_masked(ggml_fp16_t m) {
    return m == (ggml_fp16_t) 0xFC00;
}

// Scratch layout of a scored node for nth threads, in floats (int32 for seg_at and nseg):
//   [row_ms: 2*n_head] then per thread [logits][v][seg_at][seg_m][nseg][tmp][slab][tile_v][tile_m]
struct rc_layout {
    size_t row_ms;
    size_t logits;
    size_t rec;   // each of v, seg_at, seg_m
    size_t nseg;
    size_t tmp;
    size_t slab;
    size_t tile_v; // tiled flash attention: the rows' exponentials
    size_t tile_m; // and the running max of each row and KV tile they are relative to
    int    n_threads;
    size_t per_thread() const { return logits + 3*rec + nseg + tmp + slab + tile_v + tile_m; }
    size_t total() const { return row_ms + per_thread()*n_threads; }
};

static rc_layout rc_get_layout(const ggml_tensor * node, const ggml_tensor * scores, int nth) {
    const int64_t n_kv      = scores->ne[0];
    const int64_t n_head_kv = scores->ne[2];
    const int64_t n_stream  = scores->ne[3];
    const int64_t n_head    = node->src[0]->ne[2];

    size_t logits = (size_t) n_kv; // one row (soft_max, flash attention one_chunk)
    size_t rec    = 0;
    size_t tmp    = 0;
    size_t tile_v = 0;
    size_t tile_m = 0;
    if (node->op == GGML_OP_FLASH_ATTN_EXT && node->src[0]->ne[1] >= GGML_FA_TILE_Q) {
        tile_v = (size_t) GGML_FA_TILE_Q*n_kv;
        tile_m = (size_t) GGML_FA_TILE_Q*((n_kv + GGML_FA_TILE_KV - 1)/GGML_FA_TILE_KV);
    }
    if (node->op == GGML_OP_FLASH_ATTN_EXT) {
        const int64_t chunk = (n_kv + nth - 1)/nth;
        rec    = std::max<size_t>((size_t) n_kv, (size_t) (n_head*chunk)); // one row, or every head's chunk
        logits = rec;
        tmp    = 3*(size_t) n_kv; // rows of probabilities, visibility, additive mask
    }
    rc_layout l;
    l.row_ms    = rc_pad(2*n_head);
    l.logits    = rc_pad(logits);
    l.rec       = rc_pad(rec);
    l.nseg      = rec ? rc_pad(n_head) : 0;
    l.tmp       = rc_pad(tmp);
    l.slab      = rc_pad(n_stream*n_head_kv*RC_NSTAT*n_kv);
    l.tile_v    = rc_pad(tile_v);
    l.tile_m    = rc_pad(tile_m);
    l.n_threads = nth;
    return l;
}

size_t ggml_cpu_rcedge_work_size(const ggml_tensor * node, int n_threads) {
    const ggml_tensor * scores = ggml_attn_get_scores(node, nullptr);
    if (scores == nullptr) {
        return 0;
    }
    return rc_get_layout(node, scores, n_threads).total()*sizeof(float) + RC_ALIGN;
}

void ggml_cpu_rcedge_begin(const ggml_compute_params * params, const ggml_tensor * dst,
                           bool split_kv, ggml_cpu_rcedge & rc) {
    const ggml_tensor * scores = ggml_attn_get_scores(dst, &rc.alpha);
    if (scores == nullptr) {
        return;
    }
    GGML_ASSERT(scores->type == GGML_TYPE_F32 && (scores->ne[1] == RC_NSTAT || scores->ne[1] == 1) &&
                scores->nb[0] == sizeof(float));

    const ggml_tensor * q = dst->src[0]; // queries (flash attention) or kq (soft_max)
    rc.scores    = (float *) scores->data;
    rc.nb1       = scores->nb[1];
    rc.nb2       = scores->nb[2];
    rc.nb3       = scores->nb[3];
    rc.n_kv      = scores->ne[0];
    rc.n_head_kv = scores->ne[2];
    rc.n_stream  = scores->ne[3];
    rc.N         = q->ne[1];
    int32_t n_skip = 0, n_before = 0;
    bool scores_only = false;
    ggml_attn_get_scores_rows(dst, &n_skip, &n_before, &scores_only);
    // a query window skips rows (all of them: the decay alone, llama_rcedge_set_decay_only); these
    // kernels give the output too, so nothing else applies
    GGML_ASSERT(n_skip >= 0 && n_skip <= rc.N && n_before == 0 && !scores_only);
    rc.n_skip    = n_skip;
    rc.rk2       = q->ne[2]/rc.n_head_kv;
    rc.rk3       = q->ne[3]/rc.n_stream;
    rc.ith       = params->ith;
    rc.nth       = params->nth;
    rc.chunk     = (rc.n_kv + rc.nth - 1)/rc.nth;
    rc.moments   = scores->ne[1] == RC_NSTAT;
    GGML_ASSERT(rc.rk2*rc.n_head_kv == q->ne[2] && rc.rk3*rc.n_stream == q->ne[3]);

    const size_t need = ggml_cpu_rcedge_work_size(dst, rc.nth);
    GGML_ASSERT(params->wsize >= need && "rcedge: work buffer too small (graph not planned with scores)");
    uintptr_t p = (uintptr_t) params->wdata + params->wsize - need;
    float * base = (float *) ((p + RC_ALIGN - 1)/RC_ALIGN*RC_ALIGN);

    const rc_layout l = rc_get_layout(dst, scores, rc.nth);
    rc.row_ms        = base;
    rc.thread_stride = (int64_t) l.per_thread();
    rc.logits        = base + l.row_ms + rc.thread_stride*rc.ith;
    rc.v             = rc.logits + l.logits;
    rc.seg_at        = (int32_t *) (rc.v + l.rec);
    rc.seg_m         = rc.v + 2*l.rec;
    rc.nseg          = (int32_t *) (rc.v + 3*l.rec);
    rc.tmp           = rc.v + 3*l.rec + l.nseg;
    rc.slab          = rc.tmp + l.tmp;
    rc.tile_v        = l.tile_v ? rc.slab + l.slab : nullptr;
    rc.tile_m        = l.tile_m ? rc.tile_v + l.tile_v : nullptr;
    rc.n_kv_tiles    = (rc.n_kv + GGML_FA_TILE_KV - 1)/GGML_FA_TILE_KV;
    if (rc.tile_m) {
        // "not computed" for every (row, KV tile): ggml_cpu_rcedge_fa_tile adds only tiles that
        // ggml_cpu_rcedge_fa_tile_exp kept, and marks them back as it consumes them
        std::fill(rc.tile_m, rc.tile_m + GGML_FA_TILE_Q*rc.n_kv_tiles, -INFINITY);
    }

    if (!split_kv && rc.n_skip < rc.N) {
        for (int64_t r = 0; r < rc.n_stream*rc.n_head_kv; ++r) {
            float * s = rc.slab + r*RC_NSTAT*rc.n_kv;
            if (!rc.moments) {
                memset(s, 0, rc.n_kv*sizeof(float));
                continue;
            }
            memset(s, 0, 4*rc.n_kv*sizeof(float));
            std::fill(s + 4*rc.n_kv, s + 5*rc.n_kv, -INFINITY);
        }
    }
}

// The five statistic rows of (stream, KV head), starting at cell c0, in a slab or the scores.
struct rc_rows {
    float * a, * cnt, * sum, * sumsq, * max;
};

static rc_rows rc_slab_rows(const ggml_cpu_rcedge & rc, const float * slab, int64_t s, int64_t g, int64_t c0) {
    float * r = (float *) slab + (s*rc.n_head_kv + g)*RC_NSTAT*rc.n_kv + c0;
    return { r, r + rc.n_kv, r + 2*rc.n_kv, r + 3*rc.n_kv, r + 4*rc.n_kv };
}

static rc_rows rc_score_rows(const ggml_cpu_rcedge & rc, int64_t s, int64_t g, int64_t c0) {
    char * r = (char *) rc.scores + s*rc.nb3 + g*rc.nb2 + c0*sizeof(float);
    return { (float *) r, (float *) (r + rc.nb1), (float *) (r + 2*rc.nb1), (float *) (r + 3*rc.nb1), (float *) (r + 4*rc.nb1) };
}

// Visibility of a cell from its mask value's bits (integer compares: they vectorise, and a
// masked cell's logit may hold anything): -inf in f16 or f32.
static inline int32_t rc_visible(ggml_fp16_t m) { return m != (ggml_fp16_t) 0xFC00; }
static inline int32_t rc_visible(uint32_t m)    { return m != 0xFF800000u; }

// One cell's moments (count, sum, sumsq, max) gain its logit f when visible (vis 1), nothing when
// masked (vis 0): branch-free, so the loops around it vectorise.
static inline void rc_moment(float & cnt, float & sum, float & sumsq, float & mx, float f, int32_t vis) {
    const float fv = f*(float) vis;
    cnt   += (float) vis;
    sum   += fv;
    sumsq += fv*fv;
    mx     = vis ? std::max(mx, f) : mx;
}

// One slab's moments of a cell into another's.
static inline void rc_merge_moment(float & cnt, float & sum, float & sumsq, float & mx,
                                   float icnt, float isum, float isumsq, float imx) {
    cnt   += icnt;
    sum   += isum;
    sumsq += isumsq;
    mx     = imx > mx ? imx : mx;
}

// One row's n cells into the statistic rows a..mx, in one pass: a += v*fac (v: the row's
// exponentials or probabilities, 0 where masked), the logits f (finite everywhere, masked cells
// included), visibility from the mask mp (f16 or f32 bits; null: all visible). Without the
// moments, a alone.
template <typename mask_t>
static void rc_add_cells(float * GGML_RESTRICT a, float * GGML_RESTRICT cnt, float * GGML_RESTRICT sum,
                         float * GGML_RESTRICT sumsq, float * GGML_RESTRICT mx, int64_t n,
                         const float * GGML_RESTRICT v, float fac, const float * GGML_RESTRICT f,
                         const mask_t * GGML_RESTRICT mp, bool moments) {
    if (!moments) {
        for (int64_t i = 0; i < n; ++i) {
            a[i] += v[i]*fac;
        }
        return;
    }
    if (mp == nullptr) {
        for (int64_t i = 0; i < n; ++i) {
            a[i] += v[i]*fac;
            rc_moment(cnt[i], sum[i], sumsq[i], mx[i], f[i], 1);
        }
        return;
    }
    for (int64_t i = 0; i < n; ++i) {
        a[i] += v[i]*fac;
        rc_moment(cnt[i], sum[i], sumsq[i], mx[i], f[i], rc_visible(mp[i]));
    }
}

// The moments alone of one row over n cells: its raw logits f, masked cells (mp, may be null) excluded.
static void rc_add_moments(float * GGML_RESTRICT cnt, float * GGML_RESTRICT sum, float * GGML_RESTRICT sumsq,
                           float * GGML_RESTRICT mx, int64_t n, const float * GGML_RESTRICT f,
                           const ggml_fp16_t * GGML_RESTRICT mp) {
    for (int64_t i = 0; i < n; ++i) {
        rc_moment(cnt[i], sum[i], sumsq[i], mx[i], f[i], mp ? rc_visible(mp[i]) : 1);
    }
}

// Per-thread rows for one row of cells: exponentials, visibility, additive mask.
struct rc_row_tmp {
    float * p, * vis, * madd;
};

static rc_row_tmp rc_tmp_rows(const ggml_cpu_rcedge & rc) {
    return { rc.tmp, rc.tmp + rc.n_kv, rc.tmp + 2*rc.n_kv };
}

// The visibility rows only (for recorded rows, whose probabilities come from the kernel).
static bool rc_mask_row(int64_t n, const rc_row_tmp & t, const ggml_fp16_t * GGML_RESTRICT mp) {
    typedef uint32_t __attribute__((may_alias)) bits_t;
    if (mp == nullptr) {
        return false;
    }
    float  * GGML_RESTRICT vis = t.vis;
    bits_t * GGML_RESTRICT mb  = (bits_t *) t.madd;
    for (int64_t i = 0; i < n; ++i) {
        const uint32_t keep = 0u - (uint32_t) (mp[i] != (ggml_fp16_t) 0xFC00);
        vis[i] = (float) (keep & 1u);
        mb[i]  = ~keep & 0xFF800000u;
    }
    return true;
}

// p[i] = v[i] * exp(M_seg - M) * S_inv: the kernel's exp(s - running max), rescaled per segment
// of constant running max to the row's final max. Masked cells have v = 0.
// (p may be rec.v itself: the update is elementwise in place.)
// The factor exp(M_seg - M)*S_inv of segment k of a record (0 before the first: those cells are
// masked, v = 0), and the cell where segment k ends (n: the row's end).
static inline float rc_seg_fac(const ggml_cpu_rcedge_rec & rec, int32_t k, float M, float S_inv) {
    return k < 0 ? 0.0f : expf(rec.seg_m[k] - M)*S_inv;
}
static inline int64_t rc_seg_end(const ggml_cpu_rcedge_rec & rec, int32_t k, int64_t n) {
    return k + 1 < rec.nseg ? rec.seg_at[k + 1] : n;
}

static void rc_p_from_rec(int64_t n, float * p, const ggml_cpu_rcedge_rec & rec, float M, float S_inv) {
    if (rec.nseg == 0 || M == -INFINITY) {
        memset(p, 0, n*sizeof(float));
        return;
    }
    memset(p, 0, rec.seg_at[0]*sizeof(float));
    for (int32_t k = 0; k < rec.nseg; ++k) {
        const int64_t i0  = rec.seg_at[k];
        const int64_t i1  = rc_seg_end(rec, k, n);
        const float   fac = rc_seg_fac(rec, k, M, S_inv);
        const float * v = rec.v;
        for (int64_t i = i0; i < i1; ++i) {
            p[i] = v[i]*fac;
        }
    }
}

ggml_cpu_rcedge_rec ggml_cpu_rcedge_rec_row(const ggml_cpu_rcedge & rc, int64_t slot) {
    ggml_cpu_rcedge_rec rec;
    rec.f      = rc.logits + slot*rc.chunk;
    rec.v      = rc.v      + slot*rc.chunk;
    rec.seg_at = rc.seg_at + slot*rc.chunk;
    rec.seg_m  = rc.seg_m  + slot*rc.chunk;
    rec.keep_f = rc.moments;
    return rec;
}

void ggml_cpu_rcedge_rec_done(const ggml_cpu_rcedge & rc, int64_t slot, const ggml_cpu_rcedge_rec & rec) {
    rc.nseg[slot] = rec.nseg;
}

void ggml_cpu_rcedge_fa_rec_row(const ggml_cpu_rcedge & rc, int64_t iq1, int64_t iq2, int64_t iq3,
                                int64_t ic0, int64_t ic1, const ggml_cpu_rcedge_rec & rec,
                                const ggml_fp16_t * mp, float M, float S) {
    const int64_t n     = ic1 - ic0;
    const float   w     = powf(rc.alpha, (float) (rc.N - 1 - iq1));
    const float   S_inv = S > 0.0f ? 1.0f/S : 0.0f;
    const rc_row_tmp t  = rc_tmp_rows(rc);
    rc_p_from_rec(n, t.p, rec, M, S_inv);
    // the record has f = 0 and v = 0 in masked cells
    const rc_rows o = rc_slab_rows(rc, rc.slab, iq3/rc.rk3, iq2/rc.rk2, ic0);
    rc_add_cells(o.a, o.cnt, o.sum, o.sumsq, o.max, n, t.p, w, rec.f, mp ? mp + ic0 : nullptr, rc.moments);
}


static void rc_merge_rows(float * GGML_RESTRICT a, float * GGML_RESTRICT cnt, float * GGML_RESTRICT sum,
                          float * GGML_RESTRICT sumsq, float * GGML_RESTRICT mx,
                          const float * GGML_RESTRICT ia, const float * GGML_RESTRICT icnt, const float * GGML_RESTRICT isum,
                          const float * GGML_RESTRICT isumsq, const float * GGML_RESTRICT imx, int64_t n,
                          bool moments) {
    if (!moments) {
        for (int64_t i = 0; i < n; ++i) {
            a[i] += ia[i];
        }
        return;
    }
    for (int64_t i = 0; i < n; ++i) {
        a[i] += ia[i];
        rc_merge_moment(cnt[i], sum[i], sumsq[i], mx[i], icnt[i], isum[i], isumsq[i], imx[i]);
    }
}

// Cells per block of the tiled update: the block's accumulators and temporaries (9 rows of
// 256 floats) stay in L1 while every row of the tile is added.
static constexpr int64_t RC_TILE_CELLS = 256;

void ggml_cpu_rcedge_fa_tile_exp(const ggml_cpu_rcedge & rc, int64_t iq1, int64_t n_rows, int64_t ic,
                                 int64_t kv_tile, const float * kq, int64_t kq_stride, const float * M,
                                 const bool * skip) {
    GGML_ASSERT(rc.tile_v != nullptr && ic % GGML_FA_TILE_KV == 0 && kv_tile <= GGML_FA_TILE_KV);
    // rows before the query window are not scored: their exponentials are not kept (a Q tile
    // straddling the window's start copies its windowed rows only; their "not computed" marks stay)
    for (int64_t r = std::min(n_rows, std::max<int64_t>(0, rc.n_skip - iq1)); r < n_rows; ++r) {
        float * v = rc.tile_v + r*rc.n_kv + ic;
        if (skip[r]) {
            memset(v, 0, kv_tile*sizeof(float));
        } else {
            memcpy(v, kq + r*kq_stride, kv_tile*sizeof(float));
        }
        rc.tile_m[r*rc.n_kv_tiles + ic/GGML_FA_TILE_KV] = skip[r] ? -INFINITY : M[r];
    }
}

void ggml_cpu_rcedge_fa_tile_moments(const ggml_cpu_rcedge & rc, int64_t iq1, int64_t n_rows, int64_t iq2,
                                     int64_t iq3, int64_t ic, int64_t kv_tile, const float * kq, int64_t kq_stride,
                                     const ggml_tensor * mask) {
    GGML_ASSERT(rc.moments && kv_tile <= GGML_FA_TILE_KV);
    const int64_t r0 = std::min(n_rows, std::max<int64_t>(0, rc.n_skip - iq1));
    if (r0 == n_rows) {
        return;
    }
    // the rows summed apart, then added to the slab once: per cell, the same additions in the
    // same order as when the rows' logits were kept and added with their probabilities
    float acc[RC_NSTAT - 1][GGML_FA_TILE_KV];
    memset(acc, 0, 3*sizeof(acc[0]));
    std::fill(acc[3], acc[3] + kv_tile, -INFINITY);
    for (int64_t r = r0; r < n_rows; ++r) {
        const ggml_fp16_t * m = mask ? (const ggml_fp16_t *) ((const char *) mask->data + (iq1 + r)*mask->nb[1] +
                                                             (iq2%mask->ne[2])*mask->nb[2] +
                                                             (iq3%mask->ne[3])*mask->nb[3]) + ic : nullptr;
        rc_add_moments(acc[0], acc[1], acc[2], acc[3], kv_tile, kq + r*kq_stride, m);
    }
    const rc_rows o = rc_slab_rows(rc, rc.slab, iq3/rc.rk3, iq2/rc.rk2, ic);
    for (int64_t i = 0; i < kv_tile; ++i) {
        rc_merge_moment(o.cnt[i], o.sum[i], o.sumsq[i], o.max[i], acc[0][i], acc[1][i], acc[2][i], acc[3][i]);
    }
}

void ggml_cpu_rcedge_fa_tile(const ggml_cpu_rcedge & rc, int64_t iq1, int64_t n_rows, int64_t iq2, int64_t iq3,
                             int64_t n, const float * M, const float * S, float sink) {
    static_assert(RC_TILE_CELLS % GGML_FA_TILE_KV == 0, "blocks are whole KV tiles");
    GGML_ASSERT(n_rows <= GGML_FA_TILE_Q && n == rc.n_kv);
    float w[GGML_FA_TILE_Q];  // the row's A2SF weight over its sum
    float Mr[GGML_FA_TILE_Q]; // the row's final max
    // rows before the query window give nothing; their kept maxima are dropped, as consumed ones
    const int64_t r0 = std::min(n_rows, std::max<int64_t>(0, rc.n_skip - iq1));
    std::fill(rc.tile_m, rc.tile_m + r0*rc.n_kv_tiles, -INFINITY);
    for (int64_t r = r0; r < n_rows; ++r) {
        w[r]  = powf(rc.alpha, (float) (rc.N - 1 - (iq1 + r)))*(S[r] > 0.0f ? 1.0f/S[r] : 0.0f);
        Mr[r] = fmaxf(M[r], sink);
    }
    // a2sf alone here: ggml_cpu_rcedge_fa_tile_moments added the moments as the kernel went
    float acc[RC_TILE_CELLS];
    const rc_rows o = rc_slab_rows(rc, rc.slab, iq3/rc.rk3, iq2/rc.rk2, 0);
    for (int64_t c0 = 0; c0 < n; c0 += RC_TILE_CELLS) {
        const int64_t nb = std::min(RC_TILE_CELLS, n - c0);
        memset(acc, 0, sizeof(acc));
        bool any = false;
        for (int64_t r = r0; r < n_rows; ++r) {
            // p = v * exp(M_tile - M) / S: the kernel's exponentials, one expf per KV tile
            const float * v = rc.tile_v + r*rc.n_kv + c0;
            for (int64_t k0 = 0; k0 < nb; k0 += GGML_FA_TILE_KV) {
                float * mt = rc.tile_m + r*rc.n_kv_tiles + (c0 + k0)/GGML_FA_TILE_KV;
                if (*mt == -INFINITY) {
                    continue; // the row saw no cell of this KV tile, or the kernel skipped the tile
                }
                const float fac = expf(*mt - Mr[r])*w[r];
                *mt = -INFINITY; // consumed: the next Q tile starts from "not computed"
                const int64_t k1 = std::min(nb, k0 + GGML_FA_TILE_KV);
                for (int64_t i = k0; i < k1; ++i) {
                    acc[i] += v[i]*fac;
                }
                any = true;
            }
        }
        if (any) {
            for (int64_t i = 0; i < nb; ++i) {
                o.a[c0 + i] += acc[i];
            }
        }
    }
}

void ggml_cpu_rcedge_softmax_row(const ggml_cpu_rcedge & rc, int64_t iq1, int64_t iq2, int64_t iq3,
                                 const float * f, const float * p, const void * mp, bool mask_f16) {
    const float w = powf(rc.alpha, (float) (rc.N - 1 - iq1));
    const rc_rows o = rc_slab_rows(rc, rc.slab, iq3/rc.rk3, iq2/rc.rk2, 0);
    // f: the row's scaled logits, copied before the mask was added (finite in every cell)
    if (mp == nullptr || mask_f16) {
        rc_add_cells(o.a, o.cnt, o.sum, o.sumsq, o.max, rc.n_kv, p, w, f, (const ggml_fp16_t *) mp, rc.moments);
    } else {
        rc_add_cells(o.a, o.cnt, o.sum, o.sumsq, o.max, rc.n_kv, p, w, f, (const uint32_t *) mp, rc.moments);
    }
}

// a2sf <- decay * a2sf over n cells
static void rc_decay(float * GGML_RESTRICT a, int64_t n, float decay) {
    for (int64_t i = 0; i < n; ++i) {
        a[i] *= decay;
    }
}

void ggml_cpu_rcedge_end(const ggml_compute_params * params, const ggml_cpu_rcedge & rc) {
    if (!rc) {
        return;
    }
    ggml_barrier(params->threadpool);

    // each thread reduces its own range of cells, in every (stream, KV head)
    const int64_t c0 = std::min(rc.n_kv, rc.chunk*rc.ith);
    const int64_t n  = std::min(rc.n_kv, c0 + rc.chunk) - c0;
    if (n <= 0) {
        return;
    }
    const float decay = powf(rc.alpha, (float) rc.N);
    for (int64_t s = 0; s < rc.n_stream; ++s) {
        for (int64_t g = 0; g < rc.n_head_kv; ++g) {
            const rc_rows o = rc_score_rows(rc, s, g, c0);
            rc_decay(o.a, n, decay);
            if (rc.n_skip >= rc.N) {
                continue; // every row skipped: the slabs hold nothing
            }
            for (int t = 0; t < rc.nth; ++t) {
                const rc_rows in = rc_slab_rows(rc, rc.slab + (t - rc.ith)*rc.thread_stride, s, g, c0);
                rc_merge_rows(o.a, o.cnt, o.sum, o.sumsq, o.max, in.a, in.cnt, in.sum, in.sumsq, in.max, n,
                              rc.moments);
            }
        }
    }
}

static float rc_alibi_slope(float max_bias, uint32_t n_head, uint32_t h) {
    if (max_bias <= 0.0f) {
        return 1.0f;
    }
    const uint32_t n_head_log2 = 1u << (uint32_t) floor(log2(n_head));
    const float m0 = powf(2.0f, -(max_bias       ) / n_head_log2);
    const float m1 = powf(2.0f, -(max_bias / 2.0f) / n_head_log2);
    return h < n_head_log2 ? powf(m0, h + 1) : powf(m1, 2*(h - n_head_log2) + 1);
}

// Split-KV, all heads of a group at once, read from their records: head j's probability of
// cell i is v_j[i]*fac_j, fac_j constant between the cells where the head's running max changed
// (rc_p_from_rec). The cells are walked in runs where no head's factor changes, so each recorded
// exponential is read once and no row of probabilities is written first (R = query heads per
// KV head; with the moments, each head's recorded logits f_j too).
// a head's record with its row's final max and 1/sum
struct rc_head_rec {
    ggml_cpu_rcedge_rec rec;
    float M, S_inv;
};

template <int R>
static void rc_group_update(const rc_rows & o, int64_t n, float decay, const rc_head_rec * hr,
                            const float * GGML_RESTRICT vis, const float * GGML_RESTRICT madd,
                            bool moments) {
    float * GGML_RESTRICT a     = o.a;
    float * GGML_RESTRICT cnt   = o.cnt;
    float * GGML_RESTRICT sum   = o.sum;
    float * GGML_RESTRICT sumsq = o.sumsq;
    float * GGML_RESTRICT mx    = o.max;
    int32_t k[R];
    int64_t end[R];
    float   fac[R];
    for (int j = 0; j < R; ++j) {
        const bool none = hr[j].rec.nseg == 0 || hr[j].M == -INFINITY; // every cell masked
        k[j]   = -1;
        end[j] = none ? n : hr[j].rec.seg_at[0];
        fac[j] = 0.0f;
    }
    for (int64_t i0 = 0; i0 < n; ) {
        int64_t i1 = n;
        for (int j = 0; j < R; ++j) {
            i1 = std::min(i1, end[j]);
        }
        if (!moments) {
#pragma GCC ivdep
            for (int64_t i = i0; i < i1; ++i) {
                float ps = 0.0f;
                for (int j = 0; j < R; ++j) {
                    ps += hr[j].rec.v[i]*fac[j];
                }
                a[i] = decay*a[i] + ps;
            }
        } else {
#pragma GCC ivdep
            for (int64_t i = i0; i < i1; ++i) {
                float ps = 0.0f, fs = 0.0f, f2 = 0.0f, fm = -INFINITY;
                for (int j = 0; j < R; ++j) {
                    const float fv = hr[j].rec.f[i];
                    ps += hr[j].rec.v[i]*fac[j];
                    fs += fv;
                    f2 += fv*fv;
                    fm  = std::max(fm, fv);
                }
                a[i]     = decay*a[i] + ps;
                cnt[i]  += (float) R*vis[i];
                sum[i]  += fs;
                sumsq[i] += f2;
                mx[i]    = std::max(mx[i], fm + madd[i]);
            }
        }
        for (int j = 0; j < R; ++j) {
            if (end[j] == i1 && i1 < n) {
                k[j]  += 1;
                fac[j] = rc_seg_fac(hr[j].rec, k[j], hr[j].M, hr[j].S_inv);
                end[j] = rc_seg_end(hr[j].rec, k[j], n);
            }
        }
        i0 = i1;
    }
}

static bool rc_group_pass(const ggml_cpu_rcedge & rc, const ggml_tensor * mask, float max_bias,
                          int64_t c0, int64_t n, float decay) {
    if (mask == nullptr || mask->ne[2] != 1 || max_bias > 0.0f || rc.rk2 > 8) {
        return false;
    }
    const rc_row_tmp t = rc_tmp_rows(rc);
    if (rc.moments) {
        rc_mask_row(n, t, (const ggml_fp16_t *) mask->data + c0);
    }
    for (int64_t g = 0; g < rc.n_head_kv; ++g) {
        rc_head_rec hr[8];
        for (int64_t j = 0; j < rc.rk2; ++j) {
            const int64_t h = g*rc.rk2 + j;
            const float S = rc.row_ms[2*h + 1];
            hr[j] = { ggml_cpu_rcedge_rec_row(rc, h), rc.row_ms[2*h + 0], S > 0.0f ? 1.0f/S : 0.0f };
            hr[j].rec.nseg = rc.nseg[h];
        }
        const rc_rows o = rc_score_rows(rc, 0, g, c0);
        switch (rc.rk2) {
            case 1: rc_group_update<1>(o, n, decay, hr, t.vis, t.madd, rc.moments); break;
            case 2: rc_group_update<2>(o, n, decay, hr, t.vis, t.madd, rc.moments); break;
            case 3: rc_group_update<3>(o, n, decay, hr, t.vis, t.madd, rc.moments); break;
            case 4: rc_group_update<4>(o, n, decay, hr, t.vis, t.madd, rc.moments); break;
            case 5: rc_group_update<5>(o, n, decay, hr, t.vis, t.madd, rc.moments); break;
            case 6: rc_group_update<6>(o, n, decay, hr, t.vis, t.madd, rc.moments); break;
            case 7: rc_group_update<7>(o, n, decay, hr, t.vis, t.madd, rc.moments); break;
            case 8: rc_group_update<8>(o, n, decay, hr, t.vis, t.madd, rc.moments); break;
        }
    }
    return true;
}

void ggml_cpu_rcedge_split_end(const ggml_compute_params * params, const ggml_tensor * dst,
                               const ggml_cpu_rcedge & rc) {
    if (!rc) {
        return;
    }
    ggml_barrier(params->threadpool); // row_ms is written by the threads that reduced each head

    const ggml_tensor * q    = dst->src[0];
    const ggml_tensor * mask = dst->src[3];
    const int64_t n_head = q->ne[2];
    float max_bias = 0.0f;
    memcpy(&max_bias, (const float *) dst->op_params + 1, sizeof(float));

    // this thread's cells: the range whose logits it computed
    const int64_t c0 = std::min(rc.n_kv, rc.chunk*rc.ith);
    const int64_t n  = std::min(rc.n_kv, c0 + rc.chunk) - c0;
    if (n <= 0) {
        return;
    }
    const float decay = rc.alpha; // one query

    if (rc.n_skip >= rc.N) {
        // no statistics from this query (nothing was recorded): the decay alone
        for (int64_t g = 0; g < rc.n_head_kv; ++g) {
            rc_decay(rc_score_rows(rc, 0, g, c0).a, n, decay);
        }
        return;
    }

    // one mask row for every head (llama.cpp's case): a GQA group in a single pass
    if (rc_group_pass(rc, mask, max_bias, c0, n, decay)) {
        return;
    }

    for (int64_t g = 0; g < rc.n_head_kv; ++g) {
        const rc_rows o = rc_score_rows(rc, 0, g, c0);
        rc_decay(o.a, n, decay);
        for (int64_t h = g*rc.rk2; h < (g + 1)*rc.rk2; ++h) {
            const ggml_fp16_t * m = mask ? (const ggml_fp16_t *) ((const char *) mask->data + (h % mask->ne[2])*mask->nb[2]) + c0 : nullptr;
            ggml_cpu_rcedge_rec rec = ggml_cpu_rcedge_rec_row(rc, h);
            rec.nseg = rc.nseg[h];
            const float S = rc.row_ms[2*h + 1];
            const rc_row_tmp t = rc_tmp_rows(rc);
            rc_p_from_rec(n, t.p, rec, rc.row_ms[2*h + 0], S > 0.0f ? 1.0f/S : 0.0f);
            rc_add_cells(o.a, o.cnt, o.sum, o.sumsq, o.max, n, t.p, 1.0f, rec.f, m, rc.moments); // f = v = 0 where masked
        }
    }
}
