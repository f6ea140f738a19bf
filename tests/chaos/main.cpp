// dp_chaos: kill random nodes of a running graph and check that the fabric survives it.
// See chaos.hpp for what is checked and docs/RELIABILITY.md for how to run it.
#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>

#include "chaos.hpp"
#include "directport/core/error.hpp"

#ifndef DP_CLI
#error "DP_CLI (the path of the directport binary) must be defined by CMake"
#endif

int main(int argc, char** argv) {
  dp::chaos::Options o;
  o.directport = DP_CLI;
  CLI::App app{"dp_chaos: runs a graph of pattern sources and checksum sinks under `directport launch`, "
               "SIGKILLs random node processes (mid-stream, and right after a restart while the new "
               "instance sets itself up), and checks that no survivor hangs, no corrupt frame is "
               "accepted, every killed node is restarted and reconnected within a bound, and nothing "
               "leaks. Exit status 0 when every check passed, 1 when one failed, 2 for bad options.",
               "dp_chaos"};
  app.add_option("--duration", o.duration_s, "Seconds of the chaos phase (kills happen during it)")
      ->check(CLI::Range(0.0, 86400.0));
  app.add_option("--kill-rate", o.kill_rate, "Mean SIGKILLs per second (Poisson arrivals; 0: none)")
      ->check(CLI::Range(0.0, 100.0));
  app.add_option("--seed", o.seed, "Seed of every random choice (0: a random one, printed)");
  app.add_option("--setup-fraction", o.setup_fraction,
                 "Share of kills aimed at a restarted instance during its set-up")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--sources", o.sources, "pattern-source nodes")->check(CLI::Range(1, 16));
  app.add_option("--sinks-per-source", o.sinks_per_source, "checksum-sink nodes per source")
      ->check(CLI::Range(1, 16));
  app.add_option("--rate-hz", o.rate_hz, "Frames per second of each source")->check(CLI::Range(1.0, 100000.0));
  app.add_option("--bytes", o.bytes, "Frame size in bytes (a multiple of 8, >= 24)")
      ->check(CLI::Range(24, 1 << 28));
  app.add_option("--memory", o.memory, "Memory of the streams")
      ->check(CLI::IsMember({"host", "auto", "cuda-vmm", "cuda-ipc"}));
  app.add_option("--reconnect-bound", o.reconnect_bound_s,
                 "Seconds allowed for a reconnect on top of the launcher's restart delay")
      ->check(CLI::Range(0.1, 600.0));
  app.add_option("--hang-bound", o.hang_bound_s, "Seconds without progress that count as a hang")
      ->check(CLI::Range(0.5, 600.0));
  app.add_option("--gpu-leak-mib", o.gpu_leak_mib,
                 "GPU streams: device memory (NVML) grown by more than this many MiB between the start of "
                 "the chaos phase and the settled graph after it, or between before the launch and after "
                 "the stop, is a leak")
      ->check(CLI::Range(0.0, 1e9));
  app.add_option("--min-kills", o.min_kills, "Fail unless at least this many kills happened")
      ->check(CLI::Range(0, 1000000));
  app.add_option("--domain,-d", o.domain, "Domain of the graph (default: a fresh one)");
  app.add_option("--directport", o.directport, "The directport binary")->check(CLI::ExistingFile);
  app.add_option("--json", o.json_path, "Write the JSON summary to this file");
  app.add_option("--workdir", o.workdir, "Directory for the config and the launcher log (default: a fresh one)");
  app.add_flag("--keep", o.keep_workdir, "Keep the working directory after a passing run");
  app.add_flag("--verbose,-v", o.verbose, "Echo the launcher's output");
  app.add_option("--fault", o.fault,
                 "Inject a deliberate fault, to prove the checks catch it: stall-sink (SIGSTOP a sink), "
                 "corrupt (overwrite a source's stream memory through /proc/PID/mem), leak (leave a "
                 "process, a segment and a socket of the domain behind)")
      ->check(CLI::IsMember({"none", "stall-sink", "corrupt", "leak"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  if (o.bytes % 8 != 0) {
    std::fprintf(stderr, "dp_chaos: --bytes must be a multiple of 8\n");
    return 2;
  }
  try {
    return dp::chaos::run(o);
  } catch (const dp::ValidationError& e) {
    std::fprintf(stderr, "dp_chaos: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dp_chaos: error: %s\n", e.what());
    return 1;
  }
}
