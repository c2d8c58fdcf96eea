// src/python/qwenvl_module.cpp: `import qwenvl`, the project's stages on numpy arrays (docs/python.md).
//
// Every readable stage of src/stages/ under its own name, the fast forward pass, the trace, the checkpoint,
// fixture and .npy readers, and training. Arrays go in as numpy arrays (converted to float32, copied into the
// stage's tensor) and come back as new float32 numpy arrays. A shape error is the stage's own ShapeError, raised
// in Python as ValueError with the same message ("layer_norm: gamma has shape (3,), expected (8,)"); a bad file
// is a RuntimeError naming it. Nothing here computes: each function converts, calls the C++ function, converts.
#include <cmath>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "core/shapes.hpp"
#include "core/trace.hpp"
#include "fast/adapter.hpp"
#include "io/checkpoint.hpp"
#include "io/fixture.hpp"
#include "io/npy.hpp"
#include "stages/01_feature_input.hpp"
#include "stages/02_sincos.hpp"
#include "stages/03_resize.hpp"
#include "stages/04_layernorm.hpp"
#include "stages/05_projections.hpp"
#include "stages/06_attention.hpp"
#include "stages/07_adapter.hpp"
#include "stages/08_tower_tail.hpp"
#include "stages/09_fusion.hpp"
#include "stages/10_training.hpp"
#include "stages/11_minicpmv.hpp"

namespace py = pybind11;
using namespace qwenvl;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// What `value` is as numpy sees it, its dtype checked: bool (when `allow_bool`, for masks), integer or floating
// point. Anything else (complex, object, strings, dates, or a value numpy cannot make an array of) is refused with
// a ValueError naming the function and the argument, not cast: numpy would drop an imaginary part with a warning
// and turn True into 1.0.
py::array checked_array(const py::handle& value, const char* function, const char* argument, bool allow_bool) {
    py::array array;
    try {
        array = py::array::ensure(value);
    } catch (const py::error_already_set&) {
    }
    if (!array) throw ShapeError(std::string(function) + ": " + argument + " is not an array of numbers");
    const char kind = array.dtype().kind();
    if (kind == 'b' && !allow_bool)
        throw ShapeError(std::string(function) + ": " + argument + " is an array of booleans; it takes numbers");
    if (kind != 'b' && kind != 'i' && kind != 'u' && kind != 'f')
        throw ShapeError(std::string(function) + ": " + argument + " has dtype " + std::string(py::str(array.dtype())) +
                         "; it takes integer or floating-point numbers");
    return array;
}

// A 2-D boolean array, copied in row-major order whatever its strides.
xt::xtensor<bool, 2> boolean_matrix(const py::handle& value, const char* function, const char* argument) {
    using BoolArray = py::array_t<bool, py::array::c_style | py::array::forcecast>;
    const BoolArray masked = BoolArray::ensure(value);
    if (!masked || masked.ndim() != 2)
        throw ShapeError(std::string(function) + ": " + argument + " has shape " +
                         shape_string(std::vector<std::size_t>(masked.shape(), masked.shape() + masked.ndim())) +
                         ", expected 2 axes");
    xt::xtensor<bool, 2> b({static_cast<std::size_t>(masked.shape(0)), static_cast<std::size_t>(masked.shape(1))});
    std::copy(masked.data(), masked.data() + masked.size(), b.data());
    return b;
}

// A numpy array (or anything numpy turns into one) of integers or floating-point numbers as float32, copied into
// row-major order whatever its strides.
xt::xarray<float> any_rank(const py::handle& value, const char* function, const char* argument) {
    const FloatArray array = FloatArray::ensure(checked_array(value, function, argument, false));
    std::vector<std::size_t> shape(array.shape(), array.shape() + array.ndim());
    xt::xarray<float> t = xt::xarray<float>::from_shape(shape);
    std::copy(array.data(), array.data() + array.size(), t.data());
    return t;
}

