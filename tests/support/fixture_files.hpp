// tests/support/fixture_files.hpp: where the golden fixtures are, for the tests and the course's checker (no Catch2).
#pragma once

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

namespace qwenvl_test {

// The fixture files (*.json) in a folder, sorted by name.
inline std::vector<std::string> fixture_paths(const std::string& folder) {
    std::vector<std::string> paths;
    for (const auto& entry : std::filesystem::directory_iterator(folder))
        if (entry.path().extension() == ".json") paths.push_back(entry.path().string());
    std::sort(paths.begin(), paths.end());
    return paths;
}

}  // namespace qwenvl_test
