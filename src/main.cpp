// qwenvl-adapter: the command line.
//
//   qwenvl-adapter                 the demo (same as `qwenvl-adapter demo`)
//   qwenvl-adapter demo [--fixture FILE.json]
//       runs the adapter and the tower's tail on a golden fixture and prints every stage's shape and its
//       largest difference from the values PyTorch wrote; exit 1 when a stage is outside the tolerance.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "adapter.hpp"
#include "compare.hpp"
#include "features.hpp"
#include "fixture.hpp"

namespace {

const char* kDefaultFixture = QWENVL_DATA_DIR "/fixtures/resize_up.json";

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

void print_demo_help() {
    std::printf(
        "usage: qwenvl-adapter demo [--fixture FILE.json]\n"
        "\n"
        "Runs Qwen-VL's adapter (attn_pool) and the visual tower's tail (ln_post, proj) on a golden fixture\n"
        "and prints each stage's shape and its largest difference from the values PyTorch wrote.\n"
        "Default fixture: %s\n",
        kDefaultFixture);
}

int run_demo(const std::vector<std::string>& args) {
    std::string path = kDefaultFixture;
    for (std::size_t i = 0; i < args.size(); ++i) {
        if (args[i] == "--help" || args[i] == "-h") {
            print_demo_help();
            return 0;
        } else if (args[i] == "--fixture" && i + 1 < args.size()) {
            path = args[++i];
        } else {
            throw UsageError("demo: unknown argument '" + args[i] + "'");
        }
    }
    const qwenvl::Fixture f = qwenvl::load_fixture(path);
    const auto& c = f.config;
    const std::size_t N = f.x.shape(0), L = f.x.shape(1);
    std::printf("Qwen-VL position-aware vision-language adapter, fixture '%s'\n  %s\n", f.name.c_str(),
                f.description.c_str());
    std::printf("  expected values: PyTorch %s, numpy %s, seed %d (tests/reference/make_fixtures.py)\n",
                f.meta["torch_version"].get<std::string>().c_str(), f.meta["numpy_version"].get<std::string>().c_str(),
                f.meta["seed"].get<int>());
    const std::size_t grid_k = qwenvl::grid_side(L, "the patch count L");
    std::printf("  N=%zu images, L=%zu keys (%zux%zu grid), Kv=%zu, E=%zu, H=%zu heads of Dh=%zu, Q=%zu queries (%zux%zu)\n\n",
                N, L, grid_k, grid_k, c.kv_dim, c.embed_dim, c.num_heads, c.embed_dim / c.num_heads, c.n_queries,
                c.grid_q, c.grid_q);

    qwenvl::Trace trace;
    const qwenvl::Tensor3 out = qwenvl::adapter_forward(f.weights, c, f.x, f.has_mask ? &f.mask : nullptr, &trace);
    qwenvl::tower_tail_forward(f.tail, out, c.eps, &trace);

    std::printf("  %-14s %-18s %s\n", "stage", "shape", "C++ against PyTorch");
    std::size_t bad = 0;
    for (const auto& name : trace.names()) {
        const auto& got = trace.get(name);
        const auto& want = f.expect(name);
        const qwenvl::Comparison cmp = qwenvl::compare(got, want, f.atol, f.rtol);
        bad += cmp.ok() ? 0 : 1;
        std::printf("  %-14s %-18s %s\n", name.c_str(), qwenvl::shape_string(qwenvl::shape_of(got)).c_str(),
                    qwenvl::describe(cmp, want).c_str());
    }
    std::printf("\n%s: %zu of %zu stages within |a-b| <= %g + %g*|b| of PyTorch\n", bad ? "FAIL" : "OK",
                trace.names().size() - bad, trace.names().size(), f.atol, f.rtol);
    return bad ? 1 : 0;
}

void print_help() {
    std::printf(
        "usage: qwenvl-adapter [COMMAND] [OPTIONS]\n"
        "\n"
        "A plain C++ reference of Qwen-VL's position-aware vision-language adapter.\n"
        "\n"
        "commands:\n"
        "  demo    run the adapter on a golden fixture and compare every stage with PyTorch (default)\n"
        "\n"
        "`qwenvl-adapter COMMAND --help` describes a command.\n");
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    try {
        if (args.empty()) return run_demo({});
        const std::string command = args[0];
        const std::vector<std::string> rest(args.begin() + 1, args.end());
        if (command == "--help" || command == "-h" || command == "help") {
            print_help();
            return 0;
        }
        if (command == "demo") return run_demo(rest);
        throw UsageError("unknown command '" + command + "' (try --help)");
    } catch (const UsageError& e) {
        std::fprintf(stderr, "qwenvl-adapter: %s\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "qwenvl-adapter: %s\n", e.what());
        return 1;
    }
}
