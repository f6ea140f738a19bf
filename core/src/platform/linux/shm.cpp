#include "directport/platform/shm.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "directport/core/error.hpp"

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

namespace dp::platform {
namespace {

void* map(int fd, std::size_t size, Access access, const std::string& what) {
  if (size == 0) return nullptr;
  int prot = access == Access::read_write ? PROT_READ | PROT_WRITE : PROT_READ;
  void* p = ::mmap(nullptr, size, prot, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) throw_system("mapping " + what, errno);
  return p;
}

std::size_t fd_size(int fd, const std::string& what) {
  struct stat st {};
  DP_POSIX_CHECK(::fstat(fd, &st), "fstat of " + what);
  return static_cast<std::size_t>(st.st_size);
}

}  // namespace

Segment::~Segment() { reset(); }

Segment::Segment(Segment&& o) noexcept
    : fd_(std::move(o.fd_)),
      addr_(std::exchange(o.addr_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      name_(std::move(o.name_)),
      access_(o.access_),
      unlink_on_close_(std::exchange(o.unlink_on_close_, false)),
      sealed_(o.sealed_) {}

Segment& Segment::operator=(Segment&& o) noexcept {
  if (this != &o) {
    reset();
    fd_ = std::move(o.fd_);
    addr_ = std::exchange(o.addr_, nullptr);
    size_ = std::exchange(o.size_, 0);
    name_ = std::move(o.name_);
    access_ = o.access_;
    unlink_on_close_ = std::exchange(o.unlink_on_close_, false);
    sealed_ = o.sealed_;
  }
  return *this;
}

void Segment::reset() noexcept {
  if (addr_ && ::munmap(addr_, size_) != 0) log_cleanup_failure("munmap of " + name_);
  addr_ = nullptr;
  size_ = 0;
  if (unlink_on_close_ && !name_.empty() && ::shm_unlink(name_.c_str()) != 0 && errno != ENOENT) {
    log_cleanup_failure("shm_unlink(" + name_ + ")");
  }
  unlink_on_close_ = false;
  fd_.reset();
}

Segment Segment::create_named(const std::string& name, std::size_t size) {
  DP_EXPECTS(size > 0, "a shared-memory segment needs a non-zero size");
  int raw = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (raw < 0) throw_system("creating shared-memory segment " + name, errno);
  Segment s;
  s.fd_ = UniqueFd(raw);
  s.name_ = name;
  s.unlink_on_close_ = true;
  s.access_ = Access::read_write;
  // The umask cannot widen 0600, but make the mode explicit regardless of how it was created.
  DP_POSIX_CHECK(::fchmod(raw, 0600), "setting mode 0600 on " + name);
  DP_POSIX_CHECK(::ftruncate(raw, static_cast<off_t>(size)), "sizing " + name);
  s.addr_ = map(raw, size, Access::read_write, name);
  s.size_ = size;
  return s;
}

Segment Segment::open_named(const std::string& name, Access access) {
  int flags = (access == Access::read_write ? O_RDWR : O_RDONLY) | O_CLOEXEC;
  int raw = ::shm_open(name.c_str(), flags, 0);
  if (raw < 0) throw_system("opening shared-memory segment " + name, errno);
  Segment s;
  s.fd_ = UniqueFd(raw);
  s.name_ = name;
  s.access_ = access;
  s.size_ = fd_size(raw, name);
  s.addr_ = map(raw, s.size_, access, name);
  return s;
}

Segment Segment::create_anonymous(const std::string& debug_name, std::size_t size,
                                  bool seal_writes) {
  DP_EXPECTS(size > 0, "a shared-memory segment needs a non-zero size");
  int raw = DP_POSIX_CHECK(::memfd_create(debug_name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING),
                           "memfd_create(" + debug_name + ")");
  Segment s;
  s.fd_ = UniqueFd(raw);
  s.name_ = debug_name;
  s.access_ = Access::read_write;
  // A memfd has no name to open, but /proc/PID/fd/N reopens it for whoever passes the ptrace
  // check, with the inode's mode (0777 from memfd_create): owner only, like named segments.
  DP_POSIX_CHECK(::fchmod(raw, 0600), "setting mode 0600 on " + debug_name);
  DP_POSIX_CHECK(::ftruncate(raw, static_cast<off_t>(size)), "sizing " + debug_name);
  s.addr_ = map(raw, size, Access::read_write, debug_name);
  s.size_ = size;
  if (!seal_writes) {
    // Peers map it too: its size must never change under them (a shrink is SIGBUS in the reader).
    DP_POSIX_CHECK(::fcntl(raw, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), "sealing the size of " + debug_name);
  }
  if (seal_writes) {
    // F_SEAL_FUTURE_WRITE (Linux 5.1+) keeps our mapping writable and refuses new writable ones.
    const int size_seals = F_SEAL_SHRINK | F_SEAL_GROW;
    if (::fcntl(raw, F_ADD_SEALS, size_seals | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) == 0) {
      s.sealed_ = true;
    } else if (errno == EINVAL) {
      DP_POSIX_CHECK(::fcntl(raw, F_ADD_SEALS, size_seals | F_SEAL_SEAL), "sealing the size of " + debug_name);
    } else {
      throw_system("sealing " + debug_name, errno);
    }
  }
  return s;
}

Segment Segment::map_fd(UniqueFd fd, std::size_t expected_size, Access access) {
  DP_EXPECTS(static_cast<bool>(fd), "map_fd() needs a descriptor");
  int seals = ::fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
    throw ValidationError("received segment is not size-sealed (F_SEAL_SHRINK): its owner could shrink it "
                          "under our mapping");
  }
  std::size_t actual = fd_size(fd.get(), "a received segment");
  if (actual < expected_size) {
    throw ValidationError("received segment holds " + std::to_string(actual) +
                          " bytes but the manifest promises " + std::to_string(expected_size));
  }
  Segment s;
  s.name_ = "fd:" + std::to_string(fd.get());
  s.access_ = access;
  s.size_ = expected_size;
  s.addr_ = map(fd.get(), expected_size, access, s.name_);
  s.fd_ = std::move(fd);
  return s;
}

void Segment::unlink(const std::string& name) {
  if (::shm_unlink(name.c_str()) != 0 && errno != ENOENT) {
    throw_system("removing shared-memory segment " + name, errno);
  }
}

std::vector<std::string> Segment::list(const std::string& prefix) {
  std::vector<std::string> out;
  DIR* d = ::opendir("/dev/shm");
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.compare(0, prefix.size(), prefix) == 0) out.push_back(n);
  }
  ::closedir(d);
  return out;
}

bool Segment::try_lock_exclusive() {
  DP_EXPECTS(static_cast<bool>(fd_), "locking an empty segment");
  if (::flock(fd_.get(), LOCK_EX | LOCK_NB) == 0) return true;
  if (errno == EWOULDBLOCK) return false;
  throw_system("locking " + name_, errno);
}

std::uint32_t Segment::owner_uid() const {
  struct stat st {};
  DP_POSIX_CHECK(::fstat(fd_.get(), &st), "fstat of " + name_);
  return static_cast<std::uint32_t>(st.st_uid);
}

bool Segment::still_named() const {
  if (name_.empty() || name_[0] != '/') return false;
  struct stat a {}, b {};
  if (::fstat(fd_.get(), &a) != 0) return false;
  if (::stat(("/dev/shm" + name_).c_str(), &b) != 0) return false;
  return a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}

}  // namespace dp::platform
