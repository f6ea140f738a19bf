// `directport bench`: runs the handoff benchmark (bench/handoff_bench.cpp, dp_bench_handoff),
// which sits next to this binary, with the arguments given.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "commands.hpp"
#include "directport/core/error.hpp"

namespace dp::cli {

void add_bench(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("bench",
                                 "DirectPort against host staging, copy-on-publish, legacy IPC, torch.multiprocessing and "
                                 "the host backend, in one run (dp_bench_handoff; `directport bench -- --help`)");
  cmd->prefix_command();  // everything after `bench` goes to the benchmark
  cmd->allow_extras();
  cmd->callback([cmd, &exit_code] {
    char self[4096];
    const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0) throw SystemError("readlink /proc/self/exe", errno);
    self[n] = '\0';
    std::string dir(self);
    dir.resize(dir.rfind('/'));
    const std::string prog = dir + "/dp_bench_handoff";
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
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::fflush(nullptr);
    ::execv(prog.c_str(), argv.data());
    throw SystemError("running " + prog, errno);
  });
}

}  // namespace dp::cli
