// The Vulkan example nodes (docs/VULKAN.md): `vulkan-source`, a producer that is a Vulkan program
// (a compute shader stamps each frame into exported Vulkan memory, a timeline semaphore says it
// is done), and `vulkan-sink`, a consumer that waits on the Vulkan side and checks each frame with
// a compute shader. Their frames are those of pattern-source and checksum-sink, so either end
// may be a CUDA node, unchanged.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <thread>
#include <vector>

#include "directport/core/error.hpp"
#include "directport/core/runtime.hpp"
#include "directport/kernels/frame_check.hpp"
#include "directport/kernels/vulkan_frames.hpp"
#include "directport/vulkan/vulkan.hpp"
#include "nodes.hpp"

namespace dp::cli {
namespace {

#if DIRECTPORT_HAS_VULKAN
// Submits `cmd` on the process's queue, signalling `done` to `value` once it has run.
void submit(vk::Context& ctx, VkCommandBuffer cmd, const vk::Timeline* done = nullptr, std::uint64_t value = 0) {
  VkTimelineSemaphoreSubmitInfo tl{VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO, nullptr, 0, nullptr, 1, &value};
  VkSemaphore sem = done ? done->get() : VK_NULL_HANDLE;
  VkSubmitInfo si{VK_STRUCTURE_TYPE_SUBMIT_INFO, done ? &tl : nullptr, 0, nullptr, nullptr, 1, &cmd,
                  done ? 1u : 0u, done ? &sem : nullptr};
  ctx.submit(si);
}

int run_vulkan_source(NodeContext& ctx) {
  const auto& p = ctx.params();
  StreamSpec spec = stamped_frames_spec(p);
  const std::uint64_t bytes = spec.frame_bytes();
  spec.memory = MemoryKind::vulkan;
  spec.fence = FenceKind::vulkan_timeline;
  const double rate = p["rate_hz"].get<double>();
  const auto frames = p["frames"].get<std::uint64_t>();
  const auto wait_subs = p["wait_subscribers"].get<std::uint64_t>();

  Node& node = ctx.node();
  auto& pub = node.advertise(spec, GpuApi::vulkan);
  auto vk = vk::Context::get();
  const auto buffer = reinterpret_cast<VkBuffer>(pub.transport().vulkan_buffer());
  kernels::VulkanFrames kernels(vk);
  kernels.use_buffer(buffer, pub.transport().slot_stride() * spec.slots);
  vk::Commands commands(vk);
  std::vector<VkCommandBuffer> cmd(spec.slots);
  for (auto& c : cmd) c = commands.allocate();
  node.set_info("vulkan_device", vk->name());
  node.set_running();
  std::fprintf(stderr, "publishing %s/%s: %llu bytes, vulkan memory on %s\n", ctx.name().c_str(), spec.name.c_str(),
               static_cast<unsigned long long>(bytes), vk->name().c_str());
  while (pub.counters().subscribers < wait_subs && NodeContext::sleep_for(std::chrono::milliseconds(5))) {
  }
  const auto period = std::chrono::nanoseconds(rate > 0 ? static_cast<std::int64_t>(1e9 / rate) : 0);
  auto next = std::chrono::steady_clock::now();
  std::uint64_t n = 0;
  std::vector<double> acquire_us;
  std::uint64_t acquire_seen = 0;
  while (!NodeContext::stop_requested() && (frames == 0 || n < frames)) {
    const auto t0 = std::chrono::steady_clock::now();
    auto lease = pub.acquire();
    sample(acquire_us, acquire_seen, std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    if (!lease) continue;  // dropped (counted)
    // The slot's previous frame is done (acquire() saw its ready word), so is its command buffer.
    VkCommandBuffer c = cmd[lease->slot];
    commands.begin(c);
    kernels.record_stamp(c, reinterpret_cast<std::uintptr_t>(lease->data), lease->bytes, lease->seq,
                         kernels::stamp_seed(lease->seq));
    commands.end(c);
    submit(*vk, c);
    pub.publish(*lease, {lease->seq, 0, 0});  // the semaphore is signalled after the submission
    ++n;
    if (period.count()) {
      next += period;
      std::this_thread::sleep_until(next);
    }
  }
  vk->wait_idle();
  auto c = pub.counters();
  std::cout << nlohmann::json{{"node", ctx.name()}, {"type", "vulkan-source"}, {"published", c.published},
                              {"dropped", c.dropped}, {"device", vk->name()}, {"acquire_us", percentiles(acquire_us)}}
                   .dump()
            << std::endl;
  return 0;
}

int run_vulkan_sink(NodeContext& ctx) {
  const auto& p = ctx.params();
  const auto from = p["from"].get<std::string>();
  const auto frames = p["frames"].get<std::uint64_t>();
  const auto timeout_s = p["timeout_s"].get<double>();
  const auto hold_ms = p["hold_ms"].get<double>();
  const auto seq_from = p["seq_from"].get<std::string>();
  if (seq_from != "seq" && seq_from != "frame_id") {
    throw ValidationError("param 'seq_from' must be 'seq' or 'frame_id', got '" + seq_from + "'");
  }
  Node& node = ctx.node();
  SubscribeOptions opts;
  opts.wait_for_producer = kDefaultProducerWait;
  opts.api = GpuApi::vulkan;
  auto sub = node.subscribe(from, opts);
  auto vk = vk::Context::get();  // the one the subscription made, on the producer's device
  kernels::VulkanFrames kernels(vk);
  vk::Commands commands(vk);
  VkCommandBuffer cmd = commands.allocate();
  vk::Timeline done(vk, false);
  std::uint64_t submitted = 0;
  std::uint32_t generation = 0;  // of the subscription whose buffer `kernels` reads
  node.set_info("vulkan_device", vk->name());
  node.set_running();

  std::uint64_t ok = 0, bad = 0;
  FrameWaiter waiter(sub, from, timeout_s);
  std::vector<double> verify_us;
  std::uint64_t verify_seen = 0;
  while (!NodeContext::stop_requested() && (frames == 0 || ok + bad < frames)) {
    auto f = waiter.next();  // waits on the semaphore, on the CPU
    if (!f) {
      if (waiter.gave_up()) break;
      continue;
    }
    const auto t_verify = std::chrono::steady_clock::now();
    if (f->generation != generation) {  // a new connection: a new buffer (maybe the same handle)
      kernels.use_buffer(reinterpret_cast<VkBuffer>(sub.vulkan_buffer()), sub.vulkan_buffer_bytes());
      generation = f->generation;
    }
    commands.begin(cmd);
    kernels.record_verify(cmd, reinterpret_cast<std::uintptr_t>(f->data), f->bytes);
    commands.end(cmd);
    submit(*vk, cmd, &done, ++submitted);
    if (!done.wait(submitted, std::chrono::seconds(10))) throw Error("the frame check did not finish in 10 s");
    sample(verify_us, verify_seen,
           std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t_verify).count());
    const auto result = kernels.verify_result(seq_from == "seq" ? f->seq : f->frame_id);
    if (hold_ms > 0) std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(hold_ms));
    sub.release(*f);  // our reads are done (waited above)
    if (!sub.is_valid(*f)) continue;  // the producer died before completing it: never accepted
    if (result == kernels::kFrameOk) {
      ++ok;
    } else {
      ++bad;
      std::fprintf(stderr, "frame seq %llu failed verification (code %llu)\n", static_cast<unsigned long long>(f->seq),
                   static_cast<unsigned long long>(result));
    }
  }
  auto c = sub.counters();
  std::cout << nlohmann::json{{"node", ctx.name()},     {"type", "vulkan-sink"},        {"from", from},
                              {"verified", ok},         {"bad", bad},                   {"missed", c.missed},
                              {"dropped", c.dropped},   {"invalidated", c.invalidated}, {"reconnects", c.reconnects},
                              {"device", vk->name()},   {"next_us", waiter.next_us()},
                              {"verify_us", percentiles(verify_us)}}
                   .dump()
            << std::endl;
  return bad == 0 && !waiter.gave_up() && (frames == 0 || ok >= frames) ? 0 : 2;
}
#else
int run_without_vulkan(NodeContext&) { throw vk::VulkanError("this node needs Vulkan: " + vk::availability().reason); }
#endif

}  // namespace

