// The command line end to end: the fixture cases through `run` (safetensors and .npy written by the PyTorch
// generator), `info`, `fuse`, and every bad input: one line on stderr naming the file, exit code 1 (2 for
// usage), and no output file.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>

#include <catch2/catch.hpp>
#include <xtensor/xrandom.hpp>
#include <nlohmann/json.hpp>
#include <xtensor/xnpy.hpp>

#include "core/compare.hpp"
#include "io/fixture.hpp"
#include "io/npy.hpp"
#include "io/checkpoint.hpp"
#include "io/safetensors.hpp"
#include "temp_files.hpp"
#include "safetensors_writer.hpp"
#include "stages/07_adapter.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using nlohmann::json;

namespace {

const std::string kData = QWENVL_DATA_DIR;

using qwenvl_test::slurp;
using qwenvl_test::TempDir;

struct Result {
    int code = -1;
    std::string out, err;
};

// Runs the program with `args` (already shell-quoted where needed).
Result cli(const std::string& args) {
    TempDir io;
    const std::string command = std::string("'") + QWENVL_CLI + "' " + args + " >'" + (io / "out") + "' 2>'" +
                                (io / "err") + "' </dev/null";
    const int status = std::system(command.c_str());
    Result r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.out = slurp(io / "out");
    r.err = slurp(io / "err");
    return r;
}

// Bad input: each case's command fails with exit status `code` and one line on stderr holding `message`.
struct BadInput {
    std::string args, message;
    int code;
};
template <std::size_t Count>
void check_bad_inputs(const BadInput (&cases)[Count]) {
    for (const auto& c : cases) {
        const Result r = cli(c.args);
        INFO(c.args << "\n" << r.err);
        CHECK(r.code == c.code);
        CHECK_THAT(r.err, Contains(c.message));
        CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    }
}

std::string q(const std::string& s) { return "'" + s + "'"; }

// Expects the bad-input contract: exit `code`, exactly one line on stderr containing every one of `words`,
// and no file at `output`.
void expect_rejected(const Result& r, const std::vector<std::string>& words, const std::string& output, int code = 1) {
    INFO("stderr: " << r.err);
    CHECK(r.code == code);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    for (const auto& w : words) CHECK_THAT(r.err, Contains(w));
    CHECK_FALSE(fs::exists(output));
}

// --- safetensors writing for the bad-input cases (the valid ones come from the PyTorch generator) ---

using qwenvl_test::write_raw_safetensors;

// Splits a valid safetensors file into its header JSON and its data bytes.
std::pair<json, std::string> split_safetensors(const std::string& path) {
    const std::string bytes = slurp(path);
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
    return {json::parse(bytes.substr(8, n)), bytes.substr(8 + n)};
}

// F32 safetensors holding tensors of the given shapes, filled with varied values (for shape and config errors).
void write_f32_tensors(const std::string& path, const std::vector<std::pair<std::string, std::vector<std::size_t>>>& tensors) {
    std::map<std::string, xt::xarray<float>> values;
    for (const auto& [name, shape] : tensors) {
        xt::xarray<float> t = xt::xarray<float>::from_shape(shape);
        for (std::size_t i = 0; i < t.size(); ++i) t.data()[i] = 0.01f * static_cast<float>((i * 7919) % 200) - 1.0f;
        values[name] = t;
    }
    qwenvl_test::write_safetensors_f32(path, values);
}

std::vector<std::pair<std::string, std::vector<std::size_t>>> adapter_tensors(std::size_t E, std::size_t Kv, std::size_t Q) {
    const std::string a = "transformer.visual.attn_pool.";
    std::vector<std::pair<std::string, std::vector<std::size_t>>> t = {
        {a + "query", {Q, E}},           {a + "attn.in_proj_weight", {3 * E, E}}, {a + "attn.in_proj_bias", {3 * E}},
        {a + "attn.out_proj.weight", {E, E}}, {a + "attn.out_proj.bias", {E}},     {a + "ln_q.weight", {E}},
        {a + "ln_q.bias", {E}},          {a + "ln_kv.weight", {E}},               {a + "ln_kv.bias", {E}}};
    if (Kv != E) t.push_back({a + "kv_proj.weight", {E, Kv}});
    return t;
}

const std::string kCase = kData + "/cli/resize_up";  // F32, Kv = 6, E = 8, 2x2 queries, 4x4 keys, H = 2

std::string run_args(const std::string& weights, const std::string& input, const std::string& output,
                     const std::string& extra = "--heads 2") {
    return "run --weights " + q(weights) + " --input " + q(input) + " --output " + q(output) + " " + extra;
}

}  // namespace

TEST_CASE("cli: every fixture case through `run` equals PyTorch's output, on both paths", "[cli][golden]") {
    std::size_t cases = 0;
    for (const auto& entry : fs::directory_iterator(kData + "/cli")) {
      for (const std::string path : {"", " --readable"}) {
        const std::string dir = entry.path().string();
        const json c = json::parse(slurp(dir + "/case.json"));
        DYNAMIC_SECTION(entry.path().filename().string() << " (" << c["dtype"].get<std::string>() << ")" << path) {
            TempDir tmp;
            std::string args = "run --input " + q(dir + "/" + c["input"].get<std::string>()) + " --output " +
                               q(tmp / "y.npy") + " --heads " + std::to_string(c["heads"].get<int>());
            for (const auto& w : c["weights"]) args += " --weights " + q(dir + "/" + w.get<std::string>());
            if (c.contains("mask")) args += " --mask " + q(dir + "/" + c["mask"].get<std::string>());
            if (c["adapter_only"].get<bool>()) args += " --adapter-only";
            if (c.contains("grids")) args += " --grids " + c["grids"].get<std::string>();
            const Result r = cli(args + path);
            INFO("stderr: " << r.err);
            REQUIRE(r.code == 0);
            const xt::xarray<float> expected = qwenvl::read_npy_float(dir + "/" + c["expected"].get<std::string>());
            const xt::xarray<float> got = qwenvl::read_npy_float(tmp / "y.npy");
            const qwenvl::Comparison cmp = qwenvl::compare(got, expected, c["tolerance"]["atol"], c["tolerance"]["rtol"]);
            INFO(qwenvl::describe(cmp, expected));
            CHECK(cmp.ok());
            CHECK_THAT(r.out, Contains(path.empty() ? "fast path" : "readable path"));
        }
      }
      ++cases;
    }
    CHECK(cases >= 10);  // the eight fixtures' cases, a non-square Qwen-VL case and MiniCPM-V's mixed batch
}

TEST_CASE("cli: --trace writes every intermediate on both paths, equal to the fixture's PyTorch values", "[cli][golden]") {
    // resize_up is stored in F32 with pos_embed equal to numpy's table, so its trace is the fixture's.
    const qwenvl::Fixture f = qwenvl::load_fixture(kData + "/fixtures/resize_up.json");
    for (const std::string path : {"", " --readable"}) {
        TempDir tmp;
        const Result r = cli(run_args(kCase + "/weights.safetensors", kCase + "/x.npy", tmp / "y.npy",
                                      "--heads 2 --trace " + q(tmp / "trace") + path));
        INFO("run" << path);
        REQUIRE(r.code == 0);
        std::size_t files = 0;
        for (const auto& stage : f.expected.names()) {
            const std::string file = tmp / ("trace/" + stage + ".npy");
            REQUIRE(fs::exists(file));
            const auto& want = f.expect(stage);
            const qwenvl::Comparison cmp = qwenvl::compare(qwenvl::read_npy_float(file), want, f.atol, f.rtol);
            INFO("stage " << stage << ": " << qwenvl::describe(cmp, want));
            CHECK(cmp.ok());
            ++files;
        }
        CHECK(files == 16);
        CHECK(std::distance(fs::directory_iterator(tmp / "trace"), fs::directory_iterator()) == 16);
    }
}

TEST_CASE("cli: a 2D input gives a 2D output, and --adapter-only stops before ln_post", "[cli]") {
    TempDir tmp;
    const std::string dir = kData + "/cli/identity_equal_grids";
    REQUIRE(cli(run_args(dir + "/weights.safetensors", dir + "/x.npy", tmp / "y.npy")).code == 0);
    CHECK(qwenvl::read_npy_float(tmp / "y.npy").dimension() == 2);
    // resize_up with --adapter-only equals the fixture's `out`, not its `proj`.
    const qwenvl::Fixture f = qwenvl::load_fixture(kData + "/fixtures/resize_up.json");
    REQUIRE(cli(run_args(kCase + "/weights.safetensors", kCase + "/x.npy", tmp / "a.npy", "--heads 2 --adapter-only")).code == 0);
    CHECK(qwenvl::compare(qwenvl::read_npy_float(tmp / "a.npy"), f.expect("out"), f.atol, f.rtol).ok());
}

TEST_CASE("cli: info reports the parameter count PyTorch counts, and the stored pos_embed", "[cli]") {
    const json counts = json::parse(slurp(kData + "/parameter_counts.json"));
    const Result r = cli("info --weights " + q(kData + "/demo/adapter.safetensors"));
    INFO(r.out << r.err);
    REQUIRE(r.code == 0);
    CHECK_THAT(r.out, Contains("adapter, trainable: " + std::to_string(counts["demo"]["adapter_trainable"].get<long>())));
    CHECK_THAT(r.out, Contains("transformer.visual.attn_pool.attn.in_proj_weight"));
    CHECK_THAT(r.out, Contains("H = 2 heads of Dh = 128 (E / 128)"));
    CHECK_THAT(r.out, Contains("pos_embed: stored"));
    CHECK_THAT(r.out, Contains("adapter, trainable: 294912 (0.295M)"));  // a small model in millions, not "0.000B"
    CHECK_THAT(r.out, !Contains("0.000B"));
    // Qwen-VL's real configuration, counted without allocating it.
    for (const char* key : {"qwen_vl", "demo", "identity_kv"}) {
        const json& k = counts[key];
        qwenvl::AdapterConfig c;
        c.embed_dim = k["config"]["embed_dim"];
        c.kv_dim = k["config"]["kv_dim"];
        c.n_queries = k["config"]["n_queries"];
        c.num_heads = k["config"]["num_heads"];
        INFO(key);
        CHECK(qwenvl::count_parameters(c).trainable == k["adapter_trainable"].get<std::size_t>());
        CHECK(qwenvl::count_parameters(c).frozen == k["pos_embed_frozen"].get<std::size_t>());
    }
    CHECK(counts["qwen_vl"]["adapter_trainable"] == 75005952);
}

TEST_CASE("cli: fuse splices the demo's features as numpy does (the README's example)", "[cli][golden][fusion]") {
    CHECK(qwenvl::compare(qwenvl::read_npy_float(kData + "/fusion/image_features.npy"),
                          qwenvl::read_npy_float(kData + "/demo/expected.npy"), 0.0, 0.0).ok());
    TempDir tmp;
    const Result r = cli("fuse --ids " + q(kData + "/fusion/ids.json") + " --embeddings " + q(kData + "/fusion/embeddings.npy") +
                         " --image-features " + q(kData + "/fusion/image_features.npy") + " --output " + q(tmp / "fused.npy"));
    INFO(r.err);
    REQUIRE(r.code == 0);
    const xt::xarray<float> expected = qwenvl::read_npy_float(kData + "/fusion/expected.npy");
    CHECK(qwenvl::compare(qwenvl::read_npy_float(tmp / "fused.npy"), expected, 0.0, 0.0).ok());
}

TEST_CASE("cli: table writes the fixtures' pos_q and pos_k", "[cli][golden]") {
    TempDir tmp;
    for (const char* name : {"odd_grids", "resize_down"}) {
        const qwenvl::Fixture f = qwenvl::load_fixture(kData + "/fixtures/" + name + ".json");
        const std::string E = std::to_string(f.config.embed_dim), G = std::to_string(f.config.grid_q);
        const std::string GK = std::to_string(f.meta["config"]["grid_k"].get<int>());
        REQUIRE(cli("table --dim " + E + " --grid " + G + " --output " + q(tmp / "p.npy")).code == 0);
        REQUIRE(cli("table --dim " + E + " --grid " + G + " --key-grid " + GK + " --output " + q(tmp / "k.npy")).code == 0);
        INFO(name);
        CHECK(qwenvl::compare(qwenvl::read_npy_float(tmp / "p.npy"), f.expect("pos_q"), f.atol, f.rtol).ok());
        CHECK(qwenvl::compare(qwenvl::read_npy_float(tmp / "k.npy"), f.expect("pos_k"), f.atol, f.rtol).ok());
    }
    expect_rejected(cli("table --dim 6 --grid 2 --output " + q(tmp / "x.npy")), {"not divisible by 4"}, tmp / "x.npy", 2);
}

