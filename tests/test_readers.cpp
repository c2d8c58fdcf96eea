// The readers against a corpus of valid files from other writers (data/readers/, written by numpy and by a
// safetensors writer laid out as the reference implementation's, in tests/reference/make_fixtures.py): each file is
// read with the values data/readers/corpus.json lists, or refused in one line naming the file and the problem.
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "io/checkpoint.hpp"
#include "io/errors.hpp"
#include "io/npy.hpp"
#include "io/safetensors.hpp"
#include "temp_files.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using nlohmann::json;
using namespace qwenvl;

namespace {

const std::string kReaders = std::string(QWENVL_DATA_DIR) + "/readers/";

// The manifest; a loop keeps it in a variable (`for (x : corpus()["npy"])` would walk a destroyed temporary).
json corpus() { return read_json(kReaders + "corpus.json"); }

using qwenvl_test::slurp;
using qwenvl_test::TempDir;

std::string q(const std::string& s) { return "'" + s + "'"; }

struct Result {
    int code = -1;
    std::string err;
};

// Runs the program with `args` (already shell-quoted where needed).
Result cli(const std::string& args) {
    TempDir io;
    const std::string command =
        std::string("'") + QWENVL_CLI + "' " + args + " >/dev/null 2>'" + (io / "err") + "' </dev/null";
    const int status = std::system(command.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(io / "err")};
}

// The message of the InputError `read` throws (empty when it throws none).
template <typename Read>
std::string input_error(Read read) {
    try {
        read();
    } catch (const InputError& e) {
        return e.what();
    }
    return "";
}

// A refusal as the readers promise it: one line, "FILE: problem", with every one of `words` in the problem.
void check_refusal(const std::string& message, const std::string& file, const json& words) {
    INFO("message: " << message);
    CHECK_THAT(message, StartsWith(file + ": "));
    CHECK(message.find('\n') == std::string::npos);
    for (const auto& w : words) CHECK_THAT(message, Contains(w.get<std::string>()));
}

std::vector<float> floats(const json& values) {
    std::vector<float> out;
    for (const auto& v : values) out.push_back(static_cast<float>(v.get<double>()));
    return out;
}

std::vector<float> values_of(const xt::xarray<float>& a) { return std::vector<float>(a.begin(), a.end()); }

// `run`'s output bytes for the corpus case `c` with the weights `weights`, on the fast path or --readable.
std::string run_output(const json& c, const std::string& weights, const std::string& path) {
    TempDir tmp;
    const Result r = cli("run --weights " + q(weights) + " --input " + q(kReaders + c["input"].get<std::string>()) +
                         " --output " + q(tmp / "y.npy") + " --heads " + std::to_string(c["heads"].get<int>()) + path);
    INFO(weights << path << ": " << r.err);
    REQUIRE(r.code == 0);
    return slurp(tmp / "y.npy");
}

// Every weight of two loaded adapters, equal bit for bit.
void check_same_adapter(const LoadedAdapter& a, const LoadedAdapter& b) {
    const AdapterWeights &x = a.weights, &y = b.weights;
    CHECK(x.query == y.query);
    CHECK(x.pos_embed == y.pos_embed);
    CHECK(x.kv_proj == y.kv_proj);
    CHECK(x.in_proj.w_q == y.in_proj.w_q);
    CHECK(x.in_proj.w_k == y.in_proj.w_k);
    CHECK(x.in_proj.w_v == y.in_proj.w_v);
    CHECK(x.in_proj.b_q == y.in_proj.b_q);
    CHECK(x.in_proj.b_k == y.in_proj.b_k);
    CHECK(x.in_proj.b_v == y.in_proj.b_v);
    CHECK(x.out_proj_weight == y.out_proj_weight);
    CHECK(x.out_proj_bias == y.out_proj_bias);
    CHECK(x.ln_q_weight == y.ln_q_weight);
    CHECK(x.ln_q_bias == y.ln_q_bias);
    CHECK(x.ln_kv_weight == y.ln_kv_weight);
    CHECK(x.ln_kv_bias == y.ln_kv_bias);
    CHECK(a.has_tail == b.has_tail);
    CHECK(a.tail.ln_post_weight == b.tail.ln_post_weight);
    CHECK(a.tail.ln_post_bias == b.tail.ln_post_bias);
    CHECK(a.tail.proj == b.tail.proj);
}

LoadedAdapter load(const std::string& path, std::size_t heads) {
    WeightFiles files;
    files.add(path);
    return load_adapter(files, kDefaultPrefix, heads, true);
}

}  // namespace

