// The GPU fusion kernel's work plan (kernels/fusion_plan.hpp), checked on the CPU: every output
// element of every segment belongs to exactly one unit; a band's input rows hold every row its
// outputs interpolate from and fit the shared memory the launch reserves; paired stores only
// where every unit of the teacher stays aligned; the largest units first; the taps are the CPU
// reference's; the environment variables that size the units are checked by name.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <tuple>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "directport/core/error.hpp"
#include "directport/kernels/fusion.hpp"
#include "directport/kernels/fusion_math.hpp"
#include "directport/kernels/fusion_plan.hpp"
#include "directport/platform/child.hpp"
#include "support/test_support.hpp"

namespace dp {
namespace {

using kernels::FusionInput;
using kernels::FusionLayout;
using kernels::NormMode;
namespace plan = kernels::plan;

FusionInput map(const std::string& name, DType t, std::int64_t c, std::int64_t h, std::int64_t w) {
  return {name, t, {c, h, w}, NormMode::channel};
}
FusionInput vec(const std::string& name, DType t, std::int64_t c) { return {name, t, {c}, NormMode::isotropic}; }

std::uint64_t cost(const plan::Unit& u) { return plan::unit_cost(u); }

void check_plan(const FusionLayout& L, std::int64_t unit, int group, bool even, bool input_stats) {
  SCOPED_TRACE("unit " + std::to_string(unit) + ", group " + std::to_string(group) + (even ? "" : ", not even") +
               (input_stats ? ", statistics from the input" : ""));
  const auto P = plan::plan_fusion(L, unit, group, even, input_stats);
  const std::int64_t Hg = L.grid_h(), Wg = L.grid_w(), plane = Hg * Wg;
  ASSERT_EQ(P.teachers.size(), L.teachers());
  ASSERT_LE(P.shared_bytes, std::size_t(plan::kBandBytes));
  std::vector<std::uint8_t> covered(L.mask_offset(), 0);
  auto mark = [&](std::uint64_t i) {
    ASSERT_LT(i, covered.size());
    ++covered[i];
  };
  std::map<std::tuple<std::uint32_t, std::uint32_t, std::uint32_t>, int> stats_rows;  // (teacher, channel, input row)
  for (std::size_t k = 0; k < P.units.size(); ++k) {
    const auto& u = P.units[k];
    SCOPED_TRACE("unit #" + std::to_string(k) + " of teacher " + std::to_string(u.teacher));
    if (k > 0) {
      const bool prev_vector = P.teachers[P.units[k - 1].teacher].mode == plan::kVector || P.units[k - 1].stats;
      const bool vector = P.teachers[u.teacher].mode == plan::kVector || u.stats;
      ASSERT_TRUE(prev_vector || !vector) << "vectors and kStats units come first";
      if (prev_vector == vector) {
        ASSERT_GE(cost(P.units[k - 1]), cost(u)) << "the largest units come first";
      }
    }
    ASSERT_LT(u.teacher, L.teachers());
    const auto& in = L.inputs()[u.teacher];
    const auto& t = P.teachers[u.teacher];
    ASSERT_EQ(t.out_offset, L.offset(u.teacher));
    ASSERT_EQ(t.chan_base, L.channel_base(u.teacher));
    ASSERT_GE(u.nc, 1u);
    ASSERT_LE(u.nc, std::uint32_t(u.stats ? plan::kMaxGroup : group));
    ASSERT_LE(std::int64_t(u.c) + u.nc, in.channels());
    if (u.stats) {
      // A kStats unit: channels of an in_stats teacher, a range of its input rows, all columns.
      ASSERT_EQ(t.mode, plan::kBand);
      ASSERT_EQ(t.in_stats, 1);
      ASSERT_EQ(u.cols, t.w);
      ASSERT_GE(u.rows, 1u);
      ASSERT_LE(std::int64_t(u.y0) + u.rows, in.shape[1]);
      for (std::uint32_t g = 0; g < u.nc; ++g) {
        for (std::uint32_t r = u.y0; r < u.y0 + u.rows; ++r) ++stats_rows[{u.teacher, u.c + g, r}];
      }
      continue;
    }
    if (t.mode == plan::kVector) {
      ASSERT_FALSE(in.spatial());
      ASSERT_EQ(u.nc, 1u);
      for (std::uint32_t i = 0; i < u.rows; ++i) mark(t.out_offset + u.y0 + i);
      continue;
    }
    ASSERT_TRUE(in.spatial());
    const bool same = in.shape[1] == Hg && in.shape[2] == Wg;
    ASSERT_EQ(t.mode, same ? plan::kCopy : plan::kBand) << "copy exactly where the map has the grid's size";
    if (t.pairs) {
      ASSERT_EQ(t.out_offset % 2, 0u);
      ASSERT_EQ(plane % 2, 0);
    }
    if (t.vec) {
      ASSERT_TRUE(t.pairs) << "a layout aligned for vectors is aligned for pairs";
      ASSERT_EQ(t.out_offset % plan::kVec, 0u);
      ASSERT_EQ(plane % plan::kVec, 0);
    }
    for (std::uint32_t g = 0; g < u.nc; ++g) {
      const std::uint64_t base = t.out_offset + std::uint64_t(u.c + g) * std::uint64_t(plane);
      if (t.mode == plan::kCopy) {
        ASSERT_LE(std::int64_t(u.y0) + u.rows, plane);
        if (t.pairs) {
          ASSERT_TRUE(u.y0 % 2 == 0 && u.rows % 2 == 0) << "a pair never straddles two units";
        }
        if (t.vec) {
          ASSERT_TRUE(u.y0 % plan::kVec == 0 && u.rows % plan::kVec == 0) << "a vector never straddles two units";
        }
        for (std::uint32_t i = 0; i < u.rows; ++i) mark(base + u.y0 + i);
        continue;
      }
      ASSERT_LE(std::int64_t(u.y0) + u.rows, Hg);
      ASSERT_LE(std::int64_t(u.x0) + u.cols, Wg);
      ASSERT_LE(u.rows, std::uint32_t(plan::kMaxRows));
      ASSERT_LE(std::int64_t(u.cols), plan::kMaxCols);
      if (t.pairs) {
        ASSERT_TRUE(u.x0 % 2 == 0 && u.cols % 2 == 0 && Wg % 2 == 0) << "pairs stay within a row";
      }
      if (t.vec) {
        ASSERT_TRUE(u.x0 % plan::kVec == 0 && u.cols % plan::kVec == 0 && Wg % plan::kVec == 0) << "vectors stay within a row";
        ASSERT_LE(u.cols / plan::kVec, 256u) << "a row's vectors fit the block's threads";
      }
      for (std::uint32_t y = 0; y < u.rows; ++y) {
        for (std::uint32_t x = 0; x < u.cols; ++x) mark(base + std::uint64_t(u.y0 + y) * std::uint64_t(Wg) + u.x0 + x);
      }
    }
    if (t.mode == plan::kBand) {
      ASSERT_EQ(t.in_stats, input_stats && in.shape[1] * in.shape[2] < plane ? 1 : 0)
          << "statistics from the input exactly where it is smaller, where asked";
      ASSERT_LE(std::size_t(u.nc) * u.nrows * u.cols * sizeof(float), P.shared_bytes) << "the band's rows fit";
      ASSERT_LE(std::int64_t(u.rbase) + u.nrows, in.shape[1]);
      for (std::uint32_t y = u.y0; y < u.y0 + u.rows; ++y) {
        const auto& ty = P.taps[t.row_taps + y];
        ASSERT_GE(ty.i0, u.rbase);
        ASSERT_LT(ty.i1, u.rbase + u.nrows) << "output row " << y << " needs input row " << ty.i1;
      }
    }
  }
  if (even) {
    // Each part of a plane (its first three quarters, its last quarter) in units whose sizes
    // differ by at most a granule (a row of a band; a pair or a vector of a copy), none across the
    // cut: no sliver.
    std::map<std::tuple<std::uint32_t, std::uint32_t, std::uint32_t, bool>, std::pair<std::uint32_t, std::uint32_t>> sizes;
    for (const auto& u : P.units) {
      const auto& t = P.teachers[u.teacher];
      if (t.mode == plan::kVector || u.stats) continue;
      const std::int64_t align = t.mode == plan::kBand ? 1 : (t.vec ? plan::kVec : 2);
      const std::int64_t total = t.mode == plan::kBand ? Hg : plane;
      const std::int64_t cut = t.mode == plan::kBand ? Hg - Hg / 4 : (plane - plane / 4) / align * align;
      const bool tail = u.y0 >= cut;
      EXPECT_TRUE(tail || u.y0 + u.rows <= cut) << "a unit across the cut: teacher " << u.teacher << ", " << u.y0;
      auto& mm = sizes.try_emplace({u.teacher, u.c, u.x0, tail}, u.rows, u.rows).first->second;
      mm.first = std::min(mm.first, u.rows);
      mm.second = std::max(mm.second, u.rows);
      EXPECT_LE(mm.second - mm.first, std::uint32_t(align) + (total % align))
          << "uneven units in a part of teacher " << u.teacher << "'s plane: " << mm.first << " and " << mm.second;
    }
  }
  // The counts by which the kernel knows a channel (a teacher) complete: the units that cover
  // each channel, and the teacher's units.
  std::vector<std::uint32_t> per_teacher(L.teachers(), 0);
  std::vector<std::uint32_t> per_channel(L.total_channels(), 0);
  for (const auto& u : P.units) {
    const auto& t = P.teachers[u.teacher];
    ++per_teacher[u.teacher];
    if (t.mode == plan::kVector) continue;
    for (std::uint32_t g = 0; g < u.nc; ++g) ++per_channel[t.chan_base + u.c + g];
  }
  for (std::size_t i = 0; i < L.teachers(); ++i) {
    const auto& t = P.teachers[i];
    ASSERT_EQ(t.units, per_teacher[i]) << "teacher " << i;
    if (t.in_stats) {
      // Every input row of every channel in exactly one kStats unit; the weights are the axes'.
      for (int c = 0; c < t.channels; ++c) {
        for (std::uint32_t r = 0; r < t.h; ++r) {
          const auto it = stats_rows.find({std::uint32_t(i), std::uint32_t(c), r});
          ASSERT_TRUE(it != stats_rows.end() && it->second == 1) << "teacher " << i << " channel " << c << " input row " << r;
        }
      }
      const auto wy = plan::axis_weights(P.taps.data() + t.row_taps, Hg, t.h);
      const auto wx = plan::axis_weights(P.taps.data() + t.col_taps, Wg, t.w);
      ASSERT_LE(3 * (std::size_t(t.row_weights) + t.h), P.weights.size());
      ASSERT_LE(3 * (std::size_t(t.col_weights) + t.w), P.weights.size());
      ASSERT_TRUE(std::equal(wy.begin(), wy.end(), P.weights.begin() + 3 * std::ptrdiff_t(t.row_weights)));
      ASSERT_TRUE(std::equal(wx.begin(), wx.end(), P.weights.begin() + 3 * std::ptrdiff_t(t.col_weights)));
    }
    if (t.mode == plan::kVector) {
      ASSERT_EQ(t.chan_units, 1u);
      continue;
    }
    for (int c = 0; c < t.channels; ++c) ASSERT_EQ(t.chan_units, per_channel[t.chan_base + c]) << "teacher " << i << " channel " << c;
  }
  for (std::size_t i = 0; i < L.teachers(); ++i) {
    const auto& in = L.inputs()[i];
    const auto& t = P.teachers[i];
    for (std::size_t e = L.offset(i); e < L.offset(i) + L.segment_elements(i); ++e) {
      ASSERT_EQ(covered[e], 1) << "element " << e - L.offset(i) << " of teacher " << i << " ('" << in.name << "')";
    }
    if (t.mode != plan::kBand) continue;
    // The taps are the reference's, index for index.
    const auto ry = kernels::make_resample(in.shape[1], Hg), rx = kernels::make_resample(in.shape[2], Wg);
    for (std::int64_t y = 0; y < Hg; ++y) {
      const auto want = kernels::tap(ry, y, in.shape[1]);
      const auto& got = P.taps[t.row_taps + std::size_t(y)];
      ASSERT_TRUE(got.i0 == want.i0 && got.i1 == want.i1 && got.l0 == want.l0 && got.l1 == want.l1) << "row " << y;
    }
    bool adjacent = in.shape[2] % 2 == 0;
    for (std::int64_t x = 0; x < Wg; ++x) {
      const auto want = kernels::tap(rx, x, in.shape[2]);
      const auto& got = P.taps[t.col_taps + std::size_t(x)];
      ASSERT_TRUE(got.i0 == want.i0 && got.i1 == want.i1 && got.l0 == want.l0 && got.l1 == want.l1) << "column " << x;
      adjacent = adjacent && want.i1 == want.i0 + 1 && want.i0 % 2 == 0;
    }
    ASSERT_EQ(t.tap_pairs, adjacent ? 1 : 0) << "one load of two elements exactly where every column's taps allow it";
    bool quads = adjacent && in.dtype != DType::f32 && in.shape[2] % 8 == 0 && Wg % 4 == 0;
    for (std::int64_t x = 0; x < Wg && quads; ++x) {
      const auto first = kernels::tap(rx, x / 4 * 4, in.shape[2]).i0;
      quads = first % 8 == 0 && kernels::tap(rx, x, in.shape[2]).i0 == first + 2 * (x % 4);
    }
    ASSERT_EQ(t.tap_quads, quads ? 1 : 0) << "one 16-byte load for 4 columns exactly where their taps allow it";
  }
}

TEST(FusionPlan, UnitsCoverEveryOutputOnceAndFitTheirBounds) {
  const std::vector<FusionLayout> layouts = {
      // The benchmark's two workloads (bench/fusion_bench.cpp).
      FusionLayout({map("vision", DType::f16, 384, 16, 16), map("edges", DType::f32, 8, 224, 224),
                    map("depth", DType::bf16, 1, 448, 448), vec("audio", DType::f16, 512), vec("text", DType::f32, 384)},
                   224, 224, DType::bf16),
      FusionLayout({map("same", DType::f16, 64, 256, 256), map("down", DType::bf16, 32, 512, 512),
                    map("up", DType::f32, 16, 128, 128)},
                   256, 256, DType::f16),
      // Odd sizes (no pairs), a 1x1 map, a strong downsampling, one axis resampled only.
      FusionLayout({map("up", DType::f32, 3, 17, 29), map("down", DType::f16, 5, 64, 81), map("same", DType::bf16, 2, 37, 53),
                    vec("v", DType::f32, 7), map("one", DType::f32, 1, 1, 1), map("down8", DType::bf16, 3, 296, 424),
                    map("rows", DType::f32, 2, 37, 9)},
                   37, 53, DType::f32),
      // Wider than a band's columns, taller than its rows, an odd segment offset before an even grid.
      FusionLayout({vec("odd", DType::f16, 3), map("up", DType::f16, 9, 3, 1000), map("same", DType::bf16, 3, 6, 4100)}, 6,
                   4100, DType::bf16),
      FusionLayout({map("up", DType::f32, 2, 150, 3), map("same", DType::f16, 1, 600, 4)}, 600, 4, DType::f32),
      // Vectors: a grid wider than a band whose width is a multiple of 8; a segment after a
      // 2-element vector (pairs, no vectors).
      FusionLayout({map("up", DType::f16, 2, 3, 1000), map("same", DType::bf16, 2, 6, 4104), vec("two", DType::f32, 2),
                    map("after", DType::f16, 1, 3, 100)},
                   6, 4104, DType::f32),
      // A last quarter of 13 rows in bands of at most 4 (16384 elements a unit): 4, 3, 3, 3, not 4, 4, 4, 1.
      FusionLayout({map("up", DType::f16, 1, 13, 256)}, 52, 1024, DType::bf16),
  };
  for (std::size_t l = 0; l < layouts.size(); ++l) {
    SCOPED_TRACE("layout " + std::to_string(l));
    for (auto [unit, group] : {std::pair<std::int64_t, int>{256, 1}, {8192, 1}, {16384, 2}, {100000, 3}, {1 << 20, 8}}) {
      for (bool even : {true, false}) {
        for (bool input_stats : {false, true}) check_plan(layouts[l], unit, group, even, input_stats);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST(FusionPlan, PairsFollowTheLayout) {
  // Even grid and offsets: pairs. An odd offset (a 3-element vector before the map) or an odd
  // grid: none.
  auto pairs_of = [](const FusionLayout& L, std::size_t i) { return plan::plan_fusion(L, 8192, 1).teachers[i].pairs; };
  EXPECT_EQ(pairs_of(FusionLayout({map("a", DType::f16, 2, 8, 8), map("b", DType::f16, 2, 16, 16)}, 16, 16, DType::bf16), 0), 1);
  EXPECT_EQ(pairs_of(FusionLayout({map("a", DType::f16, 2, 8, 8), map("b", DType::f16, 2, 16, 16)}, 16, 16, DType::bf16), 1), 1);
  EXPECT_EQ(pairs_of(FusionLayout({vec("v", DType::f16, 3), map("a", DType::f16, 2, 8, 8)}, 16, 16, DType::bf16), 1), 0);
  EXPECT_EQ(pairs_of(FusionLayout({map("a", DType::f16, 2, 8, 8)}, 15, 15, DType::bf16), 0), 0);
}

TEST(FusionPlan, TheLastQuarterOfAPlaneComesInSmallerUnitsTakenLast) {
  // A copy and a band (a 16x16 map upsampled), a 256x256 grid, 16384 elements a unit: three
  // quarters of each plane in units of 16384 elements (a band: 64 rows of 256), the last quarter
  // in units of 4096 (16 rows), which the order puts after every large one.
  const FusionLayout L({map("same", DType::f16, 2, 256, 256), map("up", DType::f16, 2, 16, 16)}, 256, 256, DType::bf16);
  const auto P = plan::plan_fusion(L, 16384, 1);
  std::size_t big = 0, small = 0, first_small = P.units.size();
  for (std::size_t k = 0; k < P.units.size(); ++k) {
    const auto& u = P.units[k];
    if (u.stats) continue;  // the upsampled map's statistics (checked in check_plan())
    const std::uint64_t n = std::uint64_t(u.rows) * std::max(u.cols, 1u);
    if (n >= 12288) {
      ++big;
      EXPECT_LT(k, first_small) << "a large unit after a small one";
    } else {
      ++small;
      first_small = std::min(first_small, k);
      EXPECT_LE(n, 4096u + 256u);
    }
  }
  // Copy: 48 of 64 Ki elements a channel in 3 large units, 16 Ki in 4 small; band: rows 0..191
  // in 3 bands of 64 rows, 192..255 in 4 of 16 (cut at row 192).
  EXPECT_EQ(big, 2u * 3 + 2u * 3);
  EXPECT_EQ(small, 2u * 4 + 2u * 4);
}

TEST(FusionPlan, EachPartOfAPlaneIsCutEvenlyWhereTheUnitsDoNotDivideIt) {
  // The distillation graph's grid (224x224) with a 16x16 map upsampled and a map at the grid's
  // size, 16384 elements a unit: 224 rows are not a multiple of the 73 that make a unit. The first
  // 168 rows (three quarters) come in 3 bands of 56 rows, the last 56 in 4 of 14: no large band
  // reaches into the last quarter and leaves it a sliver. The copy's plane the same way: 37632
  // elements in 3 units of 12544, 12544 in 4 of 3136.
  const FusionLayout L({map("up", DType::f16, 3, 16, 16), map("same", DType::f32, 2, 224, 224)}, 224, 224, DType::bf16);
  const auto P = plan::plan_fusion(L, 16384, 1, true);
  std::vector<std::uint32_t> band_rows, copy_elems;
  for (const auto& u : P.units) {
    if (u.stats) continue;
    if (u.teacher == 0 && u.c == 0) band_rows.push_back(u.rows);
    if (u.teacher == 1 && u.c == 0) copy_elems.push_back(u.rows);
    if (u.teacher == 0) EXPECT_TRUE(u.y0 + u.rows <= 168 || u.y0 >= 168) << "a band across the cut at row 168: " << u.y0;
    if (u.teacher == 1) EXPECT_TRUE(u.y0 + u.rows <= 37632 || u.y0 >= 37632) << "a unit across the cut: " << u.y0;
  }
  std::sort(band_rows.begin(), band_rows.end());
  std::sort(copy_elems.begin(), copy_elems.end());
  EXPECT_EQ(band_rows, (std::vector<std::uint32_t>{14, 14, 14, 14, 56, 56, 56}));
  EXPECT_EQ(copy_elems, (std::vector<std::uint32_t>{3136, 3136, 3136, 3136, 12544, 12544, 12544}));
  // Not even (DIRECTPORT_FUSION_EVEN=0, kernel 6's plan): three bands of 73 rows, the third past
  // the cut, and a sliver of 5; the copy 3 units of 16384 and one of 1024.
  band_rows.clear();
  copy_elems.clear();
  for (const auto& u : plan::plan_fusion(L, 16384, 1, false).units) {
    if (u.stats) continue;
    if (u.teacher == 0 && u.c == 0) band_rows.push_back(u.rows);
    if (u.teacher == 1 && u.c == 0) copy_elems.push_back(u.rows);
  }
  std::sort(band_rows.begin(), band_rows.end());
  std::sort(copy_elems.begin(), copy_elems.end());
  EXPECT_EQ(band_rows, (std::vector<std::uint32_t>{5, 73, 73, 73}));
  EXPECT_EQ(copy_elems, (std::vector<std::uint32_t>{1024, 16384, 16384, 16384}));
}

TEST(FusionPlan, BalanceEstimateHandsUnitsOutAsTheKernelDoes) {
  plan::FusionPlan P;
  // Copy units of n elements (cost n each).
  auto unit = [](std::uint32_t n) { return plan::Unit{0, 0, 1, 0, n, 0, 0, 0, 0, 0}; };
  P.units = {unit(100), unit(100), unit(100)};
  auto b = plan::estimate_balance(P, 2, 0);
  EXPECT_EQ(b.units, 3u);
  EXPECT_EQ(b.blocks, 2u);
  EXPECT_DOUBLE_EQ(b.longest, 200);  // the third unit waits for a block
  EXPECT_DOUBLE_EQ(b.mean, 150);
  // A block claims its next unit when it starts one: block 0 holds unit 2 all through its 300,
  // while block 1 runs units 1 and 3 (fixed cost 10 each).
  P.units = {unit(300), unit(100), unit(100), unit(100)};
  b = plan::estimate_balance(P, 2, 10);
  EXPECT_DOUBLE_EQ(b.longest, 420);
  EXPECT_DOUBLE_EQ(b.mean, 320);
  // No more blocks than units are launched.
  b = plan::estimate_balance(P, 100, 0);
  EXPECT_EQ(b.blocks, 4u);
  EXPECT_DOUBLE_EQ(b.longest, 300);
  EXPECT_DOUBLE_EQ(b.mean, 150);
  EXPECT_THROW(plan::estimate_balance(P, 0, 0), PreconditionError);
  // The distill workload of bench/fusion_bench.cpp on 528 blocks (132 SMs x 4): the even cut's
  // longest block works less than kernel 6's, over a range of fixed costs a unit (the even cut
  // has more units, so it pays more of them).
  const FusionLayout L({map("vision", DType::f16, 384, 16, 16), map("edges", DType::f32, 8, 224, 224),
                        map("depth", DType::bf16, 1, 448, 448), vec("audio", DType::f16, 512), vec("text", DType::f32, 384)},
                       224, 224, DType::bf16);
  for (double fixed : {0.0, 1500.0, 3000.0}) {
    const auto even = plan::estimate_balance(plan::plan_fusion(L, 16384, 1, true), 528, fixed);
    const auto uneven = plan::estimate_balance(plan::plan_fusion(L, 16384, 1, false), 528, fixed);
    EXPECT_LT(even.longest, uneven.longest) << "fixed " << fixed;
  }
}

TEST(FusionPlan, TapPairsWhereEveryColumnsTapsAreAdjacentAndEven) {
  auto desc = [](const FusionLayout& L, std::size_t i) { return plan::plan_fusion(L, 8192, 1).teachers[i]; };
  // 2x down (512 -> 256 columns): taps 2x, 2x + 1 for every x.
  EXPECT_EQ(desc(FusionLayout({map("down", DType::bf16, 1, 64, 512)}, 32, 256, DType::f16), 0).tap_pairs, 1);
  // Upsampling (a clamped first column, taps i, i at the end), 3x down (odd first taps), odd width.
  EXPECT_EQ(desc(FusionLayout({map("up", DType::bf16, 1, 16, 128)}, 32, 256, DType::f16), 0).tap_pairs, 0);
  EXPECT_EQ(desc(FusionLayout({map("down3", DType::bf16, 1, 96, 768)}, 32, 256, DType::f16), 0).tap_pairs, 0);
  EXPECT_EQ(desc(FusionLayout({map("odd", DType::bf16, 1, 64, 513)}, 32, 256, DType::f16), 0).tap_pairs, 0);
}

TEST(FusionPlan, VectorsFollowTheLayout) {
  // 8-element vectors where the offset and the grid's width (a band) or plane (a copy) are
  // multiples of 8; pairs alone where they are only even.
  auto desc = [](const FusionLayout& L, std::size_t i) { return plan::plan_fusion(L, 8192, 1).teachers[i]; };
  const FusionLayout aligned({map("a", DType::f16, 2, 8, 8), map("b", DType::f32, 2, 16, 16)}, 16, 16, DType::bf16);
  EXPECT_EQ(desc(aligned, 0).vec, 1);
  EXPECT_EQ(desc(aligned, 1).vec, 1);
  const FusionLayout after_two({vec("v", DType::f16, 2), map("a", DType::f16, 2, 8, 8), map("b", DType::f16, 2, 16, 16)}, 16,
                               16, DType::bf16);
  EXPECT_EQ(desc(after_two, 1).vec, 0);
  EXPECT_EQ(desc(after_two, 1).pairs, 1);
  EXPECT_EQ(desc(after_two, 2).vec, 0);
  // A 12-wide grid: a band's rows are not whole vectors, a copy's 96-element plane is.
  const FusionLayout narrow({map("band", DType::f16, 2, 4, 4), map("copy", DType::f16, 1, 8, 12)}, 8, 12, DType::bf16);
  EXPECT_EQ(desc(narrow, 0).vec, 0);
  EXPECT_EQ(desc(narrow, 0).pairs, 1);
  EXPECT_EQ(desc(narrow, 1).vec, 1);
}

// The axes' weights (axis_weights()) against a resampled channel summed element by element in
// float64: for random inputs upsampled, downsampled, clamped and left alone on each axis, the
// kernel's formula for in_stats teachers (fusion_plan.hpp) gives the sum of the bilinear outputs
// and of their squares.
TEST(FusionPlan, AxisWeightsGiveTheSumsOfAResampledChannel) {
  std::mt19937_64 rng(test::test_seed());
  std::uniform_real_distribution<float> value(-4.0f, 9.0f);
  auto taps_of = [](std::int64_t in, std::int64_t out) {
    const auto r = kernels::make_resample(in, out);
    std::vector<plan::Tap32> t;
    for (std::int64_t d = 0; d < out; ++d) {
      const auto k = kernels::tap(r, d, in);
      t.push_back({std::uint32_t(k.i0), std::uint32_t(k.i1), k.l0, k.l1});
    }
    return t;
  };
  const std::pair<std::int64_t, std::int64_t> axes[] = {{16, 224}, {3, 37}, {7, 6}, {64, 32}, {5, 5}, {1, 9}, {2, 2}};
  for (auto [h, Hg] : axes) {
    for (auto [w, Wg] : axes) {
      SCOPED_TRACE(std::to_string(h) + "x" + std::to_string(w) + " to " + std::to_string(Hg) + "x" + std::to_string(Wg));
      const auto ty = taps_of(h, Hg), tx = taps_of(w, Wg);
      const auto wy = plan::axis_weights(ty.data(), Hg, h), wx = plan::axis_weights(tx.data(), Wg, w);
      ASSERT_EQ(wy.size(), 3u * std::size_t(h));
      ASSERT_EQ(wx.size(), 3u * std::size_t(w));
      EXPECT_EQ(wy[3 * (h - 1) + 2], 0.0) << "no input row after the last";
      std::vector<double> X(std::size_t(h * w));
      for (auto& v : X) v = value(rng);
      auto at = [&](std::int64_t i, std::int64_t j) { return X[std::size_t(i * w + j)]; };
      double s1 = 0, s2 = 0;
      for (std::int64_t y = 0; y < Hg; ++y) {
        for (std::int64_t x = 0; x < Wg; ++x) {
          const auto &a = ty[y], &b = tx[x];
          const double top = double(b.l0) * at(a.i0, b.i0) + double(b.l1) * at(a.i0, b.i1);
          const double bottom = double(b.l0) * at(a.i1, b.i0) + double(b.l1) * at(a.i1, b.i1);
          const double v = double(a.l0) * top + double(a.l1) * bottom;
          s1 += v;
          s2 += v * v;
        }
      }
      double f1 = 0, f2 = 0;
      for (std::int64_t i = 0; i < h; ++i) {
        for (std::int64_t j = 0; j < w; ++j) {
          const double x = at(i, j);
          f1 += wy[3 * i] * wx[3 * j] * x;
          double row = wx[3 * j + 1] * x * x, cross = 0;
          if (j + 1 < w) row += 2 * wx[3 * j + 2] * x * at(i, j + 1);
          if (i + 1 < h) {
            cross = wx[3 * j + 1] * x * at(i + 1, j);
            if (j + 1 < w) cross += wx[3 * j + 2] * (x * at(i + 1, j + 1) + at(i, j + 1) * at(i + 1, j));
          }
          f2 += wy[3 * i + 1] * row + 2 * wy[3 * i + 2] * cross;
        }
      }
      EXPECT_NEAR(f1, s1, 1e-10 * (1 + std::fabs(s1)));
      EXPECT_NEAR(f2, s2, 1e-10 * (1 + std::fabs(s2)));
    }
  }
  const plan::Tap32 outside{4, 5, 0.5f, 0.5f};
  EXPECT_THROW(plan::axis_weights(&outside, 1, 5), PreconditionError) << "a tap beyond the input";
}

TEST(FusionPlan, EnvironmentVariablesAreCheckedByName) {
  {
    test::ScopedEnv u("DIRECTPORT_FUSION_UNIT", nullptr), g("DIRECTPORT_FUSION_GROUP", nullptr),
        b("DIRECTPORT_FUSION_BLOCKS", nullptr), e("DIRECTPORT_FUSION_EVEN", nullptr), gr("DIRECTPORT_FUSION_GRID", nullptr),
        r("DIRECTPORT_FUSION_INSTATS", nullptr), q("DIRECTPORT_FUSION_QUADS", nullptr);
    EXPECT_TRUE(plan::grid_launch_from_env());
    EXPECT_TRUE(plan::quad_loads_from_env());
    EXPECT_TRUE(plan::input_stats_from_env());
    EXPECT_EQ(plan::unit_elements_from_env(), plan::kUnitElements);
    EXPECT_EQ(plan::unit_group_from_env(), plan::kGroup);
    EXPECT_EQ(plan::blocks_per_sm_from_env(), plan::kBlocksPerSm);
    EXPECT_FALSE(plan::even_split_from_env());  // kernel 6's cut until the even one is measured
  }
  {
    test::ScopedEnv u("DIRECTPORT_FUSION_UNIT", "4096"), g("DIRECTPORT_FUSION_GROUP", "8"), b("DIRECTPORT_FUSION_BLOCKS", "5"),
        e("DIRECTPORT_FUSION_EVEN", "1"), gr("DIRECTPORT_FUSION_GRID", "0"), r("DIRECTPORT_FUSION_INSTATS", "0"),
        q("DIRECTPORT_FUSION_QUADS", "0");
    EXPECT_FALSE(plan::grid_launch_from_env());
    EXPECT_FALSE(plan::quad_loads_from_env());
    EXPECT_FALSE(plan::input_stats_from_env());
    EXPECT_EQ(plan::unit_elements_from_env(), 4096);
    EXPECT_EQ(plan::unit_group_from_env(), 8);
    EXPECT_EQ(plan::blocks_per_sm_from_env(), 5);
    EXPECT_TRUE(plan::even_split_from_env());
  }
  // The message a bad value of `var` makes `read` throw ("" and a failure where it is accepted).
  auto rejection = [](const char* var, const char* bad, auto read) -> std::string {
    test::ScopedEnv env(var, bad);
    try {
      read();
      ADD_FAILURE() << var << "=" << bad << " was accepted";
      return "";
    } catch (const ValidationError& e) {
      return e.what();
    }
  };
  for (const char* bad : {"3", "6", "four"}) {
    const std::string what = rejection("DIRECTPORT_FUSION_BLOCKS", bad, plan::blocks_per_sm_from_env);
    EXPECT_NE(what.find("DIRECTPORT_FUSION_BLOCKS must be a number from 4 to 5"), std::string::npos) << what;
  }
  for (const char* bad : {"0", "255", "16777217", "4k", "-1", "abc"}) {
    const std::string what = rejection("DIRECTPORT_FUSION_UNIT", bad, plan::unit_elements_from_env);
    EXPECT_NE(what.find("DIRECTPORT_FUSION_UNIT"), std::string::npos) << what;
    EXPECT_NE(what.find(std::string("'") + bad + "'"), std::string::npos) << what;
  }
  for (const char* bad : {"2", "-1", "yes"}) {
    const std::string what = rejection("DIRECTPORT_FUSION_EVEN", bad, plan::even_split_from_env);
    EXPECT_NE(what.find("DIRECTPORT_FUSION_EVEN must be a number from 0 to 1"), std::string::npos) << what;
  }
  for (const char* bad : {"2", "on"}) {
    std::string what = rejection("DIRECTPORT_FUSION_GRID", bad, plan::grid_launch_from_env);
    EXPECT_NE(what.find("DIRECTPORT_FUSION_GRID must be a number from 0 to 1"), std::string::npos) << what;
    what = rejection("DIRECTPORT_FUSION_QUADS", bad, plan::quad_loads_from_env);
    EXPECT_NE(what.find("DIRECTPORT_FUSION_QUADS must be a number from 0 to 1"), std::string::npos) << what;
    what = rejection("DIRECTPORT_FUSION_INSTATS", bad, plan::input_stats_from_env);
    EXPECT_NE(what.find("DIRECTPORT_FUSION_INSTATS must be a number from 0 to 1"), std::string::npos) << what;
  }
  for (const char* bad : {"0", "9", "two"}) {
    const std::string what = rejection("DIRECTPORT_FUSION_GROUP", bad, plan::unit_group_from_env);
    EXPECT_NE(what.find("DIRECTPORT_FUSION_GROUP must be a number from 1 to 8"), std::string::npos) << what;
  }
}

}  // namespace
// `dp_bench_fusion --plan`: the units of the benchmark's workloads under both cuts and their
// balance, on a machine without a GPU; a bad option names itself.
TEST(FusionBenchMP, PlanNeedsNoGpuAndComparesBothCuts) {
#ifndef DP_BENCH_FUSION
  GTEST_SKIP() << "dp_bench_fusion is not built here (no CUDA toolkit, or DIRECTPORT_BUILD_BENCH=OFF)";
#else
  const std::string json_path = ::testing::TempDir() + "/fusion_plan_" + std::to_string(::getpid()) + ".json";
  // At 16384 elements a unit, where the model puts the even cut ahead (docs/FUSION.md).
  test::ScopedEnv u("DIRECTPORT_FUSION_UNIT", "16384"), g("DIRECTPORT_FUSION_GROUP", nullptr);
  auto c = platform::Child::spawn({DP_BENCH_FUSION, "--plan", "--json", json_path}, {true, true});
  auto rc = c.wait_for(std::chrono::seconds(30));
  ASSERT_TRUE(rc.has_value()) << "dp_bench_fusion --plan did not finish";
  ASSERT_EQ(*rc, 0) << c.output();
  EXPECT_NE(c.output().find("longest/mean"), std::string::npos) << c.output();
  std::ifstream f(json_path);
  const auto j = nlohmann::json::parse(f, nullptr, false);
  std::remove(json_path.c_str());
  ASSERT_FALSE(j.is_discarded());
  ASSERT_EQ(j["plans"].size(), 4u) << j.dump(2);
  std::map<std::pair<std::string, bool>, double> longest;
  for (const auto& p : j["plans"]) {
    EXPECT_EQ(p["blocks"], 528);
    EXPECT_GT(p["units"].get<int>(), 0);
    EXPECT_GE(p["longest_over_mean"].get<double>(), 1.0);
    longest[{p["workload"].get<std::string>(), p["even"].get<bool>()}] = p["longest"];
  }
  const double even = longest[{"distill", true}], uneven = longest[{"distill", false}];
  EXPECT_LT(even, uneven) << j.dump(2);
  for (auto args : {std::vector<std::string>{"--plan", "--blocks", "0"}, std::vector<std::string>{"--blocks", "64"}}) {
    args.insert(args.begin(), DP_BENCH_FUSION);
    auto bad = platform::Child::spawn(args, {true, true});
    rc = bad.wait_for(std::chrono::seconds(30));
    ASSERT_TRUE(rc.has_value());
    EXPECT_EQ(*rc, 2) << bad.output();
    EXPECT_NE(bad.output().find("--blocks"), std::string::npos) << bad.output();
  }
#endif
}

}  // namespace dp
