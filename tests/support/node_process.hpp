// The GPU suites' way of running nodes: `directport node ...` as a real process whose stdout is
// kept, waited for with a bound, and its report (the last whole JSON line) parsed.
#pragma once

#include <signal.h>

#include <chrono>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "directport/platform/child.hpp"

namespace dp::test {

using Proc = dp::platform::Child;

// Runs `cli` (the directport binary) with `args`, capturing its stdout.
inline Proc spawn_cli(const std::string& cli, std::vector<std::string> args) {
  args.insert(args.begin(), cli);
  return Proc::spawn(args, {/*capture_stdout=*/true});
}

// Waits for the process (bounded: a hang fails the test and kills it) and returns
// {exit code or -signal, last JSON line of its stdout}.
inline std::pair<int, nlohmann::json> finish(Proc& p, std::chrono::seconds bound = std::chrono::seconds(120)) {
  auto rc = p.wait_for(bound);
  if (!rc) {
    ADD_FAILURE() << "process " << p.pid() << " hung for " << bound.count() << " s";
    p.signal(SIGKILL);
    rc = p.wait_for(std::chrono::seconds(10));
  }
  // The report is the last line that is a whole JSON object (reports nest objects, so the last
  // '{' of the output is not where it starts).
  nlohmann::json j = nlohmann::json::object();  // no report (a crash): the checks fail, not throw
  std::istringstream lines(p.output());
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line.front() != '{') continue;
    auto parsed = nlohmann::json::parse(line, nullptr, false);
    if (!parsed.is_discarded() && parsed.is_object()) j = std::move(parsed);
  }
  return {rc.value_or(-SIGKILL), j};
}

}  // namespace dp::test
