// pyrcedge's C API, compiled into libllama (native/src/llama-rcedge.cpp).
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

#ifdef __cplusplus
}
#endif
