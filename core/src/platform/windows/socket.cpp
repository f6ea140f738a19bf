// Windows: the broker's transport is a message-mode named pipe, \\.\pipe\NAME.
//
// - Every instance is created with a DACL granting the current user only, rejects remote
//   clients, and reads and writes whole messages (PIPE_TYPE_MESSAGE, PIPE_READMODE_MESSAGE).
//   All handles are overlapped, so that receive() can time out and accept() can poll.
// - A listener is its pending instance plus the ConnectNamedPipe in flight on it; accept()
//   hands the connected instance over and puts a fresh one in its place. FILE_FLAG_FIRST_PIPE_
//   INSTANCE makes a second listen() on a taken name fail, like bind() on Linux.
// - Handle passing: send() duplicates each handle into the peer's process (DuplicateHandle with
//   the peer process opened PROCESS_DUP_HANDLE when the connection was made) and sends the
//   values the peer now owns in a small header; receive() adopts them. A message that is never
//   received leaves its handles open in the receiving process until it exits (on Linux the
//   socket would close them).
// - Peer identity: GetNamedPipeClientProcessId / GetNamedPipeServerProcessId give the pid; the
//   peer process's token gives the user SID, reported through uid_of_sid() (win32.hpp).
//
// Wire format of one pipe message: u32 magic "DPW1", u32 handle count, u64 handle values (in the
// receiver's process), then the payload bytes.
#include "directport/platform/socket.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>

#include "win32.hpp"

namespace dp::platform {

namespace win {

// Everything LocalSocket::PipeState holds (the nested name is private to LocalSocket; the helpers
// below work on this base).
struct PipeBase {
  // Listener: the name, and the ConnectNamedPipe in flight on the pending instance (fd_).
  std::wstring path;
  UniqueFd event;
  OVERLAPPED ov{};
  HANDLE instance = nullptr;  // not owned: the LocalSocket's fd_
  bool pending = false;       // ConnectNamedPipe in flight
  bool ready = false;         // a client is connected to the pending instance
  // Connection: the peer's process, to duplicate handles into and to read its identity.
  DWORD peer_pid = 0;
  UniqueFd peer_process;

