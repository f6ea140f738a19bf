// `directport launch CONFIG.json`: validate a graph, run one process per node, supervise it.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "commands.hpp"
#include "directport/core/error.hpp"
#include "directport/core/graph.hpp"
#include "directport/core/names.hpp"
#include "directport/platform/child.hpp"

namespace dp::cli {
namespace {

// `launch --mps`: a private MPS control daemon for the graph's lifetime, so that the nodes' CUDA
// work runs side by side instead of time-sliced (README, "Sharing one GPU between processes").
// Its pipe and log directories are the launcher's own (/tmp/directport-mps-UID-DOMAIN), named in
// CUDA_MPS_PIPE_DIRECTORY / CUDA_MPS_LOG_DIRECTORY, which every node inherits. Where those are
// set already, an MPS server is someone else's: it is used, neither started nor stopped.
class MpsDaemon {
 public:
  explicit MpsDaemon(const std::string& domain) {
    if (const char* pipe = std::getenv("CUDA_MPS_PIPE_DIRECTORY"); pipe && *pipe) {
      std::fprintf(stderr, "[launch] --mps: using the MPS server of CUDA_MPS_PIPE_DIRECTORY=%s\n", pipe);
      return;
    }
    control_ = platform::find_program("nvidia-cuda-mps-control", {"/usr/local/nvidia/bin", "/usr/bin"});
    if (control_.empty()) {
      throw ValidationError(
          "--mps: nvidia-cuda-mps-control was not found (PATH, /usr/local/nvidia/bin, /usr/bin); it comes with the "
          "NVIDIA driver's utilities: install them, or launch without --mps");
    }
    const std::string root = "/tmp/directport-mps-" + std::to_string(::getuid()) + "-" + domain;
    for (const auto& d : {root, root + "/pipe", root + "/log"}) {
      if (::mkdir(d.c_str(), 0700) != 0 && errno != EEXIST) throw SystemError("mkdir " + d, errno);
    }
    ::setenv("CUDA_MPS_PIPE_DIRECTORY", (root + "/pipe").c_str(), 1);
    ::setenv("CUDA_MPS_LOG_DIRECTORY", (root + "/log").c_str(), 1);
    auto c = platform::Child::spawn({control_, "-d"}, {/*capture_stdout=*/true, /*merge_stderr=*/true});
    auto rc = c.wait_for(std::chrono::seconds(10));
    struct stat st {};
    if (rc && *rc != 0 && ::stat((root + "/pipe/control").c_str(), &st) == 0) {
      // A daemon of this private directory is running already: left by a launch of this domain
      // that was killed before it could stop it. Ours to use and to stop.
      std::fprintf(stderr, "[launch] --mps: using the MPS control daemon left running in %s/pipe\n", root.c_str());
      started_ = true;
      return;
    }
    if (!rc || *rc != 0) {
      if (!rc) c.signal(9);
      throw Error("--mps: `" + control_ + " -d` failed (" + (rc ? "exit " + std::to_string(*rc) : "no answer in 10 s") +
                  "): " + c.output() + " (its log: " + root + "/log/control.log)");
    }
    started_ = true;
    std::fprintf(stderr, "[launch] --mps: MPS control daemon started (CUDA_MPS_PIPE_DIRECTORY=%s/pipe)\n",
                 root.c_str());
  }
  ~MpsDaemon() {
    if (!started_) return;
    // "quit" on the daemon's stdin, as nvidia-cuda-mps-control documents.
    auto c = platform::Child::spawn({"/bin/sh", "-c", "echo quit | \"$0\"", control_},
                                    {/*capture_stdout=*/true, /*merge_stderr=*/true});
    auto rc = c.wait_for(std::chrono::seconds(15));
    if (!rc || *rc != 0) {
      if (!rc) c.signal(9);
      std::fprintf(stderr, "[launch] --mps: stopping the MPS control daemon failed: %s\n", c.output().c_str());
    }
  }
  MpsDaemon(const MpsDaemon&) = delete;
  MpsDaemon& operator=(const MpsDaemon&) = delete;

 private:
  std::string control_;
  bool started_ = false;
};

}  // namespace

void add_launch(CLI::App& app, int& exit_code) {
  struct Opts {
    std::string config, domain;
    double duration = 0, stable_after = 10;
    bool check = false, quiet = false, mps = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("launch", "Validate a graph config, then run each node as its own process and supervise them");
  cmd->add_option("config", o->config, "Graph config (JSON; see docs/CONFIG.md and configs/)")->required();
  cmd->add_option("--duration", o->duration, "Stop cleanly after this many seconds (0: until Ctrl-C)")
      ->check(CLI::Range(0.0, 1e7));
  cmd->add_option("--domain,-d", o->domain, "Override the config's domain");
  cmd->add_flag("--check", o->check, "Only validate the config and print the plan");
  cmd->add_flag("--quiet,-q", o->quiet, "No progress line");
  cmd->add_flag("--mps", o->mps,
                "Run the graph's GPU work under a private MPS server (started and stopped with the graph): "
                "hand-offs between processes of 9-12 us instead of ~144 us time-sliced; a GPU fault then "
                "reaches every node");
  cmd->add_option("--stable-after", o->stable_after,
                  "A node that ran this many seconds before it stopped is restarted after the first delay "
                  "(250 ms) again; shorter runs double the delay, up to 8 s")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e7));
  cmd->callback([o, &exit_code] {
    auto g = load_graph_config(o->config);
    if (!o->domain.empty()) {
      validate_name("domain", o->domain);
      g.domain = o->domain;
    }
    if (o->check) {
      std::printf("%s: valid; domain '%s', %zu nodes\n", o->config.c_str(), g.domain.c_str(), g.nodes.size());
      for (auto& n : g.nodes) {
        std::printf("  %-20s %-16s restart %-10s %s %s\n", n.name.c_str(), n.type.c_str(), restart_policy_name(n.restart),
                    n.required ? "required" : "optional", n.params.dump().c_str());
      }
      exit_code = 0;
      return;
    }
    LaunchOptions lo;
    lo.self_exe = self_exe();
    lo.progress = !o->quiet;
    lo.stable_run = std::chrono::milliseconds(static_cast<long long>(o->stable_after * 1000));
    if (o->duration > 0) lo.duration = std::chrono::milliseconds(static_cast<long long>(o->duration * 1000));
    std::unique_ptr<MpsDaemon> mps;
    if (o->mps) mps = std::make_unique<MpsDaemon>(g.domain);
    exit_code = launch_graph(g, lo);
  });
}

}  // namespace dp::cli
