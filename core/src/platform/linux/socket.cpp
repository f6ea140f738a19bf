#include "directport/platform/socket.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "directport/core/error.hpp"

namespace dp::platform {
namespace {

socklen_t make_address(const std::string& name, sockaddr_un& addr) {
  // Abstract namespace: sun_path[0] = '\0', then the name, no terminator.
  if (name.empty() || name.size() + 1 > sizeof(addr.sun_path)) {
    throw PreconditionError("socket name '" + name + "' is empty or longer than " +
                            std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
  }
  std::memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path + 1, name.data(), name.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
}

UniqueFd new_socket(int extra_flags = 0) {
  return UniqueFd(DP_POSIX_CHECK(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | extra_flags, 0),
                                 "creating a local socket"));
}

}  // namespace

bool authorize_peer(const PeerCredentials& peer, std::uint32_t self_uid,
                    const std::vector<std::uint32_t>& allow_uids) {
  if (peer.pid <= 0) return false;  // credentials unavailable: never trust
  if (peer.uid == self_uid) return true;
  return std::find(allow_uids.begin(), allow_uids.end(), peer.uid) != allow_uids.end();
}

LocalSocket LocalSocket::listen(const std::string& name, int backlog) {
  // Non-blocking: accept() drains pending connections and returns nullopt when none is left.
  UniqueFd fd = new_socket(SOCK_NONBLOCK);
  sockaddr_un addr{};
  socklen_t len = make_address(name, addr);
  DP_POSIX_CHECK(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len),
                 "binding broker socket @" + name);
  DP_POSIX_CHECK(::listen(fd.get(), backlog), "listening on @" + name);
  return LocalSocket(std::move(fd));
}

LocalSocket LocalSocket::connect(const std::string& name) {
  UniqueFd fd = new_socket();
  sockaddr_un addr{};
  socklen_t len = make_address(name, addr);
  DP_POSIX_CHECK(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), len),
                 "connecting to broker socket @" + name);
  return LocalSocket(std::move(fd));
}

std::pair<LocalSocket, LocalSocket> LocalSocket::pair() {
  int sv[2];
  DP_POSIX_CHECK(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), "socketpair");
  return {LocalSocket(UniqueFd(sv[0])), LocalSocket(UniqueFd(sv[1]))};
}

std::optional<LocalSocket> LocalSocket::accept() {
  int c = ::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (c < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) {
      return std::nullopt;
    }
    throw_system("accepting a broker connection", errno);
  }
  // Accepted sockets are used blocking with poll-guarded receives.
  int flags = ::fcntl(c, F_GETFL);
  ::fcntl(c, F_SETFL, flags & ~O_NONBLOCK);
  return LocalSocket(UniqueFd(c));
}

void LocalSocket::send(const std::string& bytes, const std::vector<int>& fds, bool nonblocking) {
  DP_EXPECTS(bytes.size() <= kMaxMessageBytes, "message exceeds the 64 KiB bound");
  DP_EXPECTS(fds.size() <= kMaxMessageFds, "too many descriptors in one message");
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxMessageFds)];
  if (!fds.empty()) {
    std::memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  DP_POSIX_CHECK(::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0)),
                 "sending a broker message");
}

std::optional<Message> LocalSocket::receive(std::chrono::milliseconds timeout) {
  pollfd p{fd_.get(), POLLIN, 0};
  int rc = DP_POSIX_CHECK(::poll(&p, 1, static_cast<int>(timeout.count())), "poll");
  if (rc == 0) throw TimeoutError("no message from peer within " + std::to_string(timeout.count()) + " ms");
  std::string buf(kMaxMessageBytes + 1, '\0');
  iovec iov{buf.data(), buf.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxMessageFds)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(fd_.get(), &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == ECONNRESET) return std::nullopt;
    throw_system("receiving a broker message", errno);
  }
  Message out;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        out.fds.emplace_back(fd);  // owned now, closed on any error below
      }
    }
  }
  if (n == 0 && out.fds.empty()) return std::nullopt;  // EOF
  if (msg.msg_flags & MSG_CTRUNC) throw ValidationError("peer sent more than 16 descriptors in one message");
  if (msg.msg_flags & MSG_TRUNC || static_cast<std::size_t>(n) > kMaxMessageBytes) {
    throw ValidationError("peer sent a message over the 64 KiB bound");
  }
  buf.resize(static_cast<std::size_t>(n));
  out.bytes = std::move(buf);
  return out;
}

bool LocalSocket::peer_closed() {
  pollfd p{fd_.get(), POLLIN, 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLHUP | POLLERR)) return true;
  char c;
  ssize_t n = ::recv(fd_.get(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno == ECONNRESET);
}

PeerCredentials LocalSocket::peer_credentials() const {
  ucred cred{};
  socklen_t len = sizeof cred;
  DP_POSIX_CHECK(::getsockopt(fd_.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len),
                 "reading peer credentials (SO_PEERCRED)");
  return {cred.pid, cred.uid, cred.gid};
}

}  // namespace dp::platform
