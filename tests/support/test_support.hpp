// Test support: unique names, /dev/shm inspection, bounded waits, and child processes driven
// through line-based pipes (fork() of a lambda, or fork+exec of dp_test_helper).
//
// Free of GoogleTest so that the helper executable can use it too.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace dp::test {

using namespace std::chrono_literals;

// A valid domain name unique to this process and call ("t<pid>x<n><random>"), so that tests
// running in parallel never see each other's manifests.
std::string unique_domain();
// A unique token (valid node/stream/socket name) starting with `stem`.
std::string unique_name(const std::string& stem);

// Names in /dev/shm that belong to `domain` of this uid ("dp.<uid>.<domain>.*").
std::vector<std::string> shm_entries(const std::string& domain);
// Removes them (cleanup after a failed test, so that one failure does not cascade).
void remove_shm_entries(const std::string& domain);

// The seed of this test process: $DP_TEST_SEED if set, else random. Tests print it on failure.
std::uint64_t test_seed();

// Polls `pred` every `step` until it holds or `timeout` passes. Returns its last value.
bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout,
                std::chrono::microseconds step = 1ms);

int count_open_fds();  // entries of /proc/self/fd
int thread_count();    // "Threads:" of /proc/self/status
// Permission string ("r--s", "rw-s", ...) of the mapping of /proc/self/maps holding `addr`.
std::string mapping_perms(const void* addr);

std::string describe_status(int wait_status);

// A bidirectional line channel over two descriptors (owned).
class LineChannel {
 public:
  LineChannel() = default;
  LineChannel(int read_fd, int write_fd) : rfd_(read_fd), wfd_(write_fd) {}
  ~LineChannel();
  LineChannel(LineChannel&& o) noexcept;
  LineChannel& operator=(LineChannel&& o) noexcept;
  LineChannel(const LineChannel&) = delete;
  LineChannel& operator=(const LineChannel&) = delete;

  // Writes `line` plus '\n'. False if the other side is gone.
  bool write_line(const std::string& line);
  // The next line (without '\n'), or nullopt on timeout or EOF (eof() tells which).
  // A negative timeout waits forever.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout);
  // Non-blocking: a complete line if one is available.
  std::optional<std::string> poll_line() { return read_line(0ms); }
  bool eof() const { return eof_; }
  void close_write();

 private:
  int rfd_ = -1, wfd_ = -1;
  std::string buf_;
  bool eof_ = false;
};

// A child process. The destructor kills (SIGKILL) and reaps it if it still runs.
class Child {
 public:
  // Runs `body` in a forked child and _exit()s with its result (exceptions: 100). The caller
  // must be single-threaded (a forked copy of a locked mutex would hang): checked, throws.
  static Child fork(std::function<int(LineChannel&)> body);
  // fork+exec of `argv` with stdin/stdout connected to io(); stderr is inherited.
  static Child spawn(const std::vector<std::string>& argv);
  // spawn() of the dp_test_helper built beside the tests.
  static Child helper(const std::vector<std::string>& args);

  Child() = default;
  ~Child();
  Child(Child&& o) noexcept;
  Child& operator=(Child&& o) noexcept;

  pid_t pid() const { return pid_; }
  LineChannel& io() { return io_; }
  // Reads lines until one starts with `prefix` (others are kept in transcript()); returns the
  // remainder after the prefix and one space, or nullopt on timeout/EOF.
  std::optional<std::string> expect(const std::string& prefix, std::chrono::milliseconds timeout);
  const std::string& transcript() const { return transcript_; }
  void kill(int sig);
  // Waits up to `timeout` for the child to end; its raw wait status, or nullopt if it runs on.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  bool reaped() const { return reaped_; }

 private:
  pid_t pid_ = -1;
  bool reaped_ = true;
  int status_ = 0;
  LineChannel io_;
  std::string transcript_;
};

// Path of dp_test_helper (compiled in by CMake, overridable with $DP_TEST_HELPER).
std::string helper_path();

// Sets (or, with nullptr, unsets) an environment variable for a scope, and puts back what was
// there however the scope ends.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace dp::test
