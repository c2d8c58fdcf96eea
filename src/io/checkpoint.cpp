#include "io/checkpoint.hpp"

#include <algorithm>
#include <array>
#include <cstring>

namespace qwenvl {

namespace {
// Reads `name` as a tensor of the given rank (only its shape, unfilled, when `fill` is false); throws InputError
// naming the file on a rank mismatch.
template <std::size_t Rank>
xt::xtensor<float, Rank> read_rank(const WeightFiles& files, const std::string& name, bool fill) {
    const TensorEntry& e = files.entry(name);
    if (e.shape.size() != Rank)
        throw InputError(e.file, "tensor '" + name + "' has shape " + shape_string(e.shape) + ", expected rank " +
                                     std::to_string(Rank));
    std::array<std::size_t, Rank> shape{};
    std::copy(e.shape.begin(), e.shape.end(), shape.begin());
    xt::xtensor<float, Rank> out(shape);
    if (fill) files.read_into(name, 0, out.size(), out.data());  // straight from the file: no second copy
    return out;
}

// The packed in_proj_weight (3E, E) and in_proj_bias (3E,), read part by part into W_q, W_k, W_v and
// b_q, b_k, b_v at the rows split_in_proj takes them from (in_proj_offset), without holding the packed
// tensor in memory beside its three parts (200 MB at Qwen-VL's size).
InProjection read_in_proj(const WeightFiles& files, const std::string& weight, const std::string& bias, bool fill) {
    const TensorEntry& w = files.entry(weight);
    const TensorEntry& b = files.entry(bias);
    if (w.shape.size() != 2 || w.shape[0] != 3 * w.shape[1] || b.shape != std::vector<std::size_t>{w.shape[0]})
        throw InputError(w.file, "'" + weight + "' " + shape_string(w.shape) + " and '" + bias + "' " +
                                     shape_string(b.shape) + " are not (3E, E) and (3E,)");
    const std::size_t E = w.shape[1];
    InProjection p;
    Matrix* weights[3] = {&p.w_q, &p.w_k, &p.w_v};
    Vector* biases[3] = {&p.b_q, &p.b_k, &p.b_v};
    for (std::size_t part = 0; part < 3; ++part) {
        *weights[part] = Matrix::from_shape({E, E});
        *biases[part] = Vector::from_shape({E});
        if (!fill) continue;
        files.read_into(weight, in_proj_offset(part, E) * E, E * E, weights[part]->data());
        files.read_into(bias, in_proj_offset(part, E), E, biases[part]->data());
    }
    return p;
}
}  // namespace

CheckpointLayout checkpoint_layout(const WeightFiles& files, const std::string& prefix) {
    CheckpointLayout layout{Model::qwen_vl, prefix + "attn_pool.", prefix};
    if (files.has(layout.adapter + "query")) return layout;
    for (const std::string& resampler : {prefix, std::string("resampler.")}) {
        if (!files.has(resampler + "query")) continue;
        if (files.has(resampler + "pos_embed"))
            throw InputError(files.entry(resampler + "query").file,
                             "'" + resampler + "pos_embed' is stored: a MiniCPM-V 2.0 resampler (a table on the queries "
                             "too, recomputed per slice), which this project does not implement; MiniCPM-V 2.5 and 2.6 "
                             "have none");
        return CheckpointLayout{Model::minicpm_v, resampler, resampler};
    }
    return layout;
}

LoadedAdapter load_adapter(const WeightFiles& files, const std::string& prefix_given, std::size_t num_heads,
                           bool want_tail, Contents contents) {
    const bool fill = contents == Contents::all;
    LoadedAdapter m;
    m.layout = checkpoint_layout(files, prefix_given);
    const std::string& a = m.layout.adapter;
    const std::string& prefix = m.layout.tail;
    AdapterWeights& w = m.weights;
    w.query = read_rank<2>(files, a + "query", fill);
    if (files.has(a + "pos_embed"))  // info compares it
        w.pos_embed = read_rank<2>(files, a + "pos_embed", contents != Contents::shapes_only);
    if (files.has(a + "kv_proj.weight")) w.kv_proj = read_rank<2>(files, a + "kv_proj.weight", fill);
    const std::string where = files.entry(a + "query").file;
    try {
        w.in_proj = read_in_proj(files, a + "attn.in_proj_weight", a + "attn.in_proj_bias", fill);
        w.out_proj_weight = read_rank<2>(files, a + "attn.out_proj.weight", fill);
        w.out_proj_bias = read_rank<1>(files, a + "attn.out_proj.bias", fill);
        w.ln_q_weight = read_rank<1>(files, a + "ln_q.weight", fill);
        w.ln_q_bias = read_rank<1>(files, a + "ln_q.bias", fill);
        w.ln_kv_weight = read_rank<1>(files, a + "ln_kv.weight", fill);
        w.ln_kv_bias = read_rank<1>(files, a + "ln_kv.bias", fill);
        const std::size_t E = w.query.shape(1);
        if (num_heads == 0 && E < 128)
            throw std::invalid_argument("the width E = " + std::to_string(E) +
                                        " gives no heads by Qwen-VL's rule H = E / 128; give --heads");
        m.config = derive_config(w, num_heads, m.layout.model);
        const bool has_proj = files.has(prefix + "proj");
        const bool has_ln_post = files.has(prefix + "ln_post.weight") && files.has(prefix + "ln_post.bias");
        if (want_tail && has_proj != has_ln_post)
            throw std::invalid_argument(has_proj ? "has proj but not ln_post.weight and ln_post.bias"
                                                 : "has ln_post but not proj");
        if (want_tail && has_proj) {
            m.has_tail = true;
            m.tail.ln_post_weight = read_rank<1>(files, prefix + "ln_post.weight", fill);
            m.tail.ln_post_bias = read_rank<1>(files, prefix + "ln_post.bias", fill);
            m.tail.proj = read_rank<2>(files, prefix + "proj", fill);
            check_shape("load_adapter", "proj", m.tail.proj, {E, E});
            check_shape("load_adapter", "ln_post.weight", m.tail.ln_post_weight, {E});
            check_shape("load_adapter", "ln_post.bias", m.tail.ln_post_bias, {E});
        }
    } catch (const InputError&) {
        throw;
    } catch (const std::invalid_argument& e) {
        throw InputError(where, e.what());
    }
    return m;
}

namespace {
// Elements [first, first + count) of a tensor: in place when the file allows, else converted into `m`'s memory.
const float* take(MappedAdapter& m, const std::string& name, std::size_t first, std::size_t count) {
    if (const float* p = m.files.float32_in_place(name, first, count)) {
        m.bytes_in_place += count * sizeof(float);
        return p;
    }
    m.converted.emplace_back(new float[count]);  // not value-initialised: its pages are touched once, by the conversion
    m.files.read_into(name, first, count, m.converted.back().get());
    m.bytes_converted += count * sizeof(float);
    return m.converted.back().get();
}

fast::Block take_matrix(MappedAdapter& m, const std::string& name, std::size_t row0, std::size_t rows) {
    const std::size_t cols = m.files.entry(name).shape.at(1);
    return fast::Block(take(m, name, row0 * cols, rows * cols), rows, cols, cols);
}

// bf16 is the top half of a float32: widening is a shift, which the compiler vectorises.
void widen_bf16(const std::uint8_t* raw, std::size_t count, float* out) {
    for (std::size_t i = 0; i < count; ++i) {
        std::uint16_t half;
        std::memcpy(&half, raw + 2 * i, 2);
        const std::uint32_t bits = static_cast<std::uint32_t>(half) << 16;
        std::memcpy(out + i, &bits, 4);
    }
}
void widen_f16(const std::uint8_t* raw, std::size_t count, float* out) { convert_to_float("F16", raw, count, out); }

// A weight that only the products read (kv_proj, W_q, W_k, W_v, out_proj, proj), or that fast::copy_of reads once
// (the query, pos_embed): an F16 or BF16 one stays where it lies in the mapped file, widened a panel at a time by
// fast::gemm_block, or row by row by fast::copy_of; an F32 one as take_matrix gives it.
fast::Block take_weight(MappedAdapter& m, const std::string& name, std::size_t row0, std::size_t rows) {
    const std::size_t cols = m.files.entry(name).shape.at(1);
    if (const std::uint8_t* p = m.files.half_in_place(name, row0 * cols, rows * cols)) {
        m.bytes_in_place += rows * cols * 2;
        const bool brain = m.files.entry(name).dtype == "BF16";
        return fast::Block(fast::Packed{p, 2, brain ? widen_bf16 : widen_f16}, rows, cols, cols);
    }
    return take_matrix(m, name, row0, rows);
}
fast::Block take_weight(MappedAdapter& m, const std::string& name) {
    return take_weight(m, name, 0, m.files.entry(name).shape.at(0));
}

fast::Values take_values(MappedAdapter& m, const std::string& name, std::size_t first, std::size_t count) {
    return fast::Values(take(m, name, first, count), count);
}

fast::Values take_values(MappedAdapter& m, const std::string& name) {
    return take_values(m, name, 0, m.files.entry(name).shape.at(0));
}
}  // namespace

MappedAdapter map_adapter(const WeightFiles& files, const std::string& prefix_given, std::size_t num_heads,
                          bool want_tail) {
    // Every check of load_adapter, on the headers' shapes only (the tensors it allocates are never touched).
    return map_adapter(files, load_adapter(files, prefix_given, num_heads, want_tail, Contents::shapes_only));
}

MappedAdapter map_adapter(const WeightFiles& files, const LoadedAdapter& checked) {
    MappedAdapter m;
    m.config = checked.config;
    m.has_tail = checked.has_tail;
    const CheckpointLayout& layout = checked.layout;
    m.files = files;
    const std::string& a = layout.adapter;
    const std::string& prefix = layout.tail;
    const std::size_t E = m.config.embed_dim;
    fast::Weights& w = m.weights;
    // The query and pos_embed are read once, by fast::copy_of: kept in 16 bits too, widened into the copy it makes.
    w.query = take_weight(m, a + "query");
    if (files.has(a + "pos_embed")) w.pos_embed = take_weight(m, a + "pos_embed");
    if (files.has(a + "kv_proj.weight")) w.kv_proj = take_weight(m, a + "kv_proj.weight");
    const std::string in_w = a + "attn.in_proj_weight", in_b = a + "attn.in_proj_bias";
    fast::Block* parts[3] = {&w.w_q, &w.w_k, &w.w_v};
    fast::Values* biases[3] = {&w.b_q, &w.b_k, &w.b_v};
    for (std::size_t part = 0; part < 3; ++part) {
        *parts[part] = take_weight(m, in_w, in_proj_offset(part, E), E);
        *biases[part] = take_values(m, in_b, in_proj_offset(part, E), E);
    }
    w.out_proj_weight = take_weight(m, a + "attn.out_proj.weight");
    w.out_proj_bias = take_values(m, a + "attn.out_proj.bias");
    w.ln_q_weight = take_values(m, a + "ln_q.weight");
    w.ln_q_bias = take_values(m, a + "ln_q.bias");
    w.ln_kv_weight = take_values(m, a + "ln_kv.weight");
    w.ln_kv_bias = take_values(m, a + "ln_kv.bias");
    if (m.has_tail) {
        m.tail.ln_post_weight = take_values(m, prefix + "ln_post.weight");
        m.tail.ln_post_bias = take_values(m, prefix + "ln_post.bias");
        m.tail.proj = take_weight(m, prefix + "proj");
    }
    return m;
}

void release(MappedAdapter& m, fast::Block& block) {
    if (block.empty()) return;
    const float* first = block.data;
    const auto owner = std::find_if(m.converted.begin(), m.converted.end(),
                                    [&](const std::unique_ptr<float[]>& p) { return p.get() == first; });
    const std::size_t elements = (block.rows - 1) * block.stride + block.cols;
    if (block.is_packed())  // read in place in 16 bits
        drop_pages(block.packed.data, elements * block.packed.bytes);
    else if (owner != m.converted.end())
        owner->reset();  // converted for this block alone (take): its memory goes back
    else
        drop_pages(first, elements * sizeof(float));
    block = fast::Block();
}

}  // namespace qwenvl
