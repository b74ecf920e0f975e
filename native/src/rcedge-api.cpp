// pyrcedge's C API (include/llama-rcedge.h), and the internals the patches call
// (llama-rcedge-impl.h). Compiled into libllama by the top-level CMakeLists.txt, so it may use
// llama.cpp's internal classes.
#include "llama-rcedge.h"
#include "llama-rcedge-impl.h"

#include "llama-context.h"
#include "llama-kv-cache.h"
#include "llama-model.h"

#include "ggml-backend.h"
#include "ggml-cpp.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

#define LLAMA_RCEDGE_VERSION "0.2.0"

const char * llama_rcedge_version(void) {
    return LLAMA_RCEDGE_VERSION;
}

// The context's KV cache, or nullptr when its memory is of another kind.
static llama_kv_cache * rcedge_kv_cache(const llama_context * ctx) {
    if (ctx == nullptr) {
        return nullptr;
    }
    return dynamic_cast<llama_kv_cache *>(llama_get_memory(ctx));
}

// The context's KV cache, or nullptr with the reason in *status: ctx is NULL, or its memory is of
// another kind.
static llama_kv_cache * rcedge_kv_cache(const llama_context * ctx, int32_t * status) {
    llama_kv_cache * kv = rcedge_kv_cache(ctx);
    if (kv == nullptr) {
        *status = ctx == nullptr ? LLAMA_RCEDGE_ERR_NULL : LLAMA_RCEDGE_ERR_MEMORY_KIND;
        return nullptr;
    }
    *status = LLAMA_RCEDGE_OK;
    return kv;
}

// Scoring changed the graph (statistics on or off, alpha, the query window, a probe's copies: what
// the epoch counts): the next graph must not reuse the last one, and the scheduler must reserve
// its worst case again (patch 0013). Without that reserve its buffers keep the plan of the graph
// without the statistics' nodes, and in a GPU context every prefill ubatch that is larger than the
// ubatch before in one tensor is planned again, the backends drained first (docs/gpu.md).
// LLAMA_RCEDGE_RESERVE=0 leaves the reserve out (to measure what it saves).
// A change that only takes nodes out (decay_only) needs no reserve: the plan of the larger graph
// covers it.
static void rcedge_graph_changed(llama_context * ctx, llama_kv_cache * kv, bool reserve = true) {
    kv->rcedge_epoch++;
    const char * env = getenv("LLAMA_RCEDGE_RESERVE");
    if (reserve && (env == nullptr || strcmp(env, "0") != 0)) {
        ctx->set_need_reserve();
    }
}

// set a scoring setting that the graph's nodes are built with: a change rebuilds the graph
template <typename T>
static void rcedge_set_graph_setting(llama_context * ctx, T & setting, T value, bool reserve = true) {
    if (setting != value) {
        setting = value;
        rcedge_graph_changed(ctx, rcedge_kv_cache(ctx), reserve);
    }
}

int32_t llama_rcedge_kv_cells_used(const llama_context * ctx) {
    const llama_kv_cache * kv = rcedge_kv_cache(ctx);
    if (kv == nullptr) {
        return -1;
    }
    uint32_t used = 0;
    // one stream unless the context was made with kv_unified = false and several sequences
    for (uint32_t s = 0; s < kv->get_n_stream(); ++s) {
        used += kv->get_cells((llama_seq_id) s).get_used();
    }
    return (int32_t) used;
}

int32_t llama_rcedge_kv_cells_total(const llama_context * ctx) {
    const llama_kv_cache * kv = rcedge_kv_cache(ctx);
    if (kv == nullptr) {
        return -1;
    }
    return (int32_t) kv->get_size();
}

//
// KV cache memory budgets
//

// read by the patched llama_context constructor (patch 0005), through
// llama_rcedge_exact_n_ctx_requested
static thread_local bool rcedge_exact_n_ctx = false;

bool llama_rcedge_exact_n_ctx_requested() {
    return rcedge_exact_n_ctx;
}

int32_t llama_rcedge_set_exact_n_ctx(int32_t exact) {
    const int32_t prev = rcedge_exact_n_ctx ? 1 : 0;
    rcedge_exact_n_ctx = exact != 0;
    return prev;
}

