#include "support/test_support.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "directport/core/names.hpp"
#include "directport/platform/process.hpp"
#include "directport/platform/shm.hpp"

namespace dp::test {
namespace {

std::atomic<unsigned> g_counter{0};

std::uint64_t random_u64() {
  std::random_device rd;
  return (std::uint64_t(rd()) << 32) ^ rd();
}

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

std::string unique_domain() { return unique_name("t"); }

std::string unique_name(const std::string& stem) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s%dx%u-%04x", stem.c_str(), static_cast<int>(::getpid()),
                g_counter.fetch_add(1), static_cast<unsigned>(random_u64() & 0xffff));
  return buf;
}

std::vector<std::string> shm_entries(const std::string& domain) {
  return platform::Segment::list(manifest_prefix(domain));
}

void remove_shm_entries(const std::string& domain) {
  for (const auto& n : shm_entries(domain)) platform::Segment::unlink("/" + n);
}

std::uint64_t test_seed() {
  static const std::uint64_t seed = [] {
    if (const char* s = std::getenv("DP_TEST_SEED"); s && *s)
      return std::uint64_t(std::strtoull(s, nullptr, 0));
    return random_u64();
  }();
  return seed;
}

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout,
                std::chrono::microseconds step) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return pred();
    std::this_thread::sleep_for(step);
  }
}

int count_open_fds() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return -1;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(d);
  return n - 1;  // the directory's own descriptor
}

int thread_count() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
  }
  return -1;
}

std::string mapping_perms(const void* addr) {
  auto a = reinterpret_cast<std::uintptr_t>(addr);
  std::ifstream f("/proc/self/maps");
  std::string line;
  while (std::getline(f, line)) {
    std::uintptr_t lo = 0, hi = 0;
    char perms[8] = {};
    if (std::sscanf(line.c_str(), "%" SCNxPTR "-%" SCNxPTR " %7s", &lo, &hi, perms) == 3 &&
        a >= lo && a < hi) {
      return perms;
    }
  }
  return "";
}

std::string describe_status(int st) {
  if (WIFEXITED(st)) return "exited with " + std::to_string(WEXITSTATUS(st));
  if (WIFSIGNALED(st)) {
    return std::string("killed by signal ") + std::to_string(WTERMSIG(st)) + " (" +
           ::strsignal(WTERMSIG(st)) + ")";
  }
  return "status " + std::to_string(st);
}

// ------------------------------------------------------------------ LineChannel

LineChannel::~LineChannel() {
  if (rfd_ >= 0) ::close(rfd_);
  if (wfd_ >= 0) ::close(wfd_);
}

LineChannel::LineChannel(LineChannel&& o) noexcept
    : rfd_(std::exchange(o.rfd_, -1)),
      wfd_(std::exchange(o.wfd_, -1)),
      buf_(std::move(o.buf_)),
      eof_(o.eof_) {}

LineChannel& LineChannel::operator=(LineChannel&& o) noexcept {
  if (this != &o) {
    if (rfd_ >= 0) ::close(rfd_);
    if (wfd_ >= 0) ::close(wfd_);
    rfd_ = std::exchange(o.rfd_, -1);
    wfd_ = std::exchange(o.wfd_, -1);
    buf_ = std::move(o.buf_);
    eof_ = o.eof_;
  }
  return *this;
}

bool LineChannel::write_line(const std::string& line) {
  if (wfd_ < 0) return false;
  std::string s = line + "\n";
  std::size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::write(wfd_, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

std::optional<std::string> LineChannel::read_line(std::chrono::milliseconds timeout) {
  const std::int64_t deadline = now_ms() + timeout.count();
  for (;;) {
    auto nl = buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      return line;
    }
    if (eof_ || rfd_ < 0) return std::nullopt;
    int wait_ms =
        timeout.count() < 0 ? -1 : static_cast<int>(std::max<std::int64_t>(0, deadline - now_ms()));
    pollfd p{rfd_, POLLIN, 0};
    int rc = ::poll(&p, 1, wait_ms);
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) return std::nullopt;
    char chunk[4096];
    ssize_t n = ::read(rfd_, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      eof_ = true;
      continue;  // hand out a last unterminated line? no: lines end with '\n'
    }
    buf_.append(chunk, static_cast<std::size_t>(n));
  }
}

void LineChannel::close_write() {
  if (wfd_ >= 0) ::close(wfd_);
  wfd_ = -1;
}