TEST_CASE("readers: every .npy in the corpus is read with numpy's values or refused with its documented message",
          "[readers][npy]") {
    std::size_t read = 0, refused = 0;
    const json all = corpus();
    for (const auto& c : all["npy"]) {
        const std::string path = kReaders + c["file"].get<std::string>();
        DYNAMIC_SECTION(c["file"].get<std::string>() << ", written by " << c["written_by"].get<std::string>()) {
            if (c["read"].get<bool>()) {
                bool is_bool = !c["bool"].get<bool>();
                const xt::xarray<float> a = read_npy(path, &is_bool);
                CHECK((std::vector<std::size_t>(a.shape().begin(), a.shape().end()) ==
                       c["shape"].get<std::vector<std::size_t>>()));
                CHECK(values_of(a) == floats(c["values"]));  // exactly: every value is stored exactly or rounded once
                CHECK(is_bool == c["bool"].get<bool>());
                if (c["bool"].get<bool>())  // the float reader wants numbers, not a mask
                    check_refusal(input_error([&] { read_npy_float(path); }), path, json::array({"holds booleans"}));
                else
                    CHECK(values_of(read_npy_float(path)) == floats(c["values"]));
            } else {
                check_refusal(input_error([&] { read_npy(path, nullptr); }), path, c["error"]);
                check_refusal(input_error([&] { read_npy_float(path); }), path, c["error"]);
            }
        }
        ++(c["read"].get<bool>() ? read : refused);
    }
    CHECK(read >= 15);     // Fortran order and float16 among them
    CHECK(refused >= 9);
}

TEST_CASE("readers: .npy format versions 1.0, 2.0 and 3.0 of one array read the same values", "[readers][npy]") {
    std::set<int> versions;
    std::vector<float> first;
    const json all = corpus();
    for (const auto& c : all["npy"]) {
        const std::string file = c["file"].get<std::string>();
        if (file.rfind("npy/f4_v", 0) != 0) continue;
        const std::string path = kReaders + file;
        const std::string bytes = slurp(path);
        REQUIRE(bytes.size() > 8);
        versions.insert(bytes[6]);  // the major version, after the magic "\x93NUMPY"
        const std::vector<float> values = values_of(read_npy_float(path));
        INFO(file);
        if (first.empty()) first = values;
        CHECK(values == first);
        CHECK(values == floats(c["values"]));
    }
    CHECK(versions == std::set<int>{1, 2, 3});
}

TEST_CASE("readers: a Fortran-order .npy (np.save of a transposed view) is read with numpy's values in row-major "
          "order, never as C order", "[readers][npy]") {
    std::size_t fortran = 0;
    const json all = corpus();
    for (const auto& c : all["npy"]) {
        const std::string path = kReaders + c["file"].get<std::string>();
        if (slurp(path).find("'fortran_order': True") == std::string::npos) continue;
        INFO(path);
        REQUIRE(c["read"].get<bool>());
        const xt::xarray<float> got = read_npy_float(path);
        CHECK(shape_of(got) == c["shape"].get<std::vector<std::size_t>>());
        CHECK(values_of(got) == floats(c["values"]));  // numpy's a.flatten(), row-major
        ++fortran;
    }
    CHECK(fortran == 3);  // asfortranarray in 2-D and 3-D, and a.T
}

