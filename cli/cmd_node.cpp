// `directport node TYPE` (run one node) and `directport demo` (the smallest real graph: one
// pattern source and N checksum sinks, each its own process).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#include "commands.hpp"
#include "directport/core/discovery.hpp"
#include "directport/core/error.hpp"
#include "directport/core/json_input.hpp"
#include "directport/core/names.hpp"
#include "directport/core/runtime.hpp"
#include "directport/platform/child.hpp"
#include "nodes.hpp"

namespace dp::cli {
namespace {
std::vector<std::string> g_program_args;
}  // namespace

void set_program_args(int argc, char** argv) { g_program_args.assign(argv, argv + argc); }

std::string self_exe() {
  char self[4096] = {};
  if (::readlink("/proc/self/exe", self, sizeof self - 1) < 0) throw SystemError("readlink /proc/self/exe", errno);
  return self;
}

std::string sibling_program(const std::string& name) {
  std::string path = self_exe();
  return path.substr(0, path.rfind('/') + 1) + name;
}

void exec_program(std::vector<std::string> args) {
  DP_EXPECTS(!args.empty(), "exec_program needs a program");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(nullptr);
  ::execv(args[0].c_str(), argv.data());
  throw SystemError("exec " + args[0], errno);
}

void exec_runner(const std::string& runner) {
  const std::string path = sibling_program(runner);
  if (::access(path.c_str(), X_OK) != 0) {
    throw Error("this node type runs in " + runner + ", which is not next to this program (" + path +
                "): it is built where LibTorch is found (scripts/setup installs it; DIRECTPORT_TORCH=0 skips it)");
  }
  std::vector<std::string> args = g_program_args;
  if (args.empty()) throw PreconditionError("exec_runner before set_program_args");
  args[0] = path;
  exec_program(std::move(args));
}

std::string node_types_help() {
  std::string out = "Node types and their params (-p KEY=VALUE; default in brackets):\n";
  auto& reg = NodeRegistry::instance();
  for (auto& name : reg.types()) {
    const NodeType* t = reg.find(name);
    out += "  " + name + ": " + t->help + "\n";
    for (auto& p : t->params) {
      out += "      " + p.name + " (" + param_type_name(p.type) + ") " +
             (p.required ? "[required]" : "[" + p.fallback.dump() + "]") + "  " + p.help + "\n";
    }
  }
  return out;
}

void add_node(CLI::App& app, int& exit_code) {
  struct Opts {
    std::string type, name, params_json, domain;
    std::vector<std::string> params;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("node", "Run one node of a graph in this process");
  cmd->add_option("type", o->type, "Node type (listed below)")->required();
  cmd->add_option("--name,-n", o->name, "Node name, unique in its domain")->required();
  cmd->add_option("--domain,-d", o->domain, "Domain (default: $DIRECTPORT_DOMAIN or 'default')");
  cmd->add_option("--param,-p", o->params, "KEY=VALUE (VALUE parsed as JSON if it parses, else a string)");
  cmd->add_option("--params-json", o->params_json, "All params as one JSON object (-p entries override)");
  cmd->footer(node_types_help());
  cmd->callback([o, &exit_code] {
    validate_name("node name", o->name);
    std::string domain = o->domain.empty() ? default_domain() : o->domain;
    validate_name("domain", domain);
    nlohmann::json params = nlohmann::json::object();
    if (!o->params_json.empty()) {
      std::string syntax;
      params = parse_json_input(o->params_json, "--params-json", &syntax);
      if (params.is_discarded()) throw ValidationError("--params-json does not parse: " + syntax);
      if (!params.is_object()) throw ValidationError("--params-json must be a JSON object, got " + params.dump());
    }
    for (auto& kv : o->params) {
      auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) throw ValidationError("--param '" + kv + "' is not KEY=VALUE");
      auto v = parse_json_input(kv.substr(eq + 1), "--param " + kv.substr(0, eq));
      params[kv.substr(0, eq)] = v.is_discarded() ? nlohmann::json(kv.substr(eq + 1)) : v;
    }
    if (const NodeType* t = NodeRegistry::instance().find(o->type); t && !t->run && !t->runner.empty()) {
      validate_params(*t, params, "params");  // bad params are named here, before the hand-over
      exec_runner(t->runner);                  // returns only by throwing
    }
    exit_code = run_node(o->type, o->name, domain, params);
  });
}

void add_demo(CLI::App& app, int& exit_code) {
  struct Opts {
    int consumers = 2;
    std::uint64_t frames = 1000, bytes = 1 << 20;
    std::string memory = "auto", domain;
    double rate = 500;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand(
      "demo", "Run the smallest real graph: one pattern source and N checksum sinks, each its own process");
  cmd->add_option("--consumers,-c", o->consumers, "Number of sink processes")->check(CLI::Range(1, 64));
  cmd->add_option("--frames,-f", o->frames, "Frames each sink verifies")->check(CLI::Range(1ull, 100000000ull));
  cmd->add_option("--bytes,-b", o->bytes, "Frame size in bytes (multiple of 8)")->check(CLI::Range(24ull, 1ull << 32));
  cmd->add_option("--memory,-m", o->memory, "host | cuda-vmm | cuda-ipc | auto (GPU if there is one)");
  cmd->add_option("--rate", o->rate, "Frames per second published (0 = as fast as possible)");
  cmd->add_option("--domain,-d", o->domain, "Domain to run in (default: a fresh one, demo<pid>)");
  cmd->callback([o, &exit_code] {
    parse_memory_choice(o->memory);  // validate early
    if (o->bytes % 8) throw ValidationError("--bytes must be a multiple of 8");
    std::string domain = o->domain.empty() ? "demo" + std::to_string(::getpid()) : o->domain;
    validate_name("domain", domain);
    const std::string self = self_exe();
    auto spawn = [&](std::vector<std::string> args) {
      args.insert(args.begin(), self);
      return platform::Child::spawn(args);
    };
    std::printf("demo: domain %s, 1 source -> %d sinks, %llu frames of %llu bytes, memory %s\n", domain.c_str(),
                o->consumers, static_cast<unsigned long long>(o->frames), static_cast<unsigned long long>(o->bytes),
                o->memory.c_str());
    std::fflush(stdout);
    auto src = spawn({"node", "pattern-source", "--name", "source", "-d", domain, "-p", "bytes=" + std::to_string(o->bytes),
                      "-p", "memory=" + o->memory, "-p", "rate_hz=" + std::to_string(o->rate), "-p",
                      "wait_subscribers=" + std::to_string(o->consumers)});
    // Wait until the source announces itself, bounded.
    bool up = false;
    for (int i = 0; i < 500 && !up && src.running(); ++i) {
      for (auto& n : list_nodes(domain)) up = up || (n.name == "source" && n.state == protocol::NodeState::running);
      if (!up && !src.wait_for(std::chrono::milliseconds(10))) continue;
    }
    if (!up) throw Error("the source node did not come up within 5 s (see its messages above)");
    std::vector<platform::Child> sinks;
    for (int i = 0; i < o->consumers; ++i) {
      sinks.push_back(spawn({"node", "checksum-sink", "--name", "sink" + std::to_string(i), "-d", domain, "-p",
                             "from=source/frames", "-p", "frames=" + std::to_string(o->frames)}));
    }
    int failures = 0;
    for (auto& p : sinks) failures += p.wait_for(std::chrono::milliseconds(-1)) != 0;
    src.signal(SIGTERM);
    failures += src.wait_for(std::chrono::seconds(30)) != 0;
    auto left = list_nodes(domain);
    std::printf("demo: %s (%d of %d processes failed); %zu manifests left behind\n", failures ? "FAILED" : "ok", failures,
                o->consumers + 1, left.size());
    exit_code = failures || !left.empty() ? 1 : 0;
  });
}

}  // namespace dp::cli
