// qwenvl-adapter fuse: splice image features into token embeddings between <img> and </img>.
#include <cstdio>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "io/errors.hpp"
#include "io/npy.hpp"
#include "stages/09_fusion.hpp"

namespace qwenvl::cli {

namespace {
const char* kFuseHelp =
    "usage: qwenvl-adapter fuse --ids IDS.json --embeddings EMB.npy --image-features Y.npy --output OUT.npy\n"
    "\n"
    "Replaces, in the (T, E) input embeddings, the rows strictly between each <img> (151857) and its </img>\n"
    "(151858) with one image's (Q, E) features, images in order. IDS.json is a list of T token ids (or an\n"
    "object with \"input_ids\"); Y.npy is (Q, E) or (M, Q, E); each span must hold exactly Q positions.\n";

std::vector<std::int64_t> read_ids(const std::string& path) {
    nlohmann::json j = read_json(path);
    if (j.is_object() && j.contains("input_ids")) j = j["input_ids"];
    if (!j.is_array()) throw InputError(path, "expected a list of token ids");
    std::vector<std::int64_t> ids;
    for (const auto& v : j) {
        if (!v.is_number_integer()) throw InputError(path, "a token id is not an integer");
        ids.push_back(v.get<std::int64_t>());
    }
    return ids;
}
}  // namespace

int fuse_command(const std::vector<std::string>& argv) {
    const Args args = parse_args("fuse", argv, {"--ids", "--embeddings", "--image-features", "--output"}, {});
    if (args.help) return std::printf("%s", kFuseHelp), 0;
    const std::string ids_path = args.required("fuse", "--ids"), emb_path = args.required("fuse", "--embeddings");
    const std::string feat_path = args.required("fuse", "--image-features"), output = args.required("fuse", "--output");

    const std::vector<std::int64_t> ids = read_ids(ids_path);
    const xt::xarray<float> emb = read_npy_float(emb_path);
    if (emb.dimension() != 2 || emb.shape(0) != ids.size())
        throw InputError(emb_path, "embeddings have shape " + shape_string(shape_of(emb)) + ", expected (T, E) with T = " +
                                       std::to_string(ids.size()) + " ids");
    xt::xarray<float> feat = read_npy_float(feat_path);
    if (feat.dimension() == 2) feat.reshape({std::size_t(1), feat.shape(0), feat.shape(1)});
    if (feat.dimension() != 3 || feat.shape(2) != emb.shape(1))
        throw InputError(feat_path, "features have shape " + shape_string(shape_of(feat)) + ", expected (Q, E) or (M, Q, E) with E = " +
                                        std::to_string(emb.shape(1)));
    Matrix fused;
    try {
        fused = fuse_image_features(ids, emb, feat);
    } catch (const std::invalid_argument& e) {
        throw InputError(ids_path, e.what());
    }
    write_npy(output, fused);
    std::printf("%s: %s float32, %zu image spans of %zu positions replaced\n", output.c_str(),
                shape_string(shape_of(fused)).c_str(), feat.shape(0), feat.shape(1));
    return 0;
}

}  // namespace qwenvl::cli