// mirrors the per-layer tensor sizes of the llama_kv_cache constructor
int64_t llama_rcedge_kv_cell_bytes(const llama_model * model, int32_t type_k, int32_t type_v, int32_t flash_attn) {
    if (model == nullptr || type_k < 0 || type_k >= GGML_TYPE_COUNT || type_v < 0 || type_v >= GGML_TYPE_COUNT) {
        return -1;
    }
    const ggml_type tk = (ggml_type) type_k;
    const ggml_type tv = (ggml_type) type_v;
    if (ggml_blck_size(tk) <= 0 || ggml_type_size(tk) == 0 || ggml_blck_size(tv) <= 0 || ggml_type_size(tv) == 0) {
        return -1; // a removed or placeholder type
    }
    const llama_hparams & hp = model->hparams;
    const bool v_trans = flash_attn == 0;
    int64_t bytes = 0;
    for (uint32_t il = 0; il < hp.n_layer_all; ++il) {
        if (!hp.has_kv(il)) {
            continue;
        }
        bytes += (int64_t) ggml_row_size(tk, hp.n_embd_k_gqa(il));
        if (!hp.is_mla()) {
            bytes += (int64_t) ggml_row_size(tv, v_trans ? hp.n_embd_v_gqa_max() : hp.n_embd_v_gqa(il));
        }
    }
    return bytes;
}

int64_t llama_rcedge_kv_bytes(const llama_context * ctx) {
    const llama_kv_cache * kv = rcedge_kv_cache(ctx);
    if (kv == nullptr) {
        return -1;
    }
    int64_t bytes = 0;
    for (const auto & [buft, size] : kv->memory_breakdown()) {
        bytes += (int64_t) size;
    }
    return bytes;
}

//
// attention scoring
//

static constexpr int64_t RC_N = LLAMA_RCEDGE_N_STATS;
static_assert(LLAMA_RCEDGE_N_STATS == GGML_ATTN_SCORES_N, "one layout for the C API and the kernels");

// Statistics beside one KV cache: one F32 tensor [kv_size, 5, n_head_kv, n_stream] per layer
// with KV (a row of cells per statistic), in buffers of their own of the same buffer type as the
// layer's K (host memory for a CPU cache, device memory for an offloaded one).
struct llama_rcedge_scores {
    float alpha = 1.0f;
    // false: the CPU backend's fused kernels update the statistics (host memory only);
    // true: standard ggml ops in the graph do (native/src/rcedge-graph.cpp), on any backend
    bool portable = false;
    // portable path, with the statistics in soft_max nodes that the backend's kernels update
    // (ggml-cuda) instead of graph ops
    bool device_fused = false;
    // statistics from the last query_window queries of a ubatch (0: all)
    int32_t query_window = 0;
    // no query gives statistics, the A2SF scores decay (llama_rcedge_set_decay_only)
    bool decay_only = false;
    // fused CPU kernels: false keeps a2sf alone (the kernels get a view of its row), true all five
    bool moments = true;
    // portable path: what the layers of the graph being built share (rcedge-graph.cpp)
    llama_rcedge_graph_shared graph_shared;
    int32_t first_layer = -1; // the first model layer with statistics: it builds graph_shared
    int32_t last_layer  = -1; // the last one
    ggml_tensor * all = nullptr; // portable path: every layer's statistics in one tensor, or nullptr
    std::vector<int32_t> slot;   // model layer id -> index of its layer in `all`
    std::vector<ggml_context_ptr>        ctxs;
    std::vector<ggml_backend_buffer_ptr> bufs;
    std::vector<ggml_tensor *> by_layer; // model layer id -> tensor, nullptr for layers without KV
    // a question probe's kept queries (llama_rcedge_probe_capture; rcedge-probe.cpp), by model layer
    // id; empty while none are kept
    std::vector<llama_rcedge_probe_layer> probe;
    bool                    probe_capturing = false; // the graph copies the queries into `probe`
    ggml_context_ptr        probe_ctx;
    ggml_backend_buffer_ptr probe_buf;
    // decodes end after this many layers' attention (llama_rcedge_set_stop_layer; 0: the whole
    // model), at the node of this name
    int32_t stop_layer = 0;
    char    stop_node[GGML_MAX_NAME] = {0};
};

// statistic k of a cell, in a tensor's data or a host copy of it (base)
static float & rcedge_stat(const ggml_tensor * t, void * base, int64_t stream, int64_t head, int64_t cell, int64_t k) {
    return *(float *) ((char *) base + stream*t->nb[3] + head*t->nb[2] + k*t->nb[1] + cell*t->nb[0]);
}

static float & rcedge_stat(const ggml_tensor * t, int64_t stream, int64_t head, int64_t cell, int64_t k) {
    return rcedge_stat(t, t->data, stream, head, cell, k);
}

static bool rcedge_is_host(const ggml_tensor * t) {
    return t->buffer != nullptr && ggml_backend_buffer_is_host(t->buffer);
}

// Host address of a tensor's data: the tensor's own in a host buffer; else `copy`, filled from the
// device (statistics in device memory are read and written through such a copy).
static void * rcedge_host_data(const ggml_tensor * t, std::vector<uint8_t> & copy) {
    if (rcedge_is_host(t)) {
        return t->data;
    }
    copy.resize(ggml_nbytes(t));
    ggml_backend_tensor_get(t, copy.data(), 0, copy.size());
    return copy.data();
}

