// What the multi-process tests of the teachers library share: a domain of their own, nodes of the
// `directport` binary run as processes, subscriptions that wait for their producer, and a check
// that no process of the domain outlives the test.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>

#include <optional>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "directport/core/stream.hpp"
#include "directport/platform/child.hpp"
#include "support/fixtures.hpp"
#include "support/launch.hpp"
#include "support/test_support.hpp"

#ifndef DP_CLI
#error "DP_CLI (the path of the directport binary) must be defined by CMake"
#endif

namespace dp::test {

using namespace std::chrono_literals;

// GraphTest: at the end, no process of the domain may have outlived the test.
class NodesTest : public GraphTest {
 protected:
  platform::Child node(const std::string& type, const std::string& name, const nlohmann::json& params) {
    return platform::Child::spawn({DP_CLI, "node", type, "-n", name, "-d", domain_, "--params-json", params.dump()}, {true, true});
  }

  std::optional<Subscriber> subscribe(const std::string& node, const std::string& stream, std::chrono::milliseconds bound = 10s) {
    SubscribeOptions o;
    o.domain = domain_;
    o.client_name = "test";
    std::optional<Subscriber> sub;
    wait_until(
        [&] {
          try {
            sub.emplace(node, stream, o);
            return true;
          } catch (const std::exception&) {
            return false;
          }
        },
        bound, 20ms);
    return sub;
  }

  // Stops a node with SIGTERM; returns its exit code (minus the signal that ended it; 999 if it runs on).
  int stop(platform::Child& c) {
    c.signal(SIGTERM);
    auto rc = c.wait_for(10s);
    return rc ? *rc : 999;
  }

  // The JSON object a node printed last.
  static nlohmann::json final_json(const std::string& out) {
    nlohmann::json last;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);) {
      if (line.empty() || line[0] != '{') continue;
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_discarded()) last = j;
    }
    return last;
  }
};

}  // namespace dp::test
