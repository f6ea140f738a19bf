// Windows process identity: pid + creation time, liveness of a child process, uid, clocks.
#include <windows.h>
#include <gtest/gtest.h>

#include <thread>

#include "directport/platform/child.hpp"
#include "directport/platform/process.hpp"
#include "support.hpp"

namespace dp::platform {
namespace {

using namespace std::chrono_literals;

TEST(WinProcess, SelfIdentity) {
  auto id = self_identity();
  EXPECT_EQ(id.pid, static_cast<std::int64_t>(::GetCurrentProcessId()));
  EXPECT_NE(id.start_time, 0u);
  EXPECT_EQ(id.start_time, process_start_time(id.pid));
  EXPECT_EQ(self_identity(), id) << "stable across calls";
  EXPECT_TRUE(is_alive(id));
}

TEST(WinProcess, WrongStartTimeIsNotAlive) {
  auto id = self_identity();
  EXPECT_FALSE(is_alive({id.pid, id.start_time + 1})) << "a pid with another start time is another process";
  EXPECT_FALSE(is_alive({id.pid, id.start_time - 1}));
  EXPECT_TRUE(is_alive({id.pid, 0})) << "start time 0 means unknown: the pid alone decides";
}

TEST(WinProcess, NonexistentPids) {
  EXPECT_EQ(process_start_time(0), 0u);
  EXPECT_EQ(process_start_time(-1), 0u);
  EXPECT_EQ(process_start_time(std::int64_t(1) << 40), 0u);
  EXPECT_EQ(process_start_time(0x7ffffffc), 0u);
  EXPECT_FALSE(is_alive({0, 0}));
  EXPECT_FALSE(is_alive({-5, 0}));
}

TEST(WinProcess, UidIsTheRidOfOurTokenUser) {
  HANDLE token = nullptr;
  ASSERT_TRUE(::OpenProcessToken(::GetCurrentProcess(), TOKEN_QUERY, &token));
  unsigned char buf[256];
  DWORD len = 0;
  ASSERT_TRUE(::GetTokenInformation(token, TokenUser, buf, sizeof buf, &len));
  ::CloseHandle(token);
  PSID sid = reinterpret_cast<TOKEN_USER*>(buf)->User.Sid;
  DWORD rid = *::GetSidSubAuthority(sid, *::GetSidSubAuthorityCount(sid) - 1u);
  EXPECT_EQ(current_uid(), rid);
  EXPECT_NE(current_uid(), 0xFFFFFFFEu);
}

TEST(WinProcessMP, ChildIsAliveThenDeadOnceExited) {
  auto child = Child::spawn({wintest::helper_path(), "sleep", "400"});
  ASSERT_TRUE(child.running());
  ProcessIdentity id{child.pid(), process_start_time(child.pid())};
  ASSERT_NE(id.start_time, 0u);
  EXPECT_NE(id, self_identity());
  EXPECT_TRUE(is_alive(id));
  EXPECT_GE(id.start_time, self_identity().start_time) << "the child started after us";
  // Exited while our Child still holds its process object: dead all the same (the zombie case).
  ASSERT_TRUE(wintest::wait_until([&] { return !is_alive(id); }, 20s)) << "an exited process is not alive";
  EXPECT_EQ(child.wait_for(10s), 0);
  EXPECT_EQ(process_start_time(id.pid), 0u);
}

TEST(WinProcessMP, KilledChildIsDead) {
  auto child = Child::spawn({wintest::helper_path(), "sleep", "60000"});
  ProcessIdentity id{child.pid(), process_start_time(child.pid())};
  ASSERT_TRUE(is_alive(id));
  child.signal(9);
  ASSERT_TRUE(child.wait_for(20s));
  EXPECT_FALSE(is_alive(id));
}

TEST(WinProcessMP, HelperSeesTheSameIdentityAsWeDo) {
  auto child = Child::spawn({wintest::helper_path(), "identity"}, {true});
  ASSERT_EQ(child.wait_for(20s), 0) << child.output();
  long long pid = 0;
  unsigned long long start = 0, uid = 0;
  ASSERT_EQ(std::sscanf(child.output().c_str(), "pid %lld start %llu uid %llu", &pid, &start, &uid), 3)
      << child.output();
  EXPECT_EQ(pid, child.pid());
  EXPECT_EQ(uid, current_uid());
  EXPECT_NE(start, 0u);
}

TEST(WinProcess, Clocks) {
  auto a = monotonic_ns();
  std::this_thread::sleep_for(5ms);
  auto b = monotonic_ns();
  EXPECT_GE(b - a, 1000000);
  EXPECT_GT(realtime_ns(), 1600000000LL * 1000000000LL);  // after 2020
  EXPECT_LT(realtime_ns(), 4102444800LL * 1000000000LL);  // before 2100
  EXPECT_FALSE(hostname().empty());
}

}  // namespace
}  // namespace dp::platform
