#include "directport/core/node.hpp"

#include <algorithm>
#include <cstdio>

#include "directport/core/discovery.hpp"
#include "directport/core/error.hpp"
#include "directport/core/names.hpp"
#include "directport/platform/process.hpp"

namespace dp {
namespace {

NodeOptions checked(NodeOptions o) {
  if (o.domain.empty()) o.domain = default_domain();
  validate_name("domain", o.domain);
  validate_name("node name", o.name);
  if (o.type.empty() || o.type.size() > 64) throw ValidationError("node type must be 1..64 characters");
  return o;
}

}  // namespace

Node::Node(NodeOptions opts)
    : opts_(checked(std::move(opts))), manifest_(ManifestWriter::create(opts_.domain, opts_.name, opts_.manifest)) {
  Broker::Options bo;
  bo.socket_name = broker_socket_name(opts_.domain, opts_.name);
  bo.node_name = opts_.name;
  bo.allow_uids = opts_.allow_uids;
  broker_ = std::make_unique<Broker>(bo);
  broker_->on("subscribe", [this](const PeerInfo& peer, const nlohmann::json& req,
                                  std::vector<platform::UniqueFd>& fds) {
    auto stream = req.at("stream").get<std::string>();
    validate_name("stream name", stream);
    if (fds.size() != 1) throw ValidationError("subscribe needs exactly one descriptor: the release page");
    Publisher* p = find(stream);
    if (!p) throw ValidationError("node '" + opts_.name + "' publishes no stream '" + stream + "'");
    BrokerReply r;
    r.body = p->add_subscription(peer.connection_id, peer.client_name, std::move(fds[0]), r.fds);
    rewrite_manifest();
    return r;
  });
  broker_->on("status", [this](const PeerInfo&, const nlohmann::json&, std::vector<platform::UniqueFd>&) {
    nlohmann::json streams = nlohmann::json::object();
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& p : publishers_) streams[p->spec().name] = p->consumers();
    return BrokerReply{{{"op", "status"}, {"consumers", streams}}, {}};
  });
  broker_->on_disconnect([this](const PeerInfo& peer) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& p : publishers_) p->drop_connection(peer.connection_id);
    }
    rewrite_manifest();
  });
  broker_->on_tick([this] {
    manifest_.heartbeat();
    // A consumer whose enqueued release has held a stream's GPU work past the stream's
    // release_timeout (alive, its own stream stalled) is cut off (PROTOCOL.md §10.3).
    std::vector<std::pair<Publisher*, Publisher::Stalled>> stalled;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto now = platform::monotonic_ns();
      for (auto& p : publishers_) {
        if (auto s = p->stalled(now)) stalled.emplace_back(p.get(), *s);
      }
    }
    if (stalled.empty()) return;
    // One cut a tick, of the consumer that has held its stream longest. A stall can cascade: a
    // consumer of two streams blocked on the stalled one stops releasing the other's frames, and
    // its own head is reached a little later; cutting both at once would cut a consumer that did
    // nothing wrong. The others are looked at again next tick, once the cut has taken effect.
    auto worst = std::max_element(stalled.begin(), stalled.end(), [](const auto& a, const auto& b) {
      return a.second.waited_ms < b.second.waited_ms;
    });
    for (auto it = stalled.begin(); it != stalled.end(); ++it) {
      if (it != worst) it->first->rearm_stalled();
    }
    const auto& [p, s] = *worst;
    std::fprintf(stderr,
                 "directport: node %s stream %s: consumer '%s' (connection %llu) has not run its release of frame %llu "
                 "for %.0f ms, and our GPU stream waits for it (release_timeout %lld ms): cutting it off\n",
                 opts_.name.c_str(), p->spec().name.c_str(), s.client.c_str(),
                 static_cast<unsigned long long>(s.wait.connection), static_cast<unsigned long long>(s.wait.value),
                 s.waited_ms, static_cast<long long>(p->spec().release_timeout.count()));
    cut_off(s.wait.connection, p, &s.wait);
  });
  rewrite_manifest();
  broker_->start();
}

Node::~Node() {
  try {
    manifest_.set_state(protocol::NodeState::stopping);
  } catch (...) {
  }
  broker_->stop();
  // ManifestWriter's segment unlinks the name on destruction.
}

