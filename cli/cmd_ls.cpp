// `directport ls` and `directport inspect`: discovery from the command line.
#include <cstdio>
#include <iostream>
#include <memory>

#include "commands.hpp"
#include "directport/core/discovery.hpp"
#include "directport/core/error.hpp"
#include "directport/core/names.hpp"

namespace dp::cli {
namespace {

const char* state_name(protocol::NodeState s) {
  switch (s) {
    case protocol::NodeState::starting: return "starting";
    case protocol::NodeState::running: return "running";
    case protocol::NodeState::stopping: return "stopping";
  }
  return "?";
}

nlohmann::json control_json(const protocol::ControlBlock& c) {
  nlohmann::json slots = nlohmann::json::array();
  for (std::uint32_t k = 0; k < c.slot_count && k < protocol::kMaxSlots; ++k) {
    const auto& m = c.slots[k];
    slots.push_back({{"slot", k}, {"seq", m.seq.load()}, {"frame_id", m.frame_id.load()},
                     {"t_source_ns", m.t_source_ns.load()}, {"t_publish_ns", m.t_publish_ns.load()},
                     {"checksum", m.checksum.load()}, {"flags", m.flags.load()}});
  }
  return {{"latest_seq", c.latest_seq.load()}, {"latest_slot", c.latest_slot.load()},
          {"published", c.published.load()}, {"dropped", c.dropped.load()},
          {"subscribers", c.subscribers.load()}, {"slots", slots}};
}

std::string shape_text(const nlohmann::json& s) {
  std::string out = s.value("dtype", "?") + "[";
  bool first = true;
  for (auto& d : s["shape"]) {
    out += (first ? "" : "x") + std::to_string(d.get<long long>());
    first = false;
  }
  return out + "]";
}

}  // namespace

void add_ls(CLI::App& app, int& exit_code) {
  struct Opts {
    std::string domain;
    bool json = false, keep = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("ls", "List the nodes of a domain (and remove dead nodes' leftovers)");
  cmd->add_option("--domain,-d", o->domain, "Domain to list (default: $DIRECTPORT_DOMAIN or 'default')");
  cmd->add_flag("--json", o->json, "Print JSON");
  cmd->add_flag("--keep-stale", o->keep, "Do not remove the manifests of dead nodes");
  cmd->callback([o, &exit_code] {
    std::string domain = o->domain.empty() ? default_domain() : o->domain;
    validate_name("domain", domain);
    auto nodes = list_nodes(domain);
    std::vector<std::string> removed;
    if (!o->keep) removed = remove_stale(domain);
    if (o->json) {
      nlohmann::json out = nlohmann::json::array();
      for (auto& n : nodes) {
        out.push_back({{"name", n.name}, {"pid", n.owner.pid}, {"state", state_name(n.state)},
                       {"liveness", n.liveness ? liveness_name(*n.liveness) : "invalid"},
                       {"heartbeat_age_ms", n.heartbeat_age_ns / 1000000}, {"problem", n.problem},
                       {"streams", n.doc.is_object() ? n.doc["streams"] : nlohmann::json::array()},
                       {"subscriptions", n.doc.is_object() ? n.doc.value("subscriptions", nlohmann::json::array()) : nlohmann::json::array()}});
      }
      std::cout << nlohmann::json{{"domain", domain}, {"nodes", out}, {"removed_stale", removed}}.dump(2) << "\n";
      return;
    }
    if (nodes.empty()) {
      std::printf("no nodes in domain '%s'\n", domain.c_str());
    } else {
      std::printf("%-20s %8s %-9s %-8s %s\n", "NODE", "PID", "STATE", "LIVE", "STREAMS (consumers) / <- SUBSCRIPTIONS");
      for (auto& n : nodes) {
        std::string streams;
        if (n.doc.is_object()) {
          for (auto& s : n.doc["streams"]) {
            streams += (streams.empty() ? "" : ", ") + s["name"].get<std::string>() + " " + shape_text(s) + " " +
                       s.value("memory", "?") + " (" + std::to_string(s.value("consumers", nlohmann::json::array()).size()) + ")";
          }
        }
        if (n.doc.is_object()) {
          for (auto& sub : n.doc.value("subscriptions", nlohmann::json::array())) {
            streams += (streams.empty() ? "<- " : ", <- ") + sub.get<std::string>();
          }
        }
        if (!n.problem.empty()) streams = "unreadable: " + n.problem;
        std::printf("%-20s %8lld %-9s %-8s %s\n", n.name.c_str(), static_cast<long long>(n.owner.pid),
                    state_name(n.state), n.liveness ? liveness_name(*n.liveness) : "invalid", streams.c_str());
      }
    }
    for (auto& r : removed) std::printf("removed the manifest of dead node '%s'\n", r.c_str());
    exit_code = 0;
  });
}

void add_inspect(CLI::App& app, int& exit_code) {
  struct Opts {
    std::string target, domain;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("inspect", "Show a node's manifest (header, JSON, control blocks) or one stream's");
  cmd->add_option("target", o->target, "NODE or NODE/STREAM")->required();
  cmd->add_option("--domain,-d", o->domain, "Domain (default: $DIRECTPORT_DOMAIN or 'default')");
  cmd->add_flag("--json", o->json, "Print JSON");
  cmd->callback([o, &exit_code] {
    std::string domain = o->domain.empty() ? default_domain() : o->domain;
    auto addr = parse_stream_address(o->target);
    auto r = ManifestReader::open(domain, addr.node);
    auto doc = r.json();
    const auto& h = r.header();
    nlohmann::json header{{"abi_version", h.abi_version}, {"total_size", h.total_size},
                          {"pid", h.pid}, {"start_time", h.start_time}, {"uid", h.uid},
                          {"state", state_name(r.state())}, {"liveness", liveness_name(r.liveness())},
                          {"heartbeat_age_ms", r.heartbeat_age_ns() / 1000000}, {"generation", h.generation.load()},
                          {"json_bytes", h.json_size.load()}, {"json_capacity", h.json_capacity},
                          {"segment", r.segment().name()}};
    nlohmann::json streams = nlohmann::json::array();
    bool found = addr.stream.empty();
    for (auto& s : doc["streams"]) {
      if (!addr.stream.empty() && s["name"] != addr.stream) continue;
      found = true;
      streams.push_back({{"manifest", s}, {"control", control_json(r.control(s["control_index"].get<std::uint32_t>()))}});
    }
    if (!found) {
      throw Error("node '" + addr.node + "' publishes no stream '" + addr.stream + "'");
    }
    nlohmann::json out{{"node", addr.node}, {"domain", domain}, {"header", header}, {"streams", streams}};
    if (addr.stream.empty()) out["manifest"] = doc;
    if (o->json) {
      std::cout << out.dump(2) << "\n";
      return;
    }
    std::printf("node %s (domain %s): pid %lld, %s, %s, heartbeat %lld ms ago, type %s\n", addr.node.c_str(),
                domain.c_str(), static_cast<long long>(h.pid), state_name(r.state()), liveness_name(r.liveness()),
                static_cast<long long>(r.heartbeat_age_ns() / 1000000), doc.value("type", "?").c_str());
    std::printf("manifest %s: ABI %u, %llu bytes, JSON %llu/%llu bytes, generation %llu, broker @%s\n",
                r.segment().name().c_str(), h.abi_version, static_cast<unsigned long long>(h.total_size),
                static_cast<unsigned long long>(h.json_size.load()), static_cast<unsigned long long>(h.json_capacity),
                static_cast<unsigned long long>(h.generation.load()), doc["broker"].get<std::string>().c_str());
    for (auto& s : streams) {
      auto& m = s["manifest"];
      auto& c = s["control"];
      std::printf("\nstream %s: %s, %d slots, %s memory, %s fences, %llu bytes/frame\n",
                  m["name"].get<std::string>().c_str(), shape_text(m).c_str(), m["slots"].get<int>(),
                  m["memory"].get<std::string>().c_str(), m["fence"].get<std::string>().c_str(),
                  static_cast<unsigned long long>(m["frame_bytes"].get<std::uint64_t>()));
      std::printf("  latest seq %llu (slot %u), published %llu, dropped %llu, subscribers %llu\n",
                  static_cast<unsigned long long>(c["latest_seq"].get<std::uint64_t>()), c["latest_slot"].get<unsigned>(),
                  static_cast<unsigned long long>(c["published"].get<std::uint64_t>()),
                  static_cast<unsigned long long>(c["dropped"].get<std::uint64_t>()),
                  static_cast<unsigned long long>(c["subscribers"].get<std::uint64_t>()));
      for (auto& sl : c["slots"]) {
        std::printf("  slot %u: seq %llu frame_id %llu\n", sl["slot"].get<unsigned>(),
                    static_cast<unsigned long long>(sl["seq"].get<std::uint64_t>()),
                    static_cast<unsigned long long>(sl["frame_id"].get<std::uint64_t>()));
      }
      // A layout (the compositor's segments): one line per segment, then the mask.
      const auto& lay = m.contains("layout") ? m["layout"] : nlohmann::json();
      if (lay.is_object() && lay.contains("segments") && lay["segments"].is_array()) {
        std::printf("  layout: %s, grid %s, %s\n", lay.value("kind", "?").c_str(), lay.value("grid", nlohmann::json()).dump().c_str(),
                    lay.value("resample", "").c_str());
        for (auto& seg : lay["segments"]) {
          if (!seg.is_object()) continue;
          std::printf("    %-16s at %10s  %-16s from %s %s, norm %s\n", seg.value("teacher", "?").c_str(),
                      seg.value("offset", nlohmann::json()).dump().c_str(), seg.value("shape", nlohmann::json()).dump().c_str(),
                      seg.value("source_dtype", "?").c_str(), seg.value("source_shape", nlohmann::json()).dump().c_str(),
                      seg.value("norm", "?").c_str());
        }
        if (lay.contains("mask")) std::printf("    %-16s at %10s  [%s]\n", "mask", lay["mask"].value("offset", nlohmann::json()).dump().c_str(),
                                              lay["mask"].value("length", nlohmann::json()).dump().c_str());
      } else if (!lay.is_null()) {
        std::printf("  layout: %s\n", lay.dump().c_str());
      }
      for (auto& con : m.value("consumers", nlohmann::json::array())) {
        std::printf("  consumer #%llu %s holding %s\n", static_cast<unsigned long long>(con["subscription"].get<std::uint64_t>()),
                    con["client"].get<std::string>().c_str(), con["holding"].dump().c_str());
      }
    }
    if (addr.stream.empty()) std::printf("\nJSON:\n%s\n", doc.dump(2).c_str());
    exit_code = 0;
  });
}

}  // namespace dp::cli
