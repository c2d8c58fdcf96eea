// qwenvl-adapter golden: every stage of a JSON fixture against the values PyTorch wrote.
#include <cstdio>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "io/fixture.hpp"
#include "stages/01_feature_input.hpp"

namespace qwenvl::cli {

namespace {
const char* kGoldenHelp =
    "usage: qwenvl-adapter golden [--fixture FILE.json] [--readable]\n"
    "\n"
    "Runs the adapter and the tower's tail on a golden fixture (data/fixtures/, written by PyTorch) and prints\n"
    "every stage's shape and its largest difference from PyTorch's value. Default: data/fixtures/resize_up.json.\n"
    "--readable runs the readable stages (src/stages/) instead of the fast path (src/fast/).\n";
}  // namespace

int golden_command(const std::vector<std::string>& argv) {
    const Args args = parse_args("golden", argv, {"--fixture"}, {"--readable"});
    if (args.help) return std::printf("%s", kGoldenHelp), 0;
    const bool readable = args.flags.at("--readable");
    const Fixture f = load_fixture(args.get("--fixture", kDataDir + "/fixtures/resize_up.json"));
    const AdapterConfig& c = f.config;
    const std::size_t N = f.x.shape(0), L = f.x.shape(1);
    const Grid keys = f.grids.empty() ? key_grid(L, Grid{}, "golden: the patch count L") : f.grids[0];
    std::printf("fixture '%s': %s\n", f.name.c_str(), f.description.c_str());
    std::printf("  expected values: PyTorch %s, numpy %s, seed %d (tests/reference/make_fixtures.py)\n",
                f.meta["torch_version"].get<std::string>().c_str(), f.meta["numpy_version"].get<std::string>().c_str(),
                f.meta["seed"].get<int>());
    std::printf("  %s: N=%zu, L=%zu (%zux%zu%s), Kv=%zu, E=%zu, H=%zu (Dh=%zu), Q=%zu (%zux%zu)%s; %s path\n\n",
                model_name(c.model), N, L, keys.h, keys.w, f.grids.size() > 1 ? " and others, padded" : "", c.kv_dim,
                c.embed_dim, c.num_heads, c.embed_dim / c.num_heads, c.n_queries, c.grid_q, c.grid_q,
                f.has_mask ? ", with a mask" : "",
                c.model == Model::minicpm_v || readable ? "readable" : "fast");
    Trace trace;
    traced_forward(readable, f.weights, c, f.tail, f.x, f.has_mask ? &f.mask : nullptr, trace, f.grids);
    const std::size_t bad =
        print_stage_comparisons(trace, [&](const std::string& name) { return f.expect(name); }, f.atol, f.rtol);
    std::printf("\n%s: %zu of %zu stages within |a-b| <= %g + %g*|b| of PyTorch\n", bad ? "FAIL" : "OK",
                trace.names().size() - bad, trace.names().size(), f.atol, f.rtol);
    return bad ? 1 : 0;
}

}  // namespace qwenvl::cli
