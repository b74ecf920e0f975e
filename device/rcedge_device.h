// What the device programs (rcedge_gpu_check.cpp, rcedge_gpu_bench.cpp, ...) share.
#pragma once

#include "llama.h"

#include <cstdint>
#include <vector>

// A fixed pseudo-random token sequence (past the 3 special tokens), the same on every machine.
static std::vector<llama_token> make_tokens(int n, int n_vocab) {
    std::vector<llama_token> t(n);
    uint64_t s = 12345;
    for (int i = 0; i < n; ++i) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        t[i] = 3 + (llama_token) ((s >> 33) % (uint64_t) (n_vocab - 3));
    }
    return t;
}
