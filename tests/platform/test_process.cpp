// platform process identity: pid + start time, liveness, clocks.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <thread>

#include "directport/platform/process.hpp"
#include "support/test_support.hpp"

namespace dp::platform {
namespace {

using namespace std::chrono_literals;

std::int64_t pid_max() {
  std::ifstream f("/proc/sys/kernel/pid_max");
  std::int64_t v = 4194304;
  f >> v;
  return v;
}

TEST(Process, SelfIdentity) {
  auto id = self_identity();
  EXPECT_EQ(id.pid, ::getpid());
  EXPECT_NE(id.start_time, 0u);
  EXPECT_EQ(id.start_time, process_start_time(::getpid()));
  EXPECT_EQ(self_identity(), id) << "stable across calls";
  EXPECT_TRUE(is_alive(id));
  EXPECT_EQ(current_uid(), ::getuid());
}

TEST(Process, WrongStartTimeIsNotAlive) {
  auto id = self_identity();
  ProcessIdentity reused{id.pid, id.start_time + 1};
  EXPECT_FALSE(is_alive(reused)) << "a pid with another start time is another process";
  ProcessIdentity older{id.pid, id.start_time - 1};
  EXPECT_FALSE(is_alive(older));
  ProcessIdentity unknown{id.pid, 0};
  EXPECT_TRUE(is_alive(unknown)) << "start time 0 means unknown: the pid alone decides";
}

TEST(Process, NonexistentPids) {
  EXPECT_EQ(process_start_time(pid_max() + 1), 0u);
  EXPECT_EQ(process_start_time(0), 0u);
  EXPECT_EQ(process_start_time(-1), 0u);
  EXPECT_FALSE(is_alive({0, 0}));
  EXPECT_FALSE(is_alive({-5, 0}));
  EXPECT_FALSE(is_alive({pid_max() + 1, 0}));
}

TEST(ProcessMP, ChildIsAliveThenDeadOnceExitedAndReaped) {
  auto child = dp::test::Child::fork([](dp::test::LineChannel& io) {
    auto me = self_identity();
    // self_identity() after fork() must be the child's, not the parent's cached value.
    io.write_line("me " + std::to_string(me.pid) + " " + std::to_string(me.start_time));
    io.read_line(std::chrono::milliseconds(-1));
    return 0;
  });
  auto me = child.expect("me", 10s);
  ASSERT_TRUE(me) << child.transcript();
  long long pid = 0;
  unsigned long long start = 0;
  ASSERT_EQ(std::sscanf(me->c_str(), "%lld %llu", &pid, &start), 2);
  EXPECT_EQ(pid, child.pid());
  ProcessIdentity id{child.pid(), process_start_time(child.pid())};
  EXPECT_EQ(id.start_time, start);
  EXPECT_NE(id, self_identity());
  EXPECT_TRUE(is_alive(id));

  child.io().close_write();  // the child returns
  // Exited but not reaped (a zombie) already counts as dead.
  ASSERT_TRUE(dp::test::wait_until([&] { return !is_alive(id); }, 10s)) << "a zombie is not alive";
  auto st = child.wait(10s);
  ASSERT_TRUE(st);
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << dp::test::describe_status(*st);
  EXPECT_FALSE(is_alive(id));
  EXPECT_EQ(process_start_time(id.pid), 0u);
}

TEST(ProcessMP, KilledChildIsDead) {
  auto child = dp::test::Child::fork([](dp::test::LineChannel& io) -> int {
    io.write_line("up");
    for (;;) ::pause();
  });
  ASSERT_TRUE(child.expect("up", 10s));
  ProcessIdentity id{child.pid(), process_start_time(child.pid())};
  ASSERT_TRUE(is_alive(id));
  child.kill(SIGKILL);
  ASSERT_TRUE(child.wait(10s));
  EXPECT_FALSE(is_alive(id));
}

TEST(Process, ParsesCommandNamesWithSpacesAndParentheses) {
  // Field 2 of /proc/PID/stat is "(comm)" and may hold ") (": the parser must cut after the
  // last ')'. Renaming our own thread exercises it without a helper binary.
  char old[32] = {};
  ASSERT_EQ(::pthread_getname_np(::pthread_self(), old, sizeof old), 0);
  ASSERT_EQ(::pthread_setname_np(::pthread_self(), "a) (b ) Z 1"), 0);
  std::uint64_t t = process_start_time(::getpid());
  ::pthread_setname_np(::pthread_self(), old);
  EXPECT_EQ(t, self_identity().start_time);
}

TEST(Process, Clocks) {
  auto a = monotonic_ns();
  std::this_thread::sleep_for(2ms);
  auto b = monotonic_ns();
  EXPECT_GE(b - a, 1000000);
  EXPECT_GT(realtime_ns(), 1600000000LL * 1000000000LL);  // after 2020
  EXPECT_FALSE(hostname().empty());
}

}  // namespace
}  // namespace dp::platform
