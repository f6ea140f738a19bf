// GPU-clock timestamps for one-way latency measurements across processes: both sides read the
// same %globaltimer (ns), so a producer's stamp and a consumer's read compare directly.
#pragma once

#include <cstdint>

#include "directport/core/types.hpp"

namespace dp::kernels {

// dst[0] = %globaltimer when the kernel runs, dst[1] = seq.
void stamp_time_gpu(std::uint64_t* dst, std::uint64_t seq, GpuStream stream);
// out[0] = %globaltimer - frame[0] (ns), out[1] = frame[1] (the seq read).
void measure_since_gpu(const std::uint64_t* frame, std::uint64_t* out, GpuStream stream);
// One thread that busy-waits on %globaltimer for `ns`: a stream that stalls (tests of a consumer
// whose GPU work does not finish in time).
void spin_gpu(std::uint64_t ns, GpuStream stream);

}  // namespace dp::kernels
