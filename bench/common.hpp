// Small helpers shared by the benchmark programs.
#pragma once

#include <signal.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "directport/core/error.hpp"
#include "directport/platform/child.hpp"

namespace dp::bench {

// Parses the command line: nullopt to go on, or the exit status (0 after --help, 2 for bad
// options, CLI11's message printed) -- the one status for bad input that every tool here uses.
inline std::optional<int> parse_args(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return std::nullopt;
}

// Waits for a role process (killed after `bound`), clears `ok` unless it exited 0, and returns
// the JSON object it printed (null if none).
inline nlohmann::json collect_json(platform::Child& c, bool& ok, std::chrono::seconds bound) {
  auto rc = c.wait_for(bound);
  if (!rc) {
    c.signal(SIGKILL);
    c.wait_for(std::chrono::seconds(5));
  }
  ok = ok && rc && *rc == 0;
  auto j = nlohmann::json::parse(c.output(), nullptr, false);
  return j.is_discarded() ? nlohmann::json() : j;
}

// The p-quantile (0..1) of `v`, nearest rank; 0 for an empty sample.
inline double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * double(v.size() - 1) + 0.5))];
}

// "4096", "4K", "64M", "1G" -> bytes (binary units); throws ValidationError naming the input.
inline std::uint64_t parse_size(const std::string& s) {
  std::size_t pos = 0;
  std::uint64_t v = 0;
  try {
    v = std::stoull(s, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  const std::string unit = s.substr(pos);
  const std::uint64_t mul = unit.empty()                  ? 1
                            : (unit == "K" || unit == "k") ? 1024
                            : (unit == "M" || unit == "m") ? 1 << 20
                            : (unit == "G" || unit == "g") ? 1ull << 30
                                                           : 0;
  if (pos == 0 || mul == 0 || v == 0) throw ValidationError("size '" + s + "' is not N, NK, NM or NG (N > 0)");
  return v * mul;
}

// "a,b,,c" -> {"a", "b", "c"}.
inline std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');) {
    if (!x.empty()) out.push_back(x);
  }
  return out;
}

}  // namespace dp::bench
