// qwenvl-adapter table: the sin-cos position table, or its bicubic resize to a key grid.
#include <cstdio>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "io/npy.hpp"
#include "stages/02_sincos.hpp"
#include "stages/03_resize.hpp"

namespace qwenvl::cli {

namespace {
const char* kTableHelp =
    "usage: qwenvl-adapter table --dim E --grid G [--key-grid GK] --output P.npy\n"
    "\n"
    "Writes the 2D sin-cos position table (G*G, E) that Qwen-VL adds to its queries (sincos_2d), or, with\n"
    "--key-grid, that table resized bicubically to GK x GK, (GK*GK, E), as added to the keys (key_position_table).\n"
    "E must be divisible by 4.\n";
}  // namespace

int table_command(const std::vector<std::string>& argv) {
    const Args args = parse_args("table", argv, {"--dim", "--grid", "--key-grid", "--output"}, {});
    if (args.help) return std::printf("%s", kTableHelp), 0;
    const std::size_t E = parse_count("table", "--dim", args.required("table", "--dim"));
    const std::size_t G = parse_count("table", "--grid", args.required("table", "--grid"));
    const std::string output = args.required("table", "--output");
    if (E % 4 != 0) throw UsageError("table: --dim " + std::to_string(E) + " is not divisible by 4");
    Matrix table = sincos_2d(E, G);
    if (args.has("--key-grid")) {
        const std::size_t GK = parse_count("table", "--key-grid", args.get("--key-grid"));
        table = key_position_table(table, GK * GK);
    }
    write_npy(output, table);
    std::printf("%s: %s float32\n", output.c_str(), shape_string(shape_of(table)).c_str());
    return 0;
}

}  // namespace qwenvl::cli