TEST_CASE("readers: run refuses each refused .npy given as its input in one line naming the file", "[readers][npy][cli]") {
    const json st = corpus()["safetensors"][0];
    const std::string weights = kReaders + st["same_output_as"].get<std::string>();
    const json all = corpus();
    for (const auto& c : all["npy"]) {
        if (c["read"].get<bool>()) continue;
        const std::string path = kReaders + c["file"].get<std::string>();
        TempDir tmp;
        const Result r = cli("run --weights " + q(weights) + " --input " + q(path) + " --output " + q(tmp / "y.npy") +
                             " --heads 2");
        INFO(path << ": " << r.err);
        CHECK(r.code == 1);
        CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
        CHECK_THAT(r.err, Contains(path + ": "));
        for (const auto& w : c["error"]) CHECK_THAT(r.err, Contains(w.get<std::string>()));
        CHECK_FALSE(fs::exists(tmp / "y.npy"));
    }
}

TEST_CASE("readers: every dtype the safetensors format lists is accepted in a header, zero-size and 0-d tensors "
          "included, and only F32, F16 and BF16 tensors are read",
          "[readers][safetensors]") {
    const json c = corpus()["safetensors"][0];
    const std::string path = kReaders + c["file"].get<std::string>();
    WeightFiles files;
    files.add(path);
    std::set<std::string> dtypes;
    for (const auto& t : c["extra_tensors"]) {
        const std::string name = t["name"].get<std::string>(), dtype = t["dtype"].get<std::string>();
        INFO(name);
        REQUIRE(files.has(name));
        const TensorEntry& e = files.entry(name);
        CHECK(e.dtype == dtype);
        CHECK(e.shape == t["shape"].get<std::vector<std::size_t>>());
        CHECK(dtype_bits(dtype) == t["bits"].get<std::size_t>());
        std::size_t count = 1;
        for (std::size_t d : e.shape) count *= d;
        CHECK(e.end - e.begin == count * dtype_bits(dtype) / 8);
        std::vector<float> out(count);
        if (t.contains("values")) {
            files.read_into(name, 0, count, out.data());  // a zero-size tensor's out.data() may be null
            CHECK(out == floats(t["values"]));
        } else {
            check_refusal(input_error([&] { files.read_into(name, 0, count, out.data()); }), path, t["error"]);
        }
        dtypes.insert(dtype);
    }
    CHECK(dtypes.size() == 22);  // every dtype of huggingface/safetensors' `enum Dtype`
    CHECK(files.entries().size() == c["extra_tensors"].size() + c["adapter_tensors"].size());
}

TEST_CASE("readers: a safetensors file with every dtype and zero-size tensors beside the adapter's loads the "
          "adapter, and run gives the plain file's output byte for byte",
          "[readers][safetensors][cli]") {
    const json c = corpus()["safetensors"][0];
    const std::string path = kReaders + c["file"].get<std::string>();
    const std::string plain = kReaders + c["same_output_as"].get<std::string>();
    const std::size_t heads = c["heads"].get<std::size_t>();
    check_same_adapter(load(path, heads), load(plain, heads));
    for (const std::string way : {"", " --readable"}) {
        INFO("run" << way);
        CHECK(run_output(c, path, way) == run_output(c, plain, way));
    }
}

TEST_CASE("readers: an index naming a tensor its shard lacks is refused naming the index, the tensor and the shard",
          "[readers][safetensors][sharded]") {
    std::size_t cases = 0;
    const json all = corpus();
    for (const auto& c : all["sharded"]) {
        if (c["read"].get<bool>()) continue;
        const std::string index = kReaders + c["file"].get<std::string>();
        DYNAMIC_SECTION(c["description"].get<std::string>()) {
            WeightFiles files;
            check_refusal(input_error([&] { files.add(index); }), index, c["error"]);
            TempDir tmp;  // and on the command line: one line, exit 1, no output
            const Result r = cli("run --weights " + q(index) + " --input " +
                                 q(kReaders + corpus()["safetensors"][0]["input"].get<std::string>()) + " --output " +
                                 q(tmp / "y.npy") + " --heads 2");
            INFO(r.err);
            CHECK(r.code == 1);
            CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
            CHECK_THAT(r.err, Contains(index + ": "));
            for (const auto& w : c["error"]) CHECK_THAT(r.err, Contains(w.get<std::string>()));
            CHECK_FALSE(fs::exists(tmp / "y.npy"));
        }
        ++cases;
    }
    CHECK(cases == 2);  // listed in a shard when no shard holds it; listed in the wrong shard
}

