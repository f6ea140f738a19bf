// `directport launch CONFIG.json`: validate a graph, run one process per node, supervise it.
#include <unistd.h>

#include <cstdio>
#include <memory>

#include "commands.hpp"
#include "directport/core/error.hpp"
#include "directport/core/graph.hpp"
#include "directport/core/names.hpp"

namespace dp::cli {

void add_launch(CLI::App& app, int& exit_code) {
  struct Opts {
    std::string config, domain;
    double duration = 0, stable_after = 10;
    bool check = false, quiet = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("launch", "Validate a graph config, then run each node as its own process and supervise them");
  cmd->add_option("config", o->config, "Graph config (JSON; see docs/CONFIG.md and configs/)")->required();
  cmd->add_option("--duration", o->duration, "Stop cleanly after this many seconds (0: until Ctrl-C)")
      ->check(CLI::Range(0.0, 1e7));
  cmd->add_option("--domain,-d", o->domain, "Override the config's domain");
  cmd->add_flag("--check", o->check, "Only validate the config and print the plan");
  cmd->add_flag("--quiet,-q", o->quiet, "No progress line");
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
    char self[4096] = {};
    if (::readlink("/proc/self/exe", self, sizeof self - 1) < 0) throw SystemError("readlink /proc/self/exe", errno);
    LaunchOptions lo;
    lo.self_exe = self;
    lo.progress = !o->quiet;
    lo.stable_run = std::chrono::milliseconds(static_cast<long long>(o->stable_after * 1000));
    if (o->duration > 0) lo.duration = std::chrono::milliseconds(static_cast<long long>(o->duration * 1000));
    exit_code = launch_graph(g, lo);
  });
}

}  // namespace dp::cli
