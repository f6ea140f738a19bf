// Local message sockets with descriptor passing and peer credentials (the broker's transport).
//
// Linux: AF_UNIX SOCK_SEQPACKET in the abstract namespace (no file to leak), SCM_RIGHTS for
// descriptors, SO_PEERCRED for the peer's pid/uid. Message boundaries are preserved; EOF means the
// peer closed or died.
//
// Windows: a message-mode named pipe \\.\pipe\NAME whose DACL admits only the current user;
// the "descriptors" of a message are handles the sender duplicates into the receiving process;
// the peer's identity is its pid (GetNamedPipeClient/ServerProcessId) and its token's user SID.
// See docs/windows.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "directport/platform/fd.hpp"

namespace dp::platform {

struct PeerCredentials {
  std::int64_t pid = 0;
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
};

// The decision a broker takes on a connecting peer: same uid as ours, or listed in `allow_uids`.
// Pure, so that it can be tested with forged credentials.
bool authorize_peer(const PeerCredentials& peer, std::uint32_t self_uid,
                    const std::vector<std::uint32_t>& allow_uids);

struct Message {
  std::string bytes;
  std::vector<UniqueFd> fds;
};

inline constexpr std::size_t kMaxMessageBytes = 64 * 1024;
inline constexpr std::size_t kMaxMessageFds = 16;

class LocalSocket {
 public:
  LocalSocket() = default;
  explicit LocalSocket(UniqueFd fd) : fd_(std::move(fd)) {}

  // Listens on `name` (abstract namespace, no leading NUL). Throws if the name is taken.
  static LocalSocket listen(const std::string& name, int backlog = 64);
  // Connects to `name`; throws SystemError (ECONNREFUSED if nobody listens).
  static LocalSocket connect(const std::string& name);
  static std::pair<LocalSocket, LocalSocket> pair();

  // Accepts one pending connection, or nullopt if none is pending (non-blocking).
  std::optional<LocalSocket> accept();

  // Sends one message. With `nonblocking`, a full socket (a peer that does not read) throws
  // SystemError(EAGAIN) instead of waiting.
  void send(const std::string& bytes, const std::vector<NativeHandle>& fds = {},
            bool nonblocking = false);
  // Receives one message; nullopt on EOF (peer gone). Throws TimeoutError after `timeout`
  // (negative = wait forever), ValidationError on oversized messages or too many descriptors.
  std::optional<Message> receive(std::chrono::milliseconds timeout);
  // Non-blocking check for EOF without consuming a message.
  bool peer_closed();

  PeerCredentials peer_credentials() const;
  NativeHandle fd() const noexcept { return fd_.get(); }
  explicit operator bool() const noexcept { return static_cast<bool>(fd_); }

 private:
  UniqueFd fd_;
#if defined(_WIN32)
  // A pipe has no listening object apart from its instances: a listener keeps its name and the
  // instance waiting for the next client; a connection keeps its peer's process (to duplicate
  // handles into). Defined in platform/windows/socket.cpp.
  struct PipeState;
  std::shared_ptr<PipeState> pipe_;
#endif
};

}  // namespace dp::platform
