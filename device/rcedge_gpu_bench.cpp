// What scoring costs on a GPU (issue 18, docs/bench/gpu-cost.md): decode and prefill speed with
// scoring off and on (the portable path), flash-attention and soft_max contexts, on random-weight
// llama models of real shapes written by this program on the GPU machine (no model is carried).
//
//   rcedge_gpu_bench make OUT.gguf n_layer n_embd n_head n_head_kv n_ff n_vocab
//   rcedge_gpu_bench run MODEL.gguf LABEL [reps=3] [prompts=256,1024,4000] [window=64]
//   rcedge_gpu_bench profile MODEL.gguf [prompt=256] [steps=32]
//   rcedge_gpu_bench prefill-profile MODEL.gguf [prompt=4000] [window=64]
//   rcedge_gpu_bench prefill-loop MODEL.gguf prompt off|on|on-window [reps=5] [window=64] [flash=1]
//   rcedge_gpu_trace prefill-trace MODEL.gguf [prompt=4000] [window=64] [flash=1] [profile=0]
//     (the same source built with -DRCEDGE_TRACE -rdynamic -ldl: device/run_bench.sh)
//
// make: F16 matrices of N(0, std) values (a 16M-value pool per std, cycled from a random offset:
//   speed does not depend on the values), F32 norms, an SPM vocabulary of n_vocab filler tokens.
// profile: where a decode step's time goes, per op and tensor name (digits dropped, so layers
//   add up), scoring off and on, flash attention on and off: every node is computed on its own and
//   waited for (the scheduler's eval callback), so each time is one node's launch, kernels and
//   synchronisation; a poor man's profiler for machines without Nsight (no CUDA graphs either).
// prefill-loop: one context of one variant, a warm-up prefill, then reps timed prefills of the prompt
//   into a cleared cache, nothing else: for an outside profiler (nsys) to see the kernels as they run.
// prefill-trace (trace build only): where a prefill waits on the host. The trace build defines the
//   ggml-backend functions the scheduler calls between kernels (synchronize, tensor copies and sets,
//   graph compute per split, graph allocation and reserve, compute buffer allocation) and forwards
//   each to the library's (dlsym RTLD_NEXT), timing it: a poor man's nsys for the host side. For
//   scoring off, on and on with the window: prefills of the prompt into a cleared cache, wall and CPU
//   time; per ubatch of the last one, the time in each kind of call, the splits by backend, the
//   inputs copied; one ubatch's calls in order; the same prefill with a synchronisation after every
//   ubatch (host time of llama_decode, then the GPU's remaining time); the scheduler's splits and
//   their inputs (GGML_SCHED_DEBUG=1). profile=1: the contexts compute node by node (as
//   prefill-profile), and the calls between the first nodes of a ubatch are listed.
// prefill-profile: the same for a prefill (the prompt in ubatches of 512 into a cleared cache), scoring
//   off, on, and on with the query window.
// run: for each context kind (flash attention on, off) and prompt length, one context per variant
//   (n_ctx prompt + 256 + 2, rounded up to 256; n_batch = n_ubatch = 512; everything on the GPU;
//   F16 K/V; alpha 0.9): scoring off, on (every query), and on with a query window (prefill only:
//   a decode step has one query), the variants interleaved sample by sample, in a rotating order:
//   - prefill (RCEDGE_BENCH_PREFILL_REPS samples, default 9, after one warm-up): the prompt into a
//     cleared cache, repeated until a sample holds at least 2048 tokens (8 prefills of a 256-token
//     prompt), the prefills timed and summed (tok/s);
//   - decode (reps samples, off and on): the prompt, 2 untimed steps, then 256 steps, timed (tok/s).
//   RCEDGE_BENCH_NGL=0 and RCEDGE_BENCH_THREADS=N run it on the CPU (a CPU-only build of the same
//   tree: the fused CPU kernels), with N threads (default 8).
//   Scoring takes the device-fused kernels where the backend has them (ggml-cuda), the portable
//   graph ops with LLAMA_RCEDGE_DEVICE_FUSED=0 in the environment. Prints the median and spread
//   ((max-min)/median) of each speed, the median [min, max] of the paired on/off ratios of the
//   samples, and one markdown row per prompt.
#include "ggml.h"
#include "gguf.h"
#include "llama.h"
#include "llama-rcedge.h"
#include "rcedge_device.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

// ---------------------------------------------------------------------------------------------
// make

