// GpuTest: base fixture of every test that needs a CUDA device. On a machine without one (or a
// build without CUDA) the test is skipped, visibly and with the reason, so that a CPU-only run
// stays honest about what it did not run.
#pragma once

#include <gtest/gtest.h>

#if DIRECTPORT_HAS_CUDA
#include "directport/cuda/driver.hpp"
#endif

namespace dp::test {

class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
#if DIRECTPORT_HAS_CUDA
    const auto& a = dp::cuda::availability();
    if (!a.usable) GTEST_SKIP() << "no usable CUDA device: " << a.reason;
#else
    GTEST_SKIP() << "built without CUDA (DIRECTPORT_WITH_CUDA=OFF)";
#endif
  }
};

}  // namespace dp::test
