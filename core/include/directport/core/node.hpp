// A node: one process's manifest, broker and publishers (DESIGN §2, §3).
//
// Construction creates the manifest (removing the litter of a dead predecessor of the same
// name) and starts the broker thread, which also beats the heartbeat. Destruction withdraws
// the manifest: state "stopping", broker closed (subscribers see EOF), segment unlinked.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "directport/core/broker.hpp"
#include "directport/core/manifest.hpp"
#include "directport/core/stream.hpp"

namespace dp {

struct NodeOptions {
  std::string name;
  std::string type = "custom";
  std::string domain;  // empty: default_domain()
  std::vector<std::uint32_t> allow_uids;
  ManifestOptions manifest;
  nlohmann::json info = nlohmann::json::object();  // free-form, shown by `inspect`
  // Given to subscriptions made through subscribe() whose options have none: their wait for a
  // producer ends once it returns true (the runtime passes "SIGTERM or SIGINT arrived").
  std::function<bool()> cancelled;
};

class Node {
 public:
  explicit Node(NodeOptions opts);
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Announces a stream. The returned publisher lives as long as the node.
  // `api`: what the application writes the frames with, where the stream's kinds allow more
  // than one (docs/VULKAN.md).
  Publisher& advertise(StreamSpec spec, GpuApi api = GpuApi::automatic);
  // Subscribes to "NODE/STREAM" in this node's domain, recording it in the manifest.
  // With no options, the subscriber waits up to kDefaultProducerWait for its producer (a node may
  // start before its producer, or while it restarts); with options, as they say (by default it
  // fails at once: for callers with retry loops of their own).
  Subscriber subscribe(const std::string& address);
  Subscriber subscribe(const std::string& address, SubscribeOptions opts);
  // Marks the node running (after set-up) — shown by `ls`.
  void set_running();
  // Adds or replaces a key of the manifest's "info" object.
  void set_info(const std::string& key, nlohmann::json value);

  const std::string& name() const { return opts_.name; }
  const std::string& domain() const { return opts_.domain; }
  Broker& broker() { return *broker_; }
  Publisher* find(const std::string& stream);
  // Cuts the consumer on broker connection `connection_id` off (PROTOCOL.md §10.3): its
  // subscriptions are marked cut and forgotten, the releases our GPU streams wait for raised,
  // its connection closed. The consumer sees a cut, not a death: its frames not yet read become
  // invalid, and it subscribes again once its own stream has run its releases. The broker's tick
  // does this to a consumer that holds a stream past its release_timeout; `status` lists the
  // connections.
  void cut_off(std::uint64_t connection_id);

 private:
  // Writes the manifest JSON. Over its capacity, the streams' consumer lists are left out
  // ("consumers_omitted": true) before giving up.
  void rewrite_manifest();
  // cut_off(), the tick's way: first on `stalled_on`, and only while `wait` is still pending.
  void cut_off(std::uint64_t connection_id, Publisher* stalled_on, const ReleaseWaits::Wait* wait);

  NodeOptions opts_;
  ManifestWriter manifest_;
  std::unique_ptr<Broker> broker_;
  std::mutex mu_;
  std::vector<std::unique_ptr<Publisher>> publishers_;
  std::vector<std::string> subscriptions_;
};

}  // namespace dp
