// Windows: Child is CreateProcessW, started suspended, put in its own job object with
// JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE and then resumed: when the Child is destroyed, or this
// process dies and the OS closes the job handle, the child (and whatever it started) is killed.
// Captured output is an anonymous pipe, read without blocking (PeekNamedPipe). The child inherits
// exactly its three standard handles (PROC_THREAD_ATTRIBUTE_HANDLE_LIST), nothing else of ours.
#include "directport/platform/child.hpp"

#include <algorithm>
#include <cerrno>
#include <utility>

#include "win32.hpp"

namespace dp::platform {
namespace {

// Signals that end a process by default on Linux; Windows has none of them to deliver.
constexpr int kSigInt = 2, kSigQuit = 3, kSigAbrt = 6, kSigKill = 9, kSigTerm = 15;

// One argument quoted so that CommandLineToArgvW (and the C runtime) give it back unchanged.
std::wstring quote(const std::wstring& a) {
  if (!a.empty() && a.find_first_of(L" \t\n\v\"") == std::wstring::npos) return a;
  std::wstring q = L"\"";
  for (auto it = a.begin();; ++it) {
    std::size_t backslashes = 0;
    while (it != a.end() && *it == L'\\') {
      ++it;
      ++backslashes;
    }
    if (it == a.end()) {
      q.append(backslashes * 2, L'\\');  // they precede the closing quote
      break;
    }
    if (*it == L'"') {
      q.append(backslashes * 2 + 1, L'\\');
      q.push_back(L'"');
    } else {
      q.append(backslashes, L'\\');
      q.push_back(*it);
    }
  }
  q.push_back(L'"');
  return q;
}

// An inheritable copy of one of our standard handles, or none if we have none.
UniqueFd inheritable_std(DWORD which) {
  HANDLE h = ::GetStdHandle(which);
  if (!h || h == INVALID_HANDLE_VALUE) return {};
  HANDLE copy = nullptr;
  if (!::DuplicateHandle(::GetCurrentProcess(), h, ::GetCurrentProcess(), &copy, 0, TRUE, DUPLICATE_SAME_ACCESS)) {
    return {};  // e.g. a console pseudo-handle on old systems: the child goes without
  }
  return UniqueFd(copy);
}

bool is_missing_program(DWORD err) {
  return err == ERROR_FILE_NOT_FOUND || err == ERROR_PATH_NOT_FOUND || err == ERROR_BAD_EXE_FORMAT ||
         err == ERROR_DIRECTORY || err == ERROR_INVALID_NAME || err == ERROR_ACCESS_DENIED;
}

}  // namespace

Child Child::spawn(const std::vector<std::string>& argv, Options opts) {
  DP_EXPECTS(!argv.empty(), "Child::spawn needs a program");
  std::wstring app = win::widen(argv[0]);
  std::wstring cmdline;
  for (const auto& a : argv) {
    if (!cmdline.empty()) cmdline.push_back(L' ');
    cmdline += quote(win::widen(a));
  }

  UniqueFd job(::CreateJobObjectW(nullptr, nullptr));
  if (!job) win::throw_last_error("creating a job object for " + argv[0]);
  JOBOBJECT_EXTENDED_LIMIT_INFORMATION limits{};
  limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
  if (!::SetInformationJobObject(job.get(), JobObjectExtendedLimitInformation, &limits, sizeof limits)) {
    win::throw_last_error("making the job of " + argv[0] + " kill on close");
  }

  // Standard handles: inheritable copies, closed here once the child has its own.
  UniqueFd out_read, out_write, in = inheritable_std(STD_INPUT_HANDLE), err;
  if (opts.capture_stdout) {
    SECURITY_ATTRIBUTES sa{sizeof sa, nullptr, TRUE};
    HANDLE r = nullptr, w = nullptr;
    if (!::CreatePipe(&r, &w, &sa, 0)) win::throw_last_error("creating the output pipe of " + argv[0]);
    out_read = UniqueFd(r);
    out_write = UniqueFd(w);
    ::SetHandleInformation(r, HANDLE_FLAG_INHERIT, 0);  // our end stays ours
  } else {
    out_write = inheritable_std(STD_OUTPUT_HANDLE);
  }
  if (opts.capture_stdout && opts.merge_stderr) {
    err = out_write.dup();
    ::SetHandleInformation(err.get(), HANDLE_FLAG_INHERIT, HANDLE_FLAG_INHERIT);
  } else {
    err = inheritable_std(STD_ERROR_HANDLE);
  }
  std::vector<HANDLE> inherit;
  for (const UniqueFd* h : {&in, &out_write, &err}) {
    if (*h && std::find(inherit.begin(), inherit.end(), h->get()) == inherit.end()) inherit.push_back(h->get());
  }

  SIZE_T attr_size = 0;
  ::InitializeProcThreadAttributeList(nullptr, 1, 0, &attr_size);
  std::vector<unsigned char> attr_buf(attr_size);
  auto* attrs = reinterpret_cast<LPPROC_THREAD_ATTRIBUTE_LIST>(attr_buf.data());
  if (!::InitializeProcThreadAttributeList(attrs, 1, 0, &attr_size)) win::throw_last_error("preparing to start " + argv[0]);
  struct AttrGuard {
    LPPROC_THREAD_ATTRIBUTE_LIST a;
    ~AttrGuard() { ::DeleteProcThreadAttributeList(a); }
  } attr_guard{attrs};
  if (!inherit.empty() &&
      !::UpdateProcThreadAttribute(attrs, 0, PROC_THREAD_ATTRIBUTE_HANDLE_LIST, inherit.data(),
                                   inherit.size() * sizeof(HANDLE), nullptr, nullptr)) {
    win::throw_last_error("limiting the handles " + argv[0] + " inherits");
  }

  STARTUPINFOEXW si{};
  si.StartupInfo.cb = sizeof si;
  si.StartupInfo.dwFlags = STARTF_USESTDHANDLES;
  si.StartupInfo.hStdInput = in.get();
  si.StartupInfo.hStdOutput = out_write.get();
  si.StartupInfo.hStdError = err.get();
  si.lpAttributeList = attrs;
  PROCESS_INFORMATION pi{};
  if (!::CreateProcessW(app.c_str(), cmdline.data(), nullptr, nullptr, inherit.empty() ? FALSE : TRUE,
                        CREATE_SUSPENDED | CREATE_UNICODE_ENVIRONMENT | EXTENDED_STARTUPINFO_PRESENT, nullptr,
                        nullptr, &si.StartupInfo, &pi)) {
    DWORD e = ::GetLastError();
    if (!is_missing_program(e)) win::throw_win32("starting " + argv[0], e);
    // What a failed exec is on Linux: a child that "exited" with 127, never running.
    Child c;
    c.status_ = 127;
    return c;
  }
  UniqueFd process(pi.hProcess), thread(pi.hThread);
  if (!::AssignProcessToJobObject(job.get(), pi.hProcess)) {
    DWORD e = ::GetLastError();
    ::TerminateProcess(pi.hProcess, 126);
    win::throw_win32("putting " + argv[0] + " in its job object (it would outlive us)", e);
  }
  if (::ResumeThread(pi.hThread) == static_cast<DWORD>(-1)) {
    DWORD e = ::GetLastError();
    ::TerminateProcess(pi.hProcess, 126);
    win::throw_win32("resuming " + argv[0], e);
  }
  Child c;
  c.pid_ = static_cast<int>(pi.dwProcessId);
  c.process_ = std::move(process);
  c.job_ = std::move(job);
  c.stdout_ = std::move(out_read);  // our copies of the child's ends close as this returns
  return c;
}

void Child::kill_and_reap() noexcept {
  if (running()) {
    ::TerminateProcess(process_.get(), 128 + kSigKill);
    ::WaitForSingleObject(process_.get(), 10000);
  }
  pid_ = -1;
  process_.reset();
  job_.reset();  // last: whatever the child started dies with it
}

Child::~Child() { kill_and_reap(); }

Child::Child(Child&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)),
      stdout_(std::move(o.stdout_)),
      out_(std::move(o.out_)),
      status_(o.status_),
      process_(std::move(o.process_)),
      job_(std::move(o.job_)),
      killed_by_(std::exchange(o.killed_by_, 0)) {}

