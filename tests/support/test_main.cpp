// main() of every test executable: GoogleTest plus a per-test watchdog, so that a hang (a
// deadlock in the code under test) fails that one test in bounded time with its name instead of
// stalling the whole run. $DP_TEST_WATCHDOG_S sets the bound (default 30 s, 0 disables).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "support/test_support.hpp"

namespace {

char g_current[512] = "(none)";
unsigned g_limit_s = 30;

void on_alarm(int) {
  const char* a = "\n*** watchdog: test ";
  const char* b = " did not finish within the bound ($DP_TEST_WATCHDOG_S); aborting the process\n";
  (void)!::write(2, a, std::strlen(a));
  (void)!::write(2, g_current, std::strlen(g_current));
  (void)!::write(2, b, std::strlen(b));
  ::_exit(124);
}

class Watchdog : public ::testing::EmptyTestEventListener {
  void OnTestStart(const ::testing::TestInfo& t) override {
    std::snprintf(g_current, sizeof g_current, "%s.%s", t.test_suite_name(), t.name());
    ::alarm(g_limit_s);
  }
  void OnTestEnd(const ::testing::TestInfo&) override { ::alarm(0); }
};

class SeedPrinter : public ::testing::EmptyTestEventListener {
  void OnTestEnd(const ::testing::TestInfo& t) override {
    if (t.result() && t.result()->Failed()) {
      std::fprintf(stderr, "(reproduce with DP_TEST_SEED=%llu)\n",
                   static_cast<unsigned long long>(dp::test::test_seed()));
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // A helper that died must show up as a failed expectation, not kill us when we write to it.
  ::signal(SIGPIPE, SIG_IGN);
  if (const char* s = std::getenv("DP_TEST_WATCHDOG_S"); s && *s)
    g_limit_s = static_cast<unsigned>(std::atoi(s));
  if (g_limit_s > 0) {
    struct sigaction sa {};
    sa.sa_handler = on_alarm;
    ::sigaction(SIGALRM, &sa, nullptr);
    ::testing::UnitTest::GetInstance()->listeners().Append(new Watchdog);
  }
  ::testing::UnitTest::GetInstance()->listeners().Append(new SeedPrinter);
  return RUN_ALL_TESTS();
}