  PipeBase() = default;
  PipeBase(const PipeBase&) = delete;
  PipeBase& operator=(const PipeBase&) = delete;
  ~PipeBase() {
    // The kernel writes `ov` when the cancelled connect completes: wait for that before freeing.
    if (pending && instance) {
      ::CancelIoEx(instance, &ov);
      for (int i = 0; i < 500 && !HasOverlappedIoCompleted(&ov); ++i) ::Sleep(10);
    }
  }
};

}  // namespace win

struct LocalSocket::PipeState : win::PipeBase {};

namespace {

constexpr std::uint32_t kWireMagic = 0x31575044;  // "DPW1"
constexpr std::size_t kWireHeader = 8;
constexpr std::size_t kWireMax = kWireHeader + 8 * kMaxMessageFds + kMaxMessageBytes;
constexpr DWORD kPipeBuffer = static_cast<DWORD>(kWireMax);
constexpr DWORD kPipeMode = PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS;

std::wstring pipe_path(const std::string& name) {
  if (name.empty() || name.size() > 200 || name.find('\\') != std::string::npos) {
    throw PreconditionError("pipe name '" + name + "' is empty, longer than 200 bytes or holds a backslash");
  }
  return L"\\\\.\\pipe\\" + win::widen(name);
}

UniqueFd new_instance(const std::wstring& path, bool first, const std::string& what) {
  win::OwnerOnlySecurity sec;
  DWORD open = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED | (first ? FILE_FLAG_FIRST_PIPE_INSTANCE : 0);
  ::SetLastError(ERROR_SUCCESS);
  HANDLE h = ::CreateNamedPipeW(path.c_str(), open, kPipeMode, PIPE_UNLIMITED_INSTANCES, kPipeBuffer, kPipeBuffer,
                                0, sec.get());
  DWORD err = ::GetLastError();
  if (h == INVALID_HANDLE_VALUE) {
    if (first && err == ERROR_ACCESS_DENIED) {
      win::throw_win32("listening on pipe " + what + ": the name is taken", err, EADDRINUSE);
    }
    win::throw_win32("creating an instance of pipe " + what, err);
  }
  // Wine ignores FILE_FLAG_FIRST_PIPE_INSTANCE and adds an instance to an existing pipe: refuse
  // a "first" instance that has company, as Windows does.
  DWORD instances = 0;
  if (first && (err == ERROR_ALREADY_EXISTS ||
                (::GetNamedPipeHandleStateW(h, nullptr, &instances, nullptr, nullptr, nullptr, 0) && instances > 1))) {
    ::CloseHandle(h);
    win::throw_win32("listening on pipe " + what + ": the name is taken", ERROR_ACCESS_DENIED, EADDRINUSE);
  }
  return UniqueFd(h);
}

// Starts ConnectNamedPipe on the pending instance. Returns with st.pending or st.ready set.
void arm(win::PipeBase& st, HANDLE instance, const std::string& what);

// Fills in the peer of a connected instance.
void set_peer(win::PipeBase& st, HANDLE h, bool server_end) {
  ULONG pid = 0;
  BOOL ok = server_end ? ::GetNamedPipeClientProcessId(h, &pid) : ::GetNamedPipeServerProcessId(h, &pid);
  if (ok && pid != 0) {
    st.peer_pid = pid;
    // Opened now, while the connection is fresh, and kept: later uses cannot hit a reused pid.
    st.peer_process = UniqueFd(::OpenProcess(PROCESS_DUP_HANDLE | PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE,
                                             FALSE, pid));
  }
}

bool is_server_end(HANDLE h) {
  DWORD flags = 0;
  return ::GetNamedPipeInfo(h, &flags, nullptr, nullptr, nullptr) && (flags & PIPE_SERVER_END);
}

bool is_eof_error(DWORD err) {
  return err == ERROR_BROKEN_PIPE || err == ERROR_PIPE_NOT_CONNECTED || err == ERROR_NO_DATA;
}

void close_in_peer(HANDLE peer, const std::vector<HANDLE>& remote) noexcept {
  for (HANDLE r : remote) ::DuplicateHandle(peer, r, nullptr, nullptr, 0, FALSE, DUPLICATE_CLOSE_SOURCE);
}

// One overlapped ReadFile of up to `cap` bytes. Returns the Win32 error (0 on success) and the
// byte count; throws TimeoutError when `timeout_ms` (INFINITE or >= 0) runs out first.
DWORD read_once(HANDLE h, char* buf, DWORD cap, DWORD timeout_ms, DWORD& n) {
  UniqueFd ev = win::new_event();
  OVERLAPPED ov{};
  ov.hEvent = ev.get();
  n = 0;
  if (::ReadFile(h, buf, cap, nullptr, &ov)) {
    ::GetOverlappedResult(h, &ov, &n, FALSE);
    return 0;
  }
  DWORD err = ::GetLastError();
  if (err != ERROR_IO_PENDING) return err;
  bool timed_out = false;
  if (::WaitForSingleObject(ev.get(), timeout_ms) == WAIT_TIMEOUT) {
    ::CancelIoEx(h, &ov);
    timed_out = true;
  }
  if (::GetOverlappedResult(h, &ov, &n, TRUE)) return 0;  // it completed before the cancel
  err = ::GetLastError();
  if (timed_out && err == ERROR_OPERATION_ABORTED) {
    throw TimeoutError("no message from peer within " + std::to_string(timeout_ms) + " ms");
  }
  return err;
}

void arm(win::PipeBase& st, HANDLE instance, const std::string& what) {
  for (;;) {
    ::ResetEvent(st.event.get());
    st.ov = OVERLAPPED{};
    st.ov.hEvent = st.event.get();
    st.instance = instance;
    st.pending = st.ready = false;
    if (::ConnectNamedPipe(instance, &st.ov)) {
      st.ready = true;
      return;
    }
    DWORD err = ::GetLastError();
    if (err == ERROR_IO_PENDING) {
      st.pending = true;
      return;
    }
    if (err == ERROR_PIPE_CONNECTED) {  // a client came between creation and this call
      st.ready = true;
      ::SetEvent(st.event.get());
      return;
    }
    if (err == ERROR_NO_DATA) {  // a client came and went already
      ::DisconnectNamedPipe(instance);
      continue;
    }
    win::throw_win32("waiting for clients on pipe " + what, err);
  }
}

// A connection's state, its peer filled in (State: LocalSocket::PipeState, named by the caller).
template <typename State>
std::shared_ptr<State> connection_state(HANDLE h, bool server_end) {
  auto st = std::make_shared<State>();
  set_peer(*st, h, server_end);
  return st;
}

}  // namespace

bool authorize_peer(const PeerCredentials& peer, std::uint32_t self_uid,
                    const std::vector<std::uint32_t>& allow_uids) {
  if (peer.pid <= 0) return false;  // credentials unavailable: never trust
  if (peer.uid == win::kForeignUid) return false;  // a SID we cannot name with a number
  if (peer.uid == self_uid) return true;
  return std::find(allow_uids.begin(), allow_uids.end(), peer.uid) != allow_uids.end();
}

LocalSocket LocalSocket::listen(const std::string& name, int /*backlog: one pending instance, clients retry*/) {
  auto st = std::make_shared<PipeState>();
  st->path = pipe_path(name);
  st->event = win::new_event();
  LocalSocket s(new_instance(st->path, /*first=*/true, name));
  arm(*st, s.fd_.get(), name);
  s.pipe_ = std::move(st);
  return s;
}

LocalSocket LocalSocket::connect(const std::string& name) {
  const std::wstring path = pipe_path(name);
  const DWORD deadline = ::GetTickCount() + 10000;
  HANDLE h = INVALID_HANDLE_VALUE;
  for (;;) {
    // Identification only: a server may learn who we are but cannot act as us.
    h = ::CreateFileW(path.c_str(), GENERIC_READ | GENERIC_WRITE, 0, nullptr, OPEN_EXISTING,
                      FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION, nullptr);
    if (h != INVALID_HANDLE_VALUE) break;
    DWORD err = ::GetLastError();
    if (err == ERROR_FILE_NOT_FOUND) {
      win::throw_win32("connecting to broker pipe " + name + " (nobody listens)", err, ECONNREFUSED);
    }
    if (err != ERROR_PIPE_BUSY) win::throw_win32("connecting to broker pipe " + name, err);
    // Every instance is taken until the listener's next accept(): wait for a free one, bounded.
    if (static_cast<LONG>(::GetTickCount() - deadline) >= 0) {
      win::throw_win32("connecting to broker pipe " + name + " (no free instance within 10 s)", err, EAGAIN);
    }
    ::WaitNamedPipeW(path.c_str(), 100);
  }
  UniqueFd fd(h);
  DWORD mode = PIPE_READMODE_MESSAGE;
  if (!::SetNamedPipeHandleState(h, &mode, nullptr, nullptr)) win::throw_last_error("setting message mode on " + name);
  LocalSocket s(std::move(fd));
  s.pipe_ = connection_state<PipeState>(h, /*server_end=*/false);
  return s;
}

std::pair<LocalSocket, LocalSocket> LocalSocket::pair() {
  static std::atomic<unsigned> counter{0};
  LARGE_INTEGER t{};
  ::QueryPerformanceCounter(&t);
  const std::string name = "dp-pair." + std::to_string(::GetCurrentProcessId()) + "." +
                           std::to_string(counter++) + "." + std::to_string(t.QuadPart);
  const std::wstring path = pipe_path(name);
  UniqueFd server = new_instance(path, /*first=*/true, name);
  HANDLE c = ::CreateFileW(path.c_str(), GENERIC_READ | GENERIC_WRITE, 0, nullptr, OPEN_EXISTING,
                           FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION, nullptr);
  if (c == INVALID_HANDLE_VALUE) win::throw_last_error("connecting the two ends of a socket pair");
  UniqueFd client(c);
  DWORD mode = PIPE_READMODE_MESSAGE;
  if (!::SetNamedPipeHandleState(c, &mode, nullptr, nullptr)) win::throw_last_error("setting message mode on a socket pair");
  PipeState st;
  st.event = win::new_event();
  arm(st, server.get(), name);
  if (!st.ready) {
    DWORD n = 0;
    if (::WaitForSingleObject(st.event.get(), 5000) != WAIT_OBJECT_0 || !::GetOverlappedResult(server.get(), &st.ov, &n, FALSE)) {
      win::throw_last_error("connecting the two ends of a socket pair");
    }
    st.pending = false;
  }
  LocalSocket a(std::move(server)), b(std::move(client));
  a.pipe_ = connection_state<PipeState>(a.fd_.get(), true);
  b.pipe_ = connection_state<PipeState>(b.fd_.get(), false);
  return {std::move(a), std::move(b)};
}

std::optional<LocalSocket> LocalSocket::accept() {
  DP_EXPECTS(pipe_ && !pipe_->path.empty(), "accept() on a socket that does not listen");
  PipeState& st = *pipe_;
  const std::string what = win::narrow(st.path);
  if (!st.ready) {
    DWORD n = 0;
    if (!::GetOverlappedResult(fd_.get(), &st.ov, &n, FALSE)) {
      DWORD err = ::GetLastError();
      if (err == ERROR_IO_INCOMPLETE) return std::nullopt;
      // The client connected and vanished: recycle the instance.
      st.pending = false;
      ::DisconnectNamedPipe(fd_.get());
      arm(st, fd_.get(), what);
      return std::nullopt;
    }
    st.pending = false;
  }
  // Put a fresh instance in place before handing this one over: the name is never unserved.
  UniqueFd connected = std::exchange(fd_, new_instance(st.path, /*first=*/false, what));
  st.ready = false;
  arm(st, fd_.get(), what);
  LocalSocket c(std::move(connected));
  c.pipe_ = connection_state<PipeState>(c.fd_.get(), /*server_end=*/true);
  return c;
}

void LocalSocket::send(const std::string& bytes, const std::vector<NativeHandle>& fds, bool nonblocking) {
  DP_EXPECTS(bytes.size() <= kMaxMessageBytes, "message exceeds the 64 KiB bound");
  DP_EXPECTS(fds.size() <= kMaxMessageFds, "too many descriptors in one message");
  DP_EXPECTS(static_cast<bool>(fd_), "send() on a closed socket");
  if (!pipe_) pipe_ = connection_state<PipeState>(fd_.get(), is_server_end(fd_.get()));
  HANDLE peer = pipe_->peer_process.get();
  std::vector<HANDLE> remote;
  if (!fds.empty() && !peer) {
    throw SystemError("passing handles to pipe peer pid " + std::to_string(pipe_->peer_pid) +
                          ": its process could not be opened (gone, or another user's)",
                      ESRCH);
  }
  for (NativeHandle h : fds) {
    HANDLE r = nullptr;
    if (!::DuplicateHandle(::GetCurrentProcess(), h, peer, &r, 0, FALSE, DUPLICATE_SAME_ACCESS)) {
      DWORD err = ::GetLastError();
      close_in_peer(peer, remote);
      win::throw_win32("duplicating a handle into pipe peer pid " + std::to_string(pipe_->peer_pid), err);
    }
    remote.push_back(r);
  }
  std::string wire(kWireHeader + 8 * remote.size() + bytes.size(), '\0');
  const std::uint32_t head[2] = {kWireMagic, static_cast<std::uint32_t>(remote.size())};
  std::memcpy(wire.data(), head, sizeof head);
  for (std::size_t i = 0; i < remote.size(); ++i) {
    const auto v = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(remote[i]));
    std::memcpy(wire.data() + kWireHeader + 8 * i, &v, 8);
  }
  if (!bytes.empty()) std::memcpy(wire.data() + kWireHeader + 8 * remote.size(), bytes.data(), bytes.size());