// Writes back what rcedge_host_data returned, once changed (nothing to do for a host tensor).
static void rcedge_host_data_commit(ggml_tensor * t, const void * base) {
    if (!rcedge_is_host(t)) {
        ggml_backend_tensor_set(t, base, 0, ggml_nbytes(t));
    }
}

static void rcedge_clear_cell(const ggml_tensor * t, void * base, int64_t stream, int64_t head, int64_t cell, uint32_t what) {
    if (what & LLAMA_RCEDGE_RESET_A2SF) {
        rcedge_stat(t, base, stream, head, cell, 0) = 0.0f;
    }
    if (what & LLAMA_RCEDGE_RESET_MOMENTS) {
        rcedge_stat(t, base, stream, head, cell, 1) = 0.0f;
        rcedge_stat(t, base, stream, head, cell, 2) = 0.0f;
        rcedge_stat(t, base, stream, head, cell, 3) = 0.0f;
        rcedge_stat(t, base, stream, head, cell, 4) = -INFINITY;
    }
}

static void rcedge_clear_cell(const ggml_tensor * t, int64_t stream, int64_t head, int64_t cell, uint32_t what) {
    rcedge_clear_cell(t, t->data, stream, head, cell, what);
}

static void rcedge_clear_all(const llama_rcedge_scores & sc, uint32_t what) {
    std::vector<uint8_t> copy;
    for (ggml_tensor * t : sc.by_layer) {
        if (t == nullptr) {
            continue;
        }
        // a device tensor is cleared in a host copy (a rare, whole-cache operation)
        void * base = rcedge_host_data(t, copy);
        for (int64_t s = 0; s < t->ne[3]; ++s) {
            for (int64_t g = 0; g < t->ne[2]; ++g) {
                for (int64_t c = 0; c < t->ne[0]; ++c) {
                    rcedge_clear_cell(t, base, s, g, c, what);
                }
            }
        }
        rcedge_host_data_commit(t, base);
    }
}

llama_rcedge_layer_scores llama_kv_cache::rcedge_get_scores(ggml_context * ctx, int32_t il, uint32_t n_kv, const slot_info & sinfo) const {
    if (!rcedge || il < 0 || (size_t) il >= rcedge->by_layer.size() || rcedge->by_layer[il] == nullptr) {
        return {};
    }
    ggml_tensor * t = rcedge->by_layer[il];
    const uint32_t ns = sinfo.s1 - sinfo.s0 + 1;
    llama_rcedge_layer_scores res;
    // the fused CPU kernels keep only the rows they are given (ggml_attn_set_scores)
    const int64_t rows = rcedge->portable || rcedge->moments ? RC_N : 1;
    res.scores   = ggml_view_4d(ctx, t, n_kv, rows, t->ne[2], ns, t->nb[1], t->nb[2], t->nb[3], t->nb[3]*sinfo.s0);
    res.alpha    = rcedge->alpha;
    res.portable = rcedge->portable;
    res.device_fused = rcedge->device_fused;
    res.query_window = rcedge->query_window;
    res.decay_only   = rcedge->decay_only;
    res.shared   = &rcedge->graph_shared;
    res.first    = il == rcedge->first_layer;
    res.last     = il == rcedge->last_layer;
    res.all      = rcedge->all;
    res.slot     = rcedge->slot[il];
    if (rcedge->probe_capturing && (size_t) il < rcedge->probe.size() && rcedge->probe[il].q != nullptr) {
        res.probe = &rcedge->probe[il];
    }
    return res;
}

void llama_kv_cache::rcedge_reset_cells(const slot_info & sinfo) {
    if (!rcedge || rcedge->portable) {
        return; // the portable path clears the cells in the graph (llama_rcedge_graph_reset)
    }
    for (size_t s = 0; s < sinfo.n_stream(); ++s) {
        const uint32_t stream = sinfo.strm[s];
        for (const uint32_t idx : sinfo.idxs[s]) {
            for (const ggml_tensor * t : rcedge->by_layer) {
                if (t == nullptr) {
                    continue;
                }
                for (int64_t g = 0; g < t->ne[2]; ++g) {
                    rcedge_clear_cell(t, stream, g, idx, LLAMA_RCEDGE_RESET_A2SF | LLAMA_RCEDGE_RESET_MOMENTS);
                }
            }
        }
    }
}

llama_rcedge_layer_scores llama_kv_cache_context::get_rcedge_scores(ggml_context * ctx, int32_t il) const {
    return kv->rcedge_get_scores(ctx, il, n_kv, sinfos[i_cur]);
}

uint32_t llama_kv_cache_context::get_rcedge_epoch() const {
    return kv->rcedge_epoch;
}

// read by llama_rcedge_scoring_enable
static thread_local bool rcedge_force_portable = false;

int32_t llama_rcedge_set_force_portable(int32_t force) {
    const int32_t prev = rcedge_force_portable ? 1 : 0;
    rcedge_force_portable = force != 0;
    return prev;
}

