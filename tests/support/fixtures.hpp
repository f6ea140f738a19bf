// GoogleTest fixtures shared by the suites.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include <signal.h>

#include "support/launch.hpp"
#include "support/test_support.hpp"

namespace dp::test {

// Gives each test its own domain and checks at the end that the test left nothing of it in
// /dev/shm (then removes any litter, so that one failure does not cascade).
class DomainTest : public ::testing::Test {
 protected:
  void SetUp() override { domain_ = unique_domain(); }
  void TearDown() override {
    auto left = shm_entries(domain_);
    std::string names;
    for (auto& n : left) names += " " + n;
    EXPECT_TRUE(left.empty()) << "the test left shared memory behind:" << names;
    remove_shm_entries(domain_);
  }
  std::string domain_;
};

// A DomainTest whose processes run in the domain (a launched graph): at the end it also checks
// that none of them outlived the test (and kills any that did, so that one failure does not
// cascade).
class GraphTest : public DomainTest {
 protected:
  void TearDown() override {
    auto left = processes_with_arg(domain_);
    EXPECT_TRUE(left.empty()) << left.size() << " processes of the domain outlived the test";
    for (int pid : left) ::kill(pid, SIGKILL);
    DomainTest::TearDown();
  }
};

}  // namespace dp::test