  UniqueFd ev = win::new_event();
  OVERLAPPED ov{};
  ov.hEvent = ev.get();
  DWORD n = 0, err = 0;
  if (!::WriteFile(fd_.get(), wire.data(), static_cast<DWORD>(wire.size()), nullptr, &ov)) {
    err = ::GetLastError();
    if (err == ERROR_IO_PENDING) {
      err = 0;
      if (nonblocking && ::WaitForSingleObject(ev.get(), 0) == WAIT_TIMEOUT) {
        // A peer that does not read: take the message back rather than wait.
        ::CancelIoEx(fd_.get(), &ov);
        if (!::GetOverlappedResult(fd_.get(), &ov, &n, TRUE)) {
          err = ::GetLastError();
          close_in_peer(peer, remote);
          if (err == ERROR_OPERATION_ABORTED) {
            throw SystemError("sending a broker message: the peer's pipe is full", EAGAIN);
          }
          win::throw_win32("sending a broker message", err, is_eof_error(err) ? EPIPE : 0);
        }
      } else if (!::GetOverlappedResult(fd_.get(), &ov, &n, TRUE)) {
        err = ::GetLastError();
      }
    }
  } else {
    ::GetOverlappedResult(fd_.get(), &ov, &n, FALSE);
  }
  if (err) {
    close_in_peer(peer, remote);
    win::throw_win32("sending a broker message", err, is_eof_error(err) ? EPIPE : 0);
  }
}