static int make_model(int argc, char ** argv) {
    if (argc < 9) {
        fprintf(stderr, "usage: %s make OUT n_layer n_embd n_head n_head_kv n_ff n_vocab\n", argv[0]);
        return 2;
    }
    const char * out = argv[2];
    const int64_t n_layer = atoll(argv[3]), n_embd = atoll(argv[4]), n_head = atoll(argv[5]);
    const int64_t n_head_kv = atoll(argv[6]), n_ff = atoll(argv[7]), n_vocab = atoll(argv[8]);
    const int64_t hd = n_embd / n_head;

    gguf_context * g = gguf_init_empty();
    gguf_set_val_str(g, "general.architecture", "llama");
    gguf_set_val_str(g, "general.name", "rcedge-bench-llama");
    gguf_set_val_u32(g, "general.file_type", 1); // mostly F16
    gguf_set_val_u32(g, "llama.context_length", 8192);
    gguf_set_val_u32(g, "llama.embedding_length", (uint32_t) n_embd);
    gguf_set_val_u32(g, "llama.block_count", (uint32_t) n_layer);
    gguf_set_val_u32(g, "llama.feed_forward_length", (uint32_t) n_ff);
    gguf_set_val_u32(g, "llama.attention.head_count", (uint32_t) n_head);
    gguf_set_val_u32(g, "llama.attention.head_count_kv", (uint32_t) n_head_kv);
    gguf_set_val_u32(g, "llama.rope.dimension_count", (uint32_t) hd);
    gguf_set_val_f32(g, "llama.rope.freq_base", 10000.0f);
    gguf_set_val_f32(g, "llama.attention.layer_norm_rms_epsilon", 1e-5f);

    std::vector<std::string> toks = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 256; ++i) {
        char b[16];
        snprintf(b, sizeof b, "<0x%02X>", i);
        toks.push_back(b);
    }
    while ((int64_t) toks.size() < n_vocab) {
        toks.push_back("tok" + std::to_string(toks.size()));
    }
    std::vector<const char *> tp;
    for (const auto & t : toks) {
        tp.push_back(t.c_str());
    }
    std::vector<float> scores(n_vocab, 0.0f);
    std::vector<int32_t> types(n_vocab, 1); // normal
    types[0] = 2; types[1] = 3; types[2] = 3; // unknown, control, control
    for (int i = 3; i < 259; ++i) {
        types[i] = 6; // byte
    }
    gguf_set_val_str(g, "tokenizer.ggml.model", "llama");
    gguf_set_arr_str(g, "tokenizer.ggml.tokens", tp.data(), tp.size());
    gguf_set_arr_data(g, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores.data(), scores.size());
    gguf_set_arr_data(g, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types.data(), types.size());
    gguf_set_val_u32(g, "tokenizer.ggml.bos_token_id", 1);
    gguf_set_val_u32(g, "tokenizer.ggml.eos_token_id", 2);
    gguf_set_val_u32(g, "tokenizer.ggml.unknown_token_id", 0);

    // tensors: (name, ne0, ne1, std; std < 0: a norm, F32 1 + 0.1 N(0,1))
    struct spec { std::string name; int64_t ne0, ne1; float std; };
    std::vector<spec> specs = {{"token_embd.weight", n_embd, n_vocab, 1.0f},
                               {"output_norm.weight", n_embd, 1, -1.0f},
                               {"output.weight", n_embd, n_vocab, 1.0f / sqrtf((float) n_embd)}};
    const float se = 1.0f / sqrtf((float) n_embd);
    for (int64_t i = 0; i < n_layer; ++i) {
        const std::string p = "blk." + std::to_string(i) + ".";
        specs.push_back({p + "attn_norm.weight", n_embd, 1, -1.0f});
        // q and k larger than usual: peaked attention, logits of a few units
        specs.push_back({p + "attn_q.weight", n_embd, n_embd, 2.0f*se});
        specs.push_back({p + "attn_k.weight", n_embd, n_head_kv*hd, 2.0f*se});
        specs.push_back({p + "attn_v.weight", n_embd, n_head_kv*hd, se});
        specs.push_back({p + "attn_output.weight", n_embd, n_embd, se});
        specs.push_back({p + "ffn_norm.weight", n_embd, 1, -1.0f});
        specs.push_back({p + "ffn_gate.weight", n_embd, n_ff, se});
        specs.push_back({p + "ffn_up.weight", n_embd, n_ff, se});
        specs.push_back({p + "ffn_down.weight", n_ff, n_embd, 1.0f / sqrtf((float) n_ff)});
    }
    ggml_init_params ip = {(specs.size() + 1)*ggml_tensor_overhead(), nullptr, true};
    ggml_context * tctx = ggml_init(ip);
    for (const auto & s : specs) {
        ggml_tensor * t = s.std < 0 ? ggml_new_tensor_1d(tctx, GGML_TYPE_F32, s.ne0)
                                    : ggml_new_tensor_2d(tctx, GGML_TYPE_F16, s.ne0, s.ne1);
        ggml_set_name(t, s.name.c_str());
        gguf_add_tensor(g, t);
    }
    if (!gguf_write_to_file(g, out, /*only_meta =*/ true)) {
        fprintf(stderr, "cannot write %s\n", out);
        return 1;
    }
    FILE * f = fopen(out, "ab");
    std::mt19937_64 rng(0);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const size_t n_pool = 1u << 24;
    std::vector<float> unit(n_pool);
    for (auto & x : unit) {
        x = nd(rng);
    }
    std::vector<std::pair<float, std::vector<ggml_fp16_t>>> pools; // by std
    std::vector<char> buf;
    size_t written = 0;
    for (const auto & s : specs) {
        const size_t n = (size_t) (s.ne0 * s.ne1);
        if (s.std < 0) {
            std::vector<float> v(n);
            for (auto & x : v) {
                x = 1.0f + 0.1f*nd(rng);
            }
            buf.assign((const char *) v.data(), (const char *) v.data() + n*sizeof(float));
        } else {
            auto it = std::find_if(pools.begin(), pools.end(), [&](const auto & p) { return p.first == s.std; });
            if (it == pools.end()) {
                std::vector<ggml_fp16_t> h(n_pool);
                for (size_t i = 0; i < n_pool; ++i) {
                    h[i] = ggml_fp32_to_fp16(unit[i]*s.std);
                }
                pools.emplace_back(s.std, std::move(h));
                it = pools.end() - 1;
            }
            const auto & h = it->second;
            buf.resize(n*sizeof(ggml_fp16_t));
            ggml_fp16_t * d = (ggml_fp16_t *) buf.data();
            size_t off = rng() % n_pool;
            for (size_t i = 0; i < n;) {
                const size_t k = std::min(n - i, n_pool - off);
                memcpy(d + i, h.data() + off, k*sizeof(ggml_fp16_t));
                i += k;
                off = 0;
            }
        }
        buf.resize(GGML_PAD(buf.size(), GGUF_DEFAULT_ALIGNMENT), 0);
        fwrite(buf.data(), 1, buf.size(), f);
        written += buf.size();
    }
    fclose(f);
    gguf_free(g);
    ggml_free(tctx);
    printf("%s: %lld layers x %lld, %lld/%lld heads, FFN %lld, vocab %lld: %.2f GB of tensors\n", out,
           (long long) n_layer, (long long) n_embd, (long long) n_head, (long long) n_head_kv, (long long) n_ff,
           (long long) n_vocab, written / 1e9);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// run

static void feed(llama_context * ctx, const llama_token * toks, int n, int step) {
    for (int i = 0; i < n; i += step) {
        const int k = std::min(step, n - i);
        if (llama_decode(ctx, llama_batch_get_one(const_cast<llama_token *>(toks) + i, k)) != 0) {
            fprintf(stderr, "decode failed at %d\n", i);
            exit(1);
        }
    }
    llama_synchronize(ctx);
}

static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct result { double med = 0, lo = 0, hi = 0, spread = 0; };