// The same as an xtensor of rank `Rank`. A wrong rank is a ShapeError (ValueError in Python) worded as the stages
// word theirs.
template <std::size_t Rank>
xt::xtensor<float, Rank> tensor(const py::handle& value, const char* function, const char* argument) {
    const xt::xarray<float> t = any_rank(value, function, argument);
    if (t.dimension() != Rank)
        throw ShapeError(std::string(function) + ": " + argument + " has shape " + shape_string(shape_of(t)) +
                         ", expected " + std::to_string(Rank) + (Rank == 1 ? " axis" : " axes"));
    return t;
}
Vector vector(const py::handle& v, const char* f, const char* a) { return tensor<1>(v, f, a); }
Matrix matrix(const py::handle& v, const char* f, const char* a) { return tensor<2>(v, f, a); }
Tensor3 tensor3(const py::handle& v, const char* f, const char* a) { return tensor<3>(v, f, a); }

// Patch features x (N, L, Kv) for a forward pass, finite as `run` requires them (a float64 1e300 becomes inf in float32).
Tensor3 features(const py::handle& x, const char* function) {
    Tensor3 t = tensor<3>(x, function, "x");
    for (float value : t)
        if (!std::isfinite(value)) throw ShapeError(std::string(function) + ": x holds NaN or infinite values (in float32)");
    return t;
}

// A tensor as a new numpy array (a copy: the array owns its memory).
template <class Tensor>
py::array_t<float> numpy(const Tensor& t) {
    std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end());
    py::array_t<float> array(shape);
    std::copy(t.data(), t.data() + t.size(), array.mutable_data());
    return array;
}

py::dict trace_dict(const Trace& trace) {
    py::dict d;
    for (const std::string& name : trace.names()) d[name.c_str()] = numpy(trace.get(name));
    return d;
}

py::dict named_dict(const NamedTensors& tensors) {
    py::dict d;
    for (const auto& [name, value] : tensors) d[name.c_str()] = numpy(value);
    return d;
}

NamedTensors named_from(const py::dict& d, const char* function) {
    NamedTensors tensors;
    for (const auto& item : d) {
        const std::string name = py::str(item.first);
        tensors.emplace_back(name, any_rank(item.second, function, name.c_str()));
    }
    return tensors;
}

Trace trace_from(const py::dict& d, const char* function) {
    Trace trace;
    for (auto& [name, value] : named_from(d, function)) trace.record(name, std::move(value));
    return trace;
}

// An optional (Q, L) mask, as PyTorch's attention takes one: a boolean array is True where a key is masked (stage
// 06's additive_mask turns it into -inf and 0), an array of numbers is added to the scores.
struct OptionalMask {
    Matrix value;
    bool given = false;
    OptionalMask(const py::object& mask, const char* function) {
        if (mask.is_none()) return;
        const py::array array = checked_array(mask, function, "mask", true);
        if (array.dtype().kind() == 'b') {
            value = additive_mask(boolean_matrix(array, function, "mask"));
        } else {
            value = matrix(array, function, "mask");
        }
        given = true;
    }
    const Matrix* get() const { return given ? &value : nullptr; }
};

// A property of a weights struct seen from Python as a numpy array (read: a copy; write: converted and checked).
template <class Class, class Tensor>
void array_property(py::class_<Class>& cls, const char* name, Tensor Class::*member, const char* doc) {
    cls.def_property(
        name, [member](const Class& self) { return numpy(self.*member); },
        [member, name](Class& self, const py::handle& value) {
            self.*member = tensor<Tensor::rank>(value, "set", name);
        },
        doc);
}

}  // namespace