static bool rcedge_portable_requested() {
    const char * env = getenv("LLAMA_RCEDGE_PORTABLE");
    return rcedge_force_portable || (env != nullptr && env[0] != '\0' && strcmp(env, "0") != 0);
}

// Whether a portable-path cache whose statistics live in buft may use the backend's fused kernels:
// ggml-cuda's soft_max (patch 0008) in device memory, unless LLAMA_RCEDGE_DEVICE_FUSED=0 asks for
// the graph ops (what every other backend runs).
static bool rcedge_device_fused_ok(ggml_backend_buffer_type_t buft) {
    const char * env = getenv("LLAMA_RCEDGE_DEVICE_FUSED");
    if (env != nullptr && strcmp(env, "0") == 0) {
        return false;
    }
    return !ggml_backend_buft_is_host(buft) && strncmp(ggml_backend_buft_name(buft), "CUDA", 4) == 0;
}

// the fused CPU kernels' query window (patch 0012), on the node that carries the statistics
void llama_rcedge_set_fused_window(ggml_tensor * node, const llama_rcedge_layer_scores & rc, int64_t n_q) {
    const int64_t n_w = llama_rcedge_window(rc, n_q);
    if (n_w < n_q) {
        ggml_attn_set_scores_rows(node, (int32_t) (n_q - n_w), 0, false); // every row skipped: the decay alone
    }
}

static int32_t rcedge_query_window_default() {
    const char * env = getenv("LLAMA_RCEDGE_QUERY_WINDOW");
    return env != nullptr ? std::max(0, atoi(env)) : 0;
}

static bool rcedge_alpha_ok(float alpha) {
    return alpha >= 0.0f && alpha <= 1.0f; // false for NaN too
}

int32_t llama_rcedge_scoring_enable(llama_context * ctx, float alpha) {
    if (ctx == nullptr) {
        return LLAMA_RCEDGE_ERR_NULL;
    }
    if (!rcedge_alpha_ok(alpha)) {
        return LLAMA_RCEDGE_ERR_ALPHA;
    }
    llama_kv_cache * kv = rcedge_kv_cache(ctx);
    if (kv == nullptr) {
        return LLAMA_RCEDGE_ERR_MEMORY_KIND;
    }
    if (kv->rcedge) {
        return llama_rcedge_set_alpha(ctx, alpha);
    }

    const llama_hparams & hparams = llama_get_model(ctx)->hparams;
    const std::vector<uint32_t> layer_ids = kv->get_layer_ids();
    // each layer's statistics go where its K is; the fused kernels need them in host memory
    std::map<ggml_backend_buffer_type_t, std::vector<uint32_t>> by_buft;
    bool cpu_cache = true;
    for (const uint32_t il : layer_ids) {
        const ggml_tensor * k = kv->get_k_storage((int32_t) il);
        if (k == nullptr || k->buffer == nullptr) {
            return LLAMA_RCEDGE_ERR_NOT_HOST;
        }
        // the fused kernels run only where the CPU backend computes attention: a cache in host
        // memory of the CPU device (a GPU backend's pinned host buffer is host memory too)
        ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(k->buffer);
        ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
        cpu_cache = cpu_cache && ggml_backend_buffer_is_host(k->buffer) &&
                   (dev == nullptr || ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU);
        by_buft[buft].push_back(il);
    }

    auto sc = std::make_shared<llama_rcedge_scores>();
    sc->alpha = alpha;
    sc->portable = !cpu_cache || rcedge_portable_requested();
    sc->query_window = rcedge_query_window_default();
    sc->device_fused = sc->portable && !cpu_cache;
    for (const auto & [buft, ils] : by_buft) {
        sc->device_fused = sc->device_fused && rcedge_device_fused_ok(buft);
    }
    if (sc->portable && (kv->get_n_stream() != 1 || ggml_is_quantized(kv->type_v()))) {
        // one stream is what the graph ops are written for; a quantised V cache exists only with
        // flash attention, which the portable path now keeps, but that pairing is not tested yet
        return LLAMA_RCEDGE_ERR_PORTABLE;
    }
    sc->by_layer.assign(hparams.n_layer(), nullptr);
    sc->slot.assign(hparams.n_layer(), -1);
    for (const auto & [buft, ils] : by_buft) {
        ggml_init_params params = {
            /*.mem_size   =*/ (ils.size() + 2)*ggml_tensor_overhead(),
            /*.mem_buffer =*/ nullptr,
            /*.no_alloc   =*/ true,
        };
        ggml_context_ptr tctx(ggml_init(params));
        if (!tctx) {
            return LLAMA_RCEDGE_ERR_ALLOC;
        }
        // portable path: one tensor [kv_size, 5, n_head_kv, n_layer] for all layers when they
        // share a buffer type and a KV head count, so that the graph clears the cells of every
        // layer with one set_rows and updates the decode statistics of all layers at once
        bool one = sc->portable && by_buft.size() == 1 && kv->get_n_stream() == 1;
        for (const uint32_t il : ils) {
            one = one && hparams.n_head_kv(il) == hparams.n_head_kv(ils[0]);
        }
        if (one) {
            sc->all = ggml_new_tensor_4d(tctx.get(), GGML_TYPE_F32, kv->get_size(), RC_N, hparams.n_head_kv(ils[0]), (int64_t) ils.size());
            ggml_set_name(sc->all, "rcedge_scores");
        }
        for (size_t i = 0; i < ils.size(); ++i) {
            const uint32_t il = ils[i];
            if (il >= sc->by_layer.size()) {
                sc->by_layer.resize(il + 1, nullptr);
                sc->slot.resize(il + 1, -1);
            }
            ggml_tensor * t = one ? ggml_view_4d(tctx.get(), sc->all, sc->all->ne[0], RC_N, sc->all->ne[2], 1,
                                                 sc->all->nb[1], sc->all->nb[2], sc->all->nb[3], i*sc->all->nb[3])
                                  : ggml_new_tensor_4d(tctx.get(), GGML_TYPE_F32, kv->get_size(), RC_N, hparams.n_head_kv(il), kv->get_n_stream());
            ggml_format_name(t, "rcedge_scores_l%u", il);
            sc->by_layer[il] = t;
            sc->slot[il] = (int32_t) i;
            sc->last_layer = std::max(sc->last_layer, (int32_t) il);
        }
        ggml_backend_buffer_ptr buf(ggml_backend_alloc_ctx_tensors_from_buft(tctx.get(), cpu_cache ? ggml_backend_cpu_buffer_type() : buft));
        if (!buf) {
            return LLAMA_RCEDGE_ERR_ALLOC;
        }
        sc->ctxs.push_back(std::move(tctx));
        sc->bufs.push_back(std::move(buf));
    }
    for (size_t il = 0; il < sc->by_layer.size() && sc->first_layer < 0; ++il) {
        sc->first_layer = sc->by_layer[il] != nullptr ? (int32_t) il : -1;
    }
    rcedge_clear_all(*sc, LLAMA_RCEDGE_RESET_A2SF | LLAMA_RCEDGE_RESET_MOMENTS);

    kv->rcedge = std::move(sc);
    rcedge_graph_changed(ctx, kv);
    return LLAMA_RCEDGE_OK;
}

