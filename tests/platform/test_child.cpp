// platform::Child: exit codes, captured output, bounded waits, and no orphans.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>

#include "directport/core/error.hpp"
#include "directport/platform/child.hpp"
#include "directport/platform/process.hpp"

namespace dp::platform {
namespace {

using namespace std::chrono_literals;

TEST(Child, CapturesStdoutAndExitCode) {
  auto c = Child::spawn({"/bin/sh", "-c", "echo hello; echo world; exit 7"}, {true});
  auto rc = c.wait_for(10s);
  ASSERT_TRUE(rc);
  EXPECT_EQ(*rc, 7);
  EXPECT_EQ(c.output(), "hello\nworld\n");
  EXPECT_FALSE(c.running());
}

TEST(Child, LargeOutputDoesNotDeadlockTheWait) {
  // More than a pipe buffer: the wait must drain while it waits.
  auto c = Child::spawn({"/bin/sh", "-c", "head -c 300000 /dev/zero | tr '\\\\0' x"}, {true});
  auto rc = c.wait_for(20s);
  ASSERT_TRUE(rc);
  EXPECT_EQ(*rc, 0);
  EXPECT_EQ(c.output().size(), 300000u);
}

TEST(Child, MissingProgramExits127) {
  auto c = Child::spawn({"/nonexistent/program"});
  EXPECT_EQ(c.wait_for(10s), 127);
}

TEST(Child, TimeoutThenSignalReportsTheSignal) {
  auto c = Child::spawn({"/bin/sleep", "30"});
  EXPECT_FALSE(c.wait_for(50ms)) << "a bounded wait on a running child returns nullopt";
  EXPECT_TRUE(c.running());
  c.signal(SIGTERM);
  EXPECT_EQ(c.wait_for(10s), -SIGTERM);
}

TEST(Child, DestructionKillsAndReapsARunningChild) {
  int pid = 0;
  {
    auto c = Child::spawn({"/bin/sleep", "30"});
    pid = c.pid();
    EXPECT_TRUE(is_alive({pid, 0}));
  }
  EXPECT_FALSE(is_alive({pid, 0})) << "the child must be gone (killed and reaped)";
}

TEST(Child, EmptyArgvIsAPrecondition) { EXPECT_THROW(Child::spawn({}), PreconditionError); }

TEST(Child, AProgramNamedWithoutASlashIsFoundInPath) {
  auto c = Child::spawn({"sh", "-c", "exit 5"}, {true});
  EXPECT_EQ(c.wait_for(10s), 5);
  auto missing = Child::spawn({"directport-no-such-program-xyz"}, {true});
  EXPECT_EQ(missing.wait_for(10s), 127);
}

}  // namespace
}  // namespace dp::platform
