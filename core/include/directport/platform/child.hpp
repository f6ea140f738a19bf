// A child process running another program (fork + exec), owned: destruction kills and reaps it,
// and it is killed too if this process dies (PR_SET_PDEATHSIG; on Windows CreateProcessW in a
// kill-on-close job object). Used by the demo, benchmarks and multi-process tests, which must
// never leave orphans behind.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "directport/platform/fd.hpp"

namespace dp::platform {

// The path of the executable regular file `name` in PATH, then in `extra_dirs`; a name with a
// '/' is returned as given. Empty when there is none (never a file in the working directory).
std::string find_program(const std::string& name, const std::vector<std::string>& extra_dirs = {});

class Child {
 public:
  struct Options {
    bool capture_stdout = false;  // otherwise the child shares our stdout
    bool merge_stderr = false;    // with capture_stdout: stderr goes into the same pipe
  };

  // argv[0] is the program: a path, or a name looked up in PATH. Throws SystemError if fork
  // fails; a failed exec makes the child exit with 127 (Windows: CreateProcessW finding no
  // program reports 127 the same way).
  static Child spawn(const std::vector<std::string>& argv, Options opts);
  static Child spawn(const std::vector<std::string>& argv) { return spawn(argv, Options{}); }

  Child() = default;
  ~Child();
  Child(Child&& o) noexcept;
  Child& operator=(Child&& o) noexcept;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // Waits up to `timeout` (negative: forever) for the child to exit, collecting its stdout
  // meanwhile. Returns the exit code, or minus the signal that ended it; nullopt on timeout.
  std::optional<int> wait_for(std::chrono::milliseconds timeout);
  // Windows has no signals: SIGINT/SIGQUIT/SIGABRT/SIGKILL/SIGTERM end the child with
  // TerminateProcess (reported as -sig), 0 does nothing, any other is logged and not sent.
  void signal(int sig) noexcept;
  // For callers multiplexing several children: the captured output's descriptor (kNoHandle if
  // none or at EOF), a non-blocking read of what is there, and the complete lines read so far.
  NativeHandle output_fd() const noexcept { return stdout_.get(); }
  void pump() { drain(0); }
  std::vector<std::string> take_lines();
  bool running() const noexcept { return pid_ > 0 && !status_; }
  int pid() const noexcept { return pid_; }
  const std::string& output() const noexcept { return out_; }

 private:
  void drain(int timeout_ms);
  void kill_and_reap() noexcept;
  int pid_ = -1;
  UniqueFd stdout_;
  std::string out_;
  std::optional<int> status_;
#if defined(_WIN32)
  UniqueFd process_;  // the process object (CreateProcessW)
  UniqueFd job_;      // kill-on-close job: the child dies with us
  int killed_by_ = 0;  // the signal() that ended it, reported as -signal
#endif
};

}  // namespace dp::platform