TEST_CASE("cli: the demo and --help run", "[cli]") {
    for (const char* args : {"", "--readable", "demo --readable"}) {
        const Result demo = cli(args);
        INFO("qwenvl-adapter " << args << "\n" << demo.out << demo.err);
        CHECK(demo.code == 0);
        CHECK_THAT(demo.out, Contains("OK: 16 of 16 stages equal PyTorch's"));
        CHECK_THAT(demo.out, Contains("attn_weights  06  softmax over the keys"));  // each stage says what it is
    }
    for (const char* command : {"--help", "run --help", "info --help", "fuse --help", "demo --help", "golden --help", "table --help"}) {
        const Result r = cli(command);
        INFO(command);
        CHECK(r.code == 0);
        CHECK_THAT(r.out, Contains("usage:"));
    }
    CHECK(cli("golden").code == 0);
    const Result golden = cli("golden --readable --fixture " + q(kData + "/fixtures/bool_mask.json"));
    CHECK(golden.code == 0);
    CHECK_THAT(golden.out, Contains("readable path") && Contains("OK: 16 of 16 stages"));
}

TEST_CASE("cli: the demo fails, naming the stage, when PyTorch's value of a stage differs", "[cli]") {
    TempDir tmp;
    fs::copy(kData + "/demo", tmp / "demo", fs::copy_options::recursive);
    xt::xarray<float> k = qwenvl::read_npy_float(tmp / "demo/trace/k.npy");
    k(1, 5, 7) += 0.01f;
    qwenvl::write_npy(tmp / "demo/trace/k.npy", k);
    const Result r = cli("demo --data " + q(tmp.path.string()));
    CHECK(r.code == 1);
    CHECK_THAT(r.out, Contains("FAIL: 15 of 16 stages"));
    CHECK_THAT(r.out, Contains("first at (1, 5, 7)"));
}

TEST_CASE("cli: bad safetensors files", "[cli][bad-input]") {
    TempDir tmp;
    const std::string bad = tmp / "bad.safetensors", x = kCase + "/x.npy", y = tmp / "y.npy";
    const auto [header, data] = split_safetensors(kCase + "/weights.safetensors");

    SECTION("empty file") {
        std::ofstream(bad, std::ios::trunc).close();
        expect_rejected(cli(run_args(bad, x, y)), {bad, "too short"}, y);
    }
    SECTION("truncated data") {
        const std::string whole = slurp(kCase + "/weights.safetensors");
        std::ofstream(bad, std::ios::binary) << whole.substr(0, whole.size() - 100);
        expect_rejected(cli(run_args(bad, x, y)), {bad, "outside"}, y);
    }
    SECTION("header length past the end") {
        std::ofstream out(bad, std::ios::binary);
        const std::uint64_t n = 1u << 20;
        for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xFF));
        out << "{}";
        out.close();
        expect_rejected(cli(run_args(bad, x, y)), {bad, "not a safetensors file", "past the end of the file (10 bytes)"}, y);
    }
    SECTION("a .npy file given as weights") {
        expect_rejected(cli(run_args(x, x, y)), {x, "not a safetensors file: this is a .npy file"}, y);
    }
    SECTION("a header length over the 100 MB limit") {
        std::ofstream out(bad, std::ios::binary);
        const std::uint64_t n = std::uint64_t(1) << 40;
        for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xFF));
        out << "{}";
        out.close();
        expect_rejected(cli(run_args(bad, x, y)), {bad, "not a safetensors file", "over the 100 MB limit"}, y);
    }
    SECTION("a folder given as weights, or as a fixture") {
        expect_rejected(cli(run_args(tmp.path.string(), x, y)), {tmp.path.string(), "is a folder, not a file"}, y);
        const Result r = cli("golden --fixture " + q(tmp.path.string()));
        expect_rejected(r, {tmp.path.string(), "is a folder, not a file"}, y);
        CHECK_THAT(r.err, !Contains("basic_filebuf"));
    }
    SECTION("a named pipe or a device given as weights") {
        // Opened for reading and writing here, so that the command cannot wait for a writer if it opens the pipe.
        const std::string pipe = tmp / "weights.safetensors";
        REQUIRE(::mkfifo(pipe.c_str(), 0600) == 0);
        const int held = ::open(pipe.c_str(), O_RDWR | O_NONBLOCK);
        REQUIRE(held >= 0);
        expect_rejected(cli(run_args(pipe, x, y)), {pipe, "not a regular file", "must be a file on disk"}, y);
        ::close(held);
        expect_rejected(cli(run_args("/dev/null", x, y)), {"/dev/null", "not a regular file"}, y);
    }
    SECTION("header that is not JSON") {
        write_raw_safetensors(bad, "{\"a\": [1, 2", data);
        expect_rejected(cli(run_args(bad, x, y)), {bad, "not valid JSON"}, y);
    }
    SECTION("data offsets outside the file") {
        json h = header;
        h["transformer.visual.proj"]["data_offsets"] = {data.size() - 4, data.size() + 252};
        write_raw_safetensors(bad, h.dump(), data);
        expect_rejected(cli(run_args(bad, x, y)), {bad, "outside"}, y);
    }
    SECTION("overlapping data offsets") {
        json h = header;
        h["transformer.visual.ln_post.bias"]["data_offsets"] = h["transformer.visual.ln_post.weight"]["data_offsets"];
        write_raw_safetensors(bad, h.dump(), data);
        expect_rejected(cli(run_args(bad, x, y)), {bad, "overlap"}, y);
    }
    SECTION("a shape that disagrees with the byte count") {
        json h = header;
        h["transformer.visual.proj"]["shape"] = {8, 9};
        write_raw_safetensors(bad, h.dump(), data);
        expect_rejected(cli(run_args(bad, x, y)), {bad, "transformer.visual.proj", "bytes"}, y);
    }
    SECTION("an unknown dtype") {
        json h = header;
        h["transformer.visual.proj"]["dtype"] = "F31";
        write_raw_safetensors(bad, h.dump(), data);
        expect_rejected(cli(run_args(bad, x, y)), {bad, "unknown dtype 'F31'"}, y);
    }
    SECTION("a dtype that is not read") {
        json h = header;
        h["transformer.visual.ln_post.bias"]["dtype"] = "I32";
        write_raw_safetensors(bad, h.dump(), data);
        expect_rejected(cli(run_args(bad, x, y)), {bad, "I32"}, y);
    }
    SECTION("a missing tensor") {
        json h = header;
        h.erase("transformer.visual.attn_pool.ln_q.weight");
        write_raw_safetensors(bad, h.dump(), data);
        expect_rejected(cli(run_args(bad, x, y)), {bad, "missing tensor 'transformer.visual.attn_pool.ln_q.weight'"}, y);
    }
    SECTION("a wrong prefix finds nothing") {
        expect_rejected(cli(run_args(kCase + "/weights.safetensors", x, y, "--heads 2 --prefix model.")),
                        {"missing tensor 'model.attn_pool.query'"}, y);
    }
    SECTION("an index that is not JSON, or has no weight_map") {
        const std::string index = tmp / "model.safetensors.index.json";
        std::ofstream(index) << R"({"weight_map": )";
        expect_rejected(cli(run_args(index, x, y)), {index, "not valid JSON"}, y);
        std::ofstream(index) << R"({"metadata": {}})";
        expect_rejected(cli(run_args(index, x, y)), {index, "no \"weight_map\" object"}, y);
    }
    SECTION("a shard listed in an index but absent") {
        const std::string index = tmp / "model.safetensors.index.json";
        std::ofstream(index) << R"({"weight_map": {"transformer.visual.proj": "nowhere.safetensors"}})";
        expect_rejected(cli(run_args(index, x, y)), {"nowhere.safetensors", "cannot open"}, y);
    }
    SECTION("a tensor in two shards") {
        expect_rejected(cli("run --weights " + q(kCase + "/weights.safetensors") + " " +
                            run_args(kCase + "/weights.safetensors", x, y).substr(4)),
                        {"is also in"}, y);
    }
}

TEST_CASE("cli: bad features, masks, heads and widths", "[cli][bad-input]") {
    TempDir tmp;
    const std::string w = kCase + "/weights.safetensors", y = tmp / "y.npy", x = tmp / "x.npy";

    SECTION("a patch count that is not a perfect square") {
        xt::dump_npy(x, xt::xarray<float>(xt::ones<float>({std::size_t(10), std::size_t(6)})));
        expect_rejected(cli(run_args(w, x, y)), {x, "not a perfect square"}, y);
    }
    SECTION("a feature width that is not Kv") {
        xt::dump_npy(x, xt::xarray<float>(xt::ones<float>({std::size_t(16), std::size_t(5)})));
        expect_rejected(cli(run_args(w, x, y)), {x, "feature width 5", "Kv = 6"}, y);
    }
    SECTION("NaN features") {
        xt::xarray<float> v = xt::ones<float>({std::size_t(16), std::size_t(6)});
        v(3, 2) = std::numeric_limits<float>::quiet_NaN();
        xt::dump_npy(x, v);
        expect_rejected(cli(run_args(w, x, y)), {x, "NaN or infinite"}, y);
    }
    SECTION("infinite features") {
        xt::xarray<double> v = xt::ones<double>({std::size_t(1), std::size_t(16), std::size_t(6)});
        v(0, 0, 0) = -std::numeric_limits<double>::infinity();
        xt::dump_npy(x, v);
        expect_rejected(cli(run_args(w, x, y)), {x, "NaN or infinite"}, y);
    }
    SECTION("features of the wrong rank") {
        xt::dump_npy(x, xt::xarray<float>(xt::ones<float>({std::size_t(16)})));
        expect_rejected(cli(run_args(w, x, y)), {x, "expected (L, Kv) or (N, L, Kv)"}, y);
    }
    SECTION("a truncated .npy") {
        const std::string whole = slurp(kCase + "/x.npy");
        std::ofstream(x, std::ios::binary) << whole.substr(0, whole.size() - 7);
        expect_rejected(cli(run_args(w, x, y)), {x, "bytes of data"}, y);
    }
    SECTION("a .npy whose shape is not a tuple, or whose sizes overflow beside a zero (found by fuzz_npy)") {
        // The fuzzer's input: "(00 6,999999999, ...)" was read as sizes 0 and 6, and the product of the other
        // sizes overflowed when xtensor computed the strides of the (empty) array.
        const auto with_shape = [&](const std::string& shape) {
            std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
            header.append(63 - (10 + header.size()) % 64, ' ');
            header += '\n';
            const std::uint16_t len = static_cast<std::uint16_t>(header.size());
            std::ofstream out(x, std::ios::binary);
            out << "\x93NUMPY" << char(1) << char(0) << char(len & 0xff) << char(len >> 8) << header;
        };
        with_shape("(00 6,999999999, 2, 44, 2, 4,9999999999999998 8)");
        expect_rejected(cli(run_args(w, x, y)), {x, "not a tuple of sizes"}, y);
        with_shape("(0, 999999999, 2, 44, 2, 4, 99999999999999988)");
        expect_rejected(cli(run_args(w, x, y)), {x, "too large"}, y);
        with_shape("(16 6)");
        expect_rejected(cli(run_args(w, x, y)), {x, "not a tuple of sizes"}, y);
        with_shape("16, 6");
        expect_rejected(cli(run_args(w, x, y)), {x, "not a tuple of sizes"}, y);
    }
    SECTION("a file that is not .npy") {
        std::ofstream(x) << "hello";
        expect_rejected(cli(run_args(w, x, y)), {x, "not a .npy file"}, y);
    }
    SECTION("an integer .npy") {
        xt::dump_npy(x, xt::xarray<int>(xt::ones<int>({std::size_t(16), std::size_t(6)})));
        expect_rejected(cli(run_args(w, x, y)), {x, "not supported"}, y);
    }
    SECTION("H not dividing E") {
        expect_rejected(cli(run_args(w, kCase + "/x.npy", y, "--heads 3")), {w, "num_heads 3 does not divide"}, y);
    }
    SECTION("E too small for the default head rule") {
        expect_rejected(cli(run_args(w, kCase + "/x.npy", y, "")), {w, "give --heads"}, y);
    }
    SECTION("E not divisible by 4") {
        const std::string w6 = tmp / "e6.safetensors";
        write_f32_tensors(w6, adapter_tensors(6, 5, 4));
        xt::dump_npy(x, xt::xarray<float>(xt::ones<float>({std::size_t(9), std::size_t(5)})));
        expect_rejected(cli(run_args(w6, x, y, "--heads 2")), {w6, "not divisible by 4"}, y);
    }
    SECTION("a query count that is not a perfect square") {
        const std::string w3 = tmp / "q3.safetensors";
        write_f32_tensors(w3, adapter_tensors(8, 6, 3));
        expect_rejected(cli(run_args(w3, kCase + "/x.npy", y)), {w3, "not a perfect square"}, y);
    }
    SECTION("a mask of the wrong shape") {
        const std::string m = tmp / "m.npy";
        xt::dump_npy(m, xt::xarray<float>(xt::zeros<float>({std::size_t(4), std::size_t(15)})));
        expect_rejected(cli(run_args(w, kCase + "/x.npy", y, "--heads 2 --mask " + q(m))), {m, "expected (Q, L) = (4, 16)"}, y);
    }
    SECTION("an unreadable input path") {
        expect_rejected(cli(run_args(w, tmp / "absent.npy", y)), {tmp / "absent.npy", "cannot open"}, y);
    }
    SECTION("an unwritable output path") {
        const std::string out = tmp / "no/such/folder/y.npy";
        expect_rejected(cli(run_args(w, kCase + "/x.npy", out)), {out, "cannot write"}, out);
    }
    SECTION("an output path that is a folder: one line, and no temporary file left behind") {
        fs::create_directory(tmp / "y.npy");  // the final rename fails, after the data was written
        const Result r = cli(run_args(w, kCase + "/x.npy", tmp / "y.npy"));
        INFO("stderr: " << r.err);
        CHECK(r.code == 1);
        CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
        CHECK_THAT(r.err, Contains(tmp / "y.npy") && Contains("cannot write"));
        CHECK(std::distance(fs::directory_iterator(tmp.path), fs::directory_iterator()) == 1);  // just the folder
        CHECK(fs::is_empty(tmp / "y.npy"));
    }
}

