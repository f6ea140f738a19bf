// Shared by the Windows platform tests: unique names, the helper program, bounded waits.
#pragma once

#include <chrono>
#include <functional>
#include <string>

namespace dp::wintest {

// A name unique to this process and call: "<prefix><pid>x<n>x<ticks>".
std::string unique_name(const std::string& prefix);
// dp_win_helper.exe beside the running test executable.
std::string helper_path();
// Polls `cond` every millisecond until it holds or `timeout` passes.
bool wait_until(const std::function<bool()>& cond, std::chrono::milliseconds timeout);

}  // namespace dp::wintest
