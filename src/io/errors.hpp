// io/errors.hpp: the error of a bad input file, and the readers every input goes through.
//
// Every problem with an input file is reported as one line, "FILE: problem", and the program exits with 1
// without writing any output (src/cli/main.cpp).
#pragma once

#include <cstdint>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace qwenvl {

// A malformed or unreadable input file; what() is "FILE: problem".
class InputError : public std::runtime_error {
public:
    InputError(const std::string& file, const std::string& problem) : std::runtime_error(file + ": " + problem) {}
};

// "FILE: cannot open (reason)", with the reason errno gives for the failed open.
InputError cannot_open(const std::string& file);

// The file opened for reading; InputError when it cannot be opened or is a folder (which a std::ifstream
// opens without complaint on Linux, and then fails to read with an unhelpful message).
std::ifstream open_input(const std::string& path, std::ios::openmode mode = std::ios::in);

// The whole JSON document in a file (an index.json, a fixture, fuse's token ids); InputError when it cannot be
// opened or is not valid JSON.
nlohmann::json read_json(const std::string& path);

// A whole file's bytes; InputError naming it.
std::vector<std::uint8_t> read_file(const std::string& path);

// Writes a file atomically: `write` fills a temporary file beside `path`, which is then renamed over it, so that a
// failure (or an interruption) leaves no partial output and any earlier file whole. InputError naming `path`.
// Synced (the default): the data and the new name reach the disk first, so that a power cut leaves the old file or
// the new one whole. Unsynced (a trace's many files): a killed process still leaves no partial file, a power cut may.
enum class Sync { to_disk, no };
void write_atomically(const std::string& path, const std::function<void(std::ofstream&)>& write, Sync sync = Sync::to_disk);

}  // namespace qwenvl