TEST_CASE("cli: bad fuse inputs", "[cli][bad-input][fusion]") {
    TempDir tmp;
    const std::string ids = tmp / "ids.json", out = tmp / "fused.npy";
    const std::string emb = kData + "/fusion/embeddings.npy", feat = kData + "/demo/expected.npy";
    const json good = json::parse(slurp(kData + "/fusion/ids.json"));
    auto fuse = [&](const std::string& ids_path) {
        return cli("fuse --ids " + q(ids_path) + " --embeddings " + q(emb) + " --image-features " + q(feat) + " --output " + q(out));
    };
    SECTION("a span of the wrong length") {
        json ids_wrong = good;
        auto end = std::find(ids_wrong.begin(), ids_wrong.end(), 151858);
        *end = 151859;
        *(end - 1) = 151858;  // </img> one position early: the span holds Q - 1
        std::ofstream(ids) << ids_wrong.dump();
        expect_rejected(fuse(ids), {ids, "holds 15 positions, expected 16"}, out);
    }
    SECTION("a span never closed") {
        json open = good;
        std::find(open.rbegin(), open.rend(), 151858)->operator=(151859);  // drop the last </img>
        std::ofstream(ids) << open.dump();
        expect_rejected(fuse(ids), {ids, "never closed"}, out);
    }
    SECTION("</img> without <img>") {
        json stray = good;
        stray[0] = 151858;
        std::ofstream(ids) << stray.dump();
        expect_rejected(fuse(ids), {ids, "without an <img>"}, out);
    }
    SECTION("ids that are not JSON, or cannot be opened") {
        std::ofstream(ids) << "[1, 2,";
        expect_rejected(fuse(ids), {ids, "not valid JSON"}, out);
        expect_rejected(fuse(tmp / "absent.json"), {tmp / "absent.json", "cannot open"}, out);
    }
    SECTION("ids that are not a list of integers") {
        std::ofstream(ids) << R"({"input_ids": [1, "two"]})";
        expect_rejected(fuse(ids), {ids, "not an integer"}, out);
    }
    SECTION("embeddings for another number of tokens") {
        json fewer = good;
        fewer.erase(fewer.begin());
        std::ofstream(ids) << fewer.dump();
        expect_rejected(fuse(ids), {emb, "expected (T, E)"}, out);
    }
}

TEST_CASE("cli: usage errors exit with 2", "[cli][bad-input]") {
    TempDir tmp;
    expect_rejected(cli("run --weights " + q(kCase + "/weights.safetensors") + " --output " + q(tmp / "y.npy")),
                    {"--input is required"}, tmp / "y.npy", 2);
    expect_rejected(cli("run --frobnicate"), {"unknown argument '--frobnicate'"}, tmp / "y.npy", 2);
    expect_rejected(cli("run --heads 0 --weights a --input b --output " + q(tmp / "y.npy")), {"positive whole number"},
                    tmp / "y.npy", 2);
    expect_rejected(cli("transmogrify"), {"unknown command"}, tmp / "y.npy", 2);
    expect_rejected(cli("run --input"), {"--input needs a value"}, tmp / "y.npy", 2);
}

namespace {
// Writes a safetensors file of F32 tensors of the given shapes, every value 0.5, its header padded to 8 bytes as
// the reference writer pads it (so the data is aligned and `run` maps it in place). Streamed out a chunk at a
// time: a child's peak memory, as getrusage reports it, includes its parent's peak (system() starts the child in
// the parent's memory), so this process must stay small. With `sparse`, the data is a hole in the file instead
// (ftruncate): a file of gigabytes that takes no disk space and no time to write.
void write_large_f32(const std::string& path, const std::vector<std::pair<std::string, std::vector<std::size_t>>>& shapes,
                     bool sparse = false) {
    json header = json::object();
    std::uint64_t offset = 0;
    for (const auto& [name, shape] : shapes) {
        std::uint64_t count = 1;
        for (std::size_t d : shape) count *= d;
        header[name] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {offset, offset + 4 * count}}};
        offset += 4 * count;
    }
    std::string text = header.dump();
    text += std::string((8 - text.size() % 8) % 8, ' ');
    {
        std::ofstream out(path, std::ios::binary);
        for (int i = 0; i < 8; ++i) out.put(static_cast<char>((std::uint64_t(text.size()) >> (8 * i)) & 0xFF));
        out << text;
        const std::vector<float> chunk(1 << 16, 0.5f);
        for (std::uint64_t written = 0; !sparse && written < offset; written += 4 * chunk.size())
            out.write(reinterpret_cast<const char*>(chunk.data()),
                      static_cast<std::streamsize>(std::min<std::uint64_t>(4 * chunk.size(), offset - written)));
    }
    if (sparse) std::filesystem::resize_file(path, 8 + text.size() + offset);
}

std::vector<std::pair<std::string, std::vector<std::size_t>>> adapter_with_tail(std::size_t E, std::size_t Q) {
    auto shapes = adapter_tensors(E, E, Q);
    shapes.push_back({"transformer.visual.ln_post.weight", {E}});
    shapes.push_back({"transformer.visual.ln_post.bias", {E}});
    shapes.push_back({"transformer.visual.proj", {E, E}});
    return shapes;
}

long children_peak_kib() {
    rusage children{};
    getrusage(RUSAGE_CHILDREN, &children);
    return children.ru_maxrss;  // the largest resident set of any child so far, in KiB
}
}  // namespace

TEST_CASE("cli: info reads the headers and run maps the weights, where run --readable reads them all", "[cli]") {
    // E = 1536 with Kv == E: in_proj, out_proj and proj hold 47 MiB of F32 weights. Each command below fails only
    // after it has loaded the weights, at the input that does not exist. `run --readable` reads every tensor into
    // memory; `info` reads the headers; `run` maps the file and touches nothing before the input is read.
    // Relative comparisons (30 MiB apart), so that they hold under ASan too.
    TempDir tmp;
    const std::string weights = tmp / "w.safetensors";
    write_large_f32(weights, adapter_with_tail(1536, 16));
    const Result r = cli("info --weights " + q(weights));
    INFO(r.out << r.err);
    REQUIRE(r.code == 0);
    CHECK_THAT(r.out, Contains("E (output_dim) = 1536") && Contains("(no kv_proj: identity)"));
    const std::string missing = " --input " + q(tmp / "none.npy") + " --output " + q(tmp / "y.npy");
    CHECK(cli("run --weights " + q(weights) + missing).code == 1);
    const long info_and_mapped_run = children_peak_kib();
    CHECK(cli("run --readable --weights " + q(weights) + missing).code == 1);
    const long readable_run = children_peak_kib();
    INFO("peak of info and the mapped run " << info_and_mapped_run << " KiB, of the readable run " << readable_run << " KiB");
    CHECK(info_and_mapped_run + 30 * 1024 < readable_run);
}

TEST_CASE("cli: info on a sharded checkpoint with 4 GiB of language-model tensors reads only the visual shard's headers",
          "[cli]") {
    TempDir tmp;
    write_large_f32(tmp / "visual.safetensors", adapter_with_tail(128, 4));
    // 4 GiB of a language model's tensors, as a hole in the file: reading them would take seconds and gigabytes.
    write_large_f32(tmp / "lm.safetensors", {{"transformer.h.0.mlp.w1.weight", {std::size_t(1) << 20, 1024}}}, true);
    json index;
    for (const auto& [name, shape] : adapter_with_tail(128, 4)) index["weight_map"][name] = "visual.safetensors";
    index["weight_map"]["transformer.h.0.mlp.w1.weight"] = "lm.safetensors";
    std::ofstream(tmp / "model.safetensors.index.json") << index.dump();
    const Result r = cli("info --weights " + q(tmp / "model.safetensors.index.json"));
    INFO(r.out << r.err);
    REQUIRE(r.code == 0);
    CHECK_THAT(r.out, Contains("E (output_dim) = 128"));
    CHECK_THAT(r.out, Contains("lm.safetensors"));  // listed among the files
    CHECK(children_peak_kib() < 512 * 1024);        // far below the 4 GiB it would take to read the shard
}

// --- train (stage 10, docs/training.md) ---

namespace {
const std::string kSmallTraining = " --width 16 --heads 2 --queries 4 --keys 16 --batch 8 --log-every 100";

// The mean loss of the last `count` steps in a loss.csv (step,loss,lr,grad_norm,seconds).
double last_losses(const std::string& csv, std::size_t count) {
    std::istringstream in(slurp(csv));
    std::vector<double> losses;
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) losses.push_back(std::stod(line.substr(line.find(',') + 1)));
    REQUIRE(losses.size() >= count);
    double sum = 0.0;
    for (std::size_t i = losses.size() - count; i < losses.size(); ++i) sum += losses[i];
    return sum / static_cast<double>(count);
}
}  // namespace

