// How the GPU fusion kernel (kernels/src/fusion.cu, docs/FUSION.md "kernel 5") cuts a layout
// into work units: host code, built in every configuration so that its invariants are tested
// without a GPU (tests/kernels/test_fusion_plan.cpp). The structs are what the kernel reads from
// device memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "directport/kernels/fusion.hpp"

namespace dp::kernels::plan {

// A band holds at most this many columns, and its rows of horizontal interpolations at most
// kBandBytes of shared memory: two rows of kMaxCols always fit, whatever the scale.
constexpr std::int64_t kMaxCols = 2048;
constexpr std::int64_t kBandBytes = 32 * 1024;
// A band has at most this many output rows (their taps are staged in shared memory).
constexpr int kMaxRows = 256;
// Output elements a unit aims at, over its channels, and channels a unit takes at most
// (DIRECTPORT_FUSION_UNIT and DIRECTPORT_FUSION_GROUP override them, for measuring).
constexpr std::int64_t kUnitElements = 16384;
// The last quarter of each plane is cut into units this many times smaller, taken last.
constexpr std::int64_t kTailDivisor = 4;
constexpr int kGroup = 1;
// Blocks of 256 threads an SM the kernel is compiled for (its register budget: 4 gives 64
// registers a thread, 5 gives 48); DIRECTPORT_FUSION_BLOCKS picks the other, for measuring.
constexpr int kBlocksPerSm = 4;
constexpr int kMaxGroup = 8;
// Elements a thread loads (copy) and stores at once where the layout and the pointers allow.
constexpr int kVec = 8;
static_assert(kMaxCols % kVec == 0, "a band's column chunks keep vectors aligned");

enum : int { kF32 = 0, kF16 = 1, kBF16 = 2 };
enum : int { kCopy = 0, kBand = 1, kVector = 2 };

int dtype_code(DType t);

// One output index's bilinear taps along an axis (tap() of fusion_math.hpp, in 32 bits).
struct Tap32 {
  std::uint32_t i0, i1;
  float l0, l1;
};

struct TeacherDesc {
  int dtype;  // kF32, kF16, kBF16
  int mode;   // kCopy (the grid's size), kBand (resampled) or kVector
  int norm;   // NormMode
  int pairs;  // 1: the layout lets this teacher store (and, copy, load) two adjacent elements at once
  int vec;    // 1: ... kVec adjacent elements at once (16 bytes of a 16-bit dtype)
  int tap_pairs;  // band: 1 where every column's two taps are adjacent, the first even, and the input's
                  // rows of even length: one load of two elements takes both (a 2x downsampling, say)
  int channels;
  std::uint32_t h, w;
  std::uint32_t row_taps, col_taps;  // band: index of output row 0's and column 0's tap in the table
  unsigned chan_base;                // first index in the statistics arrays
  std::uint64_t out_offset;
};

struct Unit {
  std::uint32_t teacher, c, nc;  // channels [c, c + nc) (copy, band); a vector: 0, 1
  std::uint32_t y0, rows;        // band: output rows [y0, y0 + rows); copy, vector: elements [y0, y0 + rows)
  std::uint32_t x0, cols;        // band: output columns [x0, x0 + cols)
  std::uint32_t rbase, nrows;    // band: input rows [rbase, rbase + nrows), interpolated into shared memory
};

struct FusionPlan {
  std::vector<TeacherDesc> teachers;
  std::vector<Unit> units;  // the largest first
  std::vector<Tap32> taps;
  std::size_t shared_bytes = 0;  // the largest band's nc * nrows * cols floats
};

// `unit_elements` output elements a unit, over at most `group` channels (both validated by the
// callers below; here they must be >= 1 and 1..kMaxGroup). Throws ValidationError where the
// layout would make more than 2^31 - 1 units.
// `even`: the first three quarters of a plane, and its last quarter, are each cut into units of
// sizes that differ by at most a vector (cut_plane() in fusion_plan.cpp); false is kernel 6's cut,
// whose last large unit could reach past the three-quarter mark and leave the last quarter a
// sliver. The kernel runs kernel 6's cut unless DIRECTPORT_FUSION_EVEN=1, until the even cut has
// been measured on a GPU (docs/FUSION.md).
FusionPlan plan_fusion(const FusionLayout& layout, std::int64_t unit_elements, int group, bool even = false);

// A unit's size for ordering and estimates: its output elements plus the horizontal
// interpolations a band makes first, over its channels.
std::uint64_t unit_cost(const Unit& u);

// How `blocks` blocks (at most one a unit) share the plan's units when they take them as
// fuse_kernel hands them out (a block claims its next unit as it starts one), under a cost model:
// a unit costs unit_cost() plus `fixed` (its barriers, taps and sums, in output elements).
// `longest` is the busiest block's total, `mean` the blocks' mean; compare `longest` between plans
// (more units also raise the mean). An estimate from the plan alone (no GPU), not a time: it does
// not model an SM's blocks slowing each other.
struct Balance {
  std::size_t units = 0;
  unsigned blocks = 0;
  double longest = 0, mean = 0;
};
Balance estimate_balance(const FusionPlan& plan, unsigned blocks, double fixed);

// DIRECTPORT_FUSION_UNIT (256..2^24, default kUnitElements) and DIRECTPORT_FUSION_GROUP (1..kMaxGroup,
// default kGroup); a bad value is a ValidationError naming the variable and the range.
std::int64_t unit_elements_from_env();
int unit_group_from_env();
// DIRECTPORT_FUSION_BLOCKS (4 or 5, default kBlocksPerSm), checked the same way.
int blocks_per_sm_from_env();
// DIRECTPORT_FUSION_EVEN (0 or 1, default 0): plan_fusion()'s `even`.
bool even_split_from_env();

}  // namespace dp::kernels::plan
