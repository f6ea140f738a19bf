// dp_bench_host: the host backend's hot calls, with Google Benchmark (CPU time per call).
//   build/bin/dp_bench_host [--benchmark_format=json] [--benchmark_out=FILE]
// The subscriber lives in the same process as the producer here (it still goes through the
// broker, the manifest and the fence pages), so the figures are per-call CPU costs, not
// cross-process latency; bench/transport_bench.cpp measures that on the GPU.
#include <unistd.h>

#include <benchmark/benchmark.h>

#include "directport/core/manifest.hpp"
#include "directport/core/node.hpp"
#include "directport/kernels/checksum.hpp"

namespace {

std::string domain() { return "hb" + std::to_string(::getpid()); }

dp::StreamSpec spec(std::size_t bytes) {
  dp::StreamSpec s;
  s.name = "frames";
  s.dtype = dp::DType::u8;
  s.shape = {static_cast<std::int64_t>(bytes)};
  return s;
}

// acquire() + publish() with one subscriber that releases every frame it takes.
void BM_AcquirePublishRelease(benchmark::State& st) {
  dp::Node node({"hbprod", "bench", domain()});
  auto& pub = node.advertise(spec(static_cast<std::size_t>(st.range(0))));
  dp::SubscribeOptions o;
  o.domain = domain();
  dp::Subscriber sub("hbprod", "frames", o);
  std::uint64_t id = 0;
  for (auto _ : st) {
    auto lease = pub.acquire();
    pub.publish(*lease, {++id, 0, 0});
    auto f = sub.latest();
    benchmark::DoNotOptimize(f);
    if (f) sub.release(*f);
  }
  st.counters["dropped"] = static_cast<double>(pub.counters().dropped);
}
BENCHMARK(BM_AcquirePublishRelease)->Arg(4096)->Arg(1 << 20);

// Reading a manifest's JSON under the seqlock, with full validation (what `ls` does per node).
void BM_ManifestJsonRead(benchmark::State& st) {
  dp::Node node({"hbman", "bench", domain()});
  node.advertise(spec(64));
  auto r = dp::ManifestReader::open(domain(), "hbman");
  for (auto _ : st) benchmark::DoNotOptimize(r.json());
}
BENCHMARK(BM_ManifestJsonRead);

// The CPU reference checksum used to verify frames (bytes/s).
void BM_ChecksumCpu(benchmark::State& st) {
  std::vector<std::uint64_t> buf(static_cast<std::size_t>(st.range(0)) / 8);
  dp::kernels::fill_cpu(buf.data(), buf.size() * 8, 42);
  for (auto _ : st) benchmark::DoNotOptimize(dp::kernels::checksum_cpu(buf.data(), buf.size() * 8));
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * st.range(0));
}
BENCHMARK(BM_ChecksumCpu)->Arg(1 << 20);

}  // namespace

BENCHMARK_MAIN();
