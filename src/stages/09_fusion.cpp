#include "stages/09_fusion.hpp"

#include <xtensor/xview.hpp>

namespace qwenvl {

std::vector<std::pair<std::size_t, std::size_t>> image_spans(const std::vector<std::int64_t>& ids) {
    std::vector<std::pair<std::size_t, std::size_t>> spans;
    bool open = false;
    std::size_t start = 0;
    for (std::size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] == kImageStart) {
            require(!open, "image_spans", "<img> at position " + std::to_string(i) + " inside the span opened at " +
                                              std::to_string(start));
            open = true;
            start = i;
        } else if (ids[i] == kImageEnd) {
            require(open, "image_spans", "</img> at position " + std::to_string(i) + " without an <img>");
            spans.emplace_back(start, i);
            open = false;
        }
    }
    require(!open, "image_spans", "<img> at position " + std::to_string(start) + " is never closed by </img>");
    return spans;
}

Matrix fuse_image_features(const std::vector<std::int64_t>& ids, const Matrix& embeddings, const Tensor3& features) {
    const char* fn = "fuse_image_features";
    const std::size_t T = ids.size(), M = features.shape(0), Q = features.shape(1), E = features.shape(2);
    check_shape(fn, "embeddings", embeddings, {T, E});
    const auto spans = image_spans(ids);
    require(spans.size() == M, fn,
            "the ids hold " + std::to_string(spans.size()) + " <img> spans but there are " + std::to_string(M) +
                " images of features");
    Matrix fused = embeddings;
    for (std::size_t m = 0; m < M; ++m) {
        const auto [a, b] = spans[m];
        require(b - a - 1 == Q, fn,
                "the span <img> at " + std::to_string(a) + " ... </img> at " + std::to_string(b) + " holds " +
                    std::to_string(b - a - 1) + " positions, expected " + std::to_string(Q));
        xt::view(fused, xt::range(a + 1, b), xt::all()) = xt::view(features, m);
    }
    return fused;
}

}  // namespace qwenvl
