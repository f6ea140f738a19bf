// What a domain leaves in the system, seen from outside: processes (by their argv; with
// processes_with_arg() of support/launch.hpp) and abstract broker sockets (/proc/net/unix); the
// manifests in /dev/shm are test::shm_entries(). Used by the chaos program and the multi-process
// tests to prove that nothing leaks and to find node processes to kill.
//
// Linux only (reads /proc). Free of GoogleTest.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "support/launch.hpp"  // processes_with_arg()

namespace dp::test {

// The argv of `pid` (split at NULs), empty if the process is gone or unreadable.
std::vector<std::string> process_argv(pid_t pid);

// A `directport node TYPE --name NAME --domain DOMAIN ...` process.
struct NodeProcess {
  pid_t pid = -1;
  std::string type, name, domain;
};
// The node processes of `domain` (what `directport launch` starts), found by their argv before
// they have a manifest.
std::vector<NodeProcess> node_processes(const std::string& domain);

// The abstract-namespace socket prefix of node `node` in `domain` for this uid:
// "dp.<uid>.<hash of domain/node>." (docs/PROTOCOL.md §2.3).
std::string broker_socket_prefix(const std::string& domain, const std::string& node);
// Abstract AF_UNIX sockets whose name starts with `prefix` (listening and connected ones), as
// listed by /proc/net/unix, without the leading '@'.
std::vector<std::string> abstract_sockets(const std::string& prefix);

}  // namespace dp::test
