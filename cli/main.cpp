// `directport`: one binary for every tool of the fabric (DESIGN §8).
#include <cstdio>
#include <exception>

#include "commands.hpp"
#include "directport/compositor/compositor.hpp"
#include "directport/core/runtime.hpp"
#include "directport/teachers/nodes.hpp"
#if DIRECTPORT_HAS_TORCH
#include "directport/student/student.hpp"
#include "directport/teachers/torchscript.hpp"
#elif defined(DIRECTPORT_TORCH_RUNNER)
#include "directport/student/student_type.hpp"
#include "directport/teachers/torchscript_spec.hpp"
#endif
#include "nodes.hpp"
#include "directport/core/error.hpp"

int main(int argc, char** argv) {
  CLI::App app{"DirectPort: zero-copy GPU tensor sharing between processes, and the tools around it.\n"
               "Domains isolate graphs (default: $DIRECTPORT_DOMAIN or 'default').",
               "directport"};
  app.require_subcommand(0, 1);
  app.set_version_flag("--version", "directport 0.1.0");
  int exit_code = 0;
  dp::cli::register_builtin_nodes(dp::NodeRegistry::instance());
  dp::compositor::register_compositor_node(dp::NodeRegistry::instance());
  dp::teachers::register_teacher_nodes(dp::NodeRegistry::instance());
#if DIRECTPORT_HAS_TORCH
  dp::student::register_student_node(dp::NodeRegistry::instance());
  dp::teachers::register_torchscript_teacher(dp::NodeRegistry::instance());
#elif defined(DIRECTPORT_TORCH_RUNNER)
  // This program does not load LibTorch: its node types are described here and run in
  // DIRECTPORT_TORCH_RUNNER (directport-torch), built from the same sources with LibTorch.
  for (auto t : {dp::student::student_node_type(), dp::teachers::torchscript_node_type()}) {
    t.runner = DIRECTPORT_TORCH_RUNNER;
    dp::NodeRegistry::instance().add(std::move(t));
  }
#endif
  dp::cli::set_program_args(argc, argv);
  dp::cli::add_doctor(app, exit_code);
  dp::cli::add_ls(app, exit_code);
  dp::cli::add_inspect(app, exit_code);
  dp::cli::add_node(app, exit_code);
  dp::cli::add_demo(app, exit_code);
  dp::cli::add_launch(app, exit_code);
  dp::cli::add_bench(app, exit_code);
  dp::cli::add_top(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 prints the message; bad options exit 2 like every other bad input (docs/CONFIG.md),
    // not with CLI11's own codes (106, 109, ...).
    return app.exit(e) == 0 ? 0 : 2;
  } catch (const dp::ValidationError& e) {  // bad input: config, params, names, manifests
    std::fprintf(stderr, "directport: error: %s\n", e.what());
    return 2;
  } catch (const dp::Error& e) {
    std::fprintf(stderr, "directport: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "directport: unexpected error: %s\n", e.what());
    return 1;
  }
  if (app.get_subcommands().empty()) {
    std::fprintf(stderr, "%s\ndirectport: a subcommand is required (see above)\n", app.help().c_str());
    return 2;
  }
  return exit_code;
}
