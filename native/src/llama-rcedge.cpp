// pyrcedge's C API (include/llama-rcedge.h). Compiled into libllama by the top-level
// CMakeLists.txt, so it may use llama.cpp's internal classes.
#include "llama-rcedge.h"

#include "llama-context.h"
#include "llama-kv-cache.h"

#define LLAMA_RCEDGE_VERSION "0.1.0"

const char * llama_rcedge_version(void) {
    return LLAMA_RCEDGE_VERSION;
}

// The context's KV cache, or nullptr when its memory is of another kind.
static const llama_kv_cache * rcedge_kv_cache(const llama_context * ctx) {
    if (ctx == nullptr) {
        return nullptr;
    }
    return dynamic_cast<const llama_kv_cache *>(llama_get_memory(ctx));
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