Child& Child::operator=(Child&& o) noexcept {
  if (this != &o) {
    kill_and_reap();
    pid_ = std::exchange(o.pid_, -1);
    stdout_ = std::move(o.stdout_);
    out_ = std::move(o.out_);
    status_ = o.status_;
    process_ = std::move(o.process_);
    job_ = std::move(o.job_);
    killed_by_ = std::exchange(o.killed_by_, 0);
  }
  return *this;
}

void Child::drain(int timeout_ms) {
  const DWORD start = ::GetTickCount();
  while (stdout_) {
    DWORD avail = 0;
    if (!::PeekNamedPipe(stdout_.get(), nullptr, 0, nullptr, &avail, nullptr)) {
      stdout_.reset();  // every write end is closed: EOF
      return;
    }
    if (avail > 0) {
      char buf[4096];
      DWORD n = 0;
      if (::ReadFile(stdout_.get(), buf, std::min<DWORD>(avail, sizeof buf), &n, nullptr) && n > 0) {
        out_.append(buf, n);
      }
      return;
    }
    if (static_cast<int>(::GetTickCount() - start) >= timeout_ms) return;
    ::Sleep(1);
  }
}

std::optional<int> Child::wait_for(std::chrono::milliseconds timeout) {
  if (status_) return status_;
  DP_EXPECTS(pid_ > 0 && process_, "wait_for() on no child");
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (::WaitForSingleObject(process_.get(), stdout_ ? 0 : 2) == WAIT_OBJECT_0) {
      DWORD code = 0;
      ::GetExitCodeProcess(process_.get(), &code);
      // As on Linux: minus the signal when signal() ended it; otherwise the exit code (a crash's
      // NTSTATUS, e.g. 0xC0000005, reads as a negative int).
      status_ = killed_by_ && code == DWORD(128 + killed_by_) ? -killed_by_ : static_cast<int>(code);
      // Collect what is left (grandchildren may hold the pipe: bounded).
      for (int i = 0; i < 100 && stdout_; ++i) drain(10);
      return status_;
    }
    if (timeout.count() >= 0 && std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    if (stdout_) drain(5);
  }
}

