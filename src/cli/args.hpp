// cli/args.hpp: the command line's arguments: "--name value" options (some repeatable) and "--flag" switches.
#pragma once

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace qwenvl::cli {

// A usage mistake (unknown or missing argument, bad number): exit code 2.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Args {
    std::map<std::string, std::vector<std::string>> values;
    std::map<std::string, bool> flags;
    bool help = false;

    bool has(const std::string& name) const { return values.count(name) != 0; }
    std::string get(const std::string& name, const std::string& fallback = "") const;
    // The value of a required option; UsageError naming the command when it is absent.
    std::string required(const std::string& command, const std::string& name) const;
};

// Parses argv against the command's options (taking a value) and switches; UsageError for anything else.
Args parse_args(const std::string& command, const std::vector<std::string>& argv,
                const std::vector<std::string>& options, const std::vector<std::string>& switches);

// A positive whole number given for option `name`; UsageError otherwise.
std::size_t parse_count(const std::string& command, const std::string& name, const std::string& text);

}  // namespace qwenvl::cli