int32_t llama_rcedge_scoring_disable(llama_context * ctx) {
    int32_t status;
    llama_kv_cache * kv = rcedge_kv_cache(ctx, &status);
    if (kv == nullptr) {
        return status;
    }
    if (kv->rcedge) {
        if (kv->rcedge->stop_layer > 0) {
            ctx->set_eval_callback(nullptr, nullptr);
        }
        kv->rcedge.reset();
        rcedge_graph_changed(ctx, kv);
    }
    return LLAMA_RCEDGE_OK;
}

int32_t llama_rcedge_scoring_enabled(const llama_context * ctx) {
    int32_t status;
    const llama_kv_cache * kv = rcedge_kv_cache(ctx, &status);
    if (kv == nullptr) {
        return status;
    }
    return kv->rcedge ? 1 : 0;
}

// The context's scoring state, or nullptr with a negative code in *status.
static llama_rcedge_scores * rcedge_scores(const llama_context * ctx, int32_t * status) {
    const llama_kv_cache * kv = rcedge_kv_cache(ctx, status);
    if (kv == nullptr) {
        return nullptr;
    }
    if (!kv->rcedge) {
        *status = LLAMA_RCEDGE_ERR_SCORING_OFF;
        return nullptr;
    }
    return kv->rcedge.get();
}

int32_t llama_rcedge_scoring_portable(const llama_context * ctx) {
    int32_t status;
    const llama_rcedge_scores * sc = rcedge_scores(ctx, &status);
    if (sc == nullptr) {
        return status;
    }
    return sc->portable ? 1 : 0;
}

int32_t llama_rcedge_scoring_device_fused(const llama_context * ctx) {
    int32_t status;
    const llama_rcedge_scores * sc = rcedge_scores(ctx, &status);
    if (sc == nullptr) {
        return status;
    }
    return sc->device_fused ? 1 : 0;
}

int32_t llama_rcedge_set_alpha(llama_context * ctx, float alpha) {
    int32_t status;
    llama_rcedge_scores * sc = rcedge_scores(ctx, &status);
    if (sc == nullptr) {
        return status;
    }
    if (!rcedge_alpha_ok(alpha)) {
        return LLAMA_RCEDGE_ERR_ALPHA;
    }
    rcedge_set_graph_setting(ctx, sc->alpha, alpha);
    return LLAMA_RCEDGE_OK;
}

