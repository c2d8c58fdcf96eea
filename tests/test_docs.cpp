// The docs keep up with the code: every function declared in src/*.hpp is named (in backticks) somewhere in
// docs/, and every relative link in docs/ and the README resolves to a file (and, for a #section of a Markdown
// file, to a heading of that file).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include <catch2/catch.hpp>

#include "stages/07_adapter.hpp"

namespace fs = std::filesystem;

namespace {

const fs::path kRoot = QWENVL_SOURCE_DIR;

std::string slurp(const fs::path& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

std::vector<fs::path> markdown_files() {
    std::vector<fs::path> files = {kRoot / "README.md"};
    for (const auto& e : fs::recursive_directory_iterator(kRoot / "docs"))
        if (e.path().extension() == ".md") files.push_back(e.path());
    return files;
}

// Names of the functions declared in a header, outside `private:` sections.
std::set<std::string> declared_functions(const fs::path& header) {
    static const std::regex declaration(
        R"(^\s*(?:(?:inline|static|constexpr|const)\s+)*[A-Za-z_][\w:]*(?:<[^()]*>)?[\s\*&]+([A-Za-z_]\w*)\s*\()");
    static const std::set<std::string> keywords = {"if", "for", "while", "switch", "return", "sizeof", "operator"};
    std::set<std::string> names;
    std::istringstream in(slurp(header));
    std::string line;
    bool hidden = false;
    while (std::getline(in, line)) {
        if (std::regex_search(line, std::regex(R"(^\s*private:)"))) hidden = true;
        if (std::regex_search(line, std::regex(R"(^\s*public:|^\};)"))) hidden = false;
        const auto first = line.find_first_not_of(' ');
        if (hidden || first == std::string::npos || line.compare(first, 2, "//") == 0 || line[first] == '#' ||
            line.compare(first, 6, "return") == 0)
            continue;
        std::smatch m;
        if (std::regex_search(line, m, declaration) && !keywords.count(m[1].str())) names.insert(m[1].str());
    }
    return names;
}

// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
std::string slug(const std::string& heading) {
    std::string s;
    for (char c : heading) {
        if (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') s += static_cast<char>(std::tolower(c));
        else if (c == ' ') s += '-';
    }
    return s;
}

std::set<std::string> anchors(const fs::path& markdown) {
    std::set<std::string> out;
    std::istringstream in(slurp(markdown));
    std::string line;
    while (std::getline(in, line))
        if (!line.empty() && line[0] == '#') out.insert(slug(line.substr(line.find_first_not_of('#'))).substr(1));
    return out;
}

}  // namespace

TEST_CASE("docs: every function declared in src/ is named in docs/", "[docs]") {
    std::string docs;
    for (const auto& md : markdown_files()) docs += slurp(md);
    std::size_t count = 0;
    for (const auto& e : fs::recursive_directory_iterator(kRoot / "src")) {
        if (e.path().extension() != ".hpp") continue;
        for (const auto& name : declared_functions(e.path())) {
            ++count;
            const std::regex in_backticks("`[^`\\n]*\\b" + name + "\\b[^`\\n]*`");
            INFO(fs::relative(e.path(), kRoot).string() << " declares " << name << ", which docs/ never names in backticks");
            CHECK(std::regex_search(docs, in_backticks));
        }
    }
    CHECK(count > 50);  // the scan itself works: the headers declare more than fifty functions
}

TEST_CASE("docs: the function scan finds declarations and skips private members", "[docs]") {
    const fs::path header = fs::temp_directory_path() / "qwenvl-docs-scan.hpp";
    std::ofstream(header) << "Matrix layer_norm(const Matrix& x);\nconst xt::xarray<float>& get(int) const;\n"
                             "class A {\npublic:\n    void shown(int);\nprivate:\n    void hidden(int);\n};\n"
                             "    return thing(1);\n// Matrix commented(int);\n";
    CHECK(declared_functions(header) == std::set<std::string>{"layer_norm", "get", "shown"});
    fs::remove(header);
}

TEST_CASE("docs: every C++ excerpt on a stage page is the code in src/stages/, verbatim", "[docs]") {
    // The lines of every file in src/stages/, without their leading spaces.
    std::vector<std::string> source;
    for (const auto& e : fs::directory_iterator(kRoot / "src" / "stages")) {
        std::istringstream in(slurp(e.path()));
        for (std::string line; std::getline(in, line);) source.push_back(line.substr(std::min(line.find_first_not_of(' '), line.size())));
        source.push_back("");  // files do not run into each other
    }
    std::size_t excerpts = 0;
    for (const auto& e : fs::directory_iterator(kRoot / "docs" / "stages")) {
        const std::string text = slurp(e.path());
        const std::regex block("```cpp\n([\\s\\S]*?)```");
        for (auto it = std::sregex_iterator(text.begin(), text.end(), block); it != std::sregex_iterator(); ++it) {
            std::vector<std::string> lines;
            std::istringstream in((*it)[1].str());
            for (std::string line; std::getline(in, line);) lines.push_back(line.substr(std::min(line.find_first_not_of(' '), line.size())));
            const bool found = std::search(source.begin(), source.end(), lines.begin(), lines.end()) != source.end();
            INFO(e.path().filename().string() << " shows code that src/stages/ does not hold:\n" << (*it)[1].str());
            CHECK(found);
            ++excerpts;
        }
    }
    CHECK(excerpts >= 9);
}

TEST_CASE("src/stages/ stays readable: no raw buffers, strides, BLAS or byte copies", "[docs]") {
    // What belongs in src/fast/ (docs/fast-path.md), never in the path a student reads.
    const std::regex fast_only(R"(\.data\(\)|\bBlock\b|memcpy|cblas|gemm|reinterpret_cast|xt::linalg)");
    std::size_t files = 0;
    for (const auto& e : fs::directory_iterator(kRoot / "src" / "stages")) {
        std::istringstream in(slurp(e.path()));
        std::size_t number = 0;
        for (std::string line; std::getline(in, line);) {
            ++number;
            INFO(e.path().filename().string() << ":" << number << ": " << line);
            CHECK_FALSE(std::regex_search(line, fast_only));
        }
        ++files;
    }
    CHECK(files == 22);  // eleven stages, a header and a source each
}

namespace {
// "75,005,952"
std::string with_commas(std::size_t n) {
    std::string digits = std::to_string(n), out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return out;
}

std::string printed(const char* format, double value) {
    char buf[64];
    std::snprintf(buf, sizeof buf, format, value);
    return buf;
}

// Checks that `file` (relative to the repository) holds `text`, which the test computed.
void quotes(const std::string& file, const std::string& text) {
    INFO(file << " should quote \"" << text << "\", the value computed here");
    CHECK(slurp(kRoot / file).find(text) != std::string::npos);
}
}  // namespace

TEST_CASE("docs: the numbers they quote are the ones computed from the code and the data", "[docs]") {
    // Parameter counts at Qwen-VL's size (the same as PyTorch's modules count, data/parameter_counts.json).
    qwenvl::AdapterConfig qwen;
    qwen.embed_dim = 4096;
    qwen.kv_dim = 1664;
    qwen.n_queries = 256;
    qwen.grid_q = 16;
    qwen.num_heads = 32;
    const qwenvl::ParameterCount p = qwenvl::count_parameters(qwen);
    quotes("README.md", with_commas(p.trainable) + " parameters");
    quotes("docs/stages/07-adapter.md", "Parameters: " + with_commas(p.trainable) + " trainable");
    quotes("docs/stages/07-adapter.md", "`pos_embed` of " + with_commas(p.frozen));
    std::string latex = with_commas(p.trainable);
    for (std::size_t at = latex.find(','); at != std::string::npos; at = latex.find(',', at + 3)) latex.replace(at, 1, "{,}");
    quotes("docs/paper-map.md", "= " + latex + "$");

    // The operations of one full-size image (32 x 32 keys), two per multiply-add.
    const double L = 1024, Kv = 1664, E = 4096, Q = 256;
    const double kv = 2 * L * Kv * E, kv_products = 2 * 2 * L * E * E, attention = 2 * 2 * Q * L * E, tail = 2 * 2 * Q * E * E;
    quotes("docs/performance.md", printed("%.1f GFLOP for one 32 x 32", (kv + kv_products + attention + tail) / 1e9));
    quotes("docs/performance.md", printed("(`kv_proj` %.1f, ", kv / 1e9));
    quotes("docs/performance.md", printed("the key and value projections %.1f,", kv_products / 1e9));
    quotes("docs/performance.md", printed("the attention's two products %.1f,", attention / 1e9));
    quotes("docs/performance.md", printed("tower's `proj` %.1f;", tail / 1e9));
    quotes("notebooks/make_notebooks.py", printed("add up to %.1f GFLOP", (kv + kv_products + attention + tail) / 1e9));
    quotes("notebooks/make_notebooks.py", printed("2 x 256 x 4096 x 4096 = %.1f GFLOP", 2 * Q * E * E / 1e9));

    // Bounds: bf16 rounding of values in [-1, 1]; the exponential's dropped Taylor term and its cut-off.
    quotes("docs/stages/02-sincos.md", printed("$2^{-9} = %.2f \\times 10^{-3}$", std::ldexp(1.0, -9) * 1e3));
    const double r = std::log(2.0) / 2, term = std::pow(r, 7) / 5040;
    quotes("docs/fast-path.md", printed("$r^7/7!$, is at most $%.2f \\times 10^{-7}$", term * 1e7));
    quotes("docs/fast-path.md", printed("which is\n$%.2f \\times 10^{-7}$ of $e^r$", term / std::exp(-r) * 1e7));
    quotes("docs/fast-path.md", printed("$e^{-87} = %.1f \\times 10^{-38}$", std::exp(-87.0) * 1e38));

    // The fixtures: how many, and their size to the nearest 10 KB.
    std::size_t count = 0, bytes = 0;
    for (const auto& e : fs::directory_iterator(kRoot / "data" / "fixtures")) {
        if (!e.is_regular_file()) continue;  // models/: the two models' fixtures, counted by docs/models.md
        ++count;
        bytes += fs::file_size(e.path());
    }
    const char* words[] = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"};
    REQUIRE(count <= 10);
    quotes("docs/testing.md", std::string("`data/fixtures/*.json`: ") + words[count] + " tiny cases (" +
                                  std::to_string((bytes + 5000) / 10000 * 10) + " KB together)");
    quotes("README.md", std::string("every stage of ") + words[count] + " golden");
    quotes("docs/stages/07-adapter.md", std::string("intermediates of all ") + words[count] + " fixtures");

    // An image in the language model's input: Q features between two markers.
    quotes("docs/stages/09-fusion.md", "with 256 features an image takes " + std::to_string(256 + 2) + " positions");
}

TEST_CASE("docs: every relative link resolves", "[docs]") {
    const std::regex link(R"(\[[^\]]*\]\(([^)\s]+)\))");
    std::size_t checked = 0;
    for (const auto& md : markdown_files()) {
        const std::string text = slurp(md);
        for (auto it = std::sregex_iterator(text.begin(), text.end(), link); it != std::sregex_iterator(); ++it) {
            const std::string target = (*it)[1].str();
            if (target.rfind("http://", 0) == 0 || target.rfind("https://", 0) == 0 || target.rfind("mailto:", 0) == 0)
                continue;
            const auto hash = target.find('#');
            const std::string file = target.substr(0, hash), anchor = hash == std::string::npos ? "" : target.substr(hash + 1);
            const fs::path resolved = file.empty() ? md : md.parent_path() / file;
            INFO(fs::relative(md, kRoot).string() << " links to " << target);
            CHECK(fs::exists(resolved));
            if (!anchor.empty() && resolved.extension() == ".md" && fs::exists(resolved)) CHECK(anchors(resolved).count(anchor));
            ++checked;
        }
    }
    CHECK(checked > 50);
}

TEST_CASE("docs: each lesson of the syllabus links an exercise, its own notebook (lesson k, notebook k) and a stage page and gives the check command",
          "[docs][course]") {
    const fs::path course = kRoot / "docs" / "course";
    const std::regex link(R"(\[[^\]]*\]\(([^)\s#]+)(?:#[^)\s]*)?\))");
    std::set<std::string> taught;  // the starters the lessons link
    std::size_t lessons = 0;
    for (const auto& e : fs::directory_iterator(course)) {
        const std::string name = e.path().filename().string();
        if (name.rfind("lesson-", 0) != 0) continue;
        ++lessons;
        INFO(name);
        const std::string text = slurp(e.path());
        std::size_t exercises = 0, notebooks = 0, stage_pages = 0;
        for (auto it = std::sregex_iterator(text.begin(), text.end(), link); it != std::sregex_iterator(); ++it) {
            const fs::path target = (e.path().parent_path() / (*it)[1].str()).lexically_normal();
            const std::string relative = fs::relative(target, kRoot).string();
            if (relative.rfind("src/exercises/", 0) == 0 && fs::exists(target)) {
                ++exercises;
                taught.insert(target.stem().string());
                // the lesson gives the exercise's check command: check- and the file's name with hyphens (the
                // port lab's one answers file serves port-1 to port-5)
                std::string check = "--target check-" + target.stem().string();
                std::replace(check.begin() + 15, check.end(), '_', '-');
                if (target.stem() == "port_lab") check = "--target check-port-1";
                CHECK(text.find(check) != std::string::npos);
            }
            // lesson k's notebook is notebook k (one numbering: notebooks/0k_*.ipynb)
            if (relative.rfind("notebooks/", 0) == 0 && target.extension() == ".ipynb" && fs::exists(target) &&
                target.filename().string().substr(0, 3) == "0" + name.substr(7, 1) + "_")
                ++notebooks;
            if (relative.rfind("docs/stages/", 0) == 0 && fs::exists(target)) ++stage_pages;
        }
        CHECK(exercises >= 1);
        CHECK(notebooks >= 1);
        CHECK(stage_pages >= 1);
        for (const char* section : {"**Time:**", "**Paper:**", "## Goals", "## Read", "## Questions", "## Answers"})
            CHECK(text.find(section) != std::string::npos);
        // the answers to its questions are in the instructor's guide, not on the student's page (student trial: they
        // were a scroll below the questions)
        const std::string k = name.substr(7, 1);
        CHECK(text.find("instructor.md#lesson-" + k + "-answers") != std::string::npos);
        CHECK(slurp(kRoot / "docs/course/instructor.md").find("### Lesson " + k + " answers") != std::string::npos);
        CHECK(text.find("For the instructor: answers") == std::string::npos);
    }
    CHECK(lessons == 9);
    for (const auto& e : fs::directory_iterator(kRoot / "src" / "exercises")) {
        INFO("src/exercises/" << e.path().filename().string() << " is in no lesson");
        CHECK(taught.count(e.path().stem().string()));
    }
}
