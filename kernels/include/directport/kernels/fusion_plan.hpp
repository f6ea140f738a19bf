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
constexpr std::int64_t kUnitElements = 32768;
// The last quarter of each plane is cut into units this many times smaller, taken last.
constexpr std::int64_t kTailDivisor = 4;
constexpr int kGroup = 1;
// A kStats unit takes about unit_elements / kStatsCost input elements (an input element costs it
// several outputs' work: float64 arithmetic and four loads).
constexpr std::int64_t kStatsCost = 16;
// Blocks of 256 threads an SM the kernel is compiled for (its register budget: 4 gives 64
// registers a thread, 5 gives 48); DIRECTPORT_FUSION_BLOCKS picks the other, for measuring.
constexpr int kBlocksPerSm = 4;
constexpr int kMaxGroup = 8;
// Elements a thread loads (copy) and stores at once where the layout and the pointers allow.
constexpr int kVec = 8;
static_assert(kMaxCols % kVec == 0, "a band's column chunks keep vectors aligned");

enum : int { kF32 = 0, kF16 = 1, kBF16 = 2 };
enum : int { kCopy = 0, kBand = 1, kVector = 2 };  // a teacher's mode

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
  int tap_quads;  // band, 16-bit input: 1 where tap_pairs and, for every 4 adjacent output columns
                  // from a multiple of 4, the 8 inputs they take are adjacent and start at a multiple
                  // of 8, and the input's rows are a multiple of 8 long: one 16-byte load takes all
                  // (a 2x downsampling of a 16-bit map)
  int in_stats;  // band with fewer input than output elements: its statistics come from its input
                 // (kStats units and the plan's weights), its output units sum nothing
  int channels;
  std::uint32_t chan_units;  // units that cover each of its channels (a vector: 1 an element)
  std::uint32_t units;       // units of the teacher
  std::uint32_t h, w;
  std::uint32_t row_taps, col_taps;  // band: index of output row 0's and column 0's tap in the table
  std::uint32_t row_weights, col_weights;  // in_stats: index (in triples) of its rows' and columns' weights
  unsigned chan_base;                // first index in the statistics arrays
  std::uint64_t out_offset;
};

struct Unit {
  std::uint32_t teacher, c, nc;  // channels [c, c + nc) (copy, band); a vector: 0, 1
  std::uint32_t y0, rows;        // band: output rows [y0, y0 + rows); copy, vector: elements [y0, y0 + rows)
  std::uint32_t x0, cols;        // band: output columns [x0, x0 + cols)
  std::uint32_t rbase, nrows;    // band: input rows [rbase, rbase + nrows), interpolated into shared memory
  std::uint32_t stats;           // 1: a kStats unit, the sums of channels [c, c + nc) of an in_stats
                                 // teacher over its input rows [y0, y0 + rows), all cols (its width)
};

struct FusionPlan {
  std::vector<TeacherDesc> teachers;
  std::vector<Unit> units;  // the largest first
  std::vector<Tap32> taps;
  // Weights of the input rows and columns of in_stats teachers, a triple (c, g0, g1) an input index
  // of an axis (axis_weights()); a teacher's rows from row_weights, its columns from col_weights.
  std::vector<double> weights;
  std::size_t shared_bytes = 0;  // the largest band's nc * nrows * cols floats
};

// The bilinear resampling along one axis as a matrix W (an output index's row holds l0 at its tap
// i0 and l1 at i1, their sum where i0 == i1), summarised for the statistics: for each input index
// i, c[i] = sum over outputs of W[d][i] and, of the Gram matrix G = W^T W (tridiagonal: taps are
// adjacent), g0[i] = G[i][i] and g1[i] = G[i][i + 1] (0 for the last). Returned as triples
// (c, g0, g1), `in` of them. With Wy, Wx a map's two axes and X a channel of the input, the
// resampled channel Y = Wy X Wx^T has
//   sum Y   = sum_ij cy[i] cx[j] X[i][j]
//   sum Y^2 = sum_ij gy0[i] (gx0[j] X[i][j]^2 + 2 gx1[j] X[i][j] X[i][j+1])
//           + 2 gy1[i] (gx0[j] X[i][j] X[i+1][j] + gx1[j] (X[i][j] X[i+1][j+1] + X[i][j+1] X[i+1][j])),
// in exact arithmetic: the kernel's in_stats teachers take their moments this way, from their input
// (the reference sums the outputs after their rounding to float32: they agree to about 1e-7 of the
// values' magnitudes).
std::vector<double> axis_weights(const Tap32* taps, std::int64_t out, std::int64_t in);

// `unit_elements` output elements a unit, over at most `group` channels (both validated by the
// callers below; here they must be >= 1 and 1..kMaxGroup). Throws ValidationError where the
// layout would make more than 2^31 - 1 units.
// Units of vector teachers and kStats units come first (small, and an isotropic teacher's or a
// channel's statistics are folded by its last unit: early, they do not end the launch), then the
// others, the largest first.
// `even`: the first three quarters of a plane, and its last quarter, are each cut into units of
// sizes that differ by at most a vector (cut_plane() in fusion_plan.cpp); false is kernel 6's cut,
// whose last large unit could reach past the three-quarter mark and leave the last quarter a
// sliver. The kernel runs kernel 6's cut unless DIRECTPORT_FUSION_EVEN=1, until the even cut has
// been measured on a GPU (docs/FUSION.md).
// `input_stats` (the default): teachers with fewer input than output elements (upsampled maps)
// take their statistics from their input (TeacherDesc::in_stats: 38 % fewer instructions for the
// distill workload, docs/FUSION.md, kernel 7); false sums every output (kernel 6).
FusionPlan plan_fusion(const FusionLayout& layout, std::int64_t unit_elements, int group, bool even = false,
                       bool input_stats = true);

// A unit's size for ordering and estimates: its output elements plus the horizontal
// interpolations a band makes first, over its channels (a kStats unit: its input elements, each
// as kStatsCost outputs).
std::uint64_t unit_cost(const Unit& u);

// How `blocks` blocks (at most one a unit) share the plan's units when they take them as
// fuse_kernel's persistent blocks do (DIRECTPORT_FUSION_GRID=0: a block claims its next unit as it
// starts one; the default launch leaves a block a unit to the GPU), under a cost model:
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
// DIRECTPORT_FUSION_GRID (0 or 1, default 1): 1 launches a block a unit, in the plan's order, and
// leaves their scheduling to the GPU; 0 launches as many blocks as the card holds at once, each
// taking units from a counter (kernel 6).
bool grid_launch_from_env();
// DIRECTPORT_FUSION_QUADS (0 or 1, default 1): 0 leaves TeacherDesc::tap_quads unused (a band's
// rows loaded a pair of inputs at a time), for measuring.
bool quad_loads_from_env();
// DIRECTPORT_FUSION_INSTATS (0 or 1, default 1): plan_fusion()'s `input_stats`.
bool input_stats_from_env();

}  // namespace dp::kernels::plan