TEST_CASE("readers: a shard's tensors the index does not list are ignored, and run gives the plain file's output",
          "[readers][safetensors][sharded][cli]") {
    std::size_t cases = 0;
    const json all = corpus();
    for (const auto& c : all["sharded"]) {
        if (!c["read"].get<bool>()) continue;
        const std::string index = kReaders + c["file"].get<std::string>();
        const std::string plain = kReaders + c["same_output_as"].get<std::string>();
        const std::size_t heads = c["heads"].get<std::size_t>();
        WeightFiles files;
        files.add(index);
        std::vector<std::string> names;
        for (const auto& e : files.entries()) names.push_back(e.name);
        CHECK(names == c["tensors"].get<std::vector<std::string>>());  // the index's tensors, and no others
        const fs::path folder = fs::path(index).parent_path();
        for (const auto& ignored : c["ignored"]) {
            const std::string name = ignored["name"].get<std::string>();
            INFO(name << " in " << ignored["file"].get<std::string>());
            CHECK((!files.has(name) || files.entry(name).file != (folder / ignored["file"].get<std::string>()).string()));
        }
        check_same_adapter(load(index, heads), load(plain, heads));  // the index's query, not the shard's stray copy
        for (const std::string way : {"", " --readable"}) {
            INFO("run" << way);
            CHECK(run_output(c, index, way) == run_output(c, plain, way));
        }
        ++cases;
    }
    CHECK(cases == 1);
}

TEST_CASE("readers: a float32 .npy is read with its values from a file (v1 or v2 header) or a pipe, and refused when "
          "a byte is missing or left over, at seeded random shapes",
          "[readers][npy]") {
    std::mt19937 rng(2612);
    std::uniform_real_distribution<float> value(-1e3f, 1e3f);
    TempDir tmp;
    for (int trial = 0; trial < 24; ++trial) {
        std::vector<std::size_t> shape(rng() % 5);  // rank 0 to 4
        for (std::size_t& d : shape) d = rng() % 6;  // sometimes 0: an empty array
        xt::xarray<float> a = xt::xarray<float>::from_shape(shape);
        for (float& v : a) v = value(rng);
        const std::vector<float> expected(a.begin(), a.end());
        INFO("trial " << trial << ", shape " << shape_string(shape));
        const std::string v1 = tmp / "v1.npy";
        write_npy(v1, a);
        // The same array with a version 2.0 preamble: a 4-byte header length, the values 2 bytes later.
        std::string bytes = slurp(v1);
        const std::size_t header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
        std::string v2bytes = bytes.substr(0, 6) + std::string("\x02\x00", 2) +
                              std::string{static_cast<char>(header_len & 0xFF), static_cast<char>(header_len >> 8), '\0', '\0'} +
                              bytes.substr(10);
        const std::string v2 = tmp / "v2.npy";
        std::ofstream(v2, std::ios::binary) << v2bytes;
        for (const std::string& path : {v1, v2}) {
            const xt::xarray<float> got = read_npy_float(path);
            CHECK(shape_of(got) == shape);
            CHECK(std::vector<float>(got.begin(), got.end()) == expected);
        }
        // From a pipe (not seekable): the same values.
        const std::string fifo = tmp / "pipe.npy";
        REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
        std::thread writer([&] { std::ofstream(fifo, std::ios::binary) << bytes; });
        const xt::xarray<float> piped = read_npy_float(fifo);
        writer.join();
        std::filesystem::remove(fifo);
        CHECK(std::vector<float>(piped.begin(), piped.end()) == expected);
        // A byte missing or left over: refused, naming the file and the sizes.
        if (!expected.empty()) {
            std::ofstream(tmp / "short.npy", std::ios::binary) << bytes.substr(0, bytes.size() - 1);
            CHECK_THROWS_WITH(read_npy_float(tmp / "short.npy"),
                              Contains("short.npy") && Contains("bytes of data but the file holds"));
        }
        std::ofstream(tmp / "long.npy", std::ios::binary) << bytes + "x";
        CHECK_THROWS_WITH(read_npy_float(tmp / "long.npy"), Contains("long.npy") && Contains("bytes of data but the file holds"));
    }
}
