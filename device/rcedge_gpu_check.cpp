// Checks the portable attention-scores path on a GPU backend against the fused CPU kernels, and
// times decode with scoring on and off (docs/gpu.md).
//
//   rcedge_gpu_check MODEL.gguf [n_prompt=300] [n_decode=20] [rtol=1e-3] [n_layer_checked=all]
//
// 1. The same tokens (a fixed pseudo-random sequence) are evaluated twice: with every layer and
//    the KV cache on the GPU (scoring takes the portable path), and on the CPU with the cache in
//    host memory (the fused kernels, soft_max path). Prefill in ubatches of 128, then n_decode
//    single steps. Every layer's statistics of every used cell are compared: counts exactly, the
//    rest to rtol of the statistic's scale (as tests/test_portable.py does).
// 2. On the GPU: decode tok/s after prompts of several lengths, scoring off (flash attention on,
//    and off) and on.
#include "llama.h"
#include "llama-rcedge.h"
#include "rcedge_device.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

static llama_context * make_ctx(llama_model * model, bool flash, int n_ctx, int n_ubatch, bool gpu) {
    llama_context_params p = llama_context_default_params();
    p.n_ctx = n_ctx;
    p.n_batch = n_ubatch;
    p.n_ubatch = n_ubatch;
    p.n_threads = 8;
    p.n_threads_batch = 8;
    p.flash_attn_type = flash ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    p.offload_kqv = gpu;
    p.op_offload = gpu;
    p.no_perf = true;
    return llama_init_from_model(model, p);
}

static void feed(llama_context * ctx, const std::vector<llama_token> & toks, int n_pre, int ubatch) {
    for (int i = 0; i < (int) toks.size();) {
        const int n = i < n_pre ? std::min(ubatch, n_pre - i) : 1;
        if (llama_decode(ctx, llama_batch_get_one(const_cast<llama_token *>(toks.data()) + i, n)) != 0) {
            fprintf(stderr, "decode failed at %d\n", i);
            exit(1);
        }
        i += n;
    }
    llama_synchronize(ctx);
}

struct stats {
    std::vector<int32_t> cells;
    std::vector<std::vector<float>> by_layer; // [cell][head][stat]
};

