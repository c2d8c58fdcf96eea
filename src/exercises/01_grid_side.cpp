// Exercise 01-grid-side: write grid_side (docs/course/README.md, lesson 1).
//   check:     cmake --build --preset release --target check-01-grid-side
//   read:      docs/course/lesson-1-shapes.md; notebooks/01_paper_numbers.ipynb
//   solution:  src/stages/01_feature_input.cpp, the project's own stage (read it once you pass)
//
// count cells -> the side G of the square G x G grid holding them. A count that is no square grid (not a perfect
// square, or 0: no patches is no image) throws std::invalid_argument whose message starts with `what` (the
// argument's name, for the caller's error).
// Why the check is there, and the classic mistake it stops: lesson 1.
#include <cmath>
#include <stdexcept>
#include <string>

#include "stages/01_feature_input.hpp"

namespace qwenvl {

std::size_t grid_side(std::size_t count, const char* what) {
    // TODO: replace this placeholder with the side of the grid, and the check.
    (void)count;
    (void)what;
    return 0;
}

}  // namespace qwenvl