std::optional<Message> LocalSocket::receive(std::chrono::milliseconds timeout) {
  DP_EXPECTS(static_cast<bool>(fd_), "receive() on a closed socket");
  const DWORD wait = timeout.count() < 0 ? INFINITE : static_cast<DWORD>(std::min<long long>(timeout.count(), 0x7fffffff));
  std::string buf(kWireMax + 1, '\0');
  DWORD n = 0;
  DWORD err = read_once(fd_.get(), buf.data(), static_cast<DWORD>(buf.size()), wait, n);
  bool oversized = false;
  if (err == ERROR_MORE_DATA) {
    // Drain the rest of the message so that the next receive starts at a boundary.
    oversized = true;
    std::string rest(64 * 1024, '\0');
    DWORD m = 0;
    while (read_once(fd_.get(), rest.data(), static_cast<DWORD>(rest.size()), INFINITE, m) == ERROR_MORE_DATA) {
    }
    n = static_cast<DWORD>(buf.size());
  } else if (err) {
    if (is_eof_error(err)) return std::nullopt;  // peer closed or died
    win::throw_win32("receiving a broker message", err);
  }
  if (n < kWireHeader) throw ValidationError("peer sent a " + std::to_string(n) + "-byte message, shorter than the header");
  std::uint32_t head[2];
  std::memcpy(head, buf.data(), sizeof head);
  if (head[0] != kWireMagic) throw ValidationError("peer sent a message without the DirectPort pipe header");
  Message out;
  // Adopt the handles first (owned now, closed on any error below). Values that are not open
  // handles of ours, or repeat, are not adopted: closing them could close something else.
  const std::size_t listed = std::min<std::size_t>(head[1], (n - kWireHeader) / 8);
  bool bad_handle = false;
  for (std::size_t i = 0; i < listed && i < kMaxMessageFds; ++i) {
    std::uint64_t v;
    std::memcpy(&v, buf.data() + kWireHeader + 8 * i, 8);
    HANDLE h = reinterpret_cast<HANDLE>(static_cast<std::uintptr_t>(v));
    DWORD flags = 0;
    bool dup = std::any_of(out.fds.begin(), out.fds.end(), [&](const UniqueFd& f) { return f.get() == h; });
    if (!h || dup || !::GetHandleInformation(h, &flags)) {
      bad_handle = true;
      continue;
    }
    out.fds.emplace_back(h);
  }
  if (head[1] > kMaxMessageFds) throw ValidationError("peer sent more than 16 handles in one message");
  if (listed < head[1]) throw ValidationError("peer's message is shorter than its handle list");
  if (bad_handle) throw ValidationError("peer's message names a handle that is not open in this process");
  const std::size_t payload = n - kWireHeader - 8 * listed;
  if (oversized || payload > kMaxMessageBytes) throw ValidationError("peer sent a message over the 64 KiB bound");
  out.bytes.assign(buf.data() + kWireHeader + 8 * listed, payload);
  return out;
}