static stats read_all(llama_context * ctx) {
    stats s;
    const int n = llama_rcedge_get_cells(ctx, nullptr, nullptr, nullptr, 0);
    s.cells.resize(n);
    llama_rcedge_get_cells(ctx, s.cells.data(), nullptr, nullptr, n);
    for (int il = 0; il < llama_rcedge_n_layer(ctx); ++il) {
        const int g = llama_rcedge_n_head_kv(ctx, il);
        std::vector<float> out((size_t) n * g * LLAMA_RCEDGE_N_STATS);
        const int rc = llama_rcedge_get_scores(ctx, il, s.cells.data(), n, out.data(), out.size());
        if (rc != 0) {
            fprintf(stderr, "get_scores: %d\n", rc);
            exit(1);
        }
        s.by_layer.push_back(std::move(out));
    }
    return s;
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [n_prompt n_decode rtol n_layer_checked]\n", argv[0]);
        return 2;
    }
    const int n_prompt = argc > 2 ? atoi(argv[2]) : 300;
    const int n_decode = argc > 3 ? atoi(argv[3]) : 20;
    const double rtol = argc > 4 ? atof(argv[4]) : 1e-3;
    // layers held to rtol (the rest are reported): where both backends see the same inputs
    const int n_layer_checked = argc > 5 ? atoi(argv[5]) : 1 << 30;
    float alpha = 0.9f;
    llama_backend_init();
    llama_log_set([](ggml_log_level level, const char * text, void *) { if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr); }, nullptr);

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 999;
    llama_model * gpu_model = llama_model_load_from_file(argv[1], mp);
    mp.n_gpu_layers = 0;
    llama_model * cpu_model = llama_model_load_from_file(argv[1], mp);
    if (!gpu_model || !cpu_model) {
        fprintf(stderr, "could not load %s\n", argv[1]);
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(gpu_model));
    const auto toks = make_tokens(n_prompt + n_decode, n_vocab);

    // 1. agreement: GPU (portable) vs CPU (fused)
    int fails = 0;
    const struct { bool flash; float alpha; } runs_1[] = {{true, 0.9f}, {false, 0.0f}, {false, 0.5f}, {false, 1.0f}};
    for (const auto & run1 : runs_1) {
        const bool gpu_flash = run1.flash;
        alpha = run1.alpha;
        llama_context * g = make_ctx(gpu_model, gpu_flash, 1024, 128, true);
        llama_context * c = make_ctx(cpu_model, false, 1024, 128, false);
        if (llama_rcedge_scoring_enable(g, alpha) != 0 || llama_rcedge_scoring_enable(c, alpha) != 0) {
            fprintf(stderr, "scoring_enable failed\n");
            return 1;
        }
        printf("alpha %.1f, GPU context flash_attn=%d: GPU path portable=%d, CPU path portable=%d\n",
               alpha, (int) gpu_flash, llama_rcedge_scoring_portable(g), llama_rcedge_scoring_portable(c));
        feed(g, toks, n_prompt, 128);
        feed(c, toks, n_prompt, 128);
        const stats sg = read_all(g), sc = read_all(c);
        if (sg.cells != sc.cells) {
            printf("  cells differ\n");
            ++fails;
        }
        const char * names[5] = {"a2sf", "count", "sum", "sumsq", "max"};
        double worst[5] = {0, 0, 0, 0, 0};
        std::vector<double> worst_layer(sg.by_layer.size(), 0.0);
        long bad = 0, seen = 0, unseen_ok = 0, unseen = 0;
        for (size_t il = 0; il < sg.by_layer.size(); ++il) {
            const auto & a = sg.by_layer[il];
            const auto & b = sc.by_layer[il];
            for (size_t i = 0; i < a.size(); i += 5) {
                const double cnt = b[i + 1];
                if (cnt == 0) {
                    ++unseen;
                    unseen_ok += a[i + 1] == 0 && std::isinf(a[i + 4]) && a[i + 4] < 0 && std::isinf(b[i + 4]);
                    continue;
                }
                ++seen;
                const double rms = std::sqrt(b[i + 3] / cnt);
                const double scale[5] = {std::fabs(b[i]), 1, std::sqrt(b[i + 3] * cnt), b[i + 3], std::max<double>(std::fabs(b[i + 4]), rms)};
                for (int k = 0; k < 5; ++k) {
                    const double err = std::fabs((double) a[i + k] - (double) b[i + k]) / std::max(scale[k], 1e-6);
                    worst[k] = std::max(worst[k], err);
                    if (k != 1) {
                        worst_layer[il] = std::max(worst_layer[il], err);
                    }
                    if ((int) il < n_layer_checked && (k == 1 ? a[i + k] != b[i + k] : err > rtol)) {
                        ++bad;
                    }
                }
            }
        }
        printf("  %zu layers x %zu cells: %ld seen (layer, cell, head) triples, %ld unseen (%ld with -inf max on both)\n",
               sg.by_layer.size(), sg.cells.size(), seen, unseen, unseen_ok);
        printf("  worst relative difference GPU vs CPU:");
        for (int k = 0; k < 5; ++k) {
            printf(" %s %.3g", names[k], worst[k]);
        }
        printf("\n  worst per layer:");
        for (double w : worst_layer) {
            printf(" %.3g", w);
        }
        printf("\n  values of layers < %d outside rtol %.0e (counts: exact): %ld -> %s\n", std::min(n_layer_checked, (int) sg.by_layer.size()), rtol, bad, bad == 0 && unseen_ok == unseen ? "PASS" : "FAIL");
        fails += bad > 0 || unseen_ok != unseen;
        // logits of the last token
        const float * lg = llama_get_logits_ith(g, -1), * lc = llama_get_logits_ith(c, -1);
        double dmax = 0, amax = 0;
        for (int i = 0; i < n_vocab; ++i) {
            dmax = std::max(dmax, (double) std::fabs(lg[i] - lc[i]));
            amax = std::max(amax, (double) std::fabs(lc[i]));
        }
        printf("  last logits: max |GPU - CPU| %.3g (max |logit| %.3g)\n", dmax, amax);
        llama_free(g);
        llama_free(c);
    }

    // 2. decode speed on the GPU
    const int n_steps = 256;
    if (getenv("RCEDGE_CHECK_NO_TIMING") != nullptr) {
        printf("%s\n", fails == 0 ? "ALL PASS" : "SOME FAILED");
        return fails == 0 ? 0 : 1;
    }
    printf("decode tok/s on the GPU, %d steps after the prompt (median of 3 runs):\n", n_steps);
    printf("%8s %14s %14s %14s\n", "prompt", "off, flash", "off, no flash", "on (portable)");
    for (const int n_ctx_prompt : {256, 1024, 4000 - n_steps}) {
        const auto t = make_tokens(n_ctx_prompt + n_steps, n_vocab);
        double r[3];
        for (int variant = 0; variant < 3; ++variant) {
            std::vector<double> runs;
            for (int rep = 0; rep < 3; ++rep) {
                llama_context * g = make_ctx(gpu_model, variant == 0 || variant == 2, 4096, 512, true);
                if (variant == 2) {
                    llama_rcedge_scoring_enable(g, alpha);
                }
                feed(g, std::vector<llama_token>(t.begin(), t.begin() + n_ctx_prompt), n_ctx_prompt, 512);
                // two warm-up steps (graph build, CUDA graph capture), then time the rest
                const auto rest = std::vector<llama_token>(t.begin() + n_ctx_prompt, t.end());
                feed(g, std::vector<llama_token>(rest.begin(), rest.begin() + 2), 0, 1);
                const auto t0 = std::chrono::steady_clock::now();
                feed(g, std::vector<llama_token>(rest.begin() + 2, rest.end()), 0, 1);
                const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                runs.push_back((n_steps - 2) / s);
                llama_free(g);
            }
            std::sort(runs.begin(), runs.end());
            r[variant] = runs[1];
        }
        printf("%8d %14.1f %14.1f %14.1f   on/off(flash) %.3f  on/off(no flash) %.3f\n", n_ctx_prompt, r[0], r[1], r[2], r[2] / r[0], r[2] / r[1]);
    }

    llama_model_free(gpu_model);
    llama_model_free(cpu_model);
    printf("%s\n", fails == 0 ? "ALL PASS" : "SOME FAILED");
    return fails == 0 ? 0 : 1;
}