TEST_CASE("cli: train on the positions task: with the 2-D tables the loss falls below what no position can reach",
          "[cli][training][slow-in-debug][long-training]") {
    // 4 queries on 16 keys: each target is the mean of 4 patches (variance 1/4). Without positions a query cannot
    // tell its cell's patches from the others, and the best it can do is the mean of all 16, whose expected squared
    // error is 1/4 - 1/16 = 0.1875. With the tables the loss goes well below that (0.103 after 300 steps; 0.086 to
    // 0.101 over three seeds after 400).
    TempDir tmp;
    const std::string common = " --steps 300 --warmup 30" + kSmallTraining;
    const Result with = cli("train --out " + q(tmp / "with") + common);
    const Result without = cli("train --out " + q(tmp / "without") + common + " --no-positions");
    INFO(with.out << with.err << without.out << without.err);
    REQUIRE(with.code == 0);
    REQUIRE(without.code == 0);
    const double loss_with = last_losses(tmp / "with/loss.csv", 50), loss_without = last_losses(tmp / "without/loss.csv", 50);
    INFO("final losses: " << loss_with << " with the tables, " << loss_without << " without");
    CHECK(loss_without > 0.17);
    CHECK(loss_with < 0.13);
    CHECK_THAT(with.out, Contains("step   300/300  loss"));

    // After training, each query's attention lands on its own cell: the share of its weight on its cell's 4 patches
    // (averaged over images, heads and queries) against 4/16 = 0.25 for attention spread evenly.
    auto own_cell_share = [&](const std::string& run) {
        xt::dump_npy(tmp / "x.npy", xt::xarray<float>(xt::random::randn<float>({std::size_t(8), std::size_t(16), std::size_t(16)})));
        const Result r = cli("run --weights " + q(tmp / run + "/adapter.safetensors") + " --heads 2 --input " +
                             q(tmp / "x.npy") + " --output " + q(tmp / "y.npy") + " --trace " + q(tmp / (run + "-trace")));
        REQUIRE(r.code == 0);
        const xt::xarray<float> w = qwenvl::read_npy_float(tmp / (run + "-trace") + "/attn_weights.npy");  // (N, H, Q, L)
        double share = 0.0;
        for (std::size_t n = 0; n < w.shape(0); ++n)
            for (std::size_t h = 0; h < w.shape(1); ++h)
                for (std::size_t query = 0; query < 4; ++query)
                    for (std::size_t patch = 0; patch < 16; ++patch) {
                        const std::size_t cell = (patch / 4 / 2) * 2 + (patch % 4) / 2;  // 4x4 keys in 2x2 cells
                        if (cell == query) share += w(n, h, query, patch);
                    }
        return share / static_cast<double>(w.shape(0) * w.shape(1) * 4);
    };
    xt::random::seed(5);
    const double share_with = own_cell_share("with"), share_without = own_cell_share("without");
    INFO("attention on the own cell: " << share_with << " with the tables, " << share_without << " without");
    CHECK(share_with > 0.5);
    CHECK(share_without < 0.35);
}

TEST_CASE("cli: train on the reconstruct task: more queries reach a lower loss, and nothing without positions",
          "[cli][training][slow-in-debug][long-training]") {
    // The query-count ablation's task in miniature: 16 keys (4 x 4), the outputs' grid read out to the key grid.
    // 16 queries can give every patch back; 4 queries (2 x 2) cannot hold the finest octave; without the tables no
    // query knows where its outputs go. Over seeds 1 to 4, the mean of the last 50 of 300 steps: 0.014 to 0.036 with
    // 16 queries, 0.13 to 0.19 with 4, 0.33 to 0.38 without positions (4 or 16 queries).
    TempDir tmp;
    const std::string common = " --task reconstruct --steps 300 --warmup 30 --width 16 --heads 2 --keys 16 --batch 8 --log-every 100";
    double loss[3];
    const char* runs[3] = {" --queries 16", " --queries 4", " --queries 16 --no-positions"};
    for (int i = 0; i < 3; ++i) {
        const Result r = cli("train --out " + q(tmp / std::to_string(i)) + common + runs[i]);
        INFO(r.out << r.err);
        REQUIRE(r.code == 0);
        CHECK_THAT(r.out, Contains("training on the reconstruct task"));
        loss[i] = last_losses(tmp / (std::to_string(i) + "/loss.csv"), 50);
    }
    INFO("final losses: " << loss[0] << " with 16 queries, " << loss[1] << " with 4, " << loss[2] << " without positions");
    CHECK(loss[0] < 0.06);
    CHECK(loss[1] > 0.1);
    CHECK(loss[2] > 0.3);
    // Its checkpoint is an adapter like any other: run reads it (16 queries on any square key grid).
    xt::dump_npy(tmp / "x.npy", xt::xarray<float>(xt::ones<float>({std::size_t(2), std::size_t(16), std::size_t(16)})));
    CHECK(cli("run --weights " + q(tmp / "0/adapter.safetensors") + " --heads 2 --input " + q(tmp / "x.npy") +
              " --output " + q(tmp / "y.npy")).code == 0);
}

TEST_CASE("cli: train writes a checkpoint that run and info read, and --resume continues it bit for bit",
          "[cli][training][slow-in-debug]") {
    TempDir tmp;
    const std::string common = " --steps 40 --warmup 5" + kSmallTraining;
    REQUIRE(cli("train --out " + q(tmp / "straight") + common).code == 0);
    REQUIRE(cli("train --out " + q(tmp / "resumed") + common + " --until 20").code == 0);
    const std::string first_half = slurp(tmp / "resumed/loss.csv");
    CHECK(std::count(first_half.begin(), first_half.end(), '\n') == 21);  // the header and steps 0 to 19
    // the first session's time, as if it had taken 1000 s: the resumed session's rows go on from it
    const std::size_t last_comma = first_half.rfind(',');
    std::ofstream(tmp / "resumed/loss.csv", std::ios::trunc) << first_half.substr(0, last_comma + 1) << "1000\n";
    const Result resumed = cli("train --out " + q(tmp / "resumed") + " --steps 40 --warmup 5 --batch 8 --keys 16 --resume");
    INFO(resumed.out << resumed.err);
    REQUIRE(resumed.code == 0);
    CHECK(slurp(tmp / "resumed/adapter.safetensors") == slurp(tmp / "straight/adapter.safetensors"));
    // The same steps, losses, rates and norms (the last column, seconds, differs from run to run).
    auto without_seconds = [](const std::string& csv) {
        std::istringstream in(csv);
        std::string kept;
        for (std::string line; std::getline(in, line);) kept += line.substr(0, line.rfind(',')) + "\n";
        return kept;
    };
    CHECK(without_seconds(slurp(tmp / "resumed/loss.csv")) == without_seconds(slurp(tmp / "straight/loss.csv")));
    // seconds: the training time since step 0, the sessions added up (it used to start again from 0 on resume)
    {
        std::istringstream in(slurp(tmp / "resumed/loss.csv"));
        std::string line;
        std::getline(in, line);  // the header
        double previous = -1.0;
        std::size_t rows = 0;
        for (; std::getline(in, line); ++rows) {
            const double seconds = std::stod(line.substr(line.rfind(',') + 1));
            INFO(line);
            CHECK(seconds >= previous);
            if (rows >= 20) CHECK(seconds >= 1000.0);
            previous = seconds;
        }
        CHECK(rows == 40);
    }

    // Every setting the checkpoint records comes from it: a flag that repeats it is taken, one that differs is
    // refused with the checkpoint's value.
    const std::pair<std::string, std::string> differing[] = {
        {" --task reconstruct", "has --task positions"}, {" --seed 2", "has --seed 1"}, {" --width 32", "has --width 16"},
        {" --kv 8", "has --kv 16"}, {" --heads 4", "has --heads 2"}, {" --queries 16", "has --queries 4"},
        {" --keys 64", "has --keys 16"},
        {" --batch 4", "has --batch 8"}, {" --warmup 6", "has --warmup 5"}, {" --lr 0.5", "has --lr 0.01"},
        {" --min-lr 0", "has --min-lr 5.0000000000000002e-05"}, {" --steps 80", "has --steps 40"},
        {" --no-positions", "trains with the position tables; leave out --no-positions"}};
    for (const auto& [flag, message] : differing) {
        const Result refused = cli("train --out " + q(tmp / "straight") + " --resume --until 30" + flag);
        INFO(flag << ": " << refused.err);
        CHECK(refused.code == 2);
        CHECK_THAT(refused.err, Contains(message));
    }
    TempDir again;
    REQUIRE(cli("train --out " + q(again / "r") + common + " --until 20").code == 0);
    REQUIRE(cli("train --out " + q(again / "r") + " --resume").code == 0);
    CHECK(slurp(again / "r/adapter.safetensors") == slurp(tmp / "straight/adapter.safetensors"));
    // A checkpoint from before --kv records no kv: its features were E wide, and it resumes so
    REQUIRE(cli("train --out " + q(again / "old") + common + " --until 20").code == 0);
    std::string bytes = slurp(again / "old/adapter.safetensors");
    const std::size_t at = bytes.find("\"kv\":\"16\"");
    REQUIRE(at != std::string::npos);
    bytes.replace(at, 9, "\"kx\":\"16\"");  // the same length: the header's size stays right
    std::ofstream(again / "old/adapter.safetensors", std::ios::binary) << bytes;
    const Result old = cli("train --out " + q(again / "old") + " --resume");
    INFO(old.err);
    REQUIRE(old.code == 0);
    CHECK(slurp(again / "old/adapter.safetensors") == slurp(tmp / "straight/adapter.safetensors"));  // kv recorded again
    // The reconstruct task's short run, and its resume (the sanitizer build runs this test, not the long ones).
    REQUIRE(cli("train --out " + q(again / "rec") + " --task reconstruct --steps 12 --warmup 2 --width 16 --heads 2 "
                "--queries 16 --keys 9 --batch 2 --until 6").code == 0);
    const Result rec = cli("train --out " + q(again / "rec") + " --resume");
    INFO(rec.out << rec.err);
    CHECK(rec.code == 0);
    CHECK_THAT(rec.out, Contains("training on the reconstruct task"));
    CHECK_THAT(rec.out, Contains("step    12/12"));

    const Result info = cli("info --weights " + q(tmp / "straight/adapter.safetensors") + " --heads 2");
    CHECK(info.code == 0);
    CHECK_THAT(info.out, Contains("E (output_dim) = 16"));
    // without --heads: the count the run recorded (E = 16 has none by the rule E / 128)
    const Result recorded = cli("info --weights " + q(tmp / "straight/adapter.safetensors"));
    INFO(recorded.err);
    CHECK(recorded.code == 0);
    CHECK_THAT(recorded.out, Contains("H = 2 heads of Dh = 8 (recorded by train)"));
    xt::dump_npy(tmp / "x.npy", xt::xarray<float>(xt::ones<float>({std::size_t(3), std::size_t(16), std::size_t(16)})));
    const Result run = cli("run --weights " + q(tmp / "straight/adapter.safetensors") + " --heads 2 --input " +
                           q(tmp / "x.npy") + " --output " + q(tmp / "y.npy"));
    INFO(run.err);
    CHECK(run.code == 0);
    CHECK((qwenvl::read_npy_float(tmp / "y.npy").shape() == std::vector<std::size_t>{3, 4, 16}));
}

TEST_CASE("cli: a resumed run equals the straight run byte for byte with every recorded setting off its default, "
          "on both tasks", "[cli][training][slow-in-debug]") {
    // Each run sets every setting the checkpoint records to a value that is not its default; the resume gives none
    // of them. A setting not restored from the checkpoint would take its default and change the bytes.
    TempDir tmp;
    const std::string runs[] = {
        " --task positions --seed 7 --width 12 --kv 10 --heads 3 --queries 4 --keys 9 --batch 3 --warmup 3 --lr 0.02 "
        "--min-lr 0.001 --steps 14",
        " --task reconstruct --seed 9 --width 8 --kv 13 --heads 4 --queries 9 --keys 4 --batch 2 --warmup 2 --lr 0.005 "
        "--min-lr 0 --steps 12 --no-positions"};
    for (std::size_t i = 0; i < 2; ++i) {
        const std::string straight = tmp / ("straight" + std::to_string(i)), resumed = tmp / ("resumed" + std::to_string(i));
        REQUIRE(cli("train --out " + q(straight) + runs[i]).code == 0);
        REQUIRE(cli("train --out " + q(resumed) + runs[i] + " --until 5").code == 0);
        const Result r = cli("train --out " + q(resumed) + " --resume");
        INFO(runs[i] << "\n" << r.out << r.err);
        REQUIRE(r.code == 0);
        CHECK(slurp(resumed + "/adapter.safetensors") == slurp(straight + "/adapter.safetensors"));
    }
}