bool LocalSocket::peer_closed() {
  DWORD avail = 0;
  if (::PeekNamedPipe(fd_.get(), nullptr, 0, nullptr, &avail, nullptr)) return false;
  return is_eof_error(::GetLastError());
}

PeerCredentials LocalSocket::peer_credentials() const {
  DP_EXPECTS(static_cast<bool>(fd_), "peer_credentials() of a closed socket");
  std::shared_ptr<PipeState> st = pipe_ ? pipe_ : connection_state<PipeState>(fd_.get(), is_server_end(fd_.get()));
  PeerCredentials c;
  c.uid = c.gid = win::kForeignUid;
  if (!st->peer_process) return c;  // pid 0: unavailable, never trusted
  HANDLE token = nullptr;
  if (!::OpenProcessToken(st->peer_process.get(), TOKEN_QUERY, &token)) return c;
  UniqueFd owned(token);
  auto read = [&](TOKEN_INFORMATION_CLASS cls) {
    DWORD len = 0;
    ::GetTokenInformation(token, cls, nullptr, 0, &len);
    std::vector<unsigned char> b(len);
    if (len == 0 || !::GetTokenInformation(token, cls, b.data(), len, &len)) b.clear();
    return b;
  };
  auto user = read(TokenUser);
  if (user.empty()) return c;
  c.pid = st->peer_pid;
  c.uid = win::uid_of_sid(reinterpret_cast<TOKEN_USER*>(user.data())->User.Sid);
  auto group = read(TokenPrimaryGroup);
  if (!group.empty()) c.gid = win::uid_of_sid(reinterpret_cast<TOKEN_PRIMARY_GROUP*>(group.data())->PrimaryGroup);
  return c;
}

}  // namespace dp::platform