// median, min, max and spread ((max - min) / median) of a set of samples
static result summarize(std::vector<double> v) {
    result r;
    if (v.empty()) {
        return r;
    }
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    r.med = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    r.lo = v.front();
    r.hi = v.back();
    r.spread = (r.hi - r.lo) / r.med;
    return r;
}

static const int N_DECODE = 256;

// on-read: what pyrcedge.Llama runs for an A2SF cache reading a prompt: the window, and the calls
// with at least the window's tokens after them giving no statistics (llama_rcedge_set_decay_only)
enum { OFF, ON, ON_WINDOW, ON_READ, N_VAR };
static const char * VAR_NAME[N_VAR] = {"off", "on", "on-window", "on-read"};

// the backends, and the model with every layer on the GPU (only errors logged); nullptr on failure
static llama_model * load_gpu_model(const char * path) {
    llama_backend_init();
    llama_log_set([](ggml_log_level level, const char * text, void *) { if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr); }, nullptr);
    llama_model_params mp = llama_model_default_params();
    // RCEDGE_BENCH_NGL=0 keeps the model on the CPU (with a CPU-only build: the fused CPU kernels)
    const char * ngl = getenv("RCEDGE_BENCH_NGL");
    mp.n_gpu_layers = ngl ? atoi(ngl) : 999;
    llama_model * model = llama_model_load_from_file(path, mp);
    if (!model) {
        fprintf(stderr, "could not load %s\n", path);
    }
    return model;
}

static llama_context * bench_ctx(llama_model * model, bool flash, int n_prompt, int var, int window, float alpha) {
    llama_context_params p = llama_context_default_params();
    p.n_ctx = (uint32_t) GGML_PAD(n_prompt + N_DECODE + 2, 256);
    p.n_batch = 512;
    p.n_ubatch = 512;
    const char * nt = getenv("RCEDGE_BENCH_THREADS");
    p.n_threads = nt ? atoi(nt) : 8;
    p.n_threads_batch = p.n_threads;
    p.flash_attn_type = flash ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    p.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, p);
    if (!ctx) {
        fprintf(stderr, "no context\n");
        exit(1);
    }
    if (var != OFF) {
        if (llama_rcedge_scoring_enable(ctx, alpha) != 0) {
            fprintf(stderr, "scoring_enable failed\n");
            exit(1);
        }
        llama_rcedge_set_query_window(ctx, var == ON_WINDOW || var == ON_READ ? window : 0);
        if (llama_rcedge_scoring_portable(ctx) != 1 && getenv("RCEDGE_BENCH_NGL") == nullptr) {
            printf("WARNING: scoring did not take the portable path\n");
        }
    }
    return ctx;
}

// A prompt read as pyrcedge.Llama reads it (on-read): calls of `step`, those with at least `window`
// tokens after them with llama_rcedge_set_decay_only on.
static void feed_read(llama_context * ctx, const llama_token * toks, int n, int step, int window) {
    for (int i = 0; i < n; i += step) {
        const int k = std::min(step, n - i);
        llama_rcedge_set_decay_only(ctx, n - (i + k) >= window);
        if (llama_decode(ctx, llama_batch_get_one(const_cast<llama_token *>(toks) + i, k)) != 0) {
            fprintf(stderr, "decode failed at %d\n", i);
            exit(1);
        }
    }
    llama_rcedge_set_decay_only(ctx, 0);
    llama_synchronize(ctx);
}

// seconds of one prefill of the prompt into a cleared cache (the clearing not timed); window > 0:
// read as pyrcedge.Llama reads it (feed_read)
static double time_prefill(llama_context * ctx, const std::vector<llama_token> & toks, int n_prompt, int window = 0) {
    llama_memory_clear(llama_get_memory(ctx), true);
    llama_synchronize(ctx);
    const auto t0 = std::chrono::steady_clock::now();
    if (window > 0) {
        feed_read(ctx, toks.data(), n_prompt, 512, window);
    } else {
        feed(ctx, toks.data(), n_prompt, 512);
    }
    return seconds_since(t0);
}

