// Which of ggml-cuda's fusions (ggml_cuda_try_fuse) a llama graph offers, read on the CPU: records
// the node order of each graph through the scheduler's eval callback (asking for no tensor, so
// the graph is computed as usual) and lists, per graph, the fusions whose graph conditions hold
// (ggml_can_fuse: adjacent nodes, one use, same shape; the patterns llama's dense models meet), and
// for the two that ggml-cuda also refuses when the fused output was allocated over an input
// (ggml_cuda_check_fusion_memory_ranges), whether it was, with the CPU backend's allocation (same
// allocator, other alignment: an indication for CUDA, not a copy of it). Scoring runs the portable
// graph ops (llama_rcedge_set_force_portable), as a GPU backend's graph holds them.
//   fusion_scan MODEL n_prompt n_decode flash(0/1) scoring(0/1) [window=0] [ubatch=512]
//   DUMP=1: every node too
// Build against the patched libllama of the venv (docs/bench/gpu-cost.md, "the fusion found"):
//   g++ -O1 -std=c++17 -I<tree>/include -I<tree>/ggml/include -Inative/include
//       device/fusion_scan.cpp -L<lib> -lllama -lggml -lggml-base -o fusion_scan
#include "ggml.h"
#include "llama.h"
#include "llama-rcedge.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

static std::vector<ggml_tensor *> g_nodes;

static bool cb(ggml_tensor * t, bool ask, void *) {
    if (ask) {
        g_nodes.push_back(t);
    }
    return false;
}

static bool is_noop(const ggml_tensor * t) {
    return ggml_is_empty(t) || t->op == GGML_OP_RESHAPE || t->op == GGML_OP_TRANSPOSE || t->op == GGML_OP_VIEW ||
           t->op == GGML_OP_PERMUTE || t->op == GGML_OP_NONE;
}

struct scan {
    const std::vector<ggml_tensor *> & n;
    std::map<const ggml_tensor *, int> uses;
    explicit scan(const std::vector<ggml_tensor *> & nodes) : n(nodes) {
        for (auto * t : n) {
            for (int s = 0; s < GGML_MAX_SRC; ++s) {
                if (t->src[s]) {
                    uses[t->src[s]]++;
                }
            }
        }
    }
    bool has_uses(int i, int k) {
        const ggml_tensor * t = n[i];
        return uses[t] == k && t->view_src == nullptr && !(t->flags & GGML_TENSOR_FLAG_OUTPUT);
    }
    // ggml_can_fuse
    bool can_fuse(int i, std::initializer_list<ggml_op> ops) {
        if (i + (int) ops.size() > (int) n.size()) {
            return false;
        }
        int k = 0;
        for (ggml_op op : ops) {
            const ggml_tensor * t = n[i + k];
            if (t->op != op || !(t->flags & GGML_TENSOR_FLAG_COMPUTE)) {
                return false;
            }
            if (k < (int) ops.size() - 1 && !has_uses(i + k, 1)) {
                return false;
            }
            if (k > 0) {
                const ggml_tensor * p = n[i + k - 1];
                if (t->src[0] != p && t->src[1] != p) {
                    return false;
                }
                if (!ggml_are_same_shape(t, p)) {
                    return false;
                }
            }
            ++k;
        }
        return true;
    }
};

static bool mem_ok(const std::vector<ggml_tensor *> & n, int i, int cnt) {
    const ggml_tensor * dst = n[i + cnt - 1];
    auto ov = [](const ggml_tensor * a, const ggml_tensor * b) {
        const char * a0 = (const char *) a->data, * a1 = a0 + ggml_nbytes(a);
        const char * b0 = (const char *) b->data, * b1 = b0 + ggml_nbytes(b);
        return (b0 <= a0 && a0 < b1) || (a0 <= b0 && b0 < a1);
    };
    for (int j = i; j < i + cnt; ++j) {
        for (int s = 0; s < GGML_MAX_SRC; ++s) {
            const ggml_tensor * src = n[j]->src[s];
            if (!src || src->op == GGML_OP_NONE) continue;
            if (ov(dst, src)) {
                bool found = false;
                for (int k = i; k < j; ++k) found = found || n[k] == src;
                if (!found) {
                    printf("  (output %s allocated over input %s)\n", dst->name, src->name);
                    return false;
                }
            }
        }
    }
    return true;
}

static std::string desc(const ggml_tensor * t) {
    return std::string(ggml_op_desc(t)) + "(" + t->name + ")";
}

