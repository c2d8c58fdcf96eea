// io/fixture.hpp: the golden fixtures in data/fixtures/, written by tests/reference/make_fixtures.py.
//
// A fixture is JSON: config, seed, torch and numpy versions, tolerance, inputs (x, attn_mask),
// every parameter under its checkpoint name (Qwen-VL's attn_pool.*, ln_post.*, proj; MiniCPM-V's resampler.*), every intermediate of the forward pass (trace.hpp's names) as
// PyTorch computed them, and autograd's gradients of a seeded loss (gradients, param_gradients). A tensor is {"dtype": "float32" | "bool", "shape": [...], "data": [flat, row-major]}.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <xtensor/xarray.hpp>

#include "core/trace.hpp"
#include "stages/07_adapter.hpp"
#include "stages/08_tower_tail.hpp"

namespace qwenvl {

// Thrown for a malformed fixture; the message starts with the file's path.
class FixtureError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A tensor from its JSON form; `what` names it in errors. Checks that the data length is the shape's product.
xt::xarray<float> tensor_from_json(const nlohmann::ordered_json& j, const std::string& what);

struct Fixture {
    std::string path;
    std::string name;
    std::string description;
    AdapterConfig config;
    AdapterWeights weights;   // pos_embed left empty: the forward pass computes the sin-cos table itself
    // data/fixtures/models/: the key grid of each image, (h, w) (Qwen-VL's, one for the batch, may be non-square;
    // MiniCPM-V's, one per image, padded to the longest), and MiniCPM-V's table size. Empty for a square Qwen-VL case.
    std::vector<Grid> grids;
    Grid max_grid;
    TowerTail tail;
    Tensor3 x;                // (N, L, Kv)
    bool has_mask = false;
    Matrix mask;              // (Q, L) additive (a boolean mask is converted: true -> -inf)
    double atol = 0.0, rtol = 0.0;
    Trace expected;           // PyTorch's intermediates under the trace's names, in file order
    // Training: autograd's dL/d of each intermediate (and "x") for L = sum(proj * gradients["proj"]), the
    // upstream gradient the fixture's seed drew, and dL/d of each trainable parameter under its checkpoint name
    // (in_proj packed). Empty in a fixture without them.
    Trace gradients;
    Trace param_gradients;
    nlohmann::ordered_json meta;     // seed, versions, config as written

    // PyTorch's value of `stage`; FixtureError naming the file when the fixture has none.
    const xt::xarray<float>& expect(const std::string& stage) const;
};

Fixture load_fixture(const std::string& path);

// The (Q, L) attn_mask the attention adds to its scores, from a mask as stored in a file (a fixture or --mask):
// a boolean one (true = masked, stored as 1) becomes -inf and 0 (additive_mask); a float one is used as it is.
Matrix attention_mask(const xt::xarray<float>& stored, bool is_bool);

}  // namespace qwenvl
