#include "directport/core/discovery.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <ctime>

#include "directport/core/error.hpp"
#include "directport/core/names.hpp"

namespace dp {
namespace {

// True when nobody holds the owner lock: the owner is gone. The probe's own lock is dropped
// when `seg` closes.
bool owner_gone(platform::Segment& seg) { return seg.try_lock_exclusive(); }

std::int64_t age_seconds(const platform::Segment& seg) {
  struct stat st {};
  if (::fstat(seg.fd().get(), &st) != 0) return 0;
  return static_cast<std::int64_t>(::time(nullptr) - st.st_ctime);
}

}  // namespace

std::vector<NodeEntry> list_nodes(const std::string& domain) {
  std::string prefix = manifest_prefix(domain);
  std::vector<NodeEntry> out;
  for (const auto& seg_name : platform::Segment::list(prefix)) {
    NodeEntry e;
    e.name = seg_name.substr(prefix.size());
    e.segment = "/" + seg_name;
    if (!is_valid_name(e.name)) continue;  // not ours to interpret
    platform::Segment seg;
    try {
      seg = platform::Segment::open_named(e.segment, platform::Access::read_only);
    } catch (const SystemError&) {
      continue;  // vanished meanwhile
    }
    bool gone = false;
    try {
      gone = owner_gone(seg);
    } catch (const SystemError&) {
    }
    try {
      auto r = ManifestReader::from_segment(std::move(seg));
      e.owner = r.owner();
      e.heartbeat_age_ns = r.heartbeat_age_ns();
      e.state = r.state();
      e.liveness = gone ? Liveness::dead : r.liveness();
      try {
        e.doc = r.json();
      } catch (const Error& ex) {
        e.problem = ex.what();
      }
    } catch (const Error& ex) {
      e.problem = ex.what();
      if (gone) e.liveness = Liveness::dead;
    }
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<std::string> remove_stale(const std::string& domain, std::chrono::seconds grace) {
  std::string prefix = manifest_prefix(domain);
  std::vector<std::string> removed;
  for (const auto& seg_name : platform::Segment::list(prefix)) {
    std::string name = "/" + seg_name;
    platform::Segment seg;
    try {
      seg = platform::Segment::open_named(name, platform::Access::read_only);
    } catch (const SystemError&) {
      continue;
    }
    try {
      if (seg.owner_uid() != platform::current_uid()) continue;  // not ours to judge or remove
    } catch (const SystemError&) {
      continue;
    }
    bool valid = true;
    try {
      validate_manifest_header(seg.data(), seg.size());
    } catch (const ValidationError&) {
      valid = false;
    } catch (const NotReadyError&) {  // header not published: being created, or its creator died first
      valid = false;
    }
    bool gone = false;
    try {
      gone = owner_gone(seg);
    } catch (const SystemError&) {
      continue;
    }
    // A live owner holds its lock from creation on; an unlocked, invalid segment that is young
    // may be one being created right now.
    if (!gone) continue;
    if (!valid && age_seconds(seg) < grace.count()) continue;
    if (!seg.still_named()) continue;  // replaced by a new instance meanwhile
    try {
      platform::Segment::unlink(name);
      removed.push_back(seg_name.substr(prefix.size()));
    } catch (const SystemError& e) {
      log_cleanup_failure(e.what());
    }
  }
  return removed;
}

}  // namespace dp
