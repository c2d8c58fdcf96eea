// cli/commands.hpp: the subcommands of qwenvl-adapter, one file each. Each takes the arguments after its name
// and returns the exit code: 0 success, 1 bad input or a failed comparison; UsageError (exit code 2) for usage.
#pragma once

#include <string>
#include <vector>

namespace qwenvl::cli {

int demo_command(const std::vector<std::string>& argv);    // cli/demo.cpp
int run_command(const std::vector<std::string>& argv);     // cli/run.cpp
int info_command(const std::vector<std::string>& argv);    // cli/info.cpp
int fuse_command(const std::vector<std::string>& argv);    // cli/fuse.cpp
int golden_command(const std::vector<std::string>& argv);  // cli/golden.cpp
int table_command(const std::vector<std::string>& argv);   // cli/table.cpp
int train_command(const std::vector<std::string>& argv);   // cli/train.cpp
int compare_command(const std::vector<std::string>& argv); // cli/compare.cpp

}  // namespace qwenvl::cli