TEST_CASE("cli: train keeps a run's folder: a new run into a non-empty one is refused without --force, a killed "
          "run's partial files go, and a resume cuts loss.csv back to its checkpoint", "[cli][training]") {
    TempDir tmp;
    const std::string dir = tmp / "run", common = " --steps 12 --warmup 2" + kSmallTraining;
    REQUIRE(cli("train --out " + q(dir) + common + " --until 4").code == 0);
    const std::string checkpoint = slurp(dir + "/adapter.safetensors");
    // a fresh run into it: refused, one line, nothing touched
    const Result again = cli("train --out " + q(dir) + common);
    CHECK(again.code == 2);
    CHECK(std::count(again.err.begin(), again.err.end(), '\n') == 1);
    CHECK_THAT(again.err, Contains(dir + " is not empty; continue its run with --resume, or replace it with --force"));
    CHECK(slurp(dir + "/adapter.safetensors") == checkpoint);
    CHECK(cli("train --out " + q(dir) + common + " --resume --force").code == 2);
    // what a run killed after step 6 leaves: its rows of steps 4 to 6, a torn row, and a temporary file
    {
        std::ofstream log(dir + "/loss.csv", std::ios::app);
        log << "4,0.5,0.01,1,0.1\n5,0.5,0.01,1,0.1\n6,0.5,0.01,1,0.1\n7,0.";
        std::ofstream(dir + "/adapter.safetensors.partial-99999") << "half a checkpoint";
    }
    const Result resumed = cli("train --out " + q(dir) + " --resume");
    INFO(resumed.out << resumed.err);
    REQUIRE(resumed.code == 0);
    CHECK_FALSE(fs::exists(dir + "/adapter.safetensors.partial-99999"));
    std::istringstream rows(slurp(dir + "/loss.csv"));
    std::string line;
    std::getline(rows, line);
    CHECK(line == "step,loss,lr,grad_norm,seconds");
    for (std::size_t step = 0; step < 12; ++step) {
        REQUIRE(std::getline(rows, line));
        CHECK(line.substr(0, line.find(',')) == std::to_string(step));  // each step once, in order
        CHECK(line.find(",0.5,0.01,1,0.1") == std::string::npos);      // not the killed run's rows
    }
    CHECK_FALSE(std::getline(rows, line));
    // --force replaces the run
    const Result forced = cli("train --out " + q(dir) + common + " --force --until 3");
    INFO(forced.err);
    REQUIRE(forced.code == 0);
    CHECK(std::count(std::istreambuf_iterator<char>(*std::make_unique<std::ifstream>(dir + "/loss.csv")),
                     std::istreambuf_iterator<char>(), '\n') == 4);  // the header and steps 0 to 2
}

TEST_CASE("cli: train after a run stopped before its first checkpoint, a loss gone NaN, a damaged checkpoint, a "
          "damaged log and a seed past 32 bits", "[cli][training]") {
    TempDir tmp;
    const std::string dir = tmp / "run", common = " --steps 12 --warmup 2" + kSmallTraining;
    // killed before its first checkpoint: an empty loss.csv and a temporary file. Nothing to resume; a new run may
    // start there without --force
    fs::create_directories(dir);
    std::ofstream(dir + "/loss.csv").close();
    std::ofstream(dir + "/adapter.safetensors.partial-4242") << "half";
    const Result resume = cli("train --out " + q(dir) + " --resume");
    CHECK(resume.code == 1);
    CHECK_THAT(resume.err, Contains("the run was stopped before its first checkpoint; start it again without --resume"));
    const Result again = cli("train --out " + q(dir) + common + " --until 4");
    INFO(again.err);
    REQUIRE(again.code == 0);
    CHECK_FALSE(fs::exists(dir + "/adapter.safetensors.partial-4242"));

    // a damaged log (no header, a foreign line): cut to the checkpoint's rows 0 to 3, with its header
    {
        std::ofstream log(dir + "/loss.csv", std::ios::trunc);
        log << "0,1,0.01,1,0\n1,1,0.01,1,0\nhello\n3,1,0.01,1,0\n";
    }
    const Result cut = cli("train --out " + q(dir) + " --resume --until 6");
    INFO(cut.err);
    REQUIRE(cut.code == 0);
    CHECK_THAT(cut.err, Contains("holds the rows of steps 0 to 1 only; the rows up to the checkpoint's step 4 are lost"));
    const std::string log = slurp(dir + "/loss.csv");
    CHECK(log.rfind("step,loss,lr,grad_norm,seconds\n0,1,0.01,1,0\n1,1,0.01,1,0\n4,", 0) == 0);
    CHECK(log.find("hello") == std::string::npos);

    // a checkpoint whose recorded settings train would not write: named, exit 1, nothing written
    std::string bytes = slurp(dir + "/adapter.safetensors");
    const std::size_t at = bytes.find("\"positions\":\"yes\"");
    REQUIRE(at != std::string::npos);
    bytes.replace(at, 17, "\"positions\":\"yup\"");
    std::ofstream(dir + "/adapter.safetensors", std::ios::binary) << bytes;
    const std::string log_before = slurp(dir + "/loss.csv");
    const Result damaged = cli("train --out " + q(dir) + " --resume");
    CHECK(damaged.code == 1);
    CHECK(std::count(damaged.err.begin(), damaged.err.end(), '\n') == 1);
    CHECK_THAT(damaged.err, Contains(dir + "/adapter.safetensors: records positions 'yup', which train does not write"));
    CHECK(slurp(dir + "/loss.csv") == log_before);

    // a learning rate that sends the loss to NaN: an error naming the step, exit 1, the last checkpoint kept
    const std::string nan = tmp / "nan";
    REQUIRE(cli("train --out " + q(nan) + common + " --until 2").code == 0);
    const Result diverged = cli("train --out " + q(nan) + " --force" + common + " --lr 1e10 --save-every 1");
    CHECK(diverged.code == 1);
    CHECK_THAT(diverged.err, Contains("the loss became NaN at step"));
    CHECK_THAT(diverged.err, Contains("the checkpoint of the last saved step is kept"));

    // seeds are 32 bits: a larger one would train as another seed does
    expect_rejected(cli("train --out " + q(tmp / "big") + " --seed 4294967297"), {"--seed", "4294967295"}, tmp / "big", 2);
}

TEST_CASE("cli: train refuses bad flags and files with one line and writes nothing", "[cli][bad-input][training]") {
    TempDir tmp;
    const std::string out = tmp / "run";
    expect_rejected(cli("train --out " + q(out) + " --lr fast"), {"--lr", "positive number", "fast"}, out, 2);
    expect_rejected(cli("train --out " + q(out) + " --queries 5"), {"--queries", "not a perfect square"}, out, 2);
    expect_rejected(cli("train --out " + q(out) + " --warmup 700"), {"--warmup", "smaller than --steps"}, out, 2);
    expect_rejected(cli("train --out " + q(out) + " --queries 64 --keys 16"), {"--keys", "at least --queries"}, out, 2);
    expect_rejected(cli("train --out " + q(out) + " --width 18"), {"--width", "divisible by 4"}, out, 2);
    expect_rejected(cli("train"), {"--out"}, out, 2);
    for (const char* kv : {"0", "abc", "-3", "2.5"})
        expect_rejected(cli("train --out " + q(out) + " --kv " + kv), {"--kv", "positive whole number", kv}, out, 2);
    expect_rejected(cli("train --out " + q(out) + " --task colours"), {"--task", "positions or reconstruct", "colours"}, out, 2);
    fs::create_directories(out);
    const Result resume = cli("train --out " + q(out) + " --resume");
    expect_rejected(resume, {out + "/adapter.safetensors"}, out + "/loss.csv", 1);
}

// --- compare: another implementation's intermediates against this project's (docs/compare.md) ---

namespace {
const std::string kQwenWide = "compare --weights " + q(kData + "/cli/qwen_wide/weights.safetensors") + " --heads 2 --input " +
                              q(kData + "/cli/qwen_wide/x.npy") + " --grids 3x5";
const std::string kMiniCpmv = "compare --weights " + q(kData + "/cli/minicpmv_mixed/weights.safetensors") +
                              " --heads 2 --input " + q(kData + "/cli/minicpmv_mixed/x.npy") + " --grids 2x3,3x3,1x2";
}  // namespace

TEST_CASE("compare: PyTorch's own dump of both models matches, stage by stage", "[cli][compare]") {
    for (const auto& [args, dump] : {std::pair{kQwenWide, std::string("qwen_wide")}, std::pair{kMiniCpmv, std::string("minicpmv_mixed")}}) {
        DYNAMIC_SECTION(dump) {
            const Result r = cli(args + " --theirs " + q(kData + "/compare/" + dump + "/pytorch"));
            INFO(r.out << r.err);
            CHECK(r.code == 0);
            CHECK_THAT(r.out, Contains("MATCH: all 1"));
            CHECK_THAT(r.out, Contains("cosine"));
            CHECK_THAT(r.out, !Contains("DIFFERS"));
        }
    }
}

TEST_CASE("compare: a name map and nn.MultiheadAttention's (L, N, E) layout are followed", "[cli][compare]") {
    const std::string dir = kData + "/compare/qwen_wide/renamed";
    const Result mapped = cli(kQwenWide + " --theirs " + q(dir) + " --names " + q(dir + "/names.json"));
    INFO(mapped.out << mapped.err);
    CHECK(mapped.code == 0);
    CHECK_THAT(mapped.out, Contains("MATCH: all 16 stages found"));  // five of them under their own names
    CHECK_THAT(mapped.out, Contains("(L, N, E) permuted"));
    // without the map, the renamed files are not found, and a layout left out makes key_in differ
    TempDir tmp;
    std::ofstream(tmp / "names.json") << R"({"stages": {"key_in": ")" << dir << R"(/attn.key.npy"}})";
    const Result unpermuted = cli(kQwenWide + " --theirs / --names " + q(tmp / "names.json"));
    CHECK(unpermuted.code == 1);
    CHECK_THAT(unpermuted.out, Contains("the first is 'key_in'"));
    CHECK_THAT(unpermuted.out, Contains("give the stage \"layout\": \"LNE\" in --names"));  // the hint
}

namespace {
// A copy of PyTorch's dump of `dump_case` in a temporary folder, to edit as a port's dump would differ; with a
// `mistake`, that port's files (data/compare/<case>/mistakes/<mistake>/) written over it.
void copy_dump(const std::string& dump_case, const std::string& to, const std::string& mistake = "") {
    fs::copy(kData + "/compare/" + dump_case + "/pytorch", to);
    if (mistake.empty()) return;
    for (const auto& entry : fs::directory_iterator(kData + "/compare/" + dump_case + "/mistakes/" + mistake))
        fs::copy_file(entry.path(), to + "/" + entry.path().filename().string(), fs::copy_options::overwrite_existing);
}
const std::vector<qwenvl::Grid> kMiniCpmvGrids = {{2, 3}, {3, 3}, {1, 2}};
}  // namespace

