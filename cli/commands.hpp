// Subcommands of the `directport` binary. Each registers its options on the CLI11 app and
// returns the exit code through the callback it installs.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace dp::cli {

void add_doctor(CLI::App& app, int& exit_code);
void add_ls(CLI::App& app, int& exit_code);
void add_inspect(CLI::App& app, int& exit_code);
void add_node(CLI::App& app, int& exit_code);
// The path of this program (/proc/self/exe), and of a program installed next to it.
std::string self_exe();
std::string sibling_program(const std::string& name);
// Replaces this process with `args[0]` given `args` (stdio flushed first). Returns only by throwing.
[[noreturn]] void exec_program(std::vector<std::string> args);
// The command line this program was started with (for exec_runner).
void set_program_args(int argc, char** argv);
// Replaces this process with the program `runner` next to this one, given the same arguments
// (a node type whose body lives there: NodeType::runner). Returns only by throwing.
[[noreturn]] void exec_runner(const std::string& runner);
void add_demo(CLI::App& app, int& exit_code);
void add_launch(CLI::App& app, int& exit_code);
void add_top(CLI::App& app, int& exit_code);
void add_bench(CLI::App& app, int& exit_code);

}  // namespace dp::cli
