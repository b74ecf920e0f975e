// pyrcedge: attention statistics fused into the CPU attention kernels. See ggml-cpu-rcedge.h.
#include "ggml-cpu-rcedge.h"

#include "ggml-cpu-impl.h"
#include "simd-mappings.h"
#include "common.h"

#include <algorithm>
#include <cmath>
#include <cstring>

static constexpr int64_t RC_NSTAT = 5;       // a2sf, count, sum, sumsq, max
static constexpr size_t  RC_ALIGN = 64;      // bytes: keep each thread's area on its own lines

static size_t rc_pad(size_t n_floats) {
    const size_t per_line = RC_ALIGN/sizeof(float);
    return (n_floats + per_line - 1)/per_line*per_line;
}

// Scratch layout of a scored node for nth threads, in floats:
//   [row_ms: 2*n_head] then per thread [logits][slab]
struct rc_layout {
    size_t row_ms;
    size_t logits;
    size_t slab;
    size_t total() const { return row_ms + (logits + slab)*n_threads; }
    int    n_threads;
};

static rc_layout rc_get_layout(const ggml_tensor * node, const ggml_tensor * scores, int nth) {
    const int64_t n_kv      = scores->ne[1];
    const int64_t n_head_kv = scores->ne[2];
    const int64_t n_stream  = scores->ne[3];
    const int64_t n_head    = node->src[0]->ne[2];

    size_t logits = (size_t) n_kv; // one row (soft_max, flash attention one_chunk)
    if (node->op == GGML_OP_FLASH_ATTN_EXT) {
        const int64_t chunk = (n_kv + nth - 1)/nth;
        logits = std::max<size_t>((size_t) GGML_FA_TILE_Q*n_kv, (size_t) (n_head*chunk));
    }
    rc_layout l;
    l.row_ms    = rc_pad(2*n_head);
    l.logits    = rc_pad(logits);
    l.slab      = rc_pad(n_stream*n_head_kv*n_kv*RC_NSTAT);
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

static float * rc_base(const ggml_compute_params * params, const ggml_tensor * dst, int nth) {
    const size_t need = ggml_cpu_rcedge_work_size(dst, nth);
    GGML_ASSERT(params->wsize >= need && "rcedge: work buffer too small (graph not planned with scores)");
    uintptr_t p = (uintptr_t) params->wdata + params->wsize - need;
    p = (p + RC_ALIGN - 1)/RC_ALIGN*RC_ALIGN;
    return (float *) p;
}

void ggml_cpu_rcedge_begin(const ggml_compute_params * params, const ggml_tensor * dst,
                           bool split_kv, ggml_cpu_rcedge & rc) {
    const ggml_tensor * scores = ggml_attn_get_scores(dst, &rc.alpha);
    if (scores == nullptr) {
        return;
    }
    GGML_ASSERT(scores->type == GGML_TYPE_F32 && scores->ne[0] == RC_NSTAT && scores->nb[0] == sizeof(float));

    const ggml_tensor * q = dst->src[0]; // queries (flash attention) or kq (soft_max)
    rc.scores    = (float *) scores->data;
    rc.nb1       = scores->nb[1];
    rc.nb2       = scores->nb[2];
    rc.nb3       = scores->nb[3];
    rc.n_kv      = scores->ne[1];
    rc.n_head_kv = scores->ne[2];
    rc.n_stream  = scores->ne[3];
    rc.N         = q->ne[1];
    rc.rk2       = q->ne[2]/rc.n_head_kv;
    rc.rk3       = q->ne[3]/rc.n_stream;
    rc.ith       = params->ith;
    rc.nth       = params->nth;
    rc.chunk     = (rc.n_kv + rc.nth - 1)/rc.nth;
    GGML_ASSERT(rc.rk2*rc.n_head_kv == q->ne[2] && rc.rk3*rc.n_stream == q->ne[3]);

    const rc_layout l = rc_get_layout(dst, scores, rc.nth);
    float * base = rc_base(params, dst, rc.nth);
    rc.row_ms        = base;
    rc.thread_stride = (int64_t) (l.logits + l.slab);
    rc.logits        = base + l.row_ms + rc.thread_stride*rc.ith;
    rc.slab          = rc.logits + l.logits;

    if (!split_kv) {
        const int64_t n = rc.n_stream*rc.n_head_kv*rc.n_kv;
        for (int64_t i = 0; i < n; ++i) {
            float * s = rc.slab + i*RC_NSTAT;
            s[0] = s[1] = s[2] = s[3] = 0.0f;
            s[4] = -INFINITY;
        }
    }
}

static inline void rc_add(float * s, float w, float p, float f) {
    s[0] += w*p;
    s[1] += 1.0f;
    s[2] += f;
    s[3] += f*f;
    s[4]  = std::max(s[4], f);
}

void ggml_cpu_rcedge_fa_row(const ggml_cpu_rcedge & rc, int64_t iq1, int64_t iq2, int64_t iq3,
                            int64_t ic0, int64_t ic1, const float * f,
                            const ggml_fp16_t * mp, float slope, float M, float S) {
    const float w     = powf(rc.alpha, (float) (rc.N - 1 - iq1));
    const float S_inv = S > 0.0f ? 1.0f/S : 0.0f;
    float * slot = rc.slab + ((iq3/rc.rk3)*rc.n_head_kv + iq2/rc.rk2)*rc.n_kv*RC_NSTAT;
    for (int64_t ic = ic0; ic < ic1; ++ic) {
        const float mv = mp ? slope*GGML_CPU_FP16_TO_FP32(mp[ic]) : 0.0f;
        if (mv == -INFINITY) {
            continue;
        }
        const float fv = f[ic - ic0];
        const float p  = S_inv > 0.0f ? expf(fv + mv - M)*S_inv : 0.0f;
        rc_add(slot + ic*RC_NSTAT, w, p, fv);
    }
}

void ggml_cpu_rcedge_softmax_row(const ggml_cpu_rcedge & rc, int64_t iq1, int64_t iq2, int64_t iq3,
                                 const float * f, const float * p, const void * mp, bool mask_f16) {
    const float w = powf(rc.alpha, (float) (rc.N - 1 - iq1));
    float * slot = rc.slab + ((iq3/rc.rk3)*rc.n_head_kv + iq2/rc.rk2)*rc.n_kv*RC_NSTAT;
    for (int64_t ic = 0; ic < rc.n_kv; ++ic) {
        if (mp) {
            const float m = mask_f16 ? GGML_CPU_FP16_TO_FP32(((const ggml_fp16_t *) mp)[ic]) : ((const float *) mp)[ic];
            if (m == -INFINITY) {
                continue;
            }
        }
        rc_add(slot + ic*RC_NSTAT, w, p[ic], f[ic]);
    }
}

static inline float * rc_cell(const ggml_cpu_rcedge & rc, int64_t s, int64_t g, int64_t ic) {
    return (float *) ((char *) rc.scores + s*rc.nb3 + g*rc.nb2 + ic*rc.nb1);
}

void ggml_cpu_rcedge_end(const ggml_compute_params * params, const ggml_cpu_rcedge & rc) {
    if (!rc) {
        return;
    }
    ggml_barrier(params->threadpool);

    const int64_t n_units = rc.n_stream*rc.n_head_kv*rc.n_kv;
    const int64_t per     = (n_units + rc.nth - 1)/rc.nth;
    const int64_t u0      = std::min(n_units, per*rc.ith);
    const int64_t u1      = std::min(n_units, u0 + per);
    const float   decay   = powf(rc.alpha, (float) rc.N);

    for (int64_t u = u0; u < u1; ++u) {
        const int64_t ic = u % rc.n_kv;
        const int64_t g  = (u / rc.n_kv) % rc.n_head_kv;
        const int64_t s  = u / (rc.n_kv*rc.n_head_kv);
        float a = 0.0f, n = 0.0f, s1 = 0.0f, s2 = 0.0f, mx = -INFINITY;
        for (int t = 0; t < rc.nth; ++t) {
            // slabs are laid out at a fixed stride, and slab entries follow the units' order
            const float * in = rc.slab + (t - rc.ith)*rc.thread_stride + u*RC_NSTAT;
            a  += in[0];
            n  += in[1];
            s1 += in[2];
            s2 += in[3];
            mx  = std::max(mx, in[4]);
        }
        float * out = rc_cell(rc, s, g, ic);
        out[0] = decay*out[0] + a;
        out[1] += n;
        out[2] += s1;
        out[3] += s2;
        out[4]  = std::max(out[4], mx);
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

    const int64_t ic0 = std::min(rc.n_kv, rc.chunk*rc.ith);
    const int64_t ic1 = std::min(rc.n_kv, ic0 + rc.chunk);
    const float   decay = rc.alpha; // one query

    for (int64_t g = 0; g < rc.n_head_kv; ++g) {
        for (int64_t ic = ic0; ic < ic1; ++ic) {
            float a = 0.0f, n = 0.0f, s1 = 0.0f, s2 = 0.0f, mx = -INFINITY;
            for (int64_t h = g*rc.rk2; h < (g + 1)*rc.rk2; ++h) {
                const ggml_fp16_t * mp = mask ? (const ggml_fp16_t *) ((const char *) mask->data + (h % mask->ne[2])*mask->nb[2]) : nullptr;
                const float mv = mp ? rc_alibi_slope(max_bias, n_head, h)*GGML_CPU_FP16_TO_FP32(mp[ic]) : 0.0f;
                if (mv == -INFINITY) {
                    continue;
                }
                const float M  = rc.row_ms[2*h + 0];
                const float S  = rc.row_ms[2*h + 1];
                const float fv = rc.logits[h*rc.chunk + (ic - ic0)];
                a  += S > 0.0f ? expf(fv + mv - M)/S : 0.0f;
                n  += 1.0f;
                s1 += fv;
                s2 += fv*fv;
                mx  = std::max(mx, fv);
            }
            float * out = rc_cell(rc, 0, g, ic);
            out[0] = decay*out[0] + a;
            out[1] += n;
            out[2] += s1;
            out[3] += s2;
            out[4]  = std::max(out[4], mx);
        }
    }
}