TEST_CASE("compare: a MiniCPM-V port's padding keys are left out, whatever it leaves there, and its mask may be boolean",
          "[cli][compare]") {
    // A port that runs each image alone leaves the padding rows zero (or anything); those are not the port's values.
    std::mt19937 rng(11);
    std::normal_distribution<float> noise(0.0f, 5.0f);
    for (const float scale : {0.0f, 1.0f}) {
        TempDir tmp;
        const std::string dir = tmp / "port";
        copy_dump("minicpmv_mixed", dir);
        for (const char* stage : {"pos_k", "kv_proj", "ln_kv", "key_in", "k", "v", "scores", "attn_weights"}) {
            xt::xarray<float> t = qwenvl::read_npy_float(dir + "/" + stage + ".npy");
            const bool columns = t.dimension() == 4;  // the attention's: keys are its last axis
            for (std::size_t n = 0; n < kMiniCpmvGrids.size(); ++n) {
                const std::size_t real = kMiniCpmvGrids[n].cells(), L = columns ? t.shape(3) : t.shape(1);
                for (std::size_t l = real; l < L; ++l) {
                    if (columns)
                        for (std::size_t h = 0; h < t.shape(1); ++h)
                            for (std::size_t r = 0; r < t.shape(2); ++r) t(n, h, r, l) = scale * noise(rng);
                    else
                        for (std::size_t e = 0; e < t.shape(2); ++e) t(n, l, e) = scale * noise(rng);
                }
            }
            qwenvl::write_npy(dir + "/" + stage + ".npy", t);
        }
        // PyTorch's key_padding_mask is boolean
        const xt::xarray<float> mask = qwenvl::read_npy_float(dir + "/key_padding_mask.npy");
        xt::dump_npy(dir + "/key_padding_mask.npy", xt::xarray<bool>(xt::equal(mask, 1.0f)));
        const Result r = cli(kMiniCpmv + " --theirs " + q(dir));
        INFO("padding scaled by " << scale << "\n" << r.out << r.err);
        CHECK(r.code == 0);
        CHECK_THAT(r.out, Contains("MATCH: all 15 stages found"));
        CHECK_THAT(r.out, Contains("[padding keys left out]"));
        // a real key changed is still found, and its image named
        xt::xarray<float> k = qwenvl::read_npy_float(dir + "/k.npy");
        k(1, 8, 0) += 0.5f;  // image 1's last real key (3 x 3 = 9 patches)
        qwenvl::write_npy(dir + "/k.npy", k);
        const Result wrong = cli(kMiniCpmv + " --theirs " + q(dir));
        INFO(wrong.out);
        CHECK(wrong.code == 1);
        CHECK_THAT(wrong.out, Contains("the first is 'k' "));
        CHECK_THAT(wrong.out, Contains("by image (max|a-b|): 0 ok "));
        CHECK_THAT(wrong.out, Contains(" | 1 DIFFERS 0.5 | 2 ok "));
    }
}

TEST_CASE("compare: head-averaged attention weights are recognised and compared with our heads' mean", "[cli][compare]") {
    TempDir tmp;
    const std::string dir = tmp / "port";
    copy_dump("qwen_wide", dir);
    const xt::xarray<float> per_head = qwenvl::read_npy_float(dir + "/attn_weights.npy");  // (N, H, Q, L)
    qwenvl::write_npy(dir + "/attn_weights.npy", xt::xarray<float>(xt::mean(per_head, {1})));
    const Result r = cli(kQwenWide + " --theirs " + q(dir));
    INFO(r.out << r.err);
    CHECK(r.code == 0);
    CHECK_THAT(r.out, Contains("[averaged over the heads: compared with our heads' mean]"));
    // one head's mistake in an averaged dump: named, with the advice to dump per-head weights
    xt::xarray<float> wrong = xt::mean(per_head, {1});
    wrong(0, 0, 0) += 0.2f;
    wrong(0, 0, 1) -= 0.2f;
    qwenvl::write_npy(dir + "/attn_weights.npy", wrong);
    const Result differs = cli(kQwenWide + " --theirs " + q(dir));
    INFO(differs.out);
    CHECK(differs.code == 1);
    CHECK_THAT(differs.out, Contains("the first is 'attn_weights' "));
    CHECK_THAT(differs.out, Contains("dump per-head weights"));
}

TEST_CASE("compare: a MiniCPM-V port that runs each image alone, with head-averaged weights, an additive mask, a "
          "skipped or an unbiased ln_kv, is judged on its real keys", "[cli][compare]") {
    // What the porter's trial found: head-averaged weights of a padded batch crashed compare, and the LayerNorm
    // diagnosis compared the padding rows it had left out everywhere else.
    auto alone = [](const std::string& dir) {  // zeros on the padding keys, as a port that runs each image alone
        for (const char* stage : {"kv_proj", "ln_kv", "key_in", "k", "v"}) {
            xt::xarray<float> t = qwenvl::read_npy_float(dir + "/" + stage + ".npy");
            for (std::size_t n = 0; n < kMiniCpmvGrids.size(); ++n)
                xt::view(t, n, xt::range(kMiniCpmvGrids[n].cells(), t.shape(1))) = 0.0f;
            qwenvl::write_npy(dir + "/" + stage + ".npy", t);
        }
    };
    TempDir tmp;
    const std::string dir = tmp / "port";
    copy_dump("minicpmv_mixed", dir);
    alone(dir);
    const xt::xarray<float> per_head = qwenvl::read_npy_float(dir + "/attn_weights.npy");  // (N, H, Q, L)
    xt::xarray<float> averaged = xt::mean(per_head, {1});                                   // (N, Q, L)
    for (std::size_t n = 0; n < kMiniCpmvGrids.size(); ++n)  // whatever the port's buffer held on the padding keys
        xt::view(averaged, n, xt::all(), xt::range(kMiniCpmvGrids[n].cells(), averaged.shape(2))) = 0.25f;
    qwenvl::write_npy(dir + "/attn_weights.npy", averaged);
    const xt::xarray<float> mask = qwenvl::read_npy_float(dir + "/key_padding_mask.npy");  // 1 on the padding
    qwenvl::write_npy(dir + "/key_padding_mask.npy",
                      xt::xarray<float>(xt::where(xt::equal(mask, 1.0f), -std::numeric_limits<float>::infinity(), 0.0f)));
    const Result r = cli(kMiniCpmv + " --theirs " + q(dir));
    INFO(r.out << r.err);
    CHECK(r.code == 0);
    CHECK_THAT(r.out, Contains("MATCH: all 15 stages found"));
    CHECK_THAT(r.out, Contains("averaged over the heads: compared with our heads' mean, padding keys left out"));
    CHECK_THAT(r.out, Contains("an additive mask (-inf on the padding) read as the boolean one"));

    // ln_kv left out: their ln_kv is their kv_proj
    fs::copy_file(dir + "/kv_proj.npy", dir + "/ln_kv.npy", fs::copy_options::overwrite_existing);
    const Result skipped = cli(kMiniCpmv + " --theirs " + q(dir));
    INFO(skipped.out);
    CHECK(skipped.code == 1);
    CHECK_THAT(skipped.out, Contains("the first is 'ln_kv' "));
    CHECK_THAT(skipped.out, Contains("the stage looks skipped: their 'ln_kv' equals our 'kv_proj'"));

    // ln_kv with the unbiased variance, made from their own kv_proj and the checkpoint's ln_kv parameters
    qwenvl::WeightFiles files;
    files.add(kData + "/cli/minicpmv_mixed/weights.safetensors");
    const qwenvl::LoadedAdapter m = qwenvl::load_adapter(files, qwenvl::kDefaultPrefix, 2, true);
    xt::xarray<float> ln = qwenvl::read_npy_float(dir + "/kv_proj.npy");
    const std::size_t E = ln.shape(2);
    for (std::size_t n = 0; n < ln.shape(0); ++n)
        for (std::size_t l = 0; l < kMiniCpmvGrids[n].cells(); ++l) {
            double mean = 0.0, var = 0.0;
            for (std::size_t e = 0; e < E; ++e) mean += ln(n, l, e) / static_cast<double>(E);
            for (std::size_t e = 0; e < E; ++e) var += (ln(n, l, e) - mean) * (ln(n, l, e) - mean) / static_cast<double>(E - 1);
            for (std::size_t e = 0; e < E; ++e)
                ln(n, l, e) = static_cast<float>((ln(n, l, e) - mean) / std::sqrt(var + 1e-6) * m.weights.ln_kv_weight(e) +
                                                 m.weights.ln_kv_bias(e));
        }
    qwenvl::write_npy(dir + "/ln_kv.npy", ln);
    const Result unbiased = cli(kMiniCpmv + " --theirs " + q(dir));
    INFO(unbiased.out);
    CHECK(unbiased.code == 1);
    CHECK_THAT(unbiased.out, Contains("the first is 'ln_kv' "));
    CHECK_THAT(unbiased.out, Contains("their values are this LayerNorm with the unbiased variance"));
    CHECK_THAT(unbiased.out, !Contains("instead of the biased one [here at most"));  // the true cause is not ruled out

    // a file of another shape: one line saying so, no numerical causes
    qwenvl::write_npy(dir + "/ln_kv.npy", xt::xarray<float>(xt::zeros<float>({std::size_t(3), std::size_t(9), std::size_t(7)})));
    const Result misfit = cli(kMiniCpmv + " --theirs " + q(dir));
    INFO(misfit.out);
    CHECK(misfit.code == 1);
    CHECK_THAT(misfit.out, Contains("their file for 'ln_kv' has a shape that is not this stage's (3, 9, 8)"));
    CHECK_THAT(misfit.out, !Contains("usual causes"));
}

TEST_CASE("compare: a skipped stage is named as skipped, and a LayerNorm mistake is told by trying it", "[cli][compare]") {
    TempDir tmp;
    const std::string dir = tmp / "port";
    copy_dump("qwen_wide", dir);
    // ln_post left out: the port's ln_post is its out
    fs::copy_file(dir + "/out.npy", dir + "/ln_post.npy", fs::copy_options::overwrite_existing);
    const Result skipped = cli(kQwenWide + " --theirs " + q(dir));
    INFO(skipped.out);
    CHECK(skipped.code == 1);
    CHECK_THAT(skipped.out, Contains("the first is 'ln_post' "));
    CHECK_THAT(skipped.out, Contains("the stage looks skipped: their 'ln_post' equals our 'out', which comes before it"));
    CHECK_THAT(skipped.out, Contains("or eps outside the square root [here at most "));  // eps: far too small for it
    CHECK_THAT(skipped.out, Contains(": not this]"));
    // ln_kv with the unbiased variance: tried on our own input, and named
    TempDir again;
    const std::string other = again / "port";
    copy_dump("qwen_wide", other, "layernorm_unbiased");
    const Result unbiased = cli(kQwenWide + " --theirs " + q(other));
    INFO(unbiased.out);
    CHECK(unbiased.code == 1);
    CHECK_THAT(unbiased.out, Contains("their values are this LayerNorm with the unbiased variance (divided by E - 1)"));
}

namespace {
// `values` saved as numpy saves a float16 array (format 1.0, '<f2', C order), each value rounded to nearest even.
void write_npy_f16(const std::string& path, const xt::xarray<float>& values) {
    std::string dims;
    for (const std::size_t d : values.shape()) dims += std::to_string(d) + ", ";
    if (values.dimension() > 1) dims = dims.substr(0, dims.size() - 2);
    std::string header = "{'descr': '<f2', 'fortran_order': False, 'shape': (" + dims + "), }";
    header += std::string(63 - (10 + header.size()) % 64, ' ') + "\n";
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write("\x93NUMPY\x01\x00", 8);
    out.put(static_cast<char>(header.size() & 0xFF));
    out.put(static_cast<char>(header.size() >> 8));
    out << header;
    for (const float v : values) {
        const _Float16 h = static_cast<_Float16>(v);
        out.write(reinterpret_cast<const char*>(&h), 2);
    }
}
}  // namespace

TEST_CASE("compare: a port's dump saved in float16 is read: a right port matches, a wrong one is named where it "
          "goes wrong", "[cli][compare]") {
    // float16 keeps 11 significant bits: a relative rounding of at most 2^-11, inside the default 1e-3 (docs/compare.md)
    for (const std::string mistake : {"", "q_unscaled", "layernorm_unbiased"}) {
        DYNAMIC_SECTION((mistake.empty() ? std::string("PyTorch's dump") : mistake)) {
            TempDir tmp;
            const std::string dir = tmp / "port";
            copy_dump("qwen_wide", dir, mistake);
            std::size_t halved = 0;
            for (const auto& entry : fs::directory_iterator(dir)) {
                if (entry.path().extension() != ".npy") continue;
                write_npy_f16(entry.path().string(), qwenvl::read_npy_float(entry.path().string()));
                ++halved;
            }
            REQUIRE(halved >= 15);
            const Result r = cli(kQwenWide + " --theirs " + q(dir));
            INFO(r.out << r.err);
            CHECK(r.err.empty());
            if (mistake.empty()) {
                CHECK(r.code == 0);
                CHECK_THAT(r.out, Contains("MATCH: all 16 stages found"));
            } else {
                CHECK(r.code == 1);
                const std::size_t first = r.out.find("the first is '");
                REQUIRE(first != std::string::npos);
                // the same first stage as the float32 files of that mistake name
                TempDir tmp32;
                copy_dump("qwen_wide", tmp32 / "port", mistake);
                const Result r32 = cli(kQwenWide + " --theirs " + q(tmp32 / "port"));
                const std::size_t first32 = r32.out.find("the first is '");
                REQUIRE(first32 != std::string::npos);
                CHECK(r.out.substr(first, r.out.find('\'', first + 14) - first) ==
                      r32.out.substr(first32, r32.out.find('\'', first32 + 14) - first32));
            }
        }
    }
}

