#include "io/fixture.hpp"

#include <fstream>

#include "io/errors.hpp"
#include "stages/01_feature_input.hpp"
#include "stages/06_attention.hpp"

namespace qwenvl {

xt::xarray<float> tensor_from_json(const nlohmann::ordered_json& j, const std::string& what) {
    if (!j.is_object() || !j.contains("shape") || !j.contains("data") || !j["shape"].is_array() || !j["data"].is_array())
        throw std::invalid_argument(what + ": expected {\"shape\": [...], \"data\": [...]}");
    std::vector<std::size_t> shape;
    std::size_t count = 1;
    for (const auto& d : j["shape"]) {
        if (!d.is_number_unsigned()) throw std::invalid_argument(what + ": shape entries must be non-negative integers");
        shape.push_back(d.get<std::size_t>());
        count *= shape.back();
    }
    const auto& data = j["data"];
    if (data.size() != count)
        throw std::invalid_argument(what + ": shape " + shape_string(shape) + " holds " + std::to_string(count) +
                                    " values but data has " + std::to_string(data.size()));
    xt::xarray<float> t = xt::xarray<float>::from_shape(shape);
    for (std::size_t i = 0; i < count; ++i) {
        if (!data[i].is_number()) throw std::invalid_argument(what + ": data holds a value that is not a number");
        t.data()[i] = data[i].get<float>();
    }
    return t;
}

const xt::xarray<float>& Fixture::expect(const std::string& stage) const {
    try {
        return expected.get(stage);
    } catch (const std::out_of_range&) {
        throw FixtureError(path + ": no expected values for stage '" + stage + "'");
    }
}

Matrix attention_mask(const xt::xarray<float>& stored, bool is_bool) {
    require(stored.dimension() == 2, "attention_mask",
            "the mask has shape " + shape_string(shape_of(stored)) + ", expected (Q, L)");
    if (is_bool) return additive_mask(xt::xtensor<bool, 2>(xt::cast<bool>(Matrix(stored))));
    return stored;
}

Fixture load_fixture(const std::string& path) {
    Fixture f;
    f.path = path;
    try {
        std::ifstream in = open_input(path);
        const nlohmann::ordered_json j = nlohmann::ordered_json::parse(in);  // ordered: the stages in file order
        f.name = j.at("name").get<std::string>();
        f.description = j.value("description", "");
        f.meta = {{"seed", j.at("seed")}, {"torch_version", j.at("torch_version")},
                  {"numpy_version", j.at("numpy_version")}, {"config", j.at("config")}};
        f.atol = j.at("tolerance").at("atol").get<double>();
        f.rtol = j.at("tolerance").at("rtol").get<double>();

        const auto& cfg = j.at("config");
        const std::string model = cfg.value("model", "qwen_vl");
        if (model != "qwen_vl" && model != "minicpm_v") throw std::invalid_argument("unknown model '" + model + "'");
        const bool minicpmv = model == "minicpm_v";
        // The checkpoint's names: MiniCPM-V keeps all of it under resampler., Qwen-VL its tail beside attn_pool.
        const std::string a = minicpmv ? "resampler." : "attn_pool.", t = minicpmv ? "resampler." : "";
        const auto& p = j.at("params");
        auto mat = [&](const std::string& name) { return Matrix(tensor_from_json(p.at(name), name)); };
        auto vec = [&](const std::string& name) { return Vector(tensor_from_json(p.at(name), name)); };
        AdapterWeights& w = f.weights;
        w.query = mat(a + "query");
        if (p.contains(a + "kv_proj.weight")) w.kv_proj = mat(a + "kv_proj.weight");
        w.in_proj = split_in_proj(mat(a + "attn.in_proj_weight"), vec(a + "attn.in_proj_bias"));
        w.out_proj_weight = mat(a + "attn.out_proj.weight");
        w.out_proj_bias = vec(a + "attn.out_proj.bias");
        w.ln_q_weight = vec(a + "ln_q.weight");
        w.ln_q_bias = vec(a + "ln_q.bias");
        w.ln_kv_weight = vec(a + "ln_kv.weight");
        w.ln_kv_bias = vec(a + "ln_kv.bias");
        f.tail.ln_post_weight = vec(t + "ln_post.weight");
        f.tail.ln_post_bias = vec(t + "ln_post.bias");
        f.tail.proj = mat(t + "proj");

        f.config = derive_config(w, cfg.at("num_heads").get<std::size_t>(), minicpmv ? Model::minicpm_v : Model::qwen_vl);
        if (cfg.contains("grids"))
            for (const auto& g : cfg.at("grids")) f.grids.push_back(Grid{g.at(0).get<std::size_t>(), g.at(1).get<std::size_t>()});
        if (cfg.contains("max_grid"))
            f.max_grid = Grid{cfg.at("max_grid").at(0).get<std::size_t>(), cfg.at("max_grid").at(1).get<std::size_t>()};
        f.config.eps = cfg.at("eps").get<float>();

        const auto& inputs = j.at("inputs");
        const xt::xarray<float> x = tensor_from_json(inputs.at("x"), "x");
        require(x.dimension() == 3, "load_fixture", "x must be (N, L, Kv)");
        f.x = as_feature_batch(x, f.grids.empty());  // L a square only when no grids are given
        if (inputs.contains("attn_mask")) {
            const auto& m = inputs.at("attn_mask");
            f.has_mask = true;
            f.mask = attention_mask(tensor_from_json(m, "attn_mask"), m.value("dtype", "float32") == "bool");
        }
        for (const auto& [stage, value] : j.at("intermediates").items())
            f.expected.record(stage, tensor_from_json(value, stage));
        if (j.contains("gradients"))
            for (const auto& [stage, value] : j.at("gradients").items())
                f.gradients.record(stage, tensor_from_json(value, "gradient of " + stage));
        if (j.contains("param_gradients"))
            for (const auto& [name, value] : j.at("param_gradients").items())
                f.param_gradients.record(name, tensor_from_json(value, "gradient of " + name));
    } catch (const InputError& e) {  // already "FILE: problem"
        throw FixtureError(e.what());
    } catch (const std::exception& e) {
        throw FixtureError(path + ": " + e.what());
    }
    return f;
}

}  // namespace qwenvl
