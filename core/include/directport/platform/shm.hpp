// Shared-memory segments: named (discoverable, e.g. manifests) and anonymous (handed to peers
// as a descriptor over the broker, e.g. stream memory and fence pages).
//
// Ownership: a Segment owns its mapping and, for named segments it created, optionally the name
// (unlinked on destruction). Windows: named file mappings in the session's Local\ namespace with
// a DACL for the current user only; a name lives while any handle to it is open (docs/windows.md). Not thread-safe; the mapped bytes are shared and synchronised by
// the protocol above this layer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "directport/platform/fd.hpp"

namespace dp::platform {

enum class Access { read_only, read_write };

class Segment {
 public:
  Segment() noexcept = default;
  ~Segment();
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  Segment(Segment&& o) noexcept;
  Segment& operator=(Segment&& o) noexcept;

  // Creates a named segment (mode 0600, exclusive). Throws SystemError with EEXIST if the name
  // is taken. `name` is a full OS name such as "/dp.1000.default.cam".
  static Segment create_named(const std::string& name, std::size_t size);
  // Opens an existing named segment and maps all of it. The size is whatever the segment has
  // now (a reader validates it).
  static Segment open_named(const std::string& name, Access access);
  // Creates an anonymous segment (mode 0600). If `seal_writes` is set, once mapped here nobody
  // (this process included) can create a new writable mapping of it, nor resize it: peers can
  // only read.
  static Segment create_anonymous(const std::string& debug_name, std::size_t size,
                                  bool seal_writes);
  // Maps a segment received as a descriptor; `expected_size` must not exceed the object's size.
  static Segment map_fd(UniqueFd fd, std::size_t expected_size, Access access);

  static void unlink(const std::string& name);  // ENOENT is not an error
  // Names (without leading '/') of the named segments that start with `prefix`.
  static std::vector<std::string> list(const std::string& prefix);

  void* data() const noexcept { return addr_; }
  std::size_t size() const noexcept { return size_; }
  const UniqueFd& fd() const noexcept { return fd_; }
  const std::string& name() const noexcept { return name_; }
  Access access() const noexcept { return access_; }
  bool sealed() const noexcept { return sealed_; }
  // The user id that owns the underlying object (a reader checks it before trusting a name).
  std::uint32_t owner_uid() const;
  // Keep the name on destruction (another component takes over cleanup).
  void disown_name() noexcept { unlink_on_close_ = false; }

  // Advisory whole-segment lock held for the owner's lifetime; the OS drops it when the owner
  // dies. try_lock_exclusive() returns false if another open file description holds it.
  bool try_lock_exclusive();
  // Same object as the name currently refers to? (Guards unlink races.)
  bool still_named() const;

 private:
  void reset() noexcept;

  UniqueFd fd_;
  void* addr_ = nullptr;
  std::size_t size_ = 0;
  std::string name_;
  Access access_ = Access::read_only;
  bool unlink_on_close_ = false;
  bool sealed_ = false;
#if defined(_WIN32)
  UniqueFd lock_;         // the owner lock (a single-instance pipe, see windows/shm.cpp), once taken
  bool created_ = false;  // created by name here: a disowned name is kept alive by this process
#endif
};

}  // namespace dp::platform
