// stages/09_fusion.hpp: stage 09, splicing the image features into the language model's input (docs/stages/09-fusion.md).
//
// Paper (Qwen-VL, section 2.2): the compressed image features are wrapped in the special tokens <img> and
// </img>, which mark where the image content starts and ends; an image thus takes Q + 2 = 258 positions.
// In the model's input embeddings, the Q rows strictly between an <img> token (at position a) and its
// </img> (at b) are overwritten with the image's Q rows of features: rows a+1 .. b-1, images in order.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/shapes.hpp"

namespace qwenvl {

// Qwen's tokenizer ids.
constexpr std::int64_t kImageStart = 151857;  // <img>
constexpr std::int64_t kImageEnd = 151858;    // </img>

// The (a, b) positions of each <img> ... </img> pair, in order. Throws std::invalid_argument for an <img>
// never closed, a </img> without an <img>, or an <img> inside an open span.
std::vector<std::pair<std::size_t, std::size_t>> image_spans(const std::vector<std::int64_t>& ids);

// embeddings (T, E), ids (T,), features (M, Q, E) -> (T, E) with each span's rows replaced by one image's
// features. Throws when the number of spans is not M, a span does not hold exactly Q positions, or the widths
// differ.
Matrix fuse_image_features(const std::vector<std::int64_t>& ids, const Matrix& embeddings, const Tensor3& features);

}  // namespace qwenvl
