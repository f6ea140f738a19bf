// Discovery: the manifests of a domain, which of them are live, and removal of dead nodes'
// litter. There is no daemon: every tool and node runs this on its own.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "directport/core/manifest.hpp"

namespace dp {

struct NodeEntry {
  std::string name;          // node name
  std::string segment;       // OS segment name
  std::optional<Liveness> liveness;  // empty: the manifest failed validation
  std::string problem;       // why it failed validation, if it did
  platform::ProcessIdentity owner;
  std::int64_t heartbeat_age_ns = 0;
  protocol::NodeState state = protocol::NodeState::starting;
  nlohmann::json doc;        // the JSON part, if readable
};

// Lists the nodes of `domain` (all manifests of this uid and domain). Dead owners are detected by
// the manifest's lifetime lock (released by the OS when the owner dies), so pid reuse cannot fool it.
std::vector<NodeEntry> list_nodes(const std::string& domain);

// Removes the manifests of dead nodes of `domain` and invalid ones older than `grace` (a node
// that is still creating its manifest is younger). Returns the names removed.
std::vector<std::string> remove_stale(const std::string& domain,
                                      std::chrono::seconds grace = std::chrono::seconds(5));

}  // namespace dp
