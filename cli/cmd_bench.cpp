// `directport bench`: runs the handoff benchmark (bench/handoff_bench.cpp, dp_bench_handoff),
// which sits next to this binary, with the arguments given.
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "commands.hpp"

namespace dp::cli {

void add_bench(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("bench",
                                 "DirectPort against host staging, copy-on-publish, legacy IPC, torch.multiprocessing and "
                                 "the host backend, in one run (dp_bench_handoff; `directport bench -- --help`)");
  cmd->prefix_command();  // everything after `bench` goes to the benchmark
  cmd->allow_extras();
  cmd->callback([cmd, &exit_code] {
    const std::string prog = sibling_program("dp_bench_handoff");
    if (::access(prog.c_str(), X_OK) != 0) {
      std::fprintf(stderr,
                   "directport bench: %s is not there: the benchmarks are built with CUDA "
                   "(-DDIRECTPORT_WITH_CUDA=ON -DDIRECTPORT_BUILD_BENCH=ON)\n",
                   prog.c_str());
      exit_code = 2;
      return;
    }
    std::vector<std::string> args{prog};
    for (auto& a : cmd->remaining()) {
      if (a != "--") args.push_back(a);
    }
    exec_program(std::move(args));
  });
}

}  // namespace dp::cli
