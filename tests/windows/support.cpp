#include "support.hpp"

#include <windows.h>

#include <atomic>
#include <thread>

namespace dp::wintest {

std::string unique_name(const std::string& prefix) {
  static std::atomic<unsigned> n{0};
  return prefix + std::to_string(::GetCurrentProcessId()) + "x" + std::to_string(n++) + "x" +
         std::to_string(::GetTickCount64());
}

std::string helper_path() {
  char buf[MAX_PATH] = {};
  DWORD len = ::GetModuleFileNameA(nullptr, buf, MAX_PATH);
  std::string self(buf, len);
  return self.substr(0, self.find_last_of("\\/") + 1) + "dp_win_helper.exe";
}

bool wait_until(const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!cond()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

}  // namespace dp::wintest