int run_bench(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s run MODEL LABEL [reps prompts window]\n", argv[0]);
        return 2;
    }
    const char * label = argv[3];
    const int reps = argc > 4 ? atoi(argv[4]) : 3;
    std::vector<int> prompts;
    for (const char * s = argc > 5 ? argv[5] : "256,1024,4000"; *s;) {
        prompts.push_back(atoi(s));
        s = strchr(s, ',') ? strchr(s, ',') + 1 : s + strlen(s);
    }
    const int window = argc > 6 ? atoi(argv[6]) : 64;
    const char * pr_env = getenv("RCEDGE_BENCH_PREFILL_REPS");
    const int prefill_reps = pr_env ? atoi(pr_env) : 9;
    const float alpha = 0.9f;

    const auto tl = std::chrono::steady_clock::now();
    llama_model * model = load_gpu_model(argv[2]);
    if (!model) {
        return 1;
    }
    printf("## %s (%s): loaded in %.1f s; alpha %.1f, window %d for the prefill variant;\n"
           "## prefill: %d interleaved samples per variant, each >= 2048 tokens (prefills of the prompt into a\n"
           "## cleared cache, summed); decode: %d interleaved samples of %d steps after the prompt\n",
           label, argv[2], seconds_since(tl), alpha, window, prefill_reps, reps, N_DECODE);
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    std::vector<std::string> md;
    // for profiling: RCEDGE_BENCH_FLASH=0/1 keeps one context kind
    const char * only_flash = getenv("RCEDGE_BENCH_FLASH");
    int fused = -1;
    for (const bool flash : {true, false}) {
        if (only_flash != nullptr && atoi(only_flash) != (int) flash) {
            continue;
        }
        for (const int n_prompt : prompts) {
            const auto toks = make_tokens(n_prompt + N_DECODE + 2, n_vocab);
            llama_context * ctx[N_VAR];
            for (int var = 0; var < N_VAR; ++var) {
                ctx[var] = bench_ctx(model, flash, n_prompt, var, window, alpha);
                feed(ctx[var], toks.data(), n_prompt, 512); // warm-up
            }
            fused = llama_rcedge_scoring_device_fused(ctx[ON]);
            // prefill: the variants interleaved, each sample at least 2048 tokens of prompt
            const int inner = std::max(1, (2048 + n_prompt - 1) / n_prompt);
            std::vector<double> vp[N_VAR], rp[N_VAR];
            for (int rep = 0; rep < prefill_reps; ++rep) {
                double tps[N_VAR];
                for (int k = 0; k < N_VAR; ++k) {
                    const int var = (rep + k) % N_VAR; // a different order each sample
                    double t = 0;
                    for (int i = 0; i < inner; ++i) {
                        t += time_prefill(ctx[var], toks, n_prompt, var == ON_READ ? window : 0);
                    }
                    tps[var] = inner * n_prompt / t;
                }
                for (int var = 0; var < N_VAR; ++var) {
                    vp[var].push_back(tps[var]);
                    rp[var].push_back(tps[var] / tps[OFF]);
                }
            }
            // decode: off and on interleaved, after the prompt
            std::vector<double> vd[N_VAR], rd;
            for (int rep = 0; rep < reps; ++rep) {
                double tps[2];
                for (int k = 0; k < 2; ++k) {
                    const int var = (rep + k) % 2;
                    time_prefill(ctx[var], toks, n_prompt);
                    feed(ctx[var], toks.data() + n_prompt, 2, 1);
                    const auto t0 = std::chrono::steady_clock::now();
                    feed(ctx[var], toks.data() + n_prompt + 2, N_DECODE, 1);
                    tps[var] = N_DECODE / seconds_since(t0);
                }
                vd[OFF].push_back(tps[OFF]);
                vd[ON].push_back(tps[ON]);
                rd.push_back(tps[ON] / tps[OFF]);
            }
            for (int var = 0; var < N_VAR; ++var) {
                llama_free(ctx[var]);
            }
            result pre[N_VAR], rpre[N_VAR], dec[2];
            for (int var = 0; var < N_VAR; ++var) {
                pre[var] = summarize(vp[var]);
                rpre[var] = summarize(rp[var]);
                printf("%s flash=%d prompt=%d %-9s prefill %9.1f tok/s (spread %.3f)", label, (int) flash, n_prompt,
                       VAR_NAME[var], pre[var].med, pre[var].spread);
                if (var != OFF) {
                    printf("  on/off %.3f [%.3f, %.3f]", rpre[var].med, rpre[var].lo, rpre[var].hi);
                }
                if (var == OFF || var == ON) {
                    dec[var] = summarize(vd[var]);
                    printf("  decode %8.1f tok/s (spread %.3f)", dec[var].med, dec[var].spread);
                }
                printf("\n");
            }
            const result rdec = summarize(rd);
            printf("%s flash=%d prompt=%d decode on/off %.3f [%.3f, %.3f]\n", label, (int) flash, n_prompt,
                   rdec.med, rdec.lo, rdec.hi);
            fflush(stdout);
            char row[768];
            snprintf(row, sizeof row, "| %s | %s%s | %d | %.1f | %.1f | **%.2f** [%.2f, %.2f] | %.0f | %.0f | %.0f | %.0f | **%.2f** [%.2f, %.2f] | **%.2f** [%.2f, %.2f] | **%.2f** [%.2f, %.2f] |",
                     label, flash ? "flash" : "soft_max", fused == 1 ? "" : ", graph ops", n_prompt, dec[OFF].med, dec[ON].med,
                     rdec.med, rdec.lo, rdec.hi, pre[OFF].med, pre[ON].med, pre[ON_WINDOW].med, pre[ON_READ].med,
                     rpre[ON].med, rpre[ON].lo, rpre[ON].hi, rpre[ON_WINDOW].med, rpre[ON_WINDOW].lo, rpre[ON_WINDOW].hi,
                     rpre[ON_READ].med, rpre[ON_READ].lo, rpre[ON_READ].hi);
            md.push_back(row);
        }
    }
    printf("\non/off: the median of the paired ratios [min, max] over the interleaved samples\n");
    printf("| model | context | prompt | decode off | decode on | on/off | prefill off | prefill on | prefill on, window %d | prefill on, read | on/off | window on/off | read on/off |\n", window);
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (const auto & r : md) {
        printf("%s\n", r.c_str());
    }
    llama_model_free(model);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// profile

struct node_times {
    std::map<std::string, std::pair<double, int>> by_key; // seconds, nodes
    std::chrono::steady_clock::time_point last;
    std::string prev; // the node before, for RCEDGE_PROFILE_OP
};

static bool profile_cb(ggml_tensor * t, bool ask, void * user) {
    if (ask) {
        return true;
    }
    auto * nt = (node_times *) user;
    const auto now = std::chrono::steady_clock::now();
    std::string key = std::string(ggml_op_desc(t)) + " ";
    for (const char * c = t->name; *c; ++c) {
        if (!isdigit((unsigned char) *c)) {
            key += *c;
        }
    }
    auto & e = nt->by_key[key];
    const double dt = std::chrono::duration<double>(now - nt->last).count();
    e.first += dt;
    e.second += 1;
    // RCEDGE_PROFILE_OP=RMS_NORM: each such node's time, and the node computed before it
    static const char * detail = getenv("RCEDGE_PROFILE_OP");
    if (detail != nullptr && strcmp(ggml_op_desc(t), detail) == 0) {
        printf("    %s %s: %.1f us (after %s)\n", detail, t->name, 1e6 * dt, nt->prev.c_str());
    }
    nt->prev = key + " " + t->name;
    nt->last = std::chrono::steady_clock::now();
    return true;
}

// a context of n_prompt + N_DECODE + 2 cells (rounded up to 256) whose nodes are computed one by one
// and timed into nt
static llama_context * profiled_ctx(llama_model * model, int n_prompt, bool flash, node_times & nt) {
    llama_context_params p = llama_context_default_params();
    p.n_ctx = (uint32_t) GGML_PAD(n_prompt + N_DECODE + 2, 256);
    p.n_batch = 512;
    p.n_ubatch = 512;
    p.flash_attn_type = flash ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    p.no_perf = true;
    p.cb_eval = profile_cb;
    p.cb_eval_user_data = &nt;
    return llama_init_from_model(model, p);
}

