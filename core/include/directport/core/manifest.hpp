// The manifest: a node's shared-memory service announcement (DESIGN §4, docs/PROTOCOL.md).
//
// ManifestWriter is owned by the node that created the segment: the only writer. Its methods
// are thread-safe within that process. ManifestReader maps someone's manifest read-only and
// validates every size, offset and JSON field before handing anything out.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "directport/core/protocol.hpp"
#include "directport/platform/process.hpp"
#include "directport/platform/shm.hpp"

namespace dp {

struct ManifestOptions {
  std::size_t json_capacity = 64 * 1024;
  std::uint32_t control_capacity = 16;  // streams this node may publish
};

class ManifestWriter {
 public:
  // Creates "/dp.<uid>.<domain>.<node>". A manifest of the same name left by a dead process is
  // removed first; one held by a live process is an error naming its pid.
  static ManifestWriter create(const std::string& domain, const std::string& node,
                               const ManifestOptions& opts = {});

  ManifestWriter(ManifestWriter&&) noexcept;
  ManifestWriter& operator=(ManifestWriter&&) noexcept;
  ~ManifestWriter();

  // Replaces the JSON document under the seqlock. Throws ValidationError if it exceeds the
  // capacity chosen at creation.
  void set_json(const nlohmann::json& doc);
  const nlohmann::json& json() const { return doc_; }
  void heartbeat();
  void set_state(protocol::NodeState s);
  protocol::ControlBlock& control(std::uint32_t index);
  std::uint32_t control_capacity() const;
  const std::string& segment_name() const { return seg_.name(); }
  const std::string& domain() const { return domain_; }
  const std::string& node() const { return node_; }

 private:
  ManifestWriter() = default;
  protocol::ManifestHeader& header() const;

  platform::Segment seg_;
  std::string domain_, node_;
  nlohmann::json doc_;
  std::unique_ptr<std::mutex> mu_ = std::make_unique<std::mutex>();
};

// Checks a manifest image: magic, ABI version, sizes and offsets inside `size`, JSON size within
// capacity. Throws ValidationError saying what is wrong. Used on every read and by the fuzzer.
void validate_manifest_header(const void* data, std::size_t size);
// Checks the JSON document of a manifest (required keys and types, streams and their control
// indices within `control_capacity`). Throws ValidationError naming the key.
void validate_manifest_json(const nlohmann::json& doc, std::uint32_t control_capacity);
// Parses the bytes of a manifest's JSON part with full validation.
nlohmann::json parse_manifest_json(const char* bytes, std::size_t size, std::uint32_t control_capacity);

enum class Liveness { live, stuck, dead };
const char* liveness_name(Liveness l);

class ManifestReader {
 public:
  static ManifestReader open(const std::string& domain, const std::string& node);
  // Validates an already mapped image (used by discovery and tests).
  static ManifestReader from_segment(platform::Segment seg);

  const protocol::ManifestHeader& header() const;
  platform::ProcessIdentity owner() const;
  // The JSON document read consistently under the seqlock, validated.
  nlohmann::json json() const;
  const protocol::ControlBlock& control(std::uint32_t index) const;
  protocol::NodeState state() const;
  std::int64_t heartbeat_age_ns() const;
  Liveness liveness(std::chrono::nanoseconds stale_after = std::chrono::seconds(3)) const;
  const platform::Segment& segment() const { return seg_; }

 private:
  platform::Segment seg_;
};

}  // namespace dp
