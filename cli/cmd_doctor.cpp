// `directport doctor`: what this machine has and lacks for the host and GPU paths, and why.
#include <sys/utsname.h>
#include <sys/statvfs.h>

#include <cstdio>
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "directport/core/error.hpp"
#include "directport/cuda/device.hpp"
#include "directport/vulkan/vulkan.hpp"
#include "directport/platform/shm.hpp"
#include "directport/platform/socket.hpp"

namespace dp::cli {
namespace {

nlohmann::json check(const char* what, bool ok, const std::string& detail) {
  return {{"check", what}, {"ok", ok}, {"detail", detail}};
}

nlohmann::json host_checks() {
  nlohmann::json out = nlohmann::json::array();
  utsname u{};
  uname(&u);
  out.push_back(check("kernel", true, std::string(u.sysname) + " " + u.release));
  struct statvfs vfs {};
  bool shm = statvfs("/dev/shm", &vfs) == 0;
  out.push_back(check("/dev/shm", shm,
                      shm ? std::to_string(vfs.f_bavail * vfs.f_frsize >> 20) + " MiB free"
                          : "missing: POSIX shared memory (manifests) needs a tmpfs at /dev/shm"));
  try {
    auto seg = platform::Segment::create_anonymous("dp-doctor", 4096, true);
    out.push_back(check("memfd sealing", seg.sealed(),
                        seg.sealed() ? "F_SEAL_FUTURE_WRITE: consumers can only map host streams read-only"
                                     : "kernel lacks F_SEAL_FUTURE_WRITE (Linux < 5.1): host streams are not write-protected"));
    auto [a, b] = platform::LocalSocket::pair();
    a.send("ping", {seg.fd().get()});
    auto m = b.receive(std::chrono::milliseconds(1000));
    bool ok = m && m->fds.size() == 1;
    auto cred = a.peer_credentials();
    out.push_back(check("fd passing (SCM_RIGHTS)", ok, ok ? "works" : "descriptor did not arrive"));
    out.push_back(check("peer credentials (SO_PEERCRED)", cred.pid > 0, "pid " + std::to_string(cred.pid)));
  } catch (const Error& e) {
    out.push_back(check("host IPC", false, e.what()));
  }
  return out;
}

}  // namespace

void add_doctor(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("doctor", "Report what this machine supports (host IPC, CUDA VMM, fences) and why not");
  struct Opts {
    bool json = false, no_measure = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_flag("--json", o->json, "Print the report as JSON");
  cmd->add_flag("--no-measure", o->no_measure, "Skip the fence round-trip measurement on the GPU");
  cmd->callback([&exit_code, o] {
    nlohmann::json r{{"host", host_checks()}, {"cuda", cuda::probe(!o->no_measure)}, {"vulkan", vk::describe()}};
    bool host_ok = true;
    for (auto& c : r["host"]) host_ok = host_ok && (c["ok"] || c["check"] == "memfd sealing");
    const auto& c = r["cuda"];
    bool gpu = c.value("usable", false);
    r["verdict"] = {{"host_backend", host_ok}, {"gpu_path", gpu}, {"vulkan_kinds", r["vulkan"].value("usable", false)}};
    if (o->json) {
      std::cout << r.dump(2) << "\n";
    } else {
      std::cout << "Host backend\n";
      for (auto& h : r["host"]) {
        std::printf("  [%s] %-32s %s\n", h["ok"].get<bool>() ? " ok " : "FAIL", h["check"].get<std::string>().c_str(),
                    h["detail"].get<std::string>().c_str());
      }
      std::cout << "GPU path\n";
      if (!c.value("built_with_cuda", false) || !gpu) {
        std::printf("  [ -- ] unavailable: %s\n", c.value("reason", std::string("?")).c_str());
        std::printf("         Streams with memory 'host' work here; 'cuda-vmm'/'cuda-ipc' need an NVIDIA GPU and driver.\n");
      } else {
        std::printf("  driver %d, runtime %d, %d device(s); memory kind in use: %s\n", c["driver_version"].get<int>(),
                    c["runtime_version"].get<int>(), c["device_count"].get<int>(),
                    c["memory_kind"].get<std::string>().c_str());
        for (auto& d : c["devices"]) {
          auto yn = [&](const char* k) { return d.value(k, false) ? "yes" : "NO"; };
          std::printf("  [%d] %s %s\n      VMM %s, POSIX-FD export %s, 64-bit mem-ops %s, host register %s, "
                      "read-only host register %s, legacy IPC %s\n",
                      d["index"].get<int>(), d["name"].get<std::string>().c_str(), d["uuid"].get<std::string>().c_str(),
                      yn("vmm"), yn("posix_fd"), yn("memops_64"), yn("host_register"), yn("read_only_host_register"),
                      yn("ipc"));
        }
        if (c.contains("fence_waits")) {
          std::printf("  fence waits: on the %s (%s)\n", c["fence_waits"]["where"].get<std::string>().c_str(),
                      c["fence_waits"]["why"].get<std::string>().c_str());
        }
        if (c.contains("ready_words")) {
          std::printf("  ready words of cuda-vmm streams: in %s memory (%s)\n",
                      c["ready_words"]["where"].get<std::string>().c_str(),
                      c["ready_words"]["why"].get<std::string>().c_str());
        }
        if (c.value("mps", false)) {
          std::printf("  MPS: this process is an MPS client: the graph's processes share the GPU side by side\n");
        } else if (c.contains("mps")) {
          std::printf("  MPS: not in use: each process's context is time-sliced, so a hand-off between processes\n"
                      "       costs context switches (about 144 us p50 on an H200, against 9-12 us under MPS;\n"
                      "       docs/TRANSPORT.md). For the low-latency path start nvidia-cuda-mps-control -d\n");
        }
        if (c.contains("fences") && c["fences"].contains("error")) {
          std::printf("  fence measurement failed: %s\n", c["fences"]["error"].get<std::string>().c_str());
        } else if (c.contains("fences")) {
          std::printf("  fence CPU->GPU->CPU hop p50: %.2f us; GPU<->GPU ping-pong: <= %.2f us per round trip\n",
                      c["fences"]["cpu_gpu_cpu_hop_us_p50"].get<double>(),
                      c["fences"]["gpu_gpu_pingpong_drain_us_per_round_trip_upper_bound"].get<double>());
          std::printf("  GPU<->GPU round trip (GPU events): %.2f us with fence words in registered host pages, %.2f us "
                      "in device memory\n",
                      c["fences"].value("gpu_gpu_round_trip_us_host_words", 0.0),
                      c["fences"].value("gpu_gpu_round_trip_us_device_words", 0.0));
        }
      }
      const auto& v = r["vulkan"];
      std::cout << "Vulkan kinds (memory 'vulkan', fence 'vulkan-timeline'; docs/VULKAN.md)\n";
      if (v.contains("device")) {
        auto yn = [&](const char* k) { return v.value(k, false) ? "yes" : "NO"; };
        std::printf("  %s %s (%s), Vulkan %s\n      timeline semaphores %s, semaphore fd export %s, memory fd export %s, "
                    "shaderInt64 %s, 64-bit atomics %s\n",
                    v["device"].get<std::string>().c_str(), v["uuid"].get<std::string>().c_str(),
                    v["driver"].get<std::string>().c_str(), v["api_version"].get<std::string>().c_str(), yn("timeline_semaphores"),
                    yn("external_semaphore_fd"), yn("external_memory_fd"), yn("shader_int64"), yn("int64_atomics"));
      }
      if (v.value("usable", false)) {
        std::printf("  [ ok ] available\n");
      } else {
        std::printf("  [ -- ] unavailable: %s\n", v.value("reason", std::string("?")).c_str());
      }
      std::printf("Verdict: host backend %s; GPU path %s; Vulkan kinds %s\n", host_ok ? "ready" : "BROKEN",
                  gpu ? "ready" : "unavailable", v.value("usable", false) ? "ready" : "unavailable");
    }
    exit_code = host_ok ? 0 : 1;
  });
}

}  // namespace dp::cli