// the n slowest keys of nt, their time and node count divided by `per` (steps, ubatches); returns
// the time of all nodes
static double print_slowest(const node_times & nt, int per, size_t n) {
    std::vector<std::pair<double, std::string>> v;
    double sum = 0;
    for (const auto & [k, e] : nt.by_key) {
        v.push_back({e.first, k + " (" + std::to_string(e.second / per) + " nodes)"});
        sum += e.first;
    }
    std::sort(v.rbegin(), v.rend());
    for (size_t i = 0; i < v.size() && i < n; ++i) {
        printf("  %9.1f us  %s\n", 1e6 * v[i].first / per, v[i].second.c_str());
    }
    return sum;
}

static int profile(int argc, char ** argv) {
    const int n_prompt = argc > 3 ? atoi(argv[3]) : 256;
    const int n_steps  = argc > 4 ? atoi(argv[4]) : 32;
    llama_model * model = load_gpu_model(argv[2]);
    if (!model) {
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    const auto toks = make_tokens(n_prompt + n_steps + 2, n_vocab);
    for (const bool flash : {true, false}) {
        for (const bool on : {false, true}) {
            node_times nt;
            llama_context * ctx = profiled_ctx(model, n_prompt, flash, nt);
            if (on && llama_rcedge_scoring_enable(ctx, 0.9f) != 0) {
                return 1;
            }
            feed(ctx, toks.data(), n_prompt, 512);
            feed(ctx, toks.data() + n_prompt, 2, 1);
            nt.by_key.clear();
            double total = 0;
            for (int i = 0; i < n_steps; ++i) {
                nt.last = std::chrono::steady_clock::now();
                const auto t0 = nt.last;
                feed(ctx, toks.data() + n_prompt + 2 + i, 1, 1);
                total += seconds_since(t0);
            }
            printf("## profile: flash=%d scoring %s, prompt %d: %.1f us per step (nodes one by one)\n", (int) flash,
                   on ? "on" : "off", n_prompt, 1e6 * total / n_steps);
            print_slowest(nt, n_steps, 14);
            llama_free(ctx);
        }
    }
    llama_model_free(model);
    return 0;
}

// Where a prefill's time goes: the prompt in ubatches of 512 into a cleared cache, node by node
// (as profile), for scoring off, on (every query) and on with the query window.
static int prefill_profile(int argc, char ** argv) {
    const int n_prompt = argc > 3 ? atoi(argv[3]) : 4000;
    const int window   = argc > 4 ? atoi(argv[4]) : 64;
    llama_model * model = load_gpu_model(argv[2]);
    if (!model) {
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    const auto toks = make_tokens(n_prompt, n_vocab);
    const int n_ub = (n_prompt + 511) / 512;
    for (const bool flash : {true, false}) {
        for (int var = 0; var < N_VAR; ++var) {
            node_times nt;
            llama_context * ctx = profiled_ctx(model, n_prompt, flash, nt);
            if (var != OFF) {
                if (llama_rcedge_scoring_enable(ctx, 0.9f) != 0) {
                    return 1;
                }
                llama_rcedge_set_query_window(ctx, var == ON_WINDOW || var == ON_READ ? window : 0);
            }
            feed(ctx, toks.data(), n_prompt, 512);
            llama_memory_clear(llama_get_memory(ctx), true);
            nt.by_key.clear();
            nt.last = std::chrono::steady_clock::now();
            const auto t0 = nt.last;
            feed(ctx, toks.data(), n_prompt, 512);
            const double total = seconds_since(t0);
            printf("## prefill profile: flash=%d scoring %s, prompt %d (%d ubatches): %.1f us per ubatch (nodes one by one)\n",
                   (int) flash, VAR_NAME[var], n_prompt, n_ub, 1e6 * total / n_ub);
            const double sum = print_slowest(nt, n_ub, 16);
            printf("  %9.1f us  all nodes\n", 1e6 * sum / n_ub);
            llama_free(ctx);
        }
    }
    llama_model_free(model);
    return 0;
}

static int prefill_loop(int argc, char ** argv) {
    const int n_prompt = atoi(argv[3]);
    int var = -1;
    for (int v = 0; v < N_VAR; ++v) {
        if (strcmp(argv[4], VAR_NAME[v]) == 0) {
            var = v;
        }
    }
    const int reps   = argc > 5 ? atoi(argv[5]) : 5;
    const int window = argc > 6 ? atoi(argv[6]) : 64;
    const bool flash = argc > 7 ? atoi(argv[7]) != 0 : true;
    if (var < 0) {
        fprintf(stderr, "variant: off, on, on-window or on-read\n");
        return 2;
    }
    llama_model * model = load_gpu_model(argv[2]);
    if (!model) {
        return 1;
    }
    const auto toks = make_tokens(n_prompt, llama_vocab_n_tokens(llama_model_get_vocab(model)));
    llama_context * ctx = bench_ctx(model, flash, n_prompt, var, window, 0.9f);
    feed(ctx, toks.data(), n_prompt, 512); // warm-up
    std::vector<double> t;
    for (int i = 0; i < reps; ++i) {
        t.push_back(time_prefill(ctx, toks, n_prompt));
    }
    const result r = summarize(t);
    printf("prefill-loop %s flash=%d prompt=%d %s: %.1f tok/s median of %d (%.2f ms a prefill, spread %.3f)\n", argv[2],
           (int) flash, n_prompt, VAR_NAME[var], n_prompt / r.med, reps, 1e3 * r.med, r.spread);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// prefill-trace (built with -DRCEDGE_TRACE)

#ifdef RCEDGE_TRACE
#include "ggml-alloc.h"
#include "ggml-backend.h"

#include <dlfcn.h>
#include <time.h>

namespace trace {

using clk = std::chrono::steady_clock;

struct event {
    int ub;          // ubatch index, -1 outside
    int depth;       // traced calls around it
    double t, dur;   // us since the traced prefill's start
    std::string kind;
    long long bytes;
    std::string what;
};

static bool on = false;
static int ub = -1;
static clk::time_point t0 = clk::now();
static std::vector<event> events;
static std::string sched_log; // GGML_SCHED_DEBUG output while on
static int depth = 0;         // nesting of traced calls (a copy calls a set)

static double now_us() {
    return std::chrono::duration<double, std::micro>(clk::now() - t0).count();
}

static void add(const char * kind, double t, long long bytes, std::string what) {
    if (on) {
        events.push_back({ub, depth, t, now_us() - t, kind, bytes, std::move(what)});
    }
}

template <typename F> static F real(const char * name) {
    void * p = dlsym(RTLD_NEXT, name);
    if (p == nullptr) {
        fprintf(stderr, "trace: %s not found\n", name);
        abort();
    }
    return (F) p;
}

static std::string buf_name(const ggml_tensor * t) {
    const ggml_tensor * s = t->view_src ? t->view_src : t;
    return s->buffer ? ggml_backend_buffer_name(s->buffer) : "-";
}

struct scope {
    double t = now_us();
    scope() { ++depth; }
    ~scope() { --depth; }
};

static double cpu_ms() {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return 1e3 * ts.tv_sec + 1e-6 * ts.tv_nsec;
}

} // namespace trace

extern "C" {

void ggml_backend_synchronize(ggml_backend_t backend) {
    static auto f = trace::real<void (*)(ggml_backend_t)>("ggml_backend_synchronize");
    trace::scope s;
    f(backend);
    --trace::depth;
    trace::add("sync", s.t, 0, ggml_backend_name(backend));
    ++trace::depth;
}

enum ggml_status ggml_backend_graph_compute_async(ggml_backend_t backend, struct ggml_cgraph * g) {
    static auto f = trace::real<enum ggml_status (*)(ggml_backend_t, struct ggml_cgraph *)>("ggml_backend_graph_compute_async");
    trace::scope s;
    const enum ggml_status r = f(backend, g);
    std::string what = std::string(ggml_backend_name(backend)) + " nodes=" + std::to_string(ggml_graph_n_nodes(g));
    if (strcmp(ggml_backend_name(backend), "CPU") == 0) {
        for (int i = 0; i < ggml_graph_n_nodes(g) && i < 8; ++i) {
            const ggml_tensor * n = ggml_graph_node(g, i);
            what += std::string(" ") + ggml_op_desc(n) + ":" + n->name;
        }
    }
    --trace::depth;
    trace::add("split", s.t, 0, what);
    ++trace::depth;
    return r;
}

void ggml_backend_tensor_copy(const struct ggml_tensor * src, struct ggml_tensor * dst) {
    static auto f = trace::real<void (*)(const struct ggml_tensor *, struct ggml_tensor *)>("ggml_backend_tensor_copy");
    trace::scope s;
    f(src, dst);
    --trace::depth;
    trace::add("copy", s.t, (long long) ggml_nbytes(src), std::string(src->name) + " " + trace::buf_name(src) + "->" + trace::buf_name(dst));
    ++trace::depth;
}

void ggml_backend_tensor_copy_async(ggml_backend_t bs, ggml_backend_t bd, const struct ggml_tensor * src, struct ggml_tensor * dst) {
    static auto f = trace::real<void (*)(ggml_backend_t, ggml_backend_t, const struct ggml_tensor *, struct ggml_tensor *)>("ggml_backend_tensor_copy_async");
    trace::scope s;
    f(bs, bd, src, dst);
    --trace::depth;
    trace::add("copy_async", s.t, (long long) ggml_nbytes(src), std::string(src->name) + " " + trace::buf_name(src) + "->" + trace::buf_name(dst));
    ++trace::depth;
}

void ggml_backend_tensor_set(struct ggml_tensor * t, const void * data, size_t offset, size_t size) {
    static auto f = trace::real<void (*)(struct ggml_tensor *, const void *, size_t, size_t)>("ggml_backend_tensor_set");
    trace::scope s;
    f(t, data, offset, size);
    --trace::depth;
    trace::add("set", s.t, (long long) size, std::string(t->name) + " " + trace::buf_name(t));
    ++trace::depth;
}

void ggml_backend_tensor_get(const struct ggml_tensor * t, void * data, size_t offset, size_t size) {
    static auto f = trace::real<void (*)(const struct ggml_tensor *, void *, size_t, size_t)>("ggml_backend_tensor_get");
    trace::scope s;
    f(t, data, offset, size);
    --trace::depth;
    trace::add("get", s.t, (long long) size, std::string(t->name) + " " + trace::buf_name(t));
    ++trace::depth;
}

void ggml_backend_tensor_get_async(ggml_backend_t backend, const struct ggml_tensor * t, void * data, size_t offset, size_t size) {
    static auto f = trace::real<void (*)(ggml_backend_t, const struct ggml_tensor *, void *, size_t, size_t)>("ggml_backend_tensor_get_async");
    trace::scope s;
    f(backend, t, data, offset, size);
    --trace::depth;
    trace::add("get_async", s.t, (long long) size, std::string(t->name) + " " + trace::buf_name(t));
    ++trace::depth;
}

bool ggml_backend_sched_alloc_graph(ggml_backend_sched_t sched, struct ggml_cgraph * g) {
    static auto f = trace::real<bool (*)(ggml_backend_sched_t, struct ggml_cgraph *)>("ggml_backend_sched_alloc_graph");
    trace::scope s;
    const bool r = f(sched, g);
    --trace::depth;
    trace::add("alloc_graph", s.t, 0, "nodes=" + std::to_string(ggml_graph_n_nodes(g)) + " splits=" + std::to_string(ggml_backend_sched_get_n_splits(sched)) + " copies=" + std::to_string(ggml_backend_sched_get_n_copies(sched)));
    ++trace::depth;
    return r;
}

enum ggml_status ggml_backend_sched_graph_compute_async(ggml_backend_sched_t sched, struct ggml_cgraph * g) {
    static auto f = trace::real<enum ggml_status (*)(ggml_backend_sched_t, struct ggml_cgraph *)>("ggml_backend_sched_graph_compute_async");
    trace::scope s;
    const enum ggml_status r = f(sched, g);
    --trace::depth;
    trace::add("compute", s.t, 0, "");
    ++trace::depth;
    return r;
}

bool ggml_gallocr_reserve_n(ggml_gallocr_t galloc, struct ggml_cgraph * g, const int * node_ids, const int * leaf_ids) {
    static auto f = trace::real<bool (*)(ggml_gallocr_t, struct ggml_cgraph *, const int *, const int *)>("ggml_gallocr_reserve_n");
    trace::scope s;
    const bool r = f(galloc, g, node_ids, leaf_ids);
    --trace::depth;
    trace::add("RESERVE", s.t, 0, "nodes=" + std::to_string(ggml_graph_n_nodes(g)));
    ++trace::depth;
    return r;
}

ggml_backend_buffer_t ggml_backend_buft_alloc_buffer(ggml_backend_buffer_type_t buft, size_t size) {
    static auto f = trace::real<ggml_backend_buffer_t (*)(ggml_backend_buffer_type_t, size_t)>("ggml_backend_buft_alloc_buffer");
    trace::scope s;
    ggml_backend_buffer_t r = f(buft, size);
    --trace::depth;
    trace::add("BUF_ALLOC", s.t, (long long) size, ggml_backend_buft_name(buft));
    ++trace::depth;
    return r;
}

void ggml_backend_buffer_free(ggml_backend_buffer_t buffer) {
    static auto f = trace::real<void (*)(ggml_backend_buffer_t)>("ggml_backend_buffer_free");
    trace::scope s;
    const std::string name = buffer ? ggml_backend_buffer_name(buffer) : "null";
    f(buffer);
    --trace::depth;
    trace::add("BUF_FREE", s.t, 0, name);
    ++trace::depth;
}

} // extern "C"

// one prefill of toks[0, n_prompt) into a cleared cache, ubatch by ubatch; sync_each: wait for the GPU
// after every ubatch (host[i], gpu[i]: llama_decode's time and the wait after it)
static double trace_prefill(llama_context * ctx, const std::vector<llama_token> & toks, int n_prompt, bool sync_each,
        std::vector<double> * host = nullptr, std::vector<double> * gpu = nullptr, int read_window = 0) {
    llama_memory_clear(llama_get_memory(ctx), true);
    llama_synchronize(ctx);
    trace::events.clear();
    trace::sched_log.clear();
    trace::t0 = trace::clk::now();
    for (int i = 0, k = 0; i < n_prompt; i += 512, ++k) {
        trace::ub = k;
        const double t = trace::now_us();
        if (read_window > 0) { // as feed_read (on-read)
            llama_rcedge_set_decay_only(ctx, n_prompt - (i + std::min(512, n_prompt - i)) >= read_window);
        }
        if (llama_decode(ctx, llama_batch_get_one(const_cast<llama_token *>(toks.data()) + i, std::min(512, n_prompt - i))) != 0) {
            fprintf(stderr, "decode failed\n");
            exit(1);
        }
        trace::add("DECODE", t, 0, "");
        if (host) {
            host->push_back(trace::now_us() - t);
        }
        if (sync_each) {
            const double ts = trace::now_us();
            llama_synchronize(ctx);
            if (gpu) {
                gpu->push_back(trace::now_us() - ts);
            }
        }
    }
    trace::ub = -1;
    if (read_window > 0) {
        llama_rcedge_set_decay_only(ctx, 0);
    }
    const double t = trace::now_us();
    llama_synchronize(ctx);
    trace::add("final_sync", t, 0, "");
    trace::ub = -1;
    return 1e-3 * trace::now_us();
}

static bool trace_cb(ggml_tensor * t, bool ask, void *) {
    if (ask) {
        return true;
    }
    static int n = 0;
    // the first nodes of a ubatch: GET_ROWS (the embeddings) and what follows it
    if (t->op == GGML_OP_GET_ROWS && strncmp(t->name, "inp_embd", 8) == 0) {
        n = 3;
    }
    if (n > 0) {
        --n;
        trace::add("NODE", trace::now_us(), 0, std::string(ggml_op_desc(t)) + " " + t->name);
    }
    return true;
}

static void trace_summary(int n_ub) {
    printf("  per ubatch of the traced prefill (ms; n = calls):\n");
    printf("    (decode: llama_decode; rest: decode - alloc - compute = graph build and inputs on the host)\n");
    printf("    %-3s %8s %8s %8s %8s %12s %16s %14s %16s %8s %8s %s\n", "ub", "decode", "rest", "alloc", "compute",
           "sync CUDA", "sync CPU", "copy (MB)", "set (MB)", "reserve", "buf", "splits");
    for (int k = 0; k < n_ub; ++k) {
        double dec = 0, alloc = 0, comp = 0, sg = 0, sc = 0, cp = 0, st = 0, rs = 0;
        int nsg = 0, nsc = 0, ncp = 0, nst = 0, nrs = 0, nbuf = 0, n_cuda = 0, n_cpu = 0;
        long long bcp = 0, bst = 0;
        for (const auto & e : trace::events) {
            if (e.ub != k) {
                continue;
            }
            const std::string & kind = e.kind;
            if (kind == "DECODE") dec += e.dur;
            else if (kind == "alloc_graph") alloc += e.dur;
            else if (kind == "compute") comp += e.dur;
            else if (kind == "sync" && e.what.rfind("CUDA", 0) == 0) { sg += e.dur; ++nsg; }
            else if (kind == "sync") { sc += e.dur; ++nsc; }
            else if (kind == "copy" || kind == "copy_async") { cp += e.dur; ++ncp; bcp += e.bytes; }
            else if (kind == "set" && e.depth == 0) { st += e.dur; ++nst; bst += e.bytes; } // llama's inputs
            else if (kind == "RESERVE") { rs += e.dur; ++nrs; }
            else if (kind == "BUF_ALLOC" || kind == "BUF_FREE") ++nbuf;
            else if (kind == "split") { (e.what.rfind("CPU", 0) == 0 ? n_cpu : n_cuda)++; }
        }
        printf("    %-3d %8.3f %8.3f %8.3f %8.3f %7.3f n=%-3d %7.3f n=%-3d %6.3f n=%-2d %4.1f %6.3f n=%-3d %4.1f %5.3f/%d %8d CUDA %d CPU %d\n", k,
               1e-3*dec, 1e-3*(dec - alloc - comp), 1e-3*alloc, 1e-3*comp, 1e-3*sg, nsg, 1e-3*sc, nsc, 1e-3*cp, ncp, bcp/1e6, 1e-3*st, nst, bst/1e6,
               1e-3*rs, nrs, nbuf, n_cuda, n_cpu);
    }
}

static void trace_timeline(int k) {
    printf("  calls of ubatch %d in order (t and duration in us; inner calls indented):\n", k);
    for (const auto & e : trace::events) {
        if (e.ub != k) {
            continue;
        }
        printf("    %9.1f %8.1f  %*s%-14s %8.2f MB  %s\n", e.t, e.dur, 2*e.depth, "", e.kind.c_str(), e.bytes / 1e6, e.what.c_str());
    }
}

static int prefill_trace(int argc, char ** argv) {
    const int n_prompt = argc > 3 ? atoi(argv[3]) : 4000;
    const int window   = argc > 4 ? atoi(argv[4]) : 64;
    const bool flash   = argc > 5 ? atoi(argv[5]) != 0 : true;
    const bool prof    = argc > 6 ? atoi(argv[6]) != 0 : false;
    setenv("GGML_SCHED_DEBUG", "1", 0); // the splits and their inputs (read when a context is made)
    llama_model * model = load_gpu_model(argv[2]);
    if (!model) {
        return 1;
    }
    llama_log_set([](ggml_log_level level, const char * text, void *) {
        if (level >= GGML_LOG_LEVEL_ERROR) {
            fputs(text, stderr);
        } else if (trace::on) {
            trace::sched_log += text;
        }
    }, nullptr);
    const auto toks = make_tokens(n_prompt, llama_vocab_n_tokens(llama_model_get_vocab(model)));
    const int n_ub = (n_prompt + 511) / 512;
    printf("## prefill-trace %s: flash=%d prompt=%d (%d ubatches of <= 512) window=%d profile=%d\n", argv[2], (int) flash,
           n_prompt, n_ub, window, (int) prof);
    for (int var = 0; var < N_VAR; ++var) {
        llama_context * ctx = nullptr;
        if (prof) {
            llama_context_params p = llama_context_default_params();
            p.n_ctx = (uint32_t) GGML_PAD(n_prompt + N_DECODE + 2, 256);
            p.n_batch = 512;
            p.n_ubatch = 512;
            p.n_threads = p.n_threads_batch = 8;
            p.flash_attn_type = flash ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
            p.no_perf = true;
            p.cb_eval = trace_cb;
            ctx = llama_init_from_model(model, p);
            if (var != OFF) {
                llama_rcedge_scoring_enable(ctx, 0.9f);
                llama_rcedge_set_query_window(ctx, var == ON_WINDOW || var == ON_READ ? window : 0);
            }
        } else {
            ctx = bench_ctx(model, flash, n_prompt, var, window, 0.9f);
        }
        const int read_w = var == ON_READ ? window : 0;
        trace_prefill(ctx, toks, n_prompt, false, nullptr, nullptr, read_w); // warm-up: the compute buffers reach their size
        trace_prefill(ctx, toks, n_prompt, false, nullptr, nullptr, read_w);
        printf("### %s\n", VAR_NAME[var]);
        std::vector<double> wall, cpu;
        for (int rep = 0; rep < 5; ++rep) {
            const double c0 = trace::cpu_ms();
            trace::on = rep == 4;
            wall.push_back(trace_prefill(ctx, toks, n_prompt, false, nullptr, nullptr, read_w));
            trace::on = false;
            cpu.push_back(trace::cpu_ms() - c0);
        }
        const result rw = summarize(wall), rc = summarize(cpu);
        printf("  prefill (pipelined, as the bench): %.3f ms [%.3f, %.3f], CPU %.3f ms [%.3f, %.3f], n=5; %.0f tok/s\n",
               rw.med, rw.lo, rw.hi, rc.med, rc.lo, rc.hi, 1e3 * n_prompt / rw.med);
        trace_summary(n_ub);
        trace_timeline(n_ub - 2);
        // the splits and their inputs of the traced prefill's graphs (one line per split and ubatch)
        printf("  scheduler splits (GGML_SCHED_DEBUG=1), the last two ubatches:\n");
        {
            std::vector<std::string> lines;
            size_t a = 0;
            while (a < trace::sched_log.size()) {
                size_t b = trace::sched_log.find('\n', a);
                if (b == std::string::npos) b = trace::sched_log.size();
                const std::string l = trace::sched_log.substr(a, b - a);
                if (l.find("## SPLIT") != std::string::npos) lines.push_back(l);
                a = b + 1;
            }
            const size_t per = lines.size() / (size_t) n_ub;
            for (size_t i = lines.size() >= 2*per ? lines.size() - 2*per : 0; i < lines.size(); ++i) {
                printf("    %s\n", lines[i].c_str());
            }
            printf("    (%zu split lines over %d ubatches)\n", lines.size(), n_ub);
        }
        // serialized: the GPU's time per ubatch shows as the wait after llama_decode
        std::vector<double> host, gpu;
        const double ser = trace_prefill(ctx, toks, n_prompt, true, &host, &gpu, read_w);
        printf("  serialized (llama_synchronize after each ubatch): %.3f ms; per ubatch host | wait (ms):", ser);
        double sh = 0, sg = 0;
        for (size_t i = 0; i < host.size(); ++i) {
            printf(" %.2f|%.2f", 1e-3 * host[i], 1e-3 * gpu[i]);
            sh += host[i];
            sg += gpu[i];
        }
        printf("; sums %.3f | %.3f\n", 1e-3 * sh, 1e-3 * sg);
        fflush(stdout);
        llama_free(ctx);
    }
    llama_model_free(model);
    return 0;
}
#endif // RCEDGE_TRACE

int main(int argc, char ** argv) {
    if (argc >= 2 && strcmp(argv[1], "make") == 0) {
        return make_model(argc, argv);
    }
    if (argc >= 2 && strcmp(argv[1], "run") == 0) {
        return run_bench(argc, argv);
    }
    if (argc >= 3 && strcmp(argv[1], "profile") == 0) {
        return profile(argc, argv);
    }
    if (argc >= 3 && strcmp(argv[1], "prefill-profile") == 0) {
        return prefill_profile(argc, argv);
    }
    if (argc >= 5 && strcmp(argv[1], "prefill-loop") == 0) {
        return prefill_loop(argc, argv);
    }
#ifdef RCEDGE_TRACE
    if (argc >= 3 && strcmp(argv[1], "prefill-trace") == 0) {
        return prefill_trace(argc, argv);
    }
#endif
    fprintf(stderr, "usage: %s make ... | run ...\n", argv[0]);
    return 2;
}