void Node::cut_off(std::uint64_t connection_id) { cut_off(connection_id, nullptr, nullptr); }

void Node::cut_off(std::uint64_t connection_id, Publisher* stalled_on, const ReleaseWaits::Wait* wait) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // The stream that reported the stall first, and only if its wait is still pending (the
    // consumer may have recovered since); then the connection's subscriptions to every other
    // stream, which must be marked too before the connection closes (an unmarked EOF is a death).
    if (stalled_on && !stalled_on->cut(connection_id, wait)) return;
    for (auto& p : publishers_) {
      if (p.get() != stalled_on) p->cut(connection_id);
    }
  }
  broker_->disconnect(connection_id);
  try {
    rewrite_manifest();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "directport: node %s: rewriting the manifest after a cut: %s\n", opts_.name.c_str(), e.what());
  }
}

Publisher* Node::find(const std::string& stream) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& p : publishers_) {
    if (p->spec().name == stream) return p.get();
  }
  return nullptr;
}

Publisher& Node::advertise(StreamSpec spec, GpuApi api) {
  spec.validate();
  Publisher* made = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& p : publishers_) {
      if (p->spec().name == spec.name) throw PreconditionError("stream '" + spec.name + "' is already advertised");
    }
    auto index = static_cast<std::uint32_t>(publishers_.size());
    if (index >= manifest_.control_capacity()) {
      throw PreconditionError("node '" + opts_.name + "' can publish at most " +
                              std::to_string(manifest_.control_capacity()) +
                              " streams (NodeOptions::manifest.control_capacity)");
    }
    publishers_.push_back(std::make_unique<Publisher>(spec, manifest_.control(index), index, opts_.name, api));
    made = publishers_.back().get();
  }
  rewrite_manifest();
  return *made;
}

Subscriber Node::subscribe(const std::string& address) {
  SubscribeOptions opts;
  opts.wait_for_producer = kDefaultProducerWait;
  return subscribe(address, std::move(opts));
}

Subscriber Node::subscribe(const std::string& address, SubscribeOptions opts) {
  auto a = parse_stream_address(address);
  if (a.stream.empty()) throw ValidationError("subscribe needs NODE/STREAM, got '" + address + "'");
  if (opts.domain.empty()) opts.domain = opts_.domain;
  if (opts.client_name == "anonymous") opts.client_name = opts_.name;
  if (!opts.cancelled) opts.cancelled = opts_.cancelled;
  Subscriber s(a.node, a.stream, opts);
  {
    std::lock_guard<std::mutex> lock(mu_);
    subscriptions_.push_back(address);
  }
  rewrite_manifest();
  return s;
}

void Node::set_running() { manifest_.set_state(protocol::NodeState::running); }

void Node::set_info(const std::string& key, nlohmann::json value) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    opts_.info[key] = std::move(value);
  }
  rewrite_manifest();
}

void Node::rewrite_manifest() {
  // Built and written under one lock, so that concurrent rewrites land in order.
  std::lock_guard<std::mutex> lock(mu_);
  nlohmann::json doc{{"abi", protocol::kAbiVersion},
                     {"name", opts_.name},
                     {"type", opts_.type},
                     {"version", "0.1.0"},
                     {"domain", opts_.domain},
                     {"pid", platform::self_identity().pid},
                     {"host", platform::hostname()},
                     {"broker", broker_ ? broker_->socket_name() : ""},
                     {"streams", nlohmann::json::array()},
                     {"subscriptions", subscriptions_},
                     {"info", opts_.info}};
  for (auto& p : publishers_) {
    auto s = p->describe();
    s["consumers"] = p->consumers();
    doc["streams"].push_back(std::move(s));
  }
  try {
    manifest_.set_json(doc);
  } catch (const ValidationError&) {
    // Over the JSON capacity. The consumer lists are a snapshot for tools (the "status" op has
    // them live): drop them rather than fail a subscribe that has succeeded, or leave a stale
    // manifest behind after a disconnect. What is left is what the node itself chose (streams,
    // info): if that does not fit, the error stands.
    bool dropped = false;
    for (auto& s : doc["streams"]) {
      dropped = dropped || !s["consumers"].empty();
      s["consumers"] = nlohmann::json::array();
    }
    if (!dropped) throw;
    doc["consumers_omitted"] = true;
    manifest_.set_json(doc);
  }
}

}  // namespace dp
