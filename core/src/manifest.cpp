#include "directport/core/manifest.hpp"

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <thread>

#include "directport/core/error.hpp"
#include "directport/core/json_input.hpp"
#include "directport/core/names.hpp"
#include "directport/core/types.hpp"

namespace dp {

using protocol::ControlBlock;
using protocol::ManifestHeader;

namespace {

std::size_t round_up(std::size_t v, std::size_t a) { return (v + a - 1) / a * a; }

// The magic is the header's publication flag: written last with a release store, read first
// with an acquire load, so a reader that sees it sees every field written before it.
std::uint64_t load_magic(const void* header) {
  if (reinterpret_cast<std::uintptr_t>(header) % alignof(std::uint64_t) == 0) {  // a mapped segment always is
    return __atomic_load_n(static_cast<const std::uint64_t*>(header), __ATOMIC_ACQUIRE);
  }
  std::uint64_t m;  // a copy of an image (tests, the fuzzer): nobody writes it concurrently
  std::memcpy(&m, header, sizeof m);
  return m;
}
void store_magic(void* header) {
  std::uint64_t m;
  static_assert(sizeof m == sizeof protocol::ManifestHeader::magic, "the magic is 8 bytes");
  std::memcpy(&m, protocol::kManifestMagic, sizeof m);
  __atomic_store_n(static_cast<std::uint64_t*>(header), m, __ATOMIC_RELEASE);
}

}  // namespace

// ---------------------------------------------------------------- validation

void validate_manifest_header(const void* data, std::size_t size) {
  // A segment between its creation and the release store of its magic (the last field written,
  // manifest creation below) is one being created: not malformed, but not readable yet.
  if (size == 0 || (size >= sizeof(ManifestHeader) && load_magic(data) == 0)) {
    throw NotReadyError(
        "manifest is still being created by its node (no header published yet; retry shortly), or its creator died "
        "first (discovery removes such a segment once its lock is free and it is 5 s old)");
  }
  if (size < sizeof(ManifestHeader)) {
    throw ValidationError("manifest truncated: " + std::to_string(size) + " bytes, the header alone needs " +
                          std::to_string(sizeof(ManifestHeader)));
  }
  const auto* h = static_cast<const ManifestHeader*>(data);
  if (std::memcmp(h->magic, protocol::kManifestMagic, sizeof h->magic) != 0) {
    throw ValidationError("not a DirectPort manifest (bad magic)");
  }
  if (h->abi_version != protocol::kAbiVersion) {
    throw ValidationError("manifest ABI version " + std::to_string(h->abi_version) +
                          " is not supported (this build reads version " +
                          std::to_string(protocol::kAbiVersion) + "); upgrade the older side");
  }
  if (h->header_size != sizeof(ManifestHeader)) throw ValidationError("manifest header_size mismatch");
  if (h->total_size != size) {
    throw ValidationError("manifest says it is " + std::to_string(h->total_size) +
                          " bytes but the segment has " + std::to_string(size));
  }
  if (h->total_size > protocol::kMaxManifestBytes) throw ValidationError("manifest larger than 8 MiB");
  auto inside = [&](std::uint64_t off, std::uint64_t len, const char* what) {
    if (off < sizeof(ManifestHeader) || off > size || len > size - off) {
      throw ValidationError(std::string("manifest ") + what + " lies outside the segment");
    }
  };
  if (h->json_capacity == 0 || h->json_capacity > protocol::kMaxJsonBytes) {
    throw ValidationError("manifest JSON capacity out of bounds");
  }
  inside(h->json_offset, h->json_capacity, "JSON part");
  if (h->control_stride != sizeof(ControlBlock)) throw ValidationError("manifest control block size mismatch");
  if (h->control_capacity > protocol::kMaxStreams) throw ValidationError("manifest declares too many streams");
  if (h->control_offset % alignof(ControlBlock) != 0) throw ValidationError("manifest control blocks misaligned");
  inside(h->control_offset, std::uint64_t(h->control_capacity) * h->control_stride, "control blocks");
  bool overlap = h->json_offset < h->control_offset + std::uint64_t(h->control_capacity) * h->control_stride &&
                 h->control_offset < h->json_offset + h->json_capacity;
  if (overlap && h->control_capacity > 0) throw ValidationError("manifest parts overlap");
  if (h->json_size.load(std::memory_order_acquire) > h->json_capacity) {
    throw ValidationError("manifest JSON size exceeds its capacity");
  }
  if (h->pid <= 0) throw ValidationError("manifest has no owner pid");
}

void validate_manifest_json(const nlohmann::json& doc, std::uint32_t control_capacity) {
  auto need = [](const nlohmann::json& o, const char* key, bool (nlohmann::json::*is)() const noexcept,
                 const std::string& where) -> const nlohmann::json& {
    auto it = o.find(key);
    if (it == o.end()) throw ValidationError("manifest JSON: missing '" + where + key + "'");
    if (!((*it).*is)()) throw ValidationError("manifest JSON: '" + where + key + "' has the wrong type");
    return *it;
  };
  if (!doc.is_object()) throw ValidationError("manifest JSON: the document must be an object");
  if (doc.contains("abi") && (!doc["abi"].is_number_unsigned() || doc["abi"].get<std::uint64_t>() != protocol::kAbiVersion)) {
    throw ValidationError("manifest JSON: 'abi' is " + doc["abi"].dump() + ", this build reads " +
                          std::to_string(protocol::kAbiVersion));
  }
  need(doc, "name", &nlohmann::json::is_string, "");
  validate_name("manifest JSON: node name", doc["name"].get<std::string>());
  need(doc, "type", &nlohmann::json::is_string, "");
  need(doc, "broker", &nlohmann::json::is_string, "");
  const auto& streams = need(doc, "streams", &nlohmann::json::is_array, "");
  if (streams.size() > control_capacity) throw ValidationError("manifest JSON: more streams than control blocks");
  std::vector<bool> used(control_capacity, false);
  for (std::size_t i = 0; i < streams.size(); ++i) {
    std::string where = "streams[" + std::to_string(i) + "].";
    const auto& s = streams[i];
    if (!s.is_object()) throw ValidationError("manifest JSON: '" + where + "' must be an object");
    StreamSpec spec = spec_from_json(s);
    auto idx = need(s, "control_index", &nlohmann::json::is_number_unsigned, where).get<std::uint64_t>();
    if (idx >= control_capacity || used[idx]) {
      throw ValidationError("manifest JSON: '" + where + "control_index' out of range or repeated");
    }
    used[idx] = true;
    auto stride = need(s, "slot_stride", &nlohmann::json::is_number_unsigned, where).get<std::uint64_t>();
    if (stride < spec.frame_bytes()) throw ValidationError("manifest JSON: '" + where + "slot_stride' smaller than a frame");
    need(s, "memory_handle", &nlohmann::json::is_string, where);
    need(s, "fence_handle", &nlohmann::json::is_string, where);
  }
}

nlohmann::json parse_manifest_json(const char* bytes, std::size_t size, std::uint32_t control_capacity) {
  if (size > protocol::kMaxJsonBytes) throw ValidationError("manifest JSON larger than 1 MiB");
  nlohmann::json doc = parse_json_input(std::string_view(bytes, size), "manifest JSON");
  if (doc.is_discarded()) throw ValidationError("manifest JSON does not parse");
  validate_manifest_json(doc, control_capacity);
  return doc;
}

const char* liveness_name(Liveness l) {
  switch (l) {
    case Liveness::live: return "live";
    case Liveness::stuck: return "stuck";
    case Liveness::dead: return "dead";
  }
  return "?";
}

// ---------------------------------------------------------------- writer

ManifestWriter ManifestWriter::create(const std::string& domain, const std::string& node,
                                      const ManifestOptions& opts) {
  std::string name = manifest_segment_name(domain, node);
  DP_EXPECTS(opts.json_capacity > 0 && opts.json_capacity <= protocol::kMaxJsonBytes,
             "json_capacity must be 1 B..1 MiB");
  DP_EXPECTS(opts.control_capacity <= protocol::kMaxStreams, "control_capacity must be <= 64");
  std::size_t json_off = round_up(sizeof(ManifestHeader), 64);
  std::size_t ctrl_off = round_up(json_off + opts.json_capacity, 64);
  std::size_t total = ctrl_off + std::size_t(opts.control_capacity) * sizeof(ControlBlock);

  for (int attempt = 0;; ++attempt) {
    platform::Segment seg;
    try {
      seg = platform::Segment::create_named(name, total);
    } catch (const SystemError& e) {
      if (e.error_code() != EEXIST || attempt >= 5) throw;
      // Someone holds the name. If its owner is dead (its lock is free), take the litter away.
      platform::Segment old;
      try {
        old = platform::Segment::open_named(name, platform::Access::read_only);
      } catch (const SystemError& e2) {
        if (e2.error_code() == ENOENT) continue;
        throw;
      }
      if (!old.try_lock_exclusive()) {
        std::string who;
        bool dead = false;
        try {
          auto r = ManifestReader::from_segment(std::move(old));
          who = " by pid " + std::to_string(r.owner().pid);
          dead = !platform::is_alive(r.owner());  // the lock is a prober's, not the owner's
          if (dead && r.segment().still_named()) platform::Segment::unlink(name);
        } catch (const Error&) {
        }
        if (dead) continue;
        throw Error("node name '" + node + "' is already in use in domain '" + domain + "'" + who +
                    "; stop that node or choose another name");
      }
      if (old.still_named()) platform::Segment::unlink(name);
      continue;
    }
    // Lock first, then make sure a concurrent cleaner did not unlink us in between.
    if (!seg.try_lock_exclusive() || !seg.still_named()) {
      seg.disown_name();
      continue;
    }
    auto* h = new (seg.data()) ManifestHeader{};  // magic all zero: "being created" to readers
    h->abi_version = protocol::kAbiVersion;
    h->header_size = sizeof(ManifestHeader);
    h->total_size = total;
    h->json_offset = json_off;
    h->json_capacity = opts.json_capacity;
    h->control_offset = ctrl_off;
    h->control_stride = sizeof(ControlBlock);
    h->control_capacity = opts.control_capacity;
    auto id = platform::self_identity();
    h->pid = id.pid;
    h->start_time = id.start_time;
    h->uid = platform::current_uid();
    h->state.store(static_cast<std::uint32_t>(protocol::NodeState::starting));
    h->heartbeat_ns.store(static_cast<std::uint64_t>(platform::monotonic_ns()));
    for (std::uint32_t i = 0; i < opts.control_capacity; ++i) {
      new (static_cast<char*>(seg.data()) + ctrl_off + i * sizeof(ControlBlock)) ControlBlock{};
    }
    store_magic(h);  // last: publishes the header
    ManifestWriter w;
    w.seg_ = std::move(seg);
    w.domain_ = domain;
    w.node_ = node;
    return w;
  }
}

ManifestWriter::ManifestWriter(ManifestWriter&&) noexcept = default;
ManifestWriter& ManifestWriter::operator=(ManifestWriter&&) noexcept = default;
ManifestWriter::~ManifestWriter() = default;

ManifestHeader& ManifestWriter::header() const { return *static_cast<ManifestHeader*>(seg_.data()); }

void ManifestWriter::set_json(const nlohmann::json& doc) {
  std::string text = doc.dump();
  std::lock_guard<std::mutex> lock(*mu_);
  auto& h = header();
  if (text.size() > h.json_capacity) {
    throw ValidationError("manifest JSON of " + std::to_string(text.size()) +
                          " bytes exceeds the capacity of " + std::to_string(h.json_capacity) +
                          " chosen at creation (ManifestOptions::json_capacity)");
  }
  std::uint64_t g = h.generation.load(std::memory_order_relaxed);
  h.generation.store(g + 1, std::memory_order_relaxed);  // odd: being rewritten
  std::atomic_thread_fence(std::memory_order_release);
  std::memcpy(static_cast<char*>(seg_.data()) + h.json_offset, text.data(), text.size());
  h.json_size.store(text.size(), std::memory_order_relaxed);
  h.generation.store(g + 2, std::memory_order_release);
  doc_ = doc;
}

void ManifestWriter::heartbeat() {
  header().heartbeat_ns.store(static_cast<std::uint64_t>(platform::monotonic_ns()),
                              std::memory_order_release);
}

void ManifestWriter::set_state(protocol::NodeState s) {
  header().state.store(static_cast<std::uint32_t>(s), std::memory_order_release);
}

std::uint32_t ManifestWriter::control_capacity() const { return header().control_capacity; }

ControlBlock& ManifestWriter::control(std::uint32_t index) {
  DP_EXPECTS(index < header().control_capacity, "control block index out of range");
  return *reinterpret_cast<ControlBlock*>(static_cast<char*>(seg_.data()) + header().control_offset +
                                          std::size_t(index) * sizeof(ControlBlock));
}

// ---------------------------------------------------------------- reader

ManifestReader ManifestReader::open(const std::string& domain, const std::string& node) {
  auto name = manifest_segment_name(domain, node);
  platform::Segment seg;
  try {
    seg = platform::Segment::open_named(name, platform::Access::read_only);
  } catch (const SystemError& e) {
    if (e.error_code() == ENOENT) {
      throw Error("no node '" + node + "' in domain '" + domain + "' (no manifest " + name +
                  "); `directport ls` lists the running nodes");
    }
    throw;
  }
  return from_segment(std::move(seg));
}

ManifestReader ManifestReader::from_segment(platform::Segment seg) {
  // Anyone may create files in /dev/shm: a manifest under our uid's prefix that another user
  // owns is a squatter, never trusted.
  const auto uid = platform::current_uid();
  if (seg.owner_uid() != uid) {
    throw ValidationError("manifest " + seg.name() + " is owned by uid " + std::to_string(seg.owner_uid()) +
                          ", not by us (uid " + std::to_string(uid) + "): refusing it; its owner must remove it");
  }
  validate_manifest_header(seg.data(), seg.size());
  if (static_cast<const ManifestHeader*>(seg.data())->uid != uid) {
    throw ValidationError("manifest " + seg.name() + " names uid " +
                          std::to_string(static_cast<const ManifestHeader*>(seg.data())->uid) + ", not ours");
  }
  ManifestReader r;
  r.seg_ = std::move(seg);
  return r;
}

const ManifestHeader& ManifestReader::header() const {
  return *static_cast<const ManifestHeader*>(seg_.data());
}

platform::ProcessIdentity ManifestReader::owner() const { return {header().pid, header().start_time}; }

nlohmann::json ManifestReader::json() const {
  const auto& h = header();
  std::string buf;
  for (int attempt = 0; attempt < 10000; ++attempt) {
    std::uint64_t g1 = h.generation.load(std::memory_order_acquire);
    if (g1 & 1) {
      std::this_thread::yield();
      continue;
    }
    std::uint64_t n = h.json_size.load(std::memory_order_relaxed);
    if (n > h.json_capacity) throw ValidationError("manifest JSON size exceeds its capacity");
    buf.assign(static_cast<const char*>(seg_.data()) + h.json_offset, n);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (h.generation.load(std::memory_order_relaxed) == g1) {
      // Published header, no JSON yet: the node is still setting up (its broker comes first).
      if (g1 == 0) throw NotReadyError("manifest JSON not written yet (node still starting); retry shortly");
      return parse_manifest_json(buf.data(), buf.size(), h.control_capacity);
    }
  }
  throw TimeoutError("manifest JSON kept changing under the reader (writer stuck mid-update?)");
}

const ControlBlock& ManifestReader::control(std::uint32_t index) const {
  const auto& h = header();
  if (index >= h.control_capacity) throw ValidationError("control block index out of range");
  return *reinterpret_cast<const ControlBlock*>(static_cast<const char*>(seg_.data()) + h.control_offset +
                                                std::size_t(index) * sizeof(ControlBlock));
}

protocol::NodeState ManifestReader::state() const {
  return static_cast<protocol::NodeState>(header().state.load(std::memory_order_acquire));
}

std::int64_t ManifestReader::heartbeat_age_ns() const {
  return platform::monotonic_ns() -
         static_cast<std::int64_t>(header().heartbeat_ns.load(std::memory_order_acquire));
}

Liveness ManifestReader::liveness(std::chrono::nanoseconds stale_after) const {
  if (!platform::is_alive(owner())) return Liveness::dead;
  return heartbeat_age_ns() > stale_after.count() ? Liveness::stuck : Liveness::live;
}

}  // namespace dp
