// The other process of the Windows two-process tests. One mode per test; see each branch.
#include <windows.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "directport/core/error.hpp"
#include "directport/platform/child.hpp"
#include "directport/platform/process.hpp"
#include "directport/platform/shm.hpp"
#include "directport/platform/socket.hpp"

using namespace dp::platform;
using namespace std::chrono_literals;

namespace {

std::string arg(int argc, char** argv, int i) { return i < argc ? argv[i] : ""; }

void say(const std::string& line) {
  std::fputs((line + "\n").c_str(), stdout);
  std::fflush(stdout);
}

// pipe-client NAME: connect, receive a segment handle, read it, check it cannot be mapped
// writable, answer with our own segment's handle and what we saw, wait for the server to close.
int pipe_client(const std::string& name) {
  auto sock = LocalSocket::connect(name);
  auto msg = sock.receive(10s);
  if (!msg || msg->fds.size() != 1) return 3;
  std::size_t size = std::strtoull(msg->bytes.c_str() + msg->bytes.find('=') + 1, nullptr, 10);
  std::string rw = "ok";
  try {
    Segment::map_fd(msg->fds[0].dup(), size, Access::read_write);
  } catch (const dp::SystemError& e) {
    rw = e.error_code() == EPERM ? "EPERM" : "errno" + std::to_string(e.error_code());
  }
  auto seg = Segment::map_fd(std::move(msg->fds[0]), size, Access::read_only);
  unsigned long long sum = 0;
  for (std::size_t i = 0; i < size; ++i) sum += static_cast<const unsigned char*>(seg.data())[i];
  auto server = sock.peer_credentials();
  auto mine = Segment::create_anonymous("helper", 8192, /*seal_writes=*/true);
  for (std::size_t i = 0; i < mine.size(); ++i) static_cast<unsigned char*>(mine.data())[i] = static_cast<unsigned char>(i * 7 + 3);
  sock.send("sum=" + std::to_string(sum) + " rw=" + rw + " server_pid=" + std::to_string(server.pid) +
                " server_uid=" + std::to_string(server.uid) + " self_pid=" + std::to_string(::GetCurrentProcessId()),
            {mine.fd().get()});
  // Stay until the server closes, so that our handle reaches it while we are alive.
  while (sock.receive(30s)) {
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = arg(argc, argv, 1);
  try {
    if (mode == "exit") return std::atoi(arg(argc, argv, 2).c_str());
    if (mode == "sleep") {
      ::Sleep(static_cast<DWORD>(std::atoi(arg(argc, argv, 2).c_str())));
      return 0;
    }
    if (mode == "args") {  // one line per argument after "args", then exit with their count
      for (int i = 2; i < argc; ++i) say(std::string("[") + argv[i] + "]");
      return argc - 2;
    }
    if (mode == "out-err") {  // a line on each stream
      say("to stdout");
      std::fputs("to stderr\n", stderr);
      std::fflush(stderr);
      return 0;
    }
    if (mode == "big") {  // N bytes of 'x' on stdout
      std::string s(static_cast<std::size_t>(std::atoll(arg(argc, argv, 2).c_str())), 'x');
      std::fwrite(s.data(), 1, s.size(), stdout);
      std::fflush(stdout);
      return 0;
    }
    if (mode == "pipe-client") return pipe_client(arg(argc, argv, 2));
    if (mode == "connect-exit") {  // connect, then die without a word
      auto s = LocalSocket::connect(arg(argc, argv, 2));
      say("connected");
      ::ExitProcess(0);
    }
    if (mode == "grandchild") {  // start a long sleeper of our own, report its pid, wait to be killed
      auto c = Child::spawn({argv[0], "sleep", "60000"});
      say("grandchild " + std::to_string(c.pid()));
      ::Sleep(60000);
      return 0;
    }
    if (mode == "lock") {  // create a named segment, hold its owner lock, wait to be killed
      auto seg = Segment::create_named(arg(argc, argv, 2), 4096);
      say(seg.try_lock_exclusive() ? "locked" : "not-locked");
      ::Sleep(60000);
      return 0;
    }
    if (mode == "identity") {  // what the platform layer says about us
      auto id = self_identity();
      say("pid " + std::to_string(id.pid) + " start " + std::to_string(id.start_time) + " uid " +
          std::to_string(current_uid()));
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dp_win_helper %s: %s\n", mode.c_str(), e.what());
    return 2;
  }
  std::fprintf(stderr, "dp_win_helper: unknown mode '%s'\n", mode.c_str());
  return 64;
}