// Sets one graph setting of the statistics and returns its previous value (as an int32), or a
// negative status when scoring is off.
template <typename T>
static int32_t rcedge_swap_graph_setting(llama_context * ctx, T llama_rcedge_scores::* setting, T value,
                                         bool reserve = true) {
    int32_t status;
    llama_rcedge_scores * sc = rcedge_scores(ctx, &status);
    if (sc == nullptr) {
        return status;
    }
    const int32_t prev = (int32_t) (sc->*setting);
    rcedge_set_graph_setting(ctx, sc->*setting, value, reserve);
    return prev;
}

int32_t llama_rcedge_set_query_window(llama_context * ctx, int32_t n_queries) {
    return rcedge_swap_graph_setting(ctx, &llama_rcedge_scores::query_window, std::max(0, n_queries));
}

// The graph of a decode with decay_only has fewer nodes than one without: the scheduler's plan of
// the larger graph covers it, so no reserve (a reserve made while it is on plans the smaller
// graph; the first larger graph after is then planned as it comes, as any larger graph is).
int32_t llama_rcedge_set_decay_only(llama_context * ctx, int32_t on) {
    return rcedge_swap_graph_setting(ctx, &llama_rcedge_scores::decay_only, on != 0, false);
}

int32_t llama_rcedge_set_moments(llama_context * ctx, int32_t on) {
    return rcedge_swap_graph_setting(ctx, &llama_rcedge_scores::moments, on != 0);
}

int32_t llama_rcedge_reset_stats(llama_context * ctx, uint32_t what) {
    int32_t status;
    llama_rcedge_scores * sc = rcedge_scores(ctx, &status);
    if (sc == nullptr) {
        return status;
    }
    rcedge_clear_all(*sc, what);
    return LLAMA_RCEDGE_OK;
}

int32_t llama_rcedge_n_layer(const llama_context * ctx) {
    if (ctx == nullptr) {
        return LLAMA_RCEDGE_ERR_NULL;
    }
    return (int32_t) llama_get_model(ctx)->hparams.n_layer();
}

int32_t llama_rcedge_n_head_kv(const llama_context * ctx, int32_t il) {
    if (ctx == nullptr) {
        return LLAMA_RCEDGE_ERR_NULL;
    }
    const llama_hparams & hparams = llama_get_model(ctx)->hparams;
    if (il < 0 || (uint32_t) il >= hparams.n_layer()) {
        return LLAMA_RCEDGE_ERR_LAYER;
    }
    return (int32_t) hparams.n_head_kv(il);
}

int32_t llama_rcedge_get_cells(const llama_context * ctx, int32_t * cells, llama_pos * pos, llama_seq_id * seq, int32_t n_max) {
    int32_t status;
    const llama_kv_cache * kv = rcedge_kv_cache(ctx, &status);
    if (kv == nullptr) {
        return status;
    }
    const llama_kv_cells & kc = kv->get_cells(0);
    int32_t n = 0;
    for (uint32_t i = 0; i < kc.size(); ++i) {
        if (kc.is_empty(i)) {
            continue;
        }
        if (n < n_max) {
            if (cells) {
                cells[n] = (int32_t) i;
            }
            if (pos) {
                pos[n] = kc.pos_get(i);
            }
            if (seq) {
                llama_seq_id first = -1;
                for (llama_seq_id s = 0; s < LLAMA_MAX_SEQ && first < 0; ++s) {
                    if (kc.seq_has(i, s)) {
                        first = s;
                    }
                }
                seq[n] = first;
            }
        }
        ++n;
    }
    return n;
}

