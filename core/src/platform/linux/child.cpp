#include "directport/platform/child.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string>
#include <utility>

#include "directport/core/error.hpp"

namespace dp::platform {
std::string find_program(const std::string& name, const std::vector<std::string>& extra_dirs) {
  if (name.find('/') != std::string::npos) return name;
  std::vector<std::string> dirs;
  const char* path = std::getenv("PATH");
  const std::string p = path && *path ? path : "/usr/local/bin:/usr/bin:/bin";
  for (std::size_t a = 0, b; a <= p.size(); a = b + 1) {
    b = p.find(':', a);
    if (b == std::string::npos) b = p.size();
    dirs.push_back(b > a ? p.substr(a, b - a) : std::string("."));
  }
  dirs.insert(dirs.end(), extra_dirs.begin(), extra_dirs.end());
  struct stat st {};
  for (auto& d : dirs) {
    const std::string candidate = d + "/" + name;
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return {};
}

Child Child::spawn(const std::vector<std::string>& argv, Options opts) {
  DP_EXPECTS(!argv.empty(), "Child::spawn needs a program");
  // Everything the child needs is prepared before fork: after it only async-signal-safe calls.
  // Looked up here, before fork (execvp may allocate, which a forked child of a threaded process
  // must not). Unfound: the child exits 127 without an exec, as a shell would.
  const std::string program = find_program(argv[0]);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  int p[2] = {-1, -1};
  if (opts.capture_stdout) DP_POSIX_CHECK(::pipe2(p, O_CLOEXEC), "pipe2");
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    int err = errno;
    if (p[0] >= 0) {
      ::close(p[0]);
      ::close(p[1]);
    }
    throw_system("fork for " + argv[0], err);
  }
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the parent
    if (::getppid() != parent) _exit(126);  // the parent died before prctl took effect
    if (p[1] >= 0) ::dup2(p[1], 1);         // dup2 clears O_CLOEXEC on the copy
    if (p[1] >= 0 && opts.merge_stderr) ::dup2(p[1], 2);
    if (!program.empty()) ::execv(program.c_str(), args.data());
    _exit(127);
  }
  Child c;
  c.pid_ = pid;
  if (p[0] >= 0) {
    ::close(p[1]);
    c.stdout_ = UniqueFd(p[0]);
  }
  return c;
}

void Child::kill_and_reap() noexcept {
  if (running()) {
    ::kill(pid_, SIGKILL);
    int st;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
  }
  pid_ = -1;
}

Child::~Child() { kill_and_reap(); }

Child::Child(Child&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)), stdout_(std::move(o.stdout_)), out_(std::move(o.out_)), status_(o.status_) {}

Child& Child::operator=(Child&& o) noexcept {
  if (this != &o) {
    kill_and_reap();
    pid_ = std::exchange(o.pid_, -1);
    stdout_ = std::move(o.stdout_);
    out_ = std::move(o.out_);
    status_ = o.status_;
  }
  return *this;
}

void Child::drain(int timeout_ms) {
  if (!stdout_) return;
  pollfd pf{stdout_.get(), POLLIN, 0};
  if (::poll(&pf, 1, timeout_ms) <= 0) return;
  char buf[4096];
  ssize_t n = ::read(stdout_.get(), buf, sizeof buf);
  if (n > 0) out_.append(buf, static_cast<std::size_t>(n));
  if (n == 0) stdout_.reset();  // EOF
}

std::optional<int> Child::wait_for(std::chrono::milliseconds timeout) {
  if (status_) return status_;
  DP_EXPECTS(pid_ > 0, "wait_for() on no child");
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int st = 0;
    pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
      // Collect what is left (grandchildren may hold the pipe: bounded).
      for (int i = 0; i < 100 && stdout_; ++i) drain(10);
      return status_;
    }
    if (r < 0 && errno != EINTR) throw_system("waitpid", errno);
    if (timeout.count() >= 0 && std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    if (stdout_) {
      drain(5);
    } else {
      ::usleep(2000);
    }
  }
}

std::vector<std::string> Child::take_lines() {
  std::vector<std::string> lines;
  std::size_t start = 0;
  for (std::size_t nl; (nl = out_.find('\n', start)) != std::string::npos; start = nl + 1) {
    lines.push_back(out_.substr(start, nl - start));
  }
  out_.erase(0, start);
  if (!stdout_ && !out_.empty()) {  // EOF: the last line has no newline
    lines.push_back(std::move(out_));
    out_.clear();
  }
  return lines;
}

void Child::signal(int sig) noexcept {
  if (running()) ::kill(pid_, sig);
}

}  // namespace dp::platform