TEST_CASE("compare: forward files that name no stage are listed with the stage they likely meant, and said on the "
          "verdict", "[cli][compare]") {
    // What the porter's trial found: attn_weight.npy for attn_weights.npy was skipped, and the MATCH read as whole
    TempDir tmp;
    const std::string dir = tmp / "port";
    copy_dump("qwen_wide", dir);
    fs::rename(dir + "/attn_weights.npy", dir + "/attn_weight.npy");
    fs::copy_file(dir + "/q.npy", dir + "/notes.npy");
    const Result partial = cli(kQwenWide + " --theirs " + q(dir));
    INFO(partial.out << partial.err);
    CHECK(partial.code == 0);
    CHECK_THAT(partial.out, Contains("(their attn_weight.npy names no stage here, and is not compared; 'attn_weights' is "
                                     "not in their dump: misspelt?)"));
    CHECK_THAT(partial.out, Contains("(their notes.npy names no stage here, and is not compared)"));
    CHECK_THAT(partial.out, Contains("MATCH: all 15 stages found agree within tolerance (2 of their files name no stage "
                                     "here and were not compared: listed above)"));
    // one file: said in the singular
    fs::remove(dir + "/notes.npy");
    const Result one = cli(kQwenWide + " --theirs " + q(dir));
    CHECK_THAT(one.out, Contains("MATCH: all 15 stages found agree within tolerance (1 of their files names no stage "
                                 "here and was not compared: listed above)"));
    // a mapped file is the stage's, not an unknown one
    const std::string renamed = kData + "/compare/qwen_wide/renamed";
    const Result mapped = cli(kQwenWide + " --theirs " + q(renamed) + " --names " + q(renamed + "/names.json"));
    CHECK(mapped.code == 0);
    CHECK_THAT(mapped.out, !Contains("names no stage"));
    // a stage's own file beside the one --names reads it from is said to be passed over, not to name no stage
    TempDir both;
    fs::copy(renamed, both / "port");
    fs::copy_file(renamed + "/attn.key.npy", both / "port/key_in.npy");
    const Result beside = cli(kQwenWide + " --theirs " + q(both / "port") + " --names " + q(renamed + "/names.json"));
    INFO(beside.out);
    CHECK_THAT(beside.out, Contains("(their key_in.npy is not compared: --names reads 'key_in' from attn.key.npy)"));
    CHECK_THAT(beside.out, !Contains("key_in.npy names no stage"));
    CHECK_THAT(beside.out, Contains("MATCH: all 16 stages found agree within tolerance\n"));  // no file counted as naming none
    // PyTorch's own dump holds no other file
    const Result whole = cli(kQwenWide + " --theirs " + q(kData + "/compare/qwen_wide/pytorch"));
    CHECK_THAT(whole.out, !Contains("names no stage"));
}

TEST_CASE("compare: a dump made on another number of images is told as such, not as a layout", "[cli][compare]") {
    TempDir tmp;
    const std::string dir = tmp / "port";
    copy_dump("qwen_wide", dir);
    for (const std::size_t images : {1, 3}) {
        const xt::xarray<float> k = qwenvl::read_npy_float(dir + "/k.npy");  // (2, 15, 8)
        REQUIRE(k.shape(0) == 2);
        xt::xarray<float> other = xt::zeros<float>({images, k.shape(1), k.shape(2)});
        for (std::size_t n = 0; n < images; ++n) xt::view(other, n) = xt::view(k, n % 2);
        TempDir one;
        fs::copy(dir, one / "port");
        qwenvl::write_npy(one / "port/k.npy", other);
        const Result r = cli(kQwenWide + " --theirs " + q(one / "port"));
        INFO(r.out << r.err);
        CHECK(r.code == 1);
        CHECK_THAT(r.out, Contains("the first is 'k'"));
        CHECK_THAT(r.out, Contains("their file for 'k' holds " + std::to_string(images) + " image" +
                                   (images == 1 ? "" : "s") + " and --input 2: make their dump and this comparison "
                                   "from the same features"));
        CHECK_THAT(r.out, !Contains("LNE"));
        // nothing was compared at k: the verdict says so rather than "beyond tolerance"
        CHECK_THAT(r.out, Contains("DIFFERS: 1 of 16 stages found do not fit their file's shape (nothing compared "
                                   "there); the first is 'k'"));
    }
}

TEST_CASE("compare: bad input is one line naming the file, exit 1 or 2", "[cli][compare]") {
    TempDir tmp;
    std::ofstream(tmp / "bad.json") << "{\"stages\": {\"ln_kv\": 3}}";
    std::ofstream(tmp / "unknown.json") << "{\"stages\": {\"ln_kvv\": \"x.npy\"}}";
    std::ofstream(tmp / "broken.json") << "{\"stages\": ";
    std::ofstream(tmp / "typo.json") << "{\"stages\": {\"ln_kv\": \"ln_kv_out.npy\"}}";
    const std::string dump = " --theirs " + q(kData + "/compare/qwen_wide/pytorch");
    const BadInput cases[] = {
        {kQwenWide + dump + " --names " + q(tmp / "bad.json"), "bad.json: stage 'ln_kv': expected a file name", 1},
        {kQwenWide + dump + " --names " + q(tmp / "unknown.json"), "'ln_kvv' is not one of this project's stages", 1},
        {kQwenWide + dump + " --names " + q(tmp / "broken.json"), "broken.json: not valid JSON", 1},
        {kQwenWide + " --theirs " + q(tmp / "nowhere"), "nowhere: no such folder", 1},
        {kQwenWide + " --theirs " + q(tmp / "bad.json"), "bad.json: not a folder of .npy intermediates", 1},
        {kQwenWide + " --theirs " + q(tmp.path.string()), "holds none of the stages' files", 1},
        {kQwenWide + dump + " --atol -1", "--atol takes a non-negative number", 2},
        {kQwenWide + " --grids 4x4" + dump, "x.npy: a grid of 4x4 = 16 patches is not the features' patch count L = 15", 1},
        {kQwenWide + dump + " --names " + q(tmp / "typo.json"), "typo.json: stage 'ln_kv' maps to 'ln_kv_out.npy', which is not in", 1},
    };
    check_bad_inputs(cases);
}

// --- compare --gradients: a port's backward against this project's (docs/compare.md#gradients) ---

namespace {
const std::string kBackward = kData + "/compare/qwen_wide/backward";
// Every gradient file of a dump, in the order compare lists them (the backward's, then the parameters')
const std::vector<std::string> kGradientFiles = {
    "ln_post", "out", "attended", "attn_weights", "scores", "k", "v", "key_in", "ln_kv", "kv_proj", "q", "query_in",
    "ln_q", "x", "parameters/attn_pool.query", "parameters/attn_pool.attn.in_proj_weight",
    "parameters/attn_pool.attn.in_proj_bias", "parameters/attn_pool.attn.out_proj.weight",
    "parameters/attn_pool.attn.out_proj.bias", "parameters/attn_pool.ln_q.weight", "parameters/attn_pool.ln_q.bias",
    "parameters/attn_pool.ln_kv.weight", "parameters/attn_pool.ln_kv.bias", "parameters/ln_post.weight",
    "parameters/ln_post.bias", "parameters/proj", "parameters/attn_pool.kv_proj.weight"};
}  // namespace

TEST_CASE("compare --gradients: PyTorch autograd's gradients match on both paths, with the forward's dump or without",
          "[cli][compare]") {
    for (const std::string path : {"", " --readable"}) {
        DYNAMIC_SECTION("path:" << path) {
            const Result alone = cli(kQwenWide + " --gradients --theirs " + q(kBackward + "/pytorch") + path);
            INFO(alone.out << alone.err);
            CHECK(alone.code == 0);
            CHECK_THAT(alone.out, Contains("(no forward intermediates in their dump: the gradients alone)"));
            CHECK_THAT(alone.out, Contains("MATCH: all 27 gradients found agree within tolerance"));
            // every gradient file was read: each one's row is there, none "not in their dump"
            for (const auto& file : kGradientFiles) {
                const std::string label = file.rfind("parameters/", 0) == 0 ? "parameter " + file.substr(11) : file;
                CHECK_THAT(alone.out, Contains("\n  " + label + " "));
            }
            CHECK_THAT(alone.out, !Contains("not in their dump"));
            TempDir tmp;  // the forward's dump beside the gradients: both tables
            copy_dump("qwen_wide", tmp / "port");
            fs::copy(kBackward + "/pytorch/gradients", tmp / "port/gradients", fs::copy_options::recursive);
            const Result both = cli(kQwenWide + " --gradients --theirs " + q(tmp / "port") + path);
            INFO(both.out << both.err);
            CHECK(both.code == 0);
            CHECK_THAT(both.out, Contains("MATCH: all 16 stages and 27 gradients found agree within tolerance"));
        }
    }
}

TEST_CASE("compare --gradients: MiniCPM-V's gradients match on both paths, and its padding keys' gradients must be 0",
          "[cli][compare]") {
    const std::string dump = kData + "/compare/minicpmv_mixed/backward/pytorch";
    for (const std::string path : {"", " --readable"}) {
        const Result r = cli(kMiniCpmv + " --gradients --theirs " + q(dump) + path);
        INFO(r.out << r.err);
        CHECK(r.code == 0);
        CHECK_THAT(r.out, Contains("MATCH: all 26 gradients found agree within tolerance"));  // no query_in
        CHECK_THAT(r.out, Contains("\n  parameter attn.in_proj_weight "));  // MiniCPM-V's own names
        CHECK_THAT(r.out, Contains("[padding keys left out]"));               // dL/d attn_weights's padding columns
    }
    // A port whose padding keys pass a gradient back (it would flow on into the parameters and dL/dx) differs, at the
    // first such gradient in the backward's order, and is told it is the padding alone; each of these stages alone.
    for (const std::string stage : {"scores", "k", "v", "key_in", "ln_kv", "kv_proj", "x"}) {
        DYNAMIC_SECTION("junk on the padding of dL/d " << stage) {
            TempDir tmp;
            fs::copy(dump, tmp / "port", fs::copy_options::recursive);
            const std::string file = tmp / "port/gradients" + "/" + stage + ".npy";
            xt::xarray<float> g = qwenvl::read_npy_float(file);
            if (stage == "scores") xt::view(g, 2, xt::all(), xt::all(), xt::range(2, 9)) = 7.0f;  // image 2: 1 x 2 patches
            else xt::view(g, 2, xt::range(2, 9)) = 7.0f;
            qwenvl::write_npy(file, g);
            const Result junk = cli(kMiniCpmv + " --gradients --theirs " + q(tmp / "port"));
            INFO(junk.out << junk.err);
            CHECK(junk.code == 1);
            CHECK_THAT(junk.out, Contains("the first is dL/d " + stage + "\n"));
            CHECK_THAT(junk.out, Contains("wrong on the padding keys only"));
        }
    }
    // dL/d attn_weights's padding columns hold dL/d attended v^T, whatever a port left in v's padding rows: left out
    TempDir tmp;
    fs::copy(dump, tmp / "port", fs::copy_options::recursive);
    xt::xarray<float> p = qwenvl::read_npy_float(tmp / "port/gradients/attn_weights.npy");
    xt::view(p, 2, xt::all(), xt::all(), xt::range(2, 9)) = 7.0f;
    qwenvl::write_npy(tmp / "port/gradients/attn_weights.npy", p);
    const Result padded = cli(kMiniCpmv + " --gradients --theirs " + q(tmp / "port"));
    INFO(padded.out << padded.err);
    CHECK(padded.code == 0);
    // ... but not on the real keys, and there without the padding's note
    xt::xarray<float> k = qwenvl::read_npy_float(tmp / "port/gradients/k.npy");
    k(2, 1, 0) += 1.0f;
    qwenvl::write_npy(tmp / "port/gradients/k.npy", k);
    const Result real = cli(kMiniCpmv + " --gradients --theirs " + q(tmp / "port"));
    CHECK(real.code == 1);
    CHECK_THAT(real.out, Contains("the first is dL/d k\n"));
    CHECK_THAT(real.out, !Contains("wrong on the padding keys only"));
}

