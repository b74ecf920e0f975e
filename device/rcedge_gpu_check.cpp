// Checks the attention scores on a GPU backend (the device-fused kernels, and the portable graph
// ops with LLAMA_RCEDGE_DEVICE_FUSED=0) against the fused CPU kernels, and times decode with
// scoring on and off (docs/gpu.md).
//
//   rcedge_gpu_check MODEL.gguf [n_prompt=300] [n_decode=20] [rtol=1e-3] [n_layer_checked=all]
//
// 1. The same tokens (a fixed pseudo-random sequence) are evaluated with every layer and the KV
//    cache on the GPU, and on the CPU with the cache in host memory (the fused kernels, soft_max
//    path). Prefill in ubatches of 128, then n_decode single steps. Every layer's statistics of
//    every used cell are compared after the prompt and at the end: counts exactly, the rest to
//    rtol of the statistic's scale (as tests/test_portable.py does); for both GPU paths, flash
//    attention on and off, alpha 0 / 0.5 / 1 (and 0.9 with flash attention). The GPU's last
//    logits must be bit-identical to those of a GPU context without scoring. Then a query window
//    of 32: the device-fused kernels against the graph ops, both on the GPU.
// 2. On the GPU: decode tok/s after prompts of several lengths, scoring off (flash attention on,
//    and off) and on.
#include "ggml.h"
#include "llama.h"
#include "llama-rcedge.h"
#include "rcedge_device.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

// the first decay_only_calls decode calls of each feed run with llama_rcedge_set_decay_only on
static int decay_only_calls = 0;

