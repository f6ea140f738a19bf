#include "support/launch.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <sstream>

#include "support/test_support.hpp"

namespace dp::test {

std::vector<int> processes_with_arg(const std::string& arg) {
  std::vector<int> pids;
  DIR* d = ::opendir("/proc");
  if (!d) return pids;
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (*end || pid <= 0 || pid == ::getpid()) continue;
    // read(2), not a stream: a process that exits while we read makes read() fail with ESRCH,
    // which libstdc++'s filebuf turns into an exception.
    std::string all;
    int fd = ::open(("/proc/" + std::string(e->d_name) + "/cmdline").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    char buf[4096];
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) all.append(buf, static_cast<std::size_t>(n));
    ::close(fd);
    std::stringstream ss(all);
    for (std::string a; std::getline(ss, a, '\0');) {
      if (a == arg) {
        pids.push_back(static_cast<int>(pid));
        break;
      }
    }
  }
  ::closedir(d);
  return pids;
}

Launcher::Launcher(const std::string& cli, std::vector<std::string> args) {
  args.insert(args.begin(), {cli, "launch"});
  child_ = platform::Child::spawn(args, {true, true});
}

const std::string& Launcher::log() {
  for (int i = 0; i < 64; ++i) {
    auto before = child_.output().size();
    child_.pump();
    if (child_.output().size() == before) break;
  }
  return child_.output();
}

bool Launcher::wait_log(const std::string& part, std::chrono::milliseconds timeout) {
  return wait_until([&] { return log().find(part) != std::string::npos; }, timeout, std::chrono::milliseconds(20));
}

nlohmann::json final_line(const std::string& log, const std::string& node) {
  nlohmann::json last;
  std::istringstream in(log);
  const std::string prefix = "[" + node + "] {";
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(prefix, 0) != 0) continue;
    auto j = nlohmann::json::parse(line.substr(prefix.size() - 1), nullptr, false);
    if (!j.is_discarded()) last = j;
  }
  return last;
}

}  // namespace dp::test
