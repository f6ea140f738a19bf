// Windows platform::Child: exit codes, captured output, argument quoting, bounded waits, signals
// mapped to TerminateProcess, and no orphans (the kill-on-close job).
#include <windows.h>
#include <gtest/gtest.h>

#include <chrono>

#include "directport/core/error.hpp"
#include "directport/platform/child.hpp"
#include "directport/platform/process.hpp"
#include "support.hpp"

namespace dp::platform {
namespace {

using namespace std::chrono_literals;
using wintest::helper_path;

std::string without_cr(std::string s) {
  s.erase(std::remove(s.begin(), s.end(), '\r'), s.end());
  return s;
}

TEST(WinChild, ExitCode) {
  auto c = Child::spawn({helper_path(), "exit", "7"});
  EXPECT_EQ(c.wait_for(20s), 7);
  EXPECT_FALSE(c.running());
  EXPECT_EQ(c.wait_for(0ms), 7) << "the status is kept";
}

TEST(WinChild, ArgumentsArriveUnchanged) {
  const std::vector<std::string> args = {"plain", "two words", "", "quote\"inside", "trailing\\",
                                         "back\\\\slashes\\\" and quote", "tab\there"};
  std::vector<std::string> argv = {helper_path(), "args"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto c = Child::spawn(argv, {true});
  ASSERT_EQ(c.wait_for(20s), static_cast<int>(args.size())) << c.output();
  std::string expect;
  for (auto& a : args) expect += "[" + a + "]\n";
  EXPECT_EQ(without_cr(c.output()), expect);
}

TEST(WinChild, CapturesStdoutAloneOrMergedWithStderr) {
  auto alone = Child::spawn({helper_path(), "out-err"}, {true, false});
  ASSERT_EQ(alone.wait_for(20s), 0);
  EXPECT_EQ(without_cr(alone.output()), "to stdout\n");
  auto merged = Child::spawn({helper_path(), "out-err"}, {true, true});
  ASSERT_EQ(merged.wait_for(20s), 0);
  EXPECT_EQ(without_cr(merged.output()), "to stdout\nto stderr\n");
}

TEST(WinChild, LargeOutputDoesNotDeadlockTheWait) {
  auto c = Child::spawn({helper_path(), "big", "300000"}, {true});
  ASSERT_EQ(c.wait_for(30s), 0);
  EXPECT_EQ(c.output().size(), 300000u);
}

TEST(WinChild, TakeLinesSplitsAndKeepsTheTail) {
  auto c = Child::spawn({helper_path(), "args", "a", "b"}, {true});
  ASSERT_EQ(c.wait_for(20s), 2);
  EXPECT_EQ(c.take_lines(), (std::vector<std::string>{"[a]", "[b]"}));
  EXPECT_TRUE(c.take_lines().empty());
}

TEST(WinChild, MissingProgramExits127) {
  auto c = Child::spawn({"C:\\nonexistent\\program.exe"});
  EXPECT_FALSE(c.running());
  EXPECT_EQ(c.wait_for(10s), 127);
}

TEST(WinChild, TimeoutThenSignalReportsTheSignal) {
  auto c = Child::spawn({helper_path(), "sleep", "30000"});
  EXPECT_FALSE(c.wait_for(50ms)) << "a bounded wait on a running child returns nullopt";
  EXPECT_TRUE(c.running());
  c.signal(10);  // no Windows equivalent: logged, not sent
  EXPECT_FALSE(c.wait_for(100ms));
  c.signal(15);
  EXPECT_EQ(c.wait_for(20s), -15);
}

TEST(WinChild, DestructionKillsARunningChild) {
  int pid = 0;
  std::uint64_t start = 0;
  {
    auto c = Child::spawn({helper_path(), "sleep", "30000"});
    pid = c.pid();
    start = process_start_time(pid);
    EXPECT_TRUE(is_alive({pid, start}));
  }
  EXPECT_FALSE(is_alive({pid, start})) << "the child must be gone";
}

TEST(WinChildMP, GrandchildDiesWithItsParent) {
  // The helper starts a sleeper of its own (in the helper's kill-on-close job) and is then killed:
  // the OS closes the helper's job handle, which must take the sleeper with it.
  auto c = Child::spawn({helper_path(), "grandchild"}, {true});
  ASSERT_TRUE(wintest::wait_until([&] { c.pump(); return c.output().find('\n') != std::string::npos; }, 20s))
      << c.output();
  int grandchild = 0;
  ASSERT_EQ(std::sscanf(c.output().c_str(), "grandchild %d", &grandchild), 1) << c.output();
  ProcessIdentity id{grandchild, process_start_time(grandchild)};
  ASSERT_TRUE(is_alive(id));
  c.signal(9);
  ASSERT_EQ(c.wait_for(20s), -9);
  EXPECT_TRUE(wintest::wait_until([&] { return !is_alive(id); }, 10s)) << "orphan pid " << grandchild;
}

TEST(WinChild, MoveAssignmentKillsTheChildItReplaces) {
  auto a = Child::spawn({helper_path(), "sleep", "30000"});
  ProcessIdentity first{a.pid(), process_start_time(a.pid())};
  a = Child::spawn({helper_path(), "exit", "3"});
  EXPECT_FALSE(is_alive(first)) << "the replaced child must be gone";
  EXPECT_EQ(a.wait_for(20s), 3);
  Child b = std::move(a);
  EXPECT_EQ(b.wait_for(0ms), 3);
  EXPECT_EQ(a.pid(), -1);
}

TEST(WinChild, EmptyArgvIsAPrecondition) { EXPECT_THROW(Child::spawn({}), PreconditionError); }

}  // namespace
}  // namespace dp::platform
