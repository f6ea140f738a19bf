// Driving `directport launch` from a test: the launcher in the background with its log, the
// final JSON line a node printed, and the processes of a domain.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "directport/platform/child.hpp"

namespace dp::test {

// The pids of live processes with `arg` among their arguments (a domain name), except this one.
std::vector<int> processes_with_arg(const std::string& arg);

// `CLI launch ARGS...` running in the background, its stdout and stderr collected.
class Launcher {
 public:
  Launcher(const std::string& cli, std::vector<std::string> args);
  // Reads what the launcher printed so far; the whole log.
  const std::string& log();
  bool wait_log(const std::string& part, std::chrono::milliseconds timeout);
  void signal(int sig) { child_.signal(sig); }
  std::optional<int> wait(std::chrono::milliseconds bound) { return child_.wait_for(bound); }

 private:
  platform::Child child_;
};

// The final JSON line a node printed, from the launcher's log ("[name] {...}"); null if none.
nlohmann::json final_line(const std::string& log, const std::string& node);

}  // namespace dp::test