std::vector<std::string> Child::take_lines() {
  std::vector<std::string> lines;
  std::size_t start = 0;
  for (std::size_t nl; (nl = out_.find('\n', start)) != std::string::npos; start = nl + 1) {
    std::size_t end = nl > start && out_[nl - 1] == '\r' ? nl - 1 : nl;  // text-mode CRLF
    lines.push_back(out_.substr(start, end - start));
  }
  out_.erase(0, start);
  if (!stdout_ && !out_.empty()) {  // EOF: the last line has no newline
    lines.push_back(std::move(out_));
    out_.clear();
  }
  return lines;
}

void Child::signal(int sig) noexcept {
  if (!running() || sig == 0) return;
  if (sig == kSigInt || sig == kSigQuit || sig == kSigAbrt || sig == kSigKill || sig == kSigTerm) {
    if (::TerminateProcess(process_.get(), static_cast<UINT>(128 + sig))) {
      killed_by_ = sig;
    } else {
      log_cleanup_failure("TerminateProcess of child " + std::to_string(pid_) + ": " +
                          win::error_text(::GetLastError()));
    }
    return;
  }
  log_cleanup_failure("Child::signal(" + std::to_string(sig) + "): Windows has no such signal to send to pid " +
                      std::to_string(pid_) + "; nothing sent");
}

}  // namespace dp::platform