int32_t llama_rcedge_get_scores(const llama_context * ctx, int32_t il, const int32_t * cells, int32_t n_cells, float * out, size_t n_out) {
    int32_t status;
    const llama_rcedge_scores * sc = rcedge_scores(ctx, &status);
    if (sc == nullptr) {
        return status;
    }
    if (n_cells < 0 || (n_cells > 0 && (cells == nullptr || out == nullptr))) {
        return LLAMA_RCEDGE_ERR_NULL;
    }
    const int32_t n_layer = (int32_t) sc->by_layer.size();
    if (il < -1 || il >= n_layer || (il >= 0 && sc->by_layer[il] == nullptr)) {
        return LLAMA_RCEDGE_ERR_LAYER;
    }

    std::vector<const ggml_tensor *> layers;
    for (int32_t l = (il < 0 ? 0 : il); l < (il < 0 ? n_layer : il + 1); ++l) {
        if (sc->by_layer[l] != nullptr) {
            layers.push_back(sc->by_layer[l]);
        }
    }
    if (layers.empty()) {
        return LLAMA_RCEDGE_ERR_LAYER;
    }
    const int64_t n_head_kv = layers.front()->ne[2];
    const int64_t kv_size   = layers.front()->ne[0];
    for (const ggml_tensor * t : layers) {
        if (t->ne[2] != n_head_kv) {
            return LLAMA_RCEDGE_ERR_HEADS;
        }
    }
    if (n_out < (size_t) n_cells*n_head_kv*RC_N) {
        return LLAMA_RCEDGE_ERR_BUFFER;
    }
    for (int32_t i = 0; i < n_cells; ++i) {
        if (cells[i] < 0 || cells[i] >= kv_size) {
            return LLAMA_RCEDGE_ERR_CELL;
        }
    }

    // statistics in device memory are read through a host copy of each layer's tensor
    std::vector<void *> bases;
    std::vector<std::vector<uint8_t>> copies(layers.size());
    for (size_t l = 0; l < layers.size(); ++l) {
        bases.push_back(rcedge_host_data(layers[l], copies[l]));
    }

    const uint32_t stream = rcedge_kv_cache(ctx)->get_stream(0);
    for (int32_t i = 0; i < n_cells; ++i) {
        for (int64_t g = 0; g < n_head_kv; ++g) {
            float * o = out + (i*n_head_kv + g)*RC_N;
            o[0] = o[1] = o[2] = o[3] = 0.0f;
            o[4] = -INFINITY;
            for (size_t l = 0; l < layers.size(); ++l) {
                const ggml_tensor * t = layers[l];
                for (int64_t k = 0; k < 4; ++k) {
                    o[k] += rcedge_stat(t, bases[l], stream, g, cells[i], k);
                }
                // the portable path keeps a finite sentinel where no query saw the cell
                if (rcedge_stat(t, bases[l], stream, g, cells[i], 1) > 0.0f) {
                    o[4] = std::max(o[4], rcedge_stat(t, bases[l], stream, g, cells[i], 4));
                }
            }
        }
    }
    return LLAMA_RCEDGE_OK;
}

int32_t llama_rcedge_set_scores(llama_context * ctx, int32_t il, const int32_t * cells, int32_t n_cells, const float * in, size_t n_in) {
    int32_t status;
    llama_rcedge_scores * sc = rcedge_scores(ctx, &status);
    if (sc == nullptr) {
        return status;
    }
    if (n_cells < 0 || (n_cells > 0 && (cells == nullptr || in == nullptr))) {
        return LLAMA_RCEDGE_ERR_NULL;
    }
    if (il < 0 || (size_t) il >= sc->by_layer.size() || sc->by_layer[il] == nullptr) {
        return LLAMA_RCEDGE_ERR_LAYER;
    }
    ggml_tensor * t = sc->by_layer[il];
    const int64_t n_head_kv = t->ne[2];
    if (n_in < (size_t) n_cells*n_head_kv*RC_N) {
        return LLAMA_RCEDGE_ERR_BUFFER;
    }
    for (int32_t i = 0; i < n_cells; ++i) {
        if (cells[i] < 0 || cells[i] >= t->ne[0]) {
            return LLAMA_RCEDGE_ERR_CELL;
        }
    }
    // statistics in device memory are written through a host copy of the layer's tensor
    std::vector<uint8_t> copy;
    void * base = rcedge_host_data(t, copy);
    const uint32_t stream = rcedge_kv_cache(ctx)->get_stream(0);
    for (int32_t i = 0; i < n_cells; ++i) {
        for (int64_t g = 0; g < n_head_kv; ++g) {
            for (int64_t k = 0; k < RC_N; ++k) {
                rcedge_stat(t, base, stream, g, cells[i], k) = in[(i*n_head_kv + g)*RC_N + k];
            }
        }
    }
    rcedge_host_data_commit(t, base);
    return LLAMA_RCEDGE_OK;
}

//
// question probes (the computation: rcedge-probe.cpp)
//