void register_vulkan_nodes(NodeRegistry& r) {
  using T = ParamType;
  NodeType src;
  src.type = "vulkan-source";
  src.help = "a Vulkan program publishing self-verifying frames (compute shader, vulkan memory, vulkan-timeline fence)";
  src.params = stamped_source_params();
  src.publishes = [](const nlohmann::json& p) { return std::vector<std::string>{p["stream"].get<std::string>()}; };
  src.subscribes = [](const nlohmann::json&) { return std::vector<std::string>{}; };
#if DIRECTPORT_HAS_VULKAN
  src.run = run_vulkan_source;
#else
  src.run = run_without_vulkan;
#endif
  r.add(std::move(src));

  NodeType sink;
  sink.type = "vulkan-sink";
  sink.help = "verifies every frame of a stream with Vulkan (waits on the stream's timeline semaphore)";
  sink.params = {{"from", T::string, nullptr, true, "the stream to verify, NODE/STREAM (fence vulkan-timeline)"},
                 {"frames", T::integer, 0, false, "stop after verifying this many (0: until stopped)"},
                 {"timeout_s", T::number, 10.0, false, "give up after this long without a frame"},
                 {"hold_ms", T::number, 0.0, false, "hold each frame this long (a slow consumer)"},
                 {"seq_from", T::string, "seq", false,
                  "what word 0 of a frame must equal: 'seq', or 'frame_id' (frames relayed by checksum-sink's 'forward')"}};
  sink.publishes = [](const nlohmann::json&) { return std::vector<std::string>{}; };
  sink.subscribes = [](const nlohmann::json& p) { return std::vector<std::string>{p["from"].get<std::string>()}; };
#if DIRECTPORT_HAS_VULKAN
  sink.run = run_vulkan_sink;
#else
  sink.run = run_without_vulkan;
#endif
  r.add(std::move(sink));
}

}  // namespace dp::cli
