#include "support/system_probe.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "directport/core/broker.hpp"

namespace dp::test {
namespace {

// read(2), not a stream: a process that exits while we read makes read() fail with ESRCH,
// which libstdc++'s filebuf turns into an exception.
std::string read_small_file(const std::string& path) {
  std::string all;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return all;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) all.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return all;
}

bool is_zombie(pid_t pid) {
  auto stat = read_small_file("/proc/" + std::to_string(pid) + "/stat");
  auto close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() || stat[close + 2] == 'Z' || stat[close + 2] == 'X';
}

std::vector<pid_t> all_pids() {
  std::vector<pid_t> pids;
  DIR* d = ::opendir("/proc");
  if (!d) return pids;
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (*end || pid <= 0 || pid == ::getpid()) continue;
    pids.push_back(static_cast<pid_t>(pid));
  }
  ::closedir(d);
  return pids;
}

}  // namespace

std::vector<std::string> process_argv(pid_t pid) {
  std::vector<std::string> argv;
  auto all = read_small_file("/proc/" + std::to_string(pid) + "/cmdline");
  std::stringstream ss(all);
  for (std::string a; std::getline(ss, a, '\0');) argv.push_back(a);
  return argv;
}

std::vector<NodeProcess> node_processes(const std::string& domain) {
  std::vector<NodeProcess> out;
  for (pid_t pid : all_pids()) {
    auto argv = process_argv(pid);
    if (argv.size() < 3 || argv[1] != "node") continue;
    NodeProcess p;
    p.pid = pid;
    p.type = argv[2];
    for (std::size_t i = 3; i + 1 < argv.size(); ++i) {
      if (argv[i] == "--name" || argv[i] == "-n") p.name = argv[i + 1];
      if (argv[i] == "--domain" || argv[i] == "-d") p.domain = argv[i + 1];
    }
    if (p.domain == domain && !p.name.empty() && !is_zombie(pid)) out.push_back(p);
  }
  return out;
}

std::string broker_socket_prefix(const std::string& domain, const std::string& node) {
  // "dp.<uid>.<hash>.<pid>.<nonce>": everything up to the third dot is the same for every
  // instance of the node.
  auto name = broker_socket_name(domain, node);
  std::size_t dot = 0;
  for (int i = 0; i < 3; ++i) dot = name.find('.', dot) + 1;
  return name.substr(0, dot);
}

std::vector<std::string> abstract_sockets(const std::string& prefix) {
  std::vector<std::string> out;
  std::istringstream in(read_small_file("/proc/net/unix"));
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    // Num RefCount Protocol Flags Type St Inode [Path]; the path is the 8th column.
    std::istringstream cols(line);
    std::string c[7], path;
    for (auto& s : c) cols >> s;
    if (!(cols >> path) || path.size() < 2 || path[0] != '@') continue;
    if (path.compare(1, prefix.size(), prefix) == 0) out.push_back(path.substr(1));
  }
  return out;
}

}  // namespace dp::test