int32_t llama_rcedge_probe_capture(llama_context * ctx, int32_t n_max) {
    int32_t status;
    llama_rcedge_scores * sc = rcedge_scores(ctx, &status);
    if (sc == nullptr) {
        return status;
    }
    llama_kv_cache * kv = rcedge_kv_cache(ctx);
    if (sc->probe_capturing != (n_max > 0)) {
        rcedge_graph_changed(ctx, kv); // the copies are nodes of the graph
    }
    sc->probe_capturing = n_max > 0;
    const bool fits = !sc->probe.empty() && n_max > 0 && std::all_of(sc->probe.begin(), sc->probe.end(),
            [n_max](const llama_rcedge_probe_layer & pl) { return pl.q == nullptr || pl.q->ne[2] == n_max; });
    if (n_max == 0 || fits) {
        return LLAMA_RCEDGE_OK; // stop keeping (what was kept stays), or keep into the same store
    }
    sc->probe.clear();
    sc->probe_buf.reset();
    sc->probe_ctx.reset();
    if (n_max < 0) {
        return LLAMA_RCEDGE_OK;
    }
    const llama_hparams & hparams = llama_get_model(ctx)->hparams;
    ggml_init_params params = {
        /*.mem_size   =*/ (sc->by_layer.size() + 1)*ggml_tensor_overhead(),
        /*.mem_buffer =*/ nullptr,
        /*.no_alloc   =*/ true,
    };
    ggml_context_ptr tctx(ggml_init(params));
    std::vector<llama_rcedge_probe_layer> layers(sc->by_layer.size());
    ggml_backend_buffer_type_t buft = nullptr;
    for (size_t il = 0; tctx && il < layers.size(); ++il) {
        const ggml_tensor * t = sc->by_layer[il];
        if (t == nullptr) {
            continue;
        }
        // beside the layer's statistics: where the graph computes its attention
        buft = buft != nullptr ? buft : ggml_backend_buffer_get_type(t->buffer);
        layers[il].q = ggml_new_tensor_3d(tctx.get(), GGML_TYPE_F32, hparams.n_embd_head_k((uint32_t) il),
                                          hparams.n_head((uint32_t) il), n_max);
        ggml_format_name(layers[il].q, "rcedge_probe_q_l%zu", il);
    }
    ggml_backend_buffer_ptr buf(tctx && buft ? ggml_backend_alloc_ctx_tensors_from_buft(tctx.get(), buft) : nullptr);
    if (!buf) {
        sc->probe_capturing = false;
        return LLAMA_RCEDGE_ERR_ALLOC;
    }
    sc->probe = std::move(layers);
    sc->probe_ctx = std::move(tctx);
    sc->probe_buf = std::move(buf);
    return LLAMA_RCEDGE_OK;
}

int32_t llama_rcedge_probe_n_kept(const llama_context * ctx) {
    int32_t status;
    const llama_rcedge_scores * sc = rcedge_scores(ctx, &status);
    if (sc == nullptr) {
        return status;
    }
    int32_t n = -1;
    for (const llama_rcedge_probe_layer & pl : sc->probe) {
        if (pl.q != nullptr) {
            n = n < 0 ? pl.n : std::min(n, pl.n);
        }
    }
    return std::max(n, 0);
}

int32_t llama_rcedge_probe_max(const llama_context * ctx, const int32_t * cells, int32_t n_cells, int32_t shift,
        int32_t n_layer, float * out, size_t n_out) {
    int32_t status;
    const llama_rcedge_scores * sc = rcedge_scores(ctx, &status);
    if (sc == nullptr) {
        return status;
    }
    if (n_cells < 0 || (n_cells > 0 && (cells == nullptr || out == nullptr))) {
        return LLAMA_RCEDGE_ERR_NULL;
    }
    if (sc->probe.empty()) {
        return LLAMA_RCEDGE_ERR_NO_QUERIES;
    }
    return llama_rcedge_probe_max_logits(ctx, *rcedge_kv_cache(ctx), sc->probe, cells, n_cells, shift, n_layer, out, n_out);
}

// The scheduler's eval callback while decodes stop early (llama_rcedge_set_stop_layer; patch 0014):
// it asks for the stop node alone, so the scheduler computes the graph up to it in one piece, and
// answers false once it is computed, which ends the computation there. data: the KV cache.
static bool rcedge_stop_eval(ggml_tensor * t, bool ask, void * data) {
    const llama_rcedge_scores * sc = static_cast<const llama_kv_cache *>(data)->rcedge.get();
    const bool stop = sc != nullptr && sc->stop_layer > 0 && strcmp(t->name, sc->stop_node) == 0;
    return ask ? stop : !stop;
}

int32_t llama_rcedge_set_stop_layer(llama_context * ctx, int32_t n_layer) {
    int32_t status;
    llama_rcedge_scores * sc = rcedge_scores(ctx, &status);
    if (sc == nullptr) {
        return status;
    }
    const int32_t prev = sc->stop_layer;
    const int32_t n = n_layer > 0 && n_layer < (int32_t) sc->by_layer.size() ? n_layer : 0;
    if (n == prev) {
        return prev;
    }
    if (n > 0) {
        const llama_cparams & cparams = ctx->get_cparams();
        // the portable path updates every layer's decode statistics in the last layer's nodes
        if (sc->portable || (cparams.cb_eval != nullptr && cparams.cb_eval != rcedge_stop_eval)) {
            return LLAMA_RCEDGE_ERR_STOP;
        }
        // build_attn names each layer's attention output so (llama_context::graph_get_cb)
        snprintf(sc->stop_node, sizeof(sc->stop_node), "kqv_out-%d", n - 1);
        ctx->set_eval_callback(rcedge_stop_eval, rcedge_kv_cache(ctx));
    } else {
        ctx->set_eval_callback(nullptr, nullptr);
    }
    sc->stop_layer = n;
    return prev;
}
