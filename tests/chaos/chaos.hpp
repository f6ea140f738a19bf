// dp_chaos: runs a real graph under `directport launch`, SIGKILLs random node processes at a
// given rate (mid-stream, and right after a restart while the new instance sets itself up), and
// checks all along and at the end that
//   - no surviving process hangs (sinks keep taking frames, sources keep publishing, brokers keep
//     answering, heartbeats stay fresh, the launcher keeps printing its progress and stops on
//     SIGTERM),
//   - no corrupt frame is ever accepted (sum of `bad` over every sink's final line is 0, no
//     "failed verification" line),
//   - every killed node is restarted and its consumers take a frame of the new instance within a
//     bound (the reconnect time, measured kill -> first frame taken from the new instance),
//   - nothing leaks once the launcher has stopped: no /dev/shm entry, no abstract socket, no
//     process of the domain.
// The observable signals are documented in docs/RELIABILITY.md.
#pragma once

#include <cstdint>
#include <string>

namespace dp::chaos {

struct Options {
  double duration_s = 30;          // the chaos phase: kills happen during it
  double kill_rate = 1.0;          // mean SIGKILLs per second (Poisson process)
  std::uint64_t seed = 0;          // of every random choice; 0: drawn at random (and printed)
  double setup_fraction = 0.3;     // share of kills aimed at a just-restarted instance
  int sources = 2;                 // pattern-source nodes
  int sinks_per_source = 2;        // checksum-sink nodes per source (the second one is slow)
  double rate_hz = 200;            // of each source
  std::uint64_t bytes = 4096;      // frame size
  std::string memory = "host";     // of the streams (host | auto | cuda-vmm | cuda-ipc)
  double reconnect_bound_s = 5;    // allowed on top of the launcher's announced restart delay
  double hang_bound_s = 5;         // a live process without progress for this long hangs
  double warmup_bound_s = 30;      // for the graph to come up before the chaos phase
  double stop_bound_s = 20;        // for the launcher to stop after SIGTERM
  int min_kills = 0;               // fewer kills than this is a failure (for CI: proves it ran)
  double gpu_leak_mib = 64;        // GPU memory grown by more than this over the run is a leak
  std::string domain;              // default: a fresh one
  std::string directport;          // the binary (default: the one built beside dp_chaos)
  std::string json_path;           // write the JSON summary here
  std::string workdir;             // config and launcher log; default: a fresh /tmp directory
  bool keep_workdir = false;       // otherwise removed after a passing run
  bool verbose = false;            // echo the launcher's output
  // A deliberate fault, to prove that the checks catch it (tests/chaos/test_chaos.cpp):
  //   "stall-sink": SIGSTOP one sink after the warm-up (a hang);
  //   "corrupt":    overwrite part of a source's stream memory for a second, through
  //                 /proc/PID/mem (corrupt frames; needs ptrace rights over our descendants);
  //   "leak":       once the launcher has stopped, leave a process with the domain in its argv,
  //                 a manifest-named segment and a socket with a broker's name prefix.
  std::string fault = "none";
};

// Runs one chaos experiment. Returns the process exit status: 0 when every check passed.
int run(const Options& opts);

}  // namespace dp::chaos