// ------------------------------------------------------------------ Child

namespace {

void make_pipe(int fds[2]) {
  if (::pipe2(fds, O_CLOEXEC) != 0)
    throw std::runtime_error(std::string("pipe2: ") + std::strerror(errno));
}

// In a fresh child: die with the parent, so that no helper outlives a crashed test.
void die_with_parent(pid_t parent) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(99);
}

}  // namespace

Child Child::fork(std::function<int(LineChannel&)> body) {
  if (int t = thread_count(); t != 1) {
    throw std::logic_error("Child::fork() from a process with " + std::to_string(t) +
                           " threads is unsafe (a copied lock may never be released): create the "
                           "threads after forking, or use Child::spawn()");
  }
  int down[2], up[2];
  make_pipe(down);
  make_pipe(up);
  std::fflush(nullptr);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    die_with_parent(parent);
    ::close(down[1]);
    ::close(up[0]);
    int rc = 100;
    {
      LineChannel io(down[0], up[1]);
      try {
        rc = body(io);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "child %d: exception: %s\n", static_cast<int>(::getpid()), e.what());
      } catch (...) {
        std::fprintf(stderr, "child %d: unknown exception\n", static_cast<int>(::getpid()));
      }
    }
    std::fflush(nullptr);
    ::_exit(rc);
  }
  ::close(down[0]);
  ::close(up[1]);
  Child c;
  c.pid_ = pid;
  c.reaped_ = false;
  c.io_ = LineChannel(up[0], down[1]);
  return c;
}

Child Child::spawn(const std::vector<std::string>& argv) {
  // Everything the child needs is prepared before fork(): between fork and exec only
  // async-signal-safe calls are allowed (the parent may have threads, e.g. a broker).
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  int down[2], up[2];
  make_pipe(down);
  make_pipe(up);
  std::fflush(nullptr);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(99);
    // dup2 clears close-on-exec on the new descriptors; the originals close at exec.
    if (::dup2(down[0], 0) < 0 || ::dup2(up[1], 1) < 0) ::_exit(98);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(down[0]);
  ::close(up[1]);
  Child c;
  c.pid_ = pid;
  c.reaped_ = false;
  c.io_ = LineChannel(up[0], down[1]);
  return c;
}

Child Child::helper(const std::vector<std::string>& args) {
  std::vector<std::string> argv{helper_path()};
  argv.insert(argv.end(), args.begin(), args.end());
  return spawn(argv);
}

Child::~Child() {
  if (!reaped_ && pid_ > 0) {
    ::kill(pid_, SIGKILL);
    int st;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
  }
}

Child::Child(Child&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)),
      reaped_(std::exchange(o.reaped_, true)),
      status_(o.status_),
      io_(std::move(o.io_)),
      transcript_(std::move(o.transcript_)) {}

Child& Child::operator=(Child&& o) noexcept {
  if (this != &o) {
    this->~Child();
    new (this) Child(std::move(o));
  }
  return *this;
}

std::optional<std::string> Child::expect(const std::string& prefix,
                                         std::chrono::milliseconds timeout) {
  const std::int64_t deadline = now_ms() + timeout.count();
  for (;;) {
    auto left = std::chrono::milliseconds(std::max<std::int64_t>(0, deadline - now_ms()));
    auto line = io_.read_line(left);
    if (!line) return std::nullopt;
    transcript_ += *line + "\n";
    if (line->rfind(prefix, 0) == 0) {
      std::string rest = line->substr(prefix.size());
      if (!rest.empty() && rest[0] == ' ') rest.erase(0, 1);
      return rest;
    }
  }
}

void Child::kill(int sig) {
  if (!reaped_ && pid_ > 0) ::kill(pid_, sig);
}

std::optional<int> Child::wait(std::chrono::milliseconds timeout) {
  if (reaped_) return status_;
  const std::int64_t deadline = now_ms() + timeout.count();
  for (;;) {
    int st = 0;
    pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      status_ = st;
      return st;
    }
    if (r < 0 && errno != EINTR) return std::nullopt;
    if (now_ms() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(1ms);
  }
}

std::string helper_path() {
  if (const char* p = std::getenv("DP_TEST_HELPER"); p && *p) return p;
#ifdef DP_TEST_HELPER
  return DP_TEST_HELPER;
#else
  return "dp_test_helper";
#endif
}

}  // namespace dp::test
