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
// Holds `stream` for `ns` at this point: what is enqueued after it runs `ns` later. A host function
// that sleeps, so the GPU stays free for other work and other processes (a kernel that spun for
// `ns` would, without MPS, take its time slices from every other context on the GPU); the
// process's later host functions wait behind it. For tests of a stream that stalls.
void hold_stream(std::uint64_t ns, GpuStream stream);

}  // namespace dp::kernels