static void feed(llama_context * ctx, const std::vector<llama_token> & toks, int n_pre, int ubatch) {
    for (int i = 0, call = 0; i < (int) toks.size(); ++call) {
        if (decay_only_calls > 0) {
            llama_rcedge_set_decay_only(ctx, call < decay_only_calls); // an error code while scoring is off
        }
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

// Compares statistics a (GPU) with b (the reference), prints a summary, returns the failures:
// counts exactly, the rest within rtol of the statistic's scale, in layers below n_layer_checked.
static int compare(const stats & sa, const stats & sb, double rtol, int n_layer_checked, const char * what) {
    if (sa.cells != sb.cells) {
        printf("  %s: cells differ\n", what);
        return 1;
    }
    const char * names[5] = {"a2sf", "count", "sum", "sumsq", "max"};
    double worst[5] = {0, 0, 0, 0, 0};
    std::vector<double> worst_layer(sa.by_layer.size(), 0.0);
    long bad = 0, seen = 0, unseen_ok = 0, unseen = 0;
    for (size_t il = 0; il < sa.by_layer.size(); ++il) {
        const auto & a = sa.by_layer[il];
        const auto & b = sb.by_layer[il];
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
    printf("  %s: %zu layers x %zu cells, %ld seen (layer, cell, head), %ld unseen (%ld -inf on both); worst:",
           what, sa.by_layer.size(), sa.cells.size(), seen, unseen, unseen_ok);
    for (int k = 0; k < 5; ++k) {
        printf(" %s %.3g", names[k], worst[k]);
    }
    printf("; per layer:");
    for (double w : worst_layer) {
        printf(" %.3g", w);
    }
    const bool ok = bad == 0 && unseen_ok == unseen;
    printf("; layers < %d outside rtol %.0e: %ld -> %s\n", std::min(n_layer_checked, (int) sa.by_layer.size()), rtol, bad, ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}

// Feeds toks to a fresh GPU context (scoring on with alpha unless alpha < 0, query window, the
// device-fused kernels or the graph ops) and returns its statistics after the prompt and at the
// end, and the last logits.
struct gpu_run {
    stats prefill, end;
    std::vector<float> logits;
    int portable = -1, fused = -1;
};

static int n_ubatch = 128;

static gpu_run run_gpu(llama_model * model, bool flash, float alpha, bool fused, int window,
        const std::vector<llama_token> & toks, int n_prompt, int n_vocab) {
    setenv("LLAMA_RCEDGE_DEVICE_FUSED", fused ? "1" : "0", 1);
    llama_context * g = make_ctx(model, flash, (int) GGML_PAD(toks.size(), 256), n_ubatch, true);
    gpu_run r;
    if (alpha >= 0.0f) {
        if (llama_rcedge_scoring_enable(g, alpha) != 0) {
            fprintf(stderr, "scoring_enable failed\n");
            exit(1);
        }
        llama_rcedge_set_query_window(g, window);
        r.portable = llama_rcedge_scoring_portable(g);
        r.fused = llama_rcedge_scoring_device_fused(g);
    }
    feed(g, std::vector<llama_token>(toks.begin(), toks.begin() + n_prompt), n_prompt, n_ubatch);
    if (alpha >= 0.0f) {
        r.prefill = read_all(g);
    }
    feed(g, std::vector<llama_token>(toks.begin() + n_prompt, toks.end()), 0, 1);
    if (alpha >= 0.0f) {
        r.end = read_all(g);
    }
    const float * lg = llama_get_logits_ith(g, -1);
    r.logits.assign(lg, lg + n_vocab);
    llama_free(g);
    return r;
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [n_prompt n_decode rtol n_layer_checked n_ubatch]\n", argv[0]);
        return 2;
    }
    const int n_prompt = argc > 2 ? atoi(argv[2]) : 300;
    const int n_decode = argc > 3 ? atoi(argv[3]) : 20;
    const double rtol = argc > 4 ? atof(argv[4]) : 1e-3;
    // layers held to rtol (the rest are reported): where both backends see the same inputs
    const int n_layer_checked = argc > 5 ? atoi(argv[5]) : 1 << 30;
    n_ubatch = argc > 6 ? atoi(argv[6]) : 128;
    // RCEDGE_CHECK_GPU_ONLY=1: only the device-fused kernels against the graph ops (no CPU model:
    // for the bench's larger shapes)
    const bool gpu_only = getenv("RCEDGE_CHECK_GPU_ONLY") != nullptr;
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

    // 1. agreement: GPU (device-fused kernels, and the graph ops) vs CPU (fused kernels, soft_max
    //    path), after the prompt (prefill ubatches) and at the end (decode steps on top); logits of
    //    the GPU contexts bit-identical to scoring off
    int fails = 0;
    std::vector<float> logits_off[2];
    auto max_diff = [](const std::vector<float> & a, const std::vector<float> & b) {
        double d = 0;
        for (size_t i = 0; i < a.size(); ++i) {
            d = std::max(d, (double) std::fabs(a[i] - b[i]));
        }
        return d;
    };
    for (const bool flash : {true, false}) {
        logits_off[flash] = run_gpu(gpu_model, flash, -1.0f, true, 0, toks, n_prompt, n_vocab).logits;
        // the forward pass itself repeats bit for bit (else "unchanged by scoring" means nothing)
        const auto again = run_gpu(gpu_model, flash, -1.0f, true, 0, toks, n_prompt, n_vocab).logits;
        printf("flash_attn=%d, scoring off twice: last logits %s (max |diff| %.3g)\n", (int) flash,
               again == logits_off[flash] ? "bit-identical" : "DIFFERENT", max_diff(again, logits_off[flash]));
    }
    for (const bool fused : {true, false}) {
        for (const bool flash : {true, false}) {
            for (const float a : {0.9f, 0.0f, 0.5f, 1.0f}) {
                if (gpu_only) {
                    break;
                }
                if (a == 0.9f && !flash) {
                    continue;
                }
                alpha = a;
                const gpu_run rg = run_gpu(gpu_model, flash, alpha, fused, 0, toks, n_prompt, n_vocab);
                llama_context * c = make_ctx(cpu_model, false, (int) GGML_PAD(toks.size(), 256), n_ubatch, false);
                if (llama_rcedge_scoring_enable(c, alpha) != 0) {
                    fprintf(stderr, "scoring_enable failed\n");
                    return 1;
                }
                printf("alpha %.1f, GPU context flash_attn=%d: GPU path portable=%d device_fused=%d, CPU path portable=%d\n",
                       alpha, (int) flash, rg.portable, rg.fused, llama_rcedge_scoring_portable(c));
                fails += rg.fused != (int) fused;
                feed(c, std::vector<llama_token>(toks.begin(), toks.begin() + n_prompt), n_prompt, n_ubatch);
                const stats pc = read_all(c);
                feed(c, std::vector<llama_token>(toks.begin() + n_prompt, toks.end()), 0, 1);
                const stats ec = read_all(c);
                fails += compare(rg.prefill, pc, rtol, n_layer_checked, "after prefill");
                fails += compare(rg.end, ec, rtol, n_layer_checked, "after decode ");
                const float * lc = llama_get_logits_ith(c, -1);
                double dmax = 0, amax = 0;
                for (int i = 0; i < n_vocab; ++i) {
                    dmax = std::max(dmax, (double) std::fabs(rg.logits[i] - lc[i]));
                    amax = std::max(amax, (double) std::fabs(lc[i]));
                }
                const bool same = rg.logits == logits_off[flash];
                printf("  last logits: max |GPU - CPU| %.3g (max |logit| %.3g); GPU with scoring vs without: %s\n",
                       dmax, amax, same ? "bit-identical" : "DIFFERENT (FAIL)");
                fails += !same;
                llama_free(c);
            }
        }
    }

    // every query and the query window: device-fused kernels against the graph ops on the GPU (the
    // same forward pass, so every layer is held to rtol)
    for (const int window : {0, 6, 32}) {
        for (const bool flash : {true, false}) {
            const gpu_run rf = run_gpu(gpu_model, flash, 0.9f, true, window, toks, n_prompt, n_vocab);
            const gpu_run rp = run_gpu(gpu_model, flash, 0.9f, false, window, toks, n_prompt, n_vocab);
            printf("query window %d (0: every query) of ubatches of %d, alpha 0.9, flash_attn=%d: device-fused (%d) vs graph ops (%d)\n",
                   window, n_ubatch, (int) flash, rf.fused, rp.fused);
            printf("  last logits vs scoring off: device-fused %s (max |diff| %.3g), graph ops %s (max |diff| %.3g)\n",
                   rf.logits == logits_off[flash] ? "bit-identical" : "DIFFERENT (FAIL)", max_diff(rf.logits, logits_off[flash]),
                   rp.logits == logits_off[flash] ? "bit-identical" : "DIFFERENT (FAIL)", max_diff(rp.logits, logits_off[flash]));
            fails += rf.logits != logits_off[flash];
            fails += rp.logits != logits_off[flash];
            fails += compare(rf.prefill, rp.prefill, rtol, 1 << 30, "after prefill");
            fails += compare(rf.end, rp.end, rtol, 1 << 30, "after decode ");
        }
    }

    // decay only (llama_rcedge_set_decay_only) in the first two calls of the prompt and of the
    // decode steps: the device-fused kernels and the graph ops against the CPU kernels, and
    // against each other
    decay_only_calls = 2;
    for (const bool flash : {true, false}) {
        const gpu_run rf = run_gpu(gpu_model, flash, 0.9f, true, 0, toks, n_prompt, n_vocab);
        const gpu_run rp = run_gpu(gpu_model, flash, 0.9f, false, 0, toks, n_prompt, n_vocab);
        printf("decay only in the first 2 calls, alpha 0.9, flash_attn=%d: device-fused (%d) vs graph ops (%d)\n",
               (int) flash, rf.fused, rp.fused);
        fails += rf.logits != logits_off[flash];
        fails += rp.logits != logits_off[flash];
        fails += compare(rf.prefill, rp.prefill, rtol, 1 << 30, "after prefill");
        fails += compare(rf.end, rp.end, rtol, 1 << 30, "after decode ");
        if (gpu_only) {
            continue;
        }
        llama_context * c = make_ctx(cpu_model, false, (int) GGML_PAD(toks.size(), 256), n_ubatch, false);
        llama_rcedge_scoring_enable(c, 0.9f);
        feed(c, std::vector<llama_token>(toks.begin(), toks.begin() + n_prompt), n_prompt, n_ubatch);
        const stats pc = read_all(c);
        feed(c, std::vector<llama_token>(toks.begin() + n_prompt, toks.end()), 0, 1);
        const stats ec = read_all(c);
        printf("  device-fused vs the CPU kernels:\n");
        fails += compare(rf.prefill, pc, rtol, n_layer_checked, "after prefill");
        fails += compare(rf.end, ec, rtol, n_layer_checked, "after decode ");
        llama_free(c);
    }
    decay_only_calls = 0;
    unsetenv("LLAMA_RCEDGE_DEVICE_FUSED");

    // 2. decode speed on the GPU
    const int n_steps = 256;
    if (getenv("RCEDGE_CHECK_NO_TIMING") != nullptr) {
        printf("%s\n", fails == 0 ? "ALL PASS" : "SOME FAILED");
        return fails == 0 ? 0 : 1;
    }
    printf("decode tok/s on the GPU, %d steps after the prompt (median of 3 runs):\n", n_steps);
    printf("%8s %14s %14s %14s\n", "prompt", "off, flash", "off, no flash", "on (flash)");
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
