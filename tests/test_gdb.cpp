// The debugger walkthrough of docs/debugging.md, run for real: gdb in batch mode stops `golden --readable` in the
// readable attention stage and then in its softmax, prints q, k and the scores with the helpers in
// docs/gdb/qwenvl_gdb.py, and the printed values must be the fixture's (PyTorch's). Built only in Debug builds (cmake --preset debug), where locals are visible.
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <catch2/catch.hpp>
#include <xtensor/xview.hpp>

#include "core/compare.hpp"
#include "io/fixture.hpp"

namespace {
std::string run_gdb(const std::string& commands) {
    const std::string log = QWENVL_BINARY_DIR "/gdb-walkthrough.log";  // under the build folder, wherever it runs
    const std::string cmd = "gdb -batch -nx -x '" QWENVL_SOURCE_DIR "/docs/gdb/qwenvl_gdb.py' " + commands +
                            " --args '" QWENVL_CLI "' golden --readable --fixture '" QWENVL_DATA_DIR "/fixtures/resize_up.json' >" +
                            log + " 2>&1 </dev/null";
    const int status = std::system(cmd.c_str());
    REQUIRE(WIFEXITED(status));
    std::ifstream in(log);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// The values printed by `xt-values NAME` after its header line.
xt::xarray<float> printed_values(const std::string& output, const std::string& name, const std::vector<std::size_t>& shape) {
    std::istringstream in(output);
    std::string line;
    while (std::getline(in, line) && line.rfind("xt-values " + name + " shape", 0) != 0) {
    }
    xt::xarray<float> values = xt::xarray<float>::from_shape(shape);
    for (std::size_t i = 0; i < values.size(); ++i) {
        REQUIRE(std::getline(in, line));
        values.data()[i] = std::stof(line);
    }
    return values;
}
}  // namespace

TEST_CASE("gdb: stopped in the readable multi_head_attention and softmax_rows, the printed q, k and scores are PyTorch's", "[gdb]") {
    const qwenvl::Fixture f = qwenvl::load_fixture(QWENVL_DATA_DIR "/fixtures/resize_up.json");
    const std::string out = run_gdb("-ex 'break qwenvl::multi_head_attention' -ex run -ex 'print q' -ex 'print k' "
                                    "-ex 'xt-shape k' -ex 'xt-values q' -ex 'xt-values k' "
                                    "-ex 'break qwenvl::softmax_rows' -ex continue -ex 'print scores' "
                                    "-ex 'xt-values scores' -ex kill");
    INFO(out);
    // One location: the readable path's function (the fast path's is qwenvl::fast::multi_head_attention).
    CHECK_THAT(out, Catch::Matchers::Matches("[\\s\\S]*hit Breakpoint 1, qwenvl::multi_head_attention[\\s\\S]*"));
    CHECK_THAT(out, Catch::Matchers::Contains("hit Breakpoint 2, qwenvl::softmax_rows"));
    CHECK_THAT(out, Catch::Matchers::Contains("tensor shape (4, 8) =\n[["));    // the tensor printer, on q
    CHECK_THAT(out, Catch::Matchers::Contains("tensor shape (16, 8) =\n[["));   // ... and on k
    CHECK_THAT(out, Catch::Matchers::Contains("\n(16, 8)\n"));                // xt-shape k: L x E of one image
    CHECK_THAT(out, Catch::Matchers::Contains("tensor shape (4, 16) =\n[["));   // head 0's scores, (Q, L)
    const auto& q = f.expect("q");
    const xt::xarray<float> k0 = xt::view(f.expect("k"), 0);
    const xt::xarray<float> scores00 = xt::view(f.expect("scores"), 0, 0);  // image 0, head 0
    CHECK(qwenvl::compare(printed_values(out, "q", {4, 8}), q, f.atol, f.rtol).ok());
    CHECK(qwenvl::compare(printed_values(out, "k", {16, 8}), k0, f.atol, f.rtol).ok());
    CHECK(qwenvl::compare(printed_values(out, "scores", {4, 16}), scores00, f.atol, f.rtol).ok());
}