TEST_CASE("compare --gradients: whichever gradient a port gets wrong, that one is named first (seeded)",
          "[cli][compare]") {
    // One file at a time, chosen at random, has one entry changed by 1 % of the file's largest value (ten times the
    // default rule): compare must name it, and every gradient before it must still be "ok".
    std::mt19937 rng(26);
    for (int trial = 0; trial < 6; ++trial) {
        const std::size_t pick = std::uniform_int_distribution<std::size_t>(0, kGradientFiles.size() - 1)(rng);
        const std::string file = kGradientFiles[pick];
        DYNAMIC_SECTION("trial " << trial << ": " << file) {
            TempDir tmp;
            fs::copy(kBackward + "/pytorch", tmp / "port", fs::copy_options::recursive);
            const std::string path = tmp / "port/gradients" + "/" + file + ".npy";
            xt::xarray<float> g = qwenvl::read_npy_float(path);
            const float largest = xt::amax(xt::abs(g))();
            const std::size_t at = std::uniform_int_distribution<std::size_t>(0, g.size() - 1)(rng);
            g.flat(at) += (std::uniform_int_distribution<int>(0, 1)(rng) ? 1.0f : -1.0f) * 0.01f * largest;
            qwenvl::write_npy(path, g);
            const Result r = cli(kQwenWide + " --gradients --theirs " + q(tmp / "port"));
            INFO(r.out << r.err);
            CHECK(r.code == 1);
            const std::string label = file.rfind("parameters/", 0) == 0 ? "parameter " + file.substr(11) : file;
            CHECK_THAT(r.out, Contains("the first is dL/d " + label + "\n"));
            CHECK_THAT(r.out, Contains("DIFFERS: 1 of 27 gradients found"));  // a gradient file alone: nothing follows it
        }
    }
}

TEST_CASE("compare --gradients: a backward step left out is named, and a differing forward is judged first", "[cli][compare]") {
    TempDir tmp;
    fs::copy(kBackward + "/pytorch", tmp / "port", fs::copy_options::recursive);
    // ln_kv's backward left out: the port's dL/d kv_proj is its dL/d ln_kv
    fs::copy_file(tmp / "port/gradients/ln_kv.npy", tmp / "port/gradients/kv_proj.npy", fs::copy_options::overwrite_existing);
    const Result skipped = cli(kQwenWide + " --gradients --theirs " + q(tmp / "port"));
    INFO(skipped.out);
    CHECK(skipped.code == 1);
    CHECK_THAT(skipped.out, Contains("the first is dL/d kv_proj\n"));
    CHECK_THAT(skipped.out, Contains("their dL/d kv_proj equals our dL/d ln_kv, which comes before it"));
    CHECK_THAT(skipped.out, Contains("ln_kv's backward: dL/dx = rstd (g - mean(g) - xhat mean(g xhat))"));
    // a forward that differs (the key table left out) with right gradients: the forward is named, the gradients wait
    TempDir again;
    copy_dump("qwen_wide", again / "port", "no_key_table");
    fs::copy(kBackward + "/pytorch/gradients", again / "port/gradients", fs::copy_options::recursive);
    const Result forward = cli(kQwenWide + " --gradients --theirs " + q(again / "port"));
    INFO(forward.out);
    CHECK(forward.code == 1);
    CHECK_THAT(forward.out, Contains("the first is 'key_in'"));
    CHECK_THAT(forward.out, Contains("(the forward differs, so the gradients are not judged: they follow from it; 0 of 27 differ)"));
}

TEST_CASE("compare --gradients: files that name no gradient are listed and said on the verdict, and in_proj is told by "
          "its q, k and v parts", "[cli][compare]") {
    // What the porter's trial found: a misspelt or prefixed file was skipped silently, and a MATCH read as whole
    TempDir tmp;
    fs::copy(kBackward + "/pytorch", tmp / "port", fs::copy_options::recursive);
    fs::rename(tmp / "port/gradients/ln_kv.npy", tmp / "port/gradients/lnkv.npy");
    fs::rename(tmp / "port/gradients/parameters/proj.npy", tmp / "port/gradients/parameters/transformer.visual.proj.npy");
    const Result partial = cli(kQwenWide + " --gradients --theirs " + q(tmp / "port"));
    INFO(partial.out);
    CHECK(partial.code == 0);
    CHECK_THAT(partial.out, Contains("(their gradients/lnkv.npy names no gradient here, and is not compared)"));
    CHECK_THAT(partial.out, Contains("parameters/transformer.visual.proj.npy names no gradient here, and is not compared; "
                                     "a parameter's file name drops the model's prefix"));
    CHECK_THAT(partial.out, Contains("MATCH: all 25 gradients found agree within tolerance (2 of their files name no "
                                     "gradient here and were not compared: listed above)"));
    // the key part of in_proj's weight gradient scaled: the parts say which
    const std::string w = tmp / "port/gradients/parameters/attn_pool.attn.in_proj_weight.npy";
    xt::xarray<float> g = qwenvl::read_npy_float(w);
    xt::view(g, xt::range(8, 16)) *= 1.5f;
    qwenvl::write_npy(w, g);
    const Result part = cli(kQwenWide + " --gradients --theirs " + q(tmp / "port"));
    INFO(part.out);
    CHECK(part.code == 1);
    CHECK_THAT(part.out, Contains("the first is dL/d parameter attn_pool.attn.in_proj_weight\n"));
    CHECK_THAT(part.out, Contains("by part: q [0, 8): ok"));
    CHECK_THAT(part.out, Contains("| k [8, 16): DIFFERS"));
    CHECK_THAT(part.out, Contains("| v [16, 24): ok"));
}

TEST_CASE("compare --gradients: bad input is one line naming the file, exit 1 or 2", "[cli][compare]") {
    TempDir tmp;
    fs::create_directories(tmp / "only_g/gradients");
    fs::copy_file(kBackward + "/pytorch/gradients/proj.npy", tmp / "only_g/gradients/proj.npy");
    fs::create_directories(tmp / "wrong_g/gradients");
    qwenvl::write_npy(tmp / "wrong_g/gradients/proj.npy", xt::xarray<float>(xt::zeros<float>({2, 5, 8})));
    fs::create_directories(tmp / "nan_g/gradients");
    xt::xarray<float> g = qwenvl::read_npy_float(kBackward + "/pytorch/gradients/proj.npy");
    g(1, 2, 3) = std::numeric_limits<float>::quiet_NaN();
    qwenvl::write_npy(tmp / "nan_g/gradients/proj.npy", g);
    const BadInput cases[] = {
        {kMiniCpmv + " --gradients --theirs " + q(kData + "/compare/minicpmv_mixed/pytorch"),
         "pytorch: has no gradients/proj.npy", 1},
        {kQwenWide + " --gradients --theirs " + q(kData + "/compare/qwen_wide/pytorch"),
         "pytorch: has no gradients/proj.npy: --gradients needs G = dL/d proj", 1},
        {kQwenWide + " --gradients --theirs " + q(tmp / "wrong_g"), "proj.npy: has shape (2, 5, 8), not proj's (2, 4, 8)", 1},
        {kQwenWide + " --gradients --theirs " + q(tmp / "only_g"), "gradients: holds none of the gradients' files", 1},
        {kQwenWide + " --gradients --theirs " + q(tmp / "nan_g"), "proj.npy: holds NaN or infinite values", 1},
        {kQwenWide + " --gradients --theirs " + q(tmp / "no_such_folder"), "no_such_folder: no such folder", 1},
    };
    check_bad_inputs(cases);
}

// --- the second model and any grid (docs/models.md) ---

TEST_CASE("cli: info names the model from the checkpoint's names", "[cli][models]") {
    const Result qwen = cli("info --weights " + q(kCase + "/weights.safetensors") + " --heads 2");
    REQUIRE(qwen.code == 0);
    CHECK_THAT(qwen.out, Contains("model: Qwen-VL (tensors under transformer.visual.attn_pool.)"));
    const Result minicpmv = cli("info --weights " + q(kData + "/cli/minicpmv_mixed/weights.safetensors") + " --heads 2");
    REQUIRE(minicpmv.code == 0);
    CHECK_THAT(minicpmv.out, Contains("model: MiniCPM-V 2.5/2.6 (tensors under resampler.)"));
    CHECK_THAT(minicpmv.out, Contains("Q (n_queries) = 3, no position term on the queries"));
    CHECK_THAT(minicpmv.out, Contains("adapter, frozen pos_embed: 0"));
}

TEST_CASE("cli: MiniCPM-V 2.0 (a stored resampler.pos_embed) is refused in one line", "[cli][models]") {
    TempDir tmp;
    std::vector<std::pair<std::string, std::vector<std::size_t>>> t;
    for (const auto& [name, shape] : adapter_tensors(8, 6, 4)) t.push_back({"resampler." + name.substr(29), shape});
    t.push_back({"resampler.pos_embed", {4, 8}});
    write_f32_tensors(tmp / "v20.safetensors", t);
    const Result r = cli("info --weights " + q(tmp / "v20.safetensors") + " --heads 2");
    CHECK(r.code == 1);
    CHECK_THAT(r.err, Contains("v20.safetensors: 'resampler.pos_embed' is stored: a MiniCPM-V 2.0 resampler"));
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
}

TEST_CASE("cli: run --grids checks the grids against the features, one line each", "[cli][models]") {
    TempDir tmp;
    const std::string m = "run --weights " + q(kData + "/cli/minicpmv_mixed/weights.safetensors") + " --heads 2 --input " +
                          q(kData + "/cli/minicpmv_mixed/x.npy") + " --output " + q(tmp / "y.npy");
    const std::string w = "run --weights " + q(kData + "/cli/qwen_wide/weights.safetensors") + " --heads 2 --input " +
                          q(kData + "/cli/qwen_wide/x.npy") + " --output " + q(tmp / "y.npy");
    const struct {
        std::string args, message;
        int code;
    } cases[] = {
        {m + " --grids 2x3,3x3", "--grids gives 2 grids for 3 images", 2},
        {m + " --grids 2x3,3x4,1x2", "x.npy: a grid of 3x4 = 12 patches exceeds the features' patch count L = 9", 1},
        {m + " --grids 2by3", "--grids takes HxW[,HxW...], got '2by3'", 2},
        {m + " --grids 2x3x1", "--grids takes HxW[,HxW...], got '2x3x1'", 2},
        {m, "MiniCPM-V's resampler needs each image's grid of patches: --grids", 2},
        {m + " --grids 0x3,3x3,1x2", "--grids", 2},
        {m + " --grids 2x3,3x3,1x2 --mask " + q(kData + "/cli/float_mask/mask.npy"), "MiniCPM-V takes no --mask", 2},
        {w, "not a perfect square (the positions form a square grid); for a non-square image give its grid: --grids HxW", 1},
        {w + " --grids 3x5,3x5", "--grids gives 2 grids for 2 images", 0},  // one per image, all the same: fine
        {w + " --grids 3x5,5x3", "Qwen-VL's adapter takes one key grid for the whole batch", 2},
    };
    for (const auto& c : cases) {
        const Result r = cli(c.args);
        INFO(c.args << "\n" << r.err);
        CHECK(r.code == c.code);
        if (c.code != 0) {
            CHECK_THAT(r.err, Contains(c.message));
            CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
            CHECK_FALSE(fs::exists(tmp / "y.npy"));
        }
        fs::remove(tmp / "y.npy");
    }
}
