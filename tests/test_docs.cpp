// The docs keep up with the code: every function declared in src/*.hpp is named (in backticks) somewhere in
// docs/, and every relative link in docs/ and the README resolves to a file (and, for a #section of a Markdown
// file, to a heading of that file).
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include <catch2/catch.hpp>

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
    CHECK(files == 18);  // nine stages, a header and a source each
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
