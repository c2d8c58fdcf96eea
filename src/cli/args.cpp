#include "cli/args.hpp"

#include <algorithm>

namespace qwenvl::cli {

std::string Args::get(const std::string& name, const std::string& fallback) const {
    return has(name) ? values.at(name).back() : fallback;
}

std::string Args::required(const std::string& command, const std::string& name) const {
    if (!has(name)) throw UsageError(command + ": " + name + " is required (see " + command + " --help)");
    return get(name);
}

Args parse_args(const std::string& command, const std::vector<std::string>& argv,
                const std::vector<std::string>& options, const std::vector<std::string>& switches) {
    Args args;
    for (const auto& s : switches) args.flags[s] = false;
    for (std::size_t i = 0; i < argv.size(); ++i) {
        const std::string& a = argv[i];
        if (a == "--help" || a == "-h") {
            args.help = true;
        } else if (std::find(switches.begin(), switches.end(), a) != switches.end()) {
            args.flags[a] = true;
        } else if (std::find(options.begin(), options.end(), a) != options.end()) {
            if (i + 1 >= argv.size()) throw UsageError(command + ": " + a + " needs a value");
            args.values[a].push_back(argv[++i]);
        } else {
            throw UsageError(command + ": unknown argument '" + a + "' (see " + command + " --help)");
        }
    }
    return args;
}

std::size_t parse_count(const std::string& command, const std::string& name, const std::string& text) {
    std::size_t used = 0;
    unsigned long value = 0;
    try {
        value = std::stoul(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != text.size() || value == 0 || text[0] == '-')
        throw UsageError(command + ": " + name + " takes a positive whole number, not '" + text + "'");
    return value;
}

}  // namespace qwenvl::cli
