// qwenvl-adapter: the command line. One file per subcommand in src/cli/.
//
//   qwenvl-adapter [demo]   the adapter on the shipped demo weights and features, every stage against PyTorch
//   qwenvl-adapter run      the adapter on checkpoint tensors (safetensors) and features (.npy)
//   qwenvl-adapter info     what a checkpoint holds: tensors, config, parameter count, pos_embed
//   qwenvl-adapter fuse     splice image features into token embeddings between <img> and </img>
//   qwenvl-adapter golden   every stage of a JSON fixture against the values PyTorch wrote
//   qwenvl-adapter table    the sin-cos position table, or its bicubic resize to a key grid
//   qwenvl-adapter compare  another implementation's intermediates against this project's, stage by stage
//
// Exit codes: 0 success, 1 bad input or a failed comparison (one line on stderr naming the file), 2 usage.
#include <cstdio>
#include <string>
#include <vector>

#include "cli/args.hpp"
#include "cli/commands.hpp"

namespace {
const char* kHelp =
    "usage: qwenvl-adapter [COMMAND] [OPTIONS]\n"
    "\n"
    "A plain C++ reference of Qwen-VL's position-aware vision-language adapter (arXiv 2308.12966, sec. 2.1).\n"
    "\n"
    "commands:\n"
    "  demo     the adapter on the shipped demo data, every stage against PyTorch (the default)\n"
    "  run      the adapter on checkpoint tensors (safetensors) and ViT features (.npy)\n"
    "  info     the tensors, config and parameter count of a checkpoint\n"
    "  fuse     splice image features into token embeddings between <img> and </img>\n"
    "  golden   every stage of a JSON fixture against PyTorch\n"
    "  compare  another implementation's intermediates against this project's, stage by stage\n"
    "  table    write the sin-cos position table, or its bicubic resize to a key grid\n"
    "  train    train the adapter (the positions task or the query-count ablation's; AdamW, the readable stages)\n"
    "\n"
    "run, golden and demo take --readable: the readable stages (src/stages/) instead of the fast path (src/fast/).\n"
    "`qwenvl-adapter COMMAND --help` describes a command. Exit codes: 0 ok, 1 bad input, 2 usage.\n";
}  // namespace

int main(int argc, char** argv) {
    using namespace qwenvl::cli;
    const std::vector<std::string> args(argv + 1, argv + argc);
    try {
        if (args.empty()) return demo_command({});
        const std::string command = args[0];
        const std::vector<std::string> rest(args.begin() + 1, args.end());
        if (command == "--help" || command == "-h" || command == "help") return std::printf("%s", kHelp), 0;
        if (command == "demo") return demo_command(rest);
        if (command.rfind("--", 0) == 0) return demo_command(args);  // the default command's own options
        if (command == "run") return run_command(rest);
        if (command == "info") return info_command(rest);
        if (command == "fuse") return fuse_command(rest);
        if (command == "golden") return golden_command(rest);
        if (command == "table") return table_command(rest);
        if (command == "train") return train_command(rest);
        if (command == "compare") return compare_command(rest);
        throw UsageError("unknown command '" + command + "' (see --help)");
    } catch (const UsageError& e) {
        std::fprintf(stderr, "qwenvl-adapter: %s\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "qwenvl-adapter: %s\n", e.what());
        return 1;
    }
}