static std::vector<std::string> fusions(const std::vector<ggml_tensor *> & nodes) {
    scan s(nodes);
    std::vector<std::string> out;
    for (int i = 0; i < (int) nodes.size(); ++i) {
        ggml_tensor * t = nodes[i];
        if (is_noop(t) || !(t->flags & GGML_TENSOR_FLAG_COMPUTE)) {
            continue;
        }
        int skip = 0;
        std::string what;
        if (s.can_fuse(i, {GGML_OP_ROPE, GGML_OP_VIEW, GGML_OP_SET_ROWS}) ||
            // ggml_can_fuse_subgraph: the view is an intermediate too; approximate as adjacency
            (i + 2 < (int) nodes.size() && t->op == GGML_OP_ROPE && nodes[i + 1]->op == GGML_OP_VIEW &&
             nodes[i + 2]->op == GGML_OP_SET_ROWS && nodes[i + 1]->src[0] == t && nodes[i + 2]->src[0] == nodes[i + 1])) {
            skip = 2; what = mem_ok(nodes, i, 3) ? "rope+view+set_rows" : "REFUSED, memory: rope+view+set_rows";
        } else if (t->op == GGML_OP_ADD || t->op == GGML_OP_MUL) {
            int nf = 0;
            for (; nf <= 6; ++nf) {
                if (!s.can_fuse(i + nf, {t->op, t->op})) break;
                if (nodes[i + nf] != nodes[i + nf + 1]->src[0]) break;
            }
            if (nf > 0) { skip = nf; what = "multi-" + std::string(ggml_op_name(t->op)); }
        }
        if (!skip && t->op == GGML_OP_MUL_MAT) {
            if (i + 2 < (int) nodes.size() && nodes[i + 1]->op == GGML_OP_MUL_MAT && nodes[i + 2]->op == GGML_OP_GLU &&
                nodes[i + 2]->src[0] == t && nodes[i + 2]->src[1] == nodes[i + 1] && s.has_uses(i, 1) && s.has_uses(i + 1, 1) && t->ne[1] == 1) {
                skip = 2; what = mem_ok(nodes, i, 3) ? "mm+mm+glu (decode)" : "REFUSED, memory: mm+mm+glu (decode)";
            }
            else if (s.can_fuse(i, {GGML_OP_MUL_MAT, GGML_OP_ADD}) && t->ne[1] == 1) { skip = 1; what = "mmv+add (decode)"; }
        }
        if (!skip && t->op == GGML_OP_RMS_NORM) {
            if (s.can_fuse(i, {GGML_OP_RMS_NORM, GGML_OP_MUL, GGML_OP_ROPE})) { skip = 2; what = "rms+mul+rope"; }
            else if (s.can_fuse(i, {GGML_OP_RMS_NORM, GGML_OP_MUL, GGML_OP_ADD})) { skip = 2; what = "rms+mul+add"; }
            else if (s.can_fuse(i, {GGML_OP_RMS_NORM, GGML_OP_MUL})) { skip = 1; what = "rms+mul"; }
            else if (s.can_fuse(i, {GGML_OP_RMS_NORM, GGML_OP_SCALE})) { skip = 1; what = "rms+scale"; }
        }
        if (!skip && t->op == GGML_OP_UNARY) {
            const ggml_unary_op u = ggml_get_unary_op(t);
            if ((u == GGML_UNARY_OP_SILU || u == GGML_UNARY_OP_SIGMOID || u == GGML_UNARY_OP_SOFTPLUS) &&
                s.can_fuse(i, {GGML_OP_UNARY, GGML_OP_MUL})) { skip = 1; what = "unary+mul"; }
            else if (u == GGML_UNARY_OP_RELU && s.can_fuse(i, {GGML_OP_UNARY, GGML_OP_SQR})) { skip = 1; what = "relu+sqr"; }
        }
        if (!skip && t->op == GGML_OP_SCALE && s.can_fuse(i, {GGML_OP_SCALE, GGML_OP_UNARY, GGML_OP_SCALE}) &&
            ggml_get_unary_op(nodes[i + 1]) == GGML_UNARY_OP_TANH) {
            skip = 2; what = "scale+tanh+scale";
        }
        if (skip) {
            std::string line = what + ":";
            for (int k = 0; k <= skip; ++k) line += " " + desc(nodes[i + k]);
            out.push_back(line);
            i += skip;
        }
    }
    return out;
}

int main(int argc, char ** argv) {
    const char * path = argv[1];
    const int n_prompt = atoi(argv[2]), n_decode = atoi(argv[3]);
    const bool flash = atoi(argv[4]) != 0, scoring = atoi(argv[5]) != 0;
    const int window = argc > 6 ? atoi(argv[6]) : 0;
    const int ubatch = argc > 7 ? atoi(argv[7]) : 512;
    const bool dump = getenv("DUMP") != nullptr;
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(path, mp);
    llama_context_params p = llama_context_default_params();
    p.n_ctx = 2048;
    p.n_batch = ubatch;
    p.n_ubatch = ubatch;
    p.n_threads = 1;
    p.n_threads_batch = 1;
    p.flash_attn_type = flash ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    p.cb_eval = cb;
    llama_context * ctx = llama_init_from_model(model, p);
    if (scoring) {
        llama_rcedge_set_force_portable(1);
        if (llama_rcedge_scoring_enable(ctx, 0.9f) != 0) { fprintf(stderr, "enable failed\n"); return 1; }
        llama_rcedge_set_query_window(ctx, window);
        printf("# portable %d device_fused %d\n", llama_rcedge_scoring_portable(ctx), 0);
    }
    std::vector<llama_token> toks(n_prompt + n_decode);
    for (size_t i = 0; i < toks.size(); ++i) toks[i] = (llama_token) ((i * 7919 + 13) % 40000 + 100);
    int step = 0;
    for (int i = 0; i < (int) toks.size(); ++step) {
        const int n = i < n_prompt ? std::min(ubatch, n_prompt - i) : 1;
        g_nodes.clear();
        if (llama_decode(ctx, llama_batch_get_one(toks.data() + i, n)) != 0) { fprintf(stderr, "decode\n"); return 1; }
        llama_synchronize(ctx);
        printf("## graph %d: %d tokens, %zu nodes\n", step, n, g_nodes.size());
        for (auto & l : fusions(g_nodes)) printf("%s\n", l.c_str());
        if (dump) {
            for (size_t k = 0; k < g_nodes.size(); ++k) {
                ggml_tensor * t = g_nodes[k];
                printf("  [%4zu] %-12s %-28s ne=%lld,%lld,%lld,%lld f=%d src:", k, ggml_op_desc(t), t->name,
                       (long long) t->ne[0], (long long) t->ne[1], (long long) t->ne[2], (long long) t->ne[3], t->flags);
                for (int s = 0; s < GGML_MAX_SRC; ++s) if (t->src[s]) printf(" %s", t->src[s]->name);
                printf("\n");
            }
        }
        i += n;
    }
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