PYBIND11_MODULE(qwenvl, m) {
    m.doc() = "Qwen-VL's position-aware vision-language adapter: the readable stages, the fast path, training "
              "(docs/python.md). Arrays are numpy float32; shapes as in PyTorch (docs/shapes.md).";

    // --- the weights and the configuration ---
    py::enum_<Model>(m, "Model", "which resampler: Qwen-VL's (stage 07) or MiniCPM-V 2.5/2.6's (stage 11)")
        .value("qwen_vl", Model::qwen_vl)
        .value("minicpm_v", Model::minicpm_v);
    py::class_<AdapterConfig>(m, "AdapterConfig", "the model, E, Kv, Q, G_q, H and the LayerNorms' eps (stage 07)")
        .def(py::init<>())
        .def_readwrite("model", &AdapterConfig::model)
        .def_readwrite("embed_dim", &AdapterConfig::embed_dim)
        .def_readwrite("kv_dim", &AdapterConfig::kv_dim)
        .def_readwrite("n_queries", &AdapterConfig::n_queries)
        .def_readwrite("grid_q", &AdapterConfig::grid_q)
        .def_readwrite("num_heads", &AdapterConfig::num_heads)
        .def_readwrite("eps", &AdapterConfig::eps)
        .def("__repr__", [](const AdapterConfig& c) {
            return "AdapterConfig(embed_dim=" + std::to_string(c.embed_dim) + ", kv_dim=" + std::to_string(c.kv_dim) +
                   ", n_queries=" + std::to_string(c.n_queries) + ", grid_q=" + std::to_string(c.grid_q) +
                   ", num_heads=" + std::to_string(c.num_heads) + ", eps=" + std::to_string(c.eps) + ")";
        });

    py::class_<AdapterWeights> weights(m, "AdapterWeights",
                                       "the adapter's parameters (attn_pool.*), in_proj split in q, k, v (stage 07)");
    weights.def(py::init<>());
    array_property(weights, "query", &AdapterWeights::query, "(Q, E) the learned queries");
    array_property(weights, "pos_embed", &AdapterWeights::pos_embed, "(Q, E), or empty: the sin-cos table is computed");
    array_property(weights, "kv_proj", &AdapterWeights::kv_proj, "(E, Kv), or empty: the identity");
    array_property(weights, "out_proj_weight", &AdapterWeights::out_proj_weight, "(E, E)");
    array_property(weights, "out_proj_bias", &AdapterWeights::out_proj_bias, "(E,)");
    array_property(weights, "ln_q_weight", &AdapterWeights::ln_q_weight, "(E,)");
    array_property(weights, "ln_q_bias", &AdapterWeights::ln_q_bias, "(E,)");
    array_property(weights, "ln_kv_weight", &AdapterWeights::ln_kv_weight, "(E,)");
    array_property(weights, "ln_kv_bias", &AdapterWeights::ln_kv_bias, "(E,)");
    weights.def_property_readonly(
        "in_proj_weight", [](const AdapterWeights& w) { return numpy(pack_in_proj(w.in_proj).weight); },
        "(3E, E): W_q, W_k, W_v stacked, as the checkpoint stores them");
    weights.def_property_readonly(
        "in_proj_bias", [](const AdapterWeights& w) { return numpy(pack_in_proj(w.in_proj).bias); }, "(3E,): b_q, b_k, b_v");
    weights.def("set_in_proj", [](AdapterWeights& w, const py::handle& weight, const py::handle& bias) {
        w.in_proj = split_in_proj(matrix(weight, "set_in_proj", "in_proj_weight"), vector(bias, "set_in_proj", "in_proj_bias"));
    }, py::arg("in_proj_weight"), py::arg("in_proj_bias"), "Sets W_q, W_k, W_v and their biases from the packed tensors.");

    py::class_<TowerTail> tail(m, "TowerTail", "the visual tower's ln_post and proj (stage 08)");
    tail.def(py::init<>());
    array_property(tail, "ln_post_weight", &TowerTail::ln_post_weight, "(E,)");
    array_property(tail, "ln_post_bias", &TowerTail::ln_post_bias, "(E,)");
    array_property(tail, "proj", &TowerTail::proj, "(E, E), used as x @ proj");

    m.def("derive_config", &derive_config, py::arg("weights"), py::arg("num_heads") = 0, py::arg("model") = Model::qwen_vl,
          "The configuration the weights' shapes imply (stage 07); num_heads = 0 is Qwen-VL's E / 128.");
    m.def("count_parameters", [](const AdapterConfig& c) {
        const ParameterCount count = count_parameters(c);
        return py::dict(py::arg("trainable") = count.trainable, py::arg("frozen") = count.frozen);
    }, py::arg("config"), "Trainable and frozen parameter counts (Table 1's 0.08B at Qwen-VL's size).");

    // --- the readable stages, in the paper's order ---
    m.def("grid_side", &grid_side, py::arg("count"), py::arg("what") = "count",
          "Stage 01: the side of the square grid of `count` cells; ValueError when it is not a perfect square.");
    m.def("as_feature_batch", [](const py::handle& x) { return numpy(as_feature_batch(any_rank(x, "as_feature_batch", "features"))); },
          py::arg("features"), "Stage 01: (L, Kv) or (N, L, Kv) patch features as a checked (N, L, Kv) batch.");
    m.def("sincos_1d", [](std::size_t dim, const std::vector<float>& positions) { return numpy(sincos_1d(dim, positions)); },
          py::arg("dim"), py::arg("positions"), "Stage 02: the 1-D table (P, dim), sines then cosines.");
    m.def("sincos_2d", [](std::size_t E, std::size_t G) { return numpy(sincos_2d(E, G)); }, py::arg("embed_dim"),
          py::arg("grid"), "Stage 02: the 2-D table (G*G, E); channels [0, E/2) encode the column w, [E/2, E) the row h.");
    m.def("cubic_weights", [](float t) { const auto w = cubic_weights(t); return std::vector<float>(w.begin(), w.end()); },
          py::arg("t"), "Stage 03: Keys' cubic weights of the four taps (A = -0.75).");
    m.def("source_coordinate", &source_coordinate, py::arg("n_in"), py::arg("n_out"), py::arg("j"),
          "Stage 03: where output sample j lands (align_corners=False).");
    m.def("resize_bicubic", [](const py::handle& table, std::size_t g_in, std::size_t g_out) {
        return numpy(resize_bicubic(matrix(table, "resize_bicubic", "table"), g_in, g_out));
    }, py::arg("table"), py::arg("grid_in"), py::arg("grid_out"), "Stage 03: F.interpolate(bicubic) of a (G_in^2, C) table.");
    m.def("key_position_table", [](const py::handle& pos_q, std::size_t n_keys) {
        return numpy(key_position_table(matrix(pos_q, "key_position_table", "pos_q"), n_keys));
    }, py::arg("pos_q"), py::arg("n_keys"), "Stage 03: P_k (L, E) from P_q (Q, E).");
    m.def("layer_norm", [](const py::handle& x, const py::handle& gamma, const py::handle& beta, float eps) {
        return numpy(layer_norm(matrix(x, "layer_norm", "x"), vector(gamma, "layer_norm", "gamma"),
                                vector(beta, "layer_norm", "beta"), eps));
    }, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("eps") = 1e-6f, "Stage 04: nn.LayerNorm on each row of x (R, E).");
    m.def("matmul", [](const py::handle& a, const py::handle& b) {
        return numpy(matmul(matrix(a, "matmul", "a"), matrix(b, "matmul", "b")));
    }, py::arg("a"), py::arg("b"), "Stage 05: a (R, K) @ b (K, M), one loop nest.");
    m.def("linear", [](const py::handle& x, const py::handle& w, const py::handle& b) {
        return numpy(linear(matrix(x, "linear", "x"), matrix(w, "linear", "weight"), vector(b, "linear", "bias")));
    }, py::arg("x"), py::arg("weight"), py::arg("bias"), "Stage 05: F.linear, x W^T + b, W stored (out, in).");
    m.def("kv_projection", [](const py::handle& x, const py::handle& w) {
        return numpy(kv_projection(matrix(x, "kv_projection", "x"), matrix(w, "kv_projection", "w_kv")));
    }, py::arg("x"), py::arg("w_kv"), "Stage 05: x W_kv^T; an empty (0, 0) W_kv is the identity.");
    m.def("softmax_rows", [](const py::handle& scores, const py::object& mask) {
        const OptionalMask m_(mask, "softmax_rows");
        return numpy(softmax_rows(matrix(scores, "softmax_rows", "scores"), m_.get()));
    }, py::arg("scores"), py::arg("mask") = py::none(), "Stage 06: softmax over each row of scores + mask.");
    m.def("additive_mask", [](const py::handle& masked) {
        const py::array array = checked_array(masked, "additive_mask", "masked", true);
        if (array.dtype().kind() != 'b') throw ShapeError("additive_mask: masked is not an array of booleans");
        return numpy(additive_mask(boolean_matrix(array, "additive_mask", "masked")));
    }, py::arg("masked"), "Stage 06: True (masked) -> -inf, False -> 0.");
    m.def("multi_head_attention", [](const py::handle& q, const py::handle& k, const py::handle& v, std::size_t H,
                                     const py::object& mask) {
        const char* fn = "multi_head_attention";
        const OptionalMask m_(mask, fn);
        const AttentionOutput a = multi_head_attention(matrix(q, fn, "q"), matrix(k, fn, "k"), matrix(v, fn, "v"), H, m_.get());
        return py::dict(py::arg("attended") = numpy(a.attended), py::arg("scores") = numpy(a.scores),
                        py::arg("weights") = numpy(a.weights));
    }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("num_heads"), py::arg("mask") = py::none(),
       "Stage 06: one image's attention; a dict of attended (Q, E), scores and weights (H, Q, L).");
    m.def("adapter_forward", [](const AdapterWeights& w, const AdapterConfig& c, const py::handle& x,
                                const py::object& mask, bool trace, std::pair<std::size_t, std::size_t> grid) {
        const OptionalMask m_(mask, "adapter_forward");
        Trace t;
        const Tensor3 out = adapter_forward(w, c, features(x, "adapter_forward"), Grid{grid.first, grid.second},
                                            m_.get(), trace ? &t : nullptr);
        return trace ? py::object(py::make_tuple(numpy(out), trace_dict(t))) : py::object(numpy(out));
    }, py::arg("weights"), py::arg("config"), py::arg("x"), py::arg("mask") = py::none(), py::arg("trace") = false,
       py::arg("grid") = std::pair<std::size_t, std::size_t>{0, 0},
       "Stage 07, readable: x (N, L, Kv) -> out (N, Q, E); grid=(h, w) for a non-square key grid (default: square);\n"
       "with trace=True, (out, {name: intermediate}).");
    m.def("minicpmv_forward", [](const AdapterWeights& w, const AdapterConfig& c, const py::handle& x,
                                 const std::vector<std::pair<std::size_t, std::size_t>>& grids, bool trace,
                                 std::pair<std::size_t, std::size_t> max_grid) {
        Trace t;
        std::vector<Grid> g;
        for (const auto& [h, w_] : grids) g.push_back(Grid{h, w_});
        const Tensor3 out = minicpmv_forward(w, c, features(x, "minicpmv_forward"), g,
                                             Grid{max_grid.first, max_grid.second}, trace ? &t : nullptr);
        return trace ? py::object(py::make_tuple(numpy(out), trace_dict(t))) : py::object(numpy(out));
    }, py::arg("weights"), py::arg("config"), py::arg("x"), py::arg("grids"), py::arg("trace") = false,
       py::arg("max_grid") = std::pair<std::size_t, std::size_t>{kMiniCpmvMaxGrid.h, kMiniCpmvMaxGrid.w},
       "Stage 11, MiniCPM-V 2.5/2.6's resampler: x (N, L, Kv) padded, grids [(h, w)] per image -> out (N, Q, E)\n"
       "before ln_post and proj; with trace=True, (out, {name: intermediate}).");
    m.def("tower_tail_forward", [](const TowerTail& tl, const py::handle& out, float eps, bool trace) {
        Trace t;
        const Tensor3 y = tower_tail_forward(tl, tensor3(out, "tower_tail_forward", "out"), eps, trace ? &t : nullptr);
        return trace ? py::object(py::make_tuple(numpy(y), trace_dict(t))) : py::object(numpy(y));
    }, py::arg("tail"), py::arg("out"), py::arg("eps") = 1e-6f, py::arg("trace") = false,
       "Stage 08: LN_post(out) @ proj.");
    m.def("image_spans", &image_spans, py::arg("ids"), "Stage 09: the (a, b) positions of each <img> ... </img>.");
    m.def("fuse_image_features", [](const std::vector<std::int64_t>& ids, const py::handle& embeddings,
                                    const py::handle& features) {
        return numpy(fuse_image_features(ids, matrix(embeddings, "fuse_image_features", "embeddings"),
                                         tensor3(features, "fuse_image_features", "features")));
    }, py::arg("ids"), py::arg("embeddings"), py::arg("features"), "Stage 09: the image features spliced between the tokens.");
    m.attr("IMAGE_START") = kImageStart;
    m.attr("IMAGE_END") = kImageEnd;

    // --- the backward passes (stage pages' Backward sections, docs/training.md) ---
    m.def("layer_norm_backward", [](const py::handle& x, const py::handle& gamma, const py::handle& dy, float eps) {
        const char* fn = "layer_norm_backward";
        const LayerNormGradients g = layer_norm_backward(matrix(x, fn, "x"), vector(gamma, fn, "gamma"), matrix(dy, fn, "dy"), eps);
        return py::dict(py::arg("dx") = numpy(g.dx), py::arg("dgamma") = numpy(g.dgamma), py::arg("dbeta") = numpy(g.dbeta));
    }, py::arg("x"), py::arg("gamma"), py::arg("dy"), py::arg("eps") = 1e-6f);
    m.def("softmax_rows_backward", [](const py::handle& weights_, const py::handle& d_weights) {
        const char* fn = "softmax_rows_backward";
        return numpy(softmax_rows_backward(matrix(weights_, fn, "weights"), matrix(d_weights, fn, "d_weights")));
    }, py::arg("weights"), py::arg("d_weights"));
    m.def("multi_head_attention_backward", [](const py::handle& q, const py::handle& k, const py::handle& v,
                                              const py::handle& weights_, const py::handle& d_attended, std::size_t H) {
        const char* fn = "multi_head_attention_backward";
        const AttentionGradients g = multi_head_attention_backward(matrix(q, fn, "q"), matrix(k, fn, "k"), matrix(v, fn, "v"),
                                                                   tensor3(weights_, fn, "weights"),
                                                                   matrix(d_attended, fn, "d_attended"), H);
        return py::dict(py::arg("dq") = numpy(g.dq), py::arg("dk") = numpy(g.dk), py::arg("dv") = numpy(g.dv),
                        py::arg("d_weights") = numpy(g.d_weights), py::arg("d_scores") = numpy(g.d_scores));
    }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("weights"), py::arg("d_attended"), py::arg("num_heads"));
    m.def("adapter_backward", [](const AdapterWeights& w, const AdapterConfig& c, const py::handle& x,
                                 const py::dict& forward_trace, const py::handle& d_out) {
        const char* fn = "adapter_backward";
        Trace gradients;
        const AdapterGradients g = adapter_backward(w, c, tensor3(x, fn, "x"), trace_from(forward_trace, fn),
                                                    tensor3(d_out, fn, "d_out"), &gradients);
        TailGradients no_tail;
        NamedTensors params = named_gradients(g, no_tail);
        params.erase(std::remove_if(params.begin(), params.end(),
                                    [](const auto& p) { return p.first.rfind("attn_pool.", 0) != 0; }),
                     params.end());
        return py::make_tuple(named_dict(params), trace_dict(gradients));
    }, py::arg("weights"), py::arg("config"), py::arg("x"), py::arg("forward_trace"), py::arg("d_out"),
       "Stage 07's backward: ({parameter: dL/d}, {intermediate: dL/d}) from adapter_forward's trace and dL/d out.");
    m.def("tower_tail_backward", [](const TowerTail& tl, const py::handle& out, const py::handle& d_y, float eps) {
        const char* fn = "tower_tail_backward";
        const TailGradients g = tower_tail_backward(tl, tensor3(out, fn, "out"), tensor3(d_y, fn, "d_y"), eps);
        return py::dict(py::arg("d_out") = numpy(g.d_out), py::arg("ln_post.weight") = numpy(g.ln_post_weight),
                        py::arg("ln_post.bias") = numpy(g.ln_post_bias), py::arg("proj") = numpy(g.proj));
    }, py::arg("tail"), py::arg("out"), py::arg("d_y"), py::arg("eps") = 1e-6f);

    // --- the fast path ---
    m.def("fast_forward", [](const AdapterWeights& w, const AdapterConfig& c, const py::handle& x,
                             const TowerTail* tl, const py::object& mask, bool trace) {
        const OptionalMask m_(mask, "fast_forward");
        const Tensor3 batch = features(x, "fast_forward");
        Trace t;
        Trace* tp = trace ? &t : nullptr;
        const fast::Weights fw(w);
        const fast::QuerySide side = fast::prepare_query_side(fw, c, batch.shape(1), tp);
        Tensor3 y = fast::adapter_forward(fw, c, side, batch, m_.get(), tp);
        if (tl) y = fast::tower_tail_forward(fast::TailWeights(*tl), std::move(y), c.eps, tp);
        return trace ? py::object(py::make_tuple(numpy(y), trace_dict(t))) : py::object(numpy(y));
    }, py::arg("weights"), py::arg("config"), py::arg("x"), py::arg("tail") = nullptr, py::arg("mask") = py::none(),
       py::arg("trace") = false,
       "The fast path (src/fast/): the adapter, then the tower's tail when given; trace=True adds the intermediates.");

    // --- files ---
    m.def("read_npy", [](const std::string& path) { return numpy(read_npy_float(path)); }, py::arg("path"),
          "A .npy file (float32, float16, float64, bool) as float32.");
    m.def("write_npy", [](const std::string& path, const py::handle& values) { write_npy(path, any_rank(values, "write_npy", "values")); },
          py::arg("path"), py::arg("values"), "Writes float32 .npy, whole or not at all.");
    const auto load = [](const std::vector<std::string>& paths, const std::string& prefix, std::size_t num_heads) {
        WeightFiles files;
        for (const auto& p : paths) files.add(p);
        LoadedAdapter a = load_adapter(files, prefix, num_heads, true);
        return py::make_tuple(a.weights, a.config, a.has_tail ? py::cast(a.tail) : py::none());
    };
    const char* load_doc = "(weights, config, tail or None) from safetensors files (F32, F16, BF16; sharded: the index.json).";
    m.def("load_adapter", [load](const std::string& path, const std::string& prefix, std::size_t num_heads) {
        return load({path}, prefix, num_heads);
    }, py::arg("path"), py::arg("prefix") = kDefaultPrefix, py::arg("num_heads") = 0, load_doc);
    m.def("load_adapter", load, py::arg("paths"), py::arg("prefix") = kDefaultPrefix, py::arg("num_heads") = 0, load_doc);
    m.def("load_fixture", [](const std::string& path) {
        const Fixture f = load_fixture(path);
        py::dict d;
        d["name"] = f.name;
        d["description"] = f.description;
        d["weights"] = f.weights;
        d["tail"] = f.tail;
        d["config"] = f.config;
        d["x"] = numpy(f.x);
        d["mask"] = f.has_mask ? py::object(numpy(f.mask)) : py::object(py::none());
        d["atol"] = f.atol;
        d["rtol"] = f.rtol;
        d["expected"] = trace_dict(f.expected);
        d["gradients"] = trace_dict(f.gradients);
        d["param_gradients"] = trace_dict(f.param_gradients);
        py::list grids;
        for (const Grid& g : f.grids) grids.append(py::make_tuple(g.h, g.w));
        d["grids"] = grids;  // data/fixtures/models/: each image's (h, w); empty for a square Qwen-VL case
        d["max_grid"] = py::make_tuple(f.max_grid.h, f.max_grid.w);
        return d;
    }, py::arg("path"), "A golden fixture (data/fixtures/*.json) as a dict: weights, tail, config, x, mask, expected, ...");

    // --- training (stage 10) ---
    m.def("init_upstream", &init_upstream, py::arg("weights"), py::arg("tail"), py::arg("config"), py::arg("seed"),
          "Upstream's initialisation, in place, from a seeded std::mt19937.");
    m.def("mse_loss", [](const py::handle& y, const py::handle& target) {
        const MseLoss l = mse_loss(tensor3(y, "mse_loss", "y"), tensor3(target, "mse_loss", "target"));
        return py::make_tuple(l.loss, numpy(l.d_y));
    }, py::arg("y"), py::arg("target"), "(mean squared error, its gradient).");
    m.def("trainable_parameters", [](const AdapterWeights& w, const TowerTail& tl) { return named_dict(trainable_parameters(w, tl)); },
          py::arg("weights"), py::arg("tail"));
    m.def("set_trainable_parameters", [](const py::dict& params, AdapterWeights& w, TowerTail& tl) {
        set_trainable_parameters(named_from(params, "set_trainable_parameters"), w, tl);
    }, py::arg("params"), py::arg("weights"), py::arg("tail"),
       "Writes {checkpoint name: array} into the weights (in_proj split); every trainable name must be there.");
    m.def("positions_task", [](std::size_t batch, std::size_t grid_k, std::size_t grid_q, std::size_t width, unsigned seed) {
        std::mt19937 rng(seed);
        const TaskBatch b = positions_task(batch, grid_k, grid_q, width, rng);
        return py::make_tuple(numpy(b.x), numpy(b.target));
    }, py::arg("batch"), py::arg("grid_k"), py::arg("grid_q"), py::arg("width"), py::arg("seed"),
       "(x, target) of the positions task (docs/training.md).");
    m.def("reconstruct_task", [](std::size_t batch, std::size_t grid_k, std::size_t width, unsigned seed) {
        std::mt19937 rng(seed);
        const TaskBatch b = reconstruct_task(batch, grid_k, width, rng);
        return py::make_tuple(numpy(b.x), numpy(b.target));
    }, py::arg("batch"), py::arg("grid_k"), py::arg("width"), py::arg("seed"),
       "(x, target) of the query-count ablation's reconstruct task (docs/training.md).");
    m.def("readout_matrix", [](std::size_t grid_q, std::size_t grid_out) { return numpy(readout_matrix(grid_q, grid_out)); },
          py::arg("grid_q"), py::arg("grid_out"), "R (grid_out^2, grid_q^2): the read-out's bicubic resize as a matrix.");
    m.def("grid_readout", [](const py::handle& readout, const py::handle& y) {
        return numpy(grid_readout(matrix(readout, "grid_readout", "readout"), tensor3(y, "grid_readout", "y")));
    }, py::arg("readout"), py::arg("y"), "z_n = R y_n for every image: (N, Q, E) -> (N, G^2, E).");
    m.def("grid_readout_backward", [](const py::handle& readout, const py::handle& d_z) {
        return numpy(grid_readout_backward(matrix(readout, "grid_readout_backward", "readout"),
                                           tensor3(d_z, "grid_readout_backward", "d_z")));
    }, py::arg("readout"), py::arg("d_z"), "dL/dy_n = R^T dL/dz_n.");
    py::class_<AdamWConfig>(m, "AdamWConfig")
        .def(py::init<>())
        .def_readwrite("lr", &AdamWConfig::lr)
        .def_readwrite("min_lr", &AdamWConfig::min_lr)
        .def_readwrite("beta1", &AdamWConfig::beta1)
        .def_readwrite("beta2", &AdamWConfig::beta2)
        .def_readwrite("eps", &AdamWConfig::eps)
        .def_readwrite("weight_decay", &AdamWConfig::weight_decay)
        .def_readwrite("max_grad_norm", &AdamWConfig::max_grad_norm)
        .def_readwrite("warmup_steps", &AdamWConfig::warmup_steps)
        .def_readwrite("total_steps", &AdamWConfig::total_steps);
    m.def("learning_rate", &learning_rate, py::arg("step"), py::arg("config"));
    py::class_<AdamW>(m, "AdamW", "torch.optim.AdamW, one parameter tensor at a time")
        .def(py::init([](const AdamWConfig& c) { AdamW a; a.config = c; return a; }), py::arg("config"))
        .def_readonly("step", &AdamW::step)
        .def_readwrite("config", &AdamW::config);
    m.def("train_step", [](AdapterWeights& w, TowerTail& tl, const AdapterConfig& c, const py::handle& x,
                           const py::handle& target, AdamW& optimizer, const py::object& mask) {
        const OptionalMask m_(mask, "train_step");
        const StepResult r = train_step(w, tl, c, features(x, "train_step"), tensor3(target, "train_step", "target"),
                                        optimizer, m_.get());
        return py::dict(py::arg("loss") = r.loss, py::arg("grad_norm") = r.grad_norm, py::arg("lr") = r.lr);
    }, py::arg("weights"), py::arg("tail"), py::arg("config"), py::arg("x"), py::arg("target"), py::arg("optimizer"),
       py::arg("mask") = py::none(), "One step of training, in place: {loss, grad_norm, lr}.");
    m.def("readout_train_step", [](AdapterWeights& w, TowerTail& tl, const AdapterConfig& c, const py::handle& x,
                                   const py::handle& readout, const py::handle& target, AdamW& optimizer) {
        const StepResult r = readout_train_step(w, tl, c, features(x, "readout_train_step"),
                                                matrix(readout, "readout_train_step", "readout"),
                                                tensor3(target, "readout_train_step", "target"), optimizer);
        return py::dict(py::arg("loss") = r.loss, py::arg("grad_norm") = r.grad_norm, py::arg("lr") = r.lr);
    }, py::arg("weights"), py::arg("tail"), py::arg("config"), py::arg("x"), py::arg("readout"), py::arg("target"),
       py::arg("optimizer"), "One step of training on the read-out's loss, in place: {loss, grad_norm, lr}.");
}
