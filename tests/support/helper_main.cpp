// dp_test_helper: the other process of the multi-process tests, started with fork+exec so that
// it begins clean (no copied threads or locks). It talks to the test over stdin/stdout, one line
// per message, and exits when stdin closes (or dies with the test: PR_SET_PDEATHSIG).
//
//   dp_test_helper producer DOMAIN NODE STREAM [key=value...]
//     keys: bytes slots acquire_us period_us frames tag seed
//     -> "ready <pid>"; waits for "go"; publishes `frames` frames (0: until "stop"), one per
//        period; -> "done" when `frames` are out. Commands: "stop" (-> "stats {json}", exit 0),
//        "shrink" (truncates the stream's ready page, as a hostile producer would:
//        -> "shrink done..." or "shrink refused: <why>"; publishing stops if done).
//   dp_test_helper consumer DOMAIN NODE STREAM [key=value...]
//     keys: bytes tag seed frames(last seq to wait for; 0: until "stop") hold_us mode(next|latest)
//           deadline_ms hold_all(K: keep K frames unreleased) go(1: wait for "go") client
//     -> "ready <pid>" once subscribed (or "error <what>", exit 3); -> "holding K" in hold_all
//        mode; -> "result {json}" at the end, exit 0.
//   dp_test_helper node DOMAIN NODE
//     -> "ready <pid>" with a live dp::Node; exits on "stop"/EOF.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <thread>

#include "directport/core/error.hpp"
#include "directport/core/node.hpp"
#include "directport/core/stream.hpp"
#include "directport/platform/process.hpp"
#include "support/frames.hpp"
#include "support/test_support.hpp"

using namespace std::chrono_literals;
using dp::test::LineChannel;

namespace {

struct Args {
  std::string role, domain, node, stream;
  std::map<std::string, std::string> kv;
  std::uint64_t num(const std::string& k, std::uint64_t def) const {
    auto it = kv.find(k);
    return it == kv.end() ? def : std::strtoull(it->second.c_str(), nullptr, 0);
  }
  std::string str(const std::string& k, const std::string& def) const {
    auto it = kv.find(k);
    return it == kv.end() ? def : it->second;
  }
};

LineChannel& io() {
  static LineChannel ch(0, 1);
  return ch;
}

void say(const std::string& line) { io().write_line(line); }

// Blocks until "go" (true) or EOF/timeout (false).
bool wait_go() {
  for (;;) {
    auto l = io().read_line(30000ms);
    if (!l) return false;
    if (*l == "go") return true;
  }
}

int producer(const Args& a) {
  const std::size_t bytes = a.num("bytes", 32696);
  const auto period = std::chrono::microseconds(a.num("period_us", 1000));
  const std::uint64_t frames = a.num("frames", 0), tag = a.num("tag", 1), seed = a.num("seed", 1);
  dp::NodeOptions no;
  no.name = a.node;
  no.domain = a.domain;
  no.type = "test-producer";
  dp::Node node(no);
  auto& pub = node.advertise(
      dp::test::host_spec(a.stream, bytes, static_cast<std::uint32_t>(a.num("slots", 3)),
                          std::chrono::microseconds(a.num("acquire_us", 20000))));
  node.set_running();
  say("ready " + std::to_string(::getpid()));
  if (!wait_go()) return 2;
  dp::test::PublishStats stats;
  bool publishing = true, said_done = false;
  for (;;) {
    while (auto l = io().poll_line()) {
      if (*l == "stop") {
        auto j = stats.to_json();
        j["subscribers"] = pub.counters().subscribers;
        say("stats " + j.dump());
        return 0;
      }
      if (*l == "shrink") {
        int fd = pub.transport().export_fds().at(1);
        if (::ftruncate(fd, 0) == 0) {
          publishing = false;  // our own ready words are gone too
          say("shrink done: the page is 0 bytes now");
        } else {
          say("shrink refused: " + std::string(std::strerror(errno)));
        }
      }
    }
    if (io().eof()) return 0;
    if (publishing && (frames == 0 || stats.published < frames)) {
      dp::test::publish_one(pub, seed, tag, stats);
    } else if (frames && stats.published >= frames && !said_done) {
      said_done = true;
      say("done");
    }
    std::this_thread::sleep_for(period);
  }
}

int consumer(const Args& a) {
  const std::size_t bytes = a.num("bytes", 32696);
  const std::uint64_t last = a.num("frames", 0), hold_all = a.num("hold_all", 0);
  // hold_first=1: keep the first frame received, unreleased, until the end (reported as
  // held_valid); release every other one.
  const bool hold_first = a.num("hold_first", 0) != 0;
  std::optional<dp::Frame> first;
  const auto hold = std::chrono::microseconds(a.num("hold_us", 0));
  const bool use_latest = a.str("mode", "next") == "latest";
  dp::SubscribeOptions so;
  so.domain = a.domain;
  so.client_name = a.str("client", "helper");
  std::optional<dp::Subscriber> sub;
  try {
    sub.emplace(a.node, a.stream, so);
  } catch (const std::exception& e) {
    say(std::string("error ") + e.what());
    return 3;
  }
  say("ready " + std::to_string(::getpid()));
  if (a.num("go", 0) && !wait_go()) return 2;
  dp::test::FrameVerifier v(a.num("seed", 1), a.num("tag", 1), bytes);
  std::vector<dp::Frame> kept;
  const std::int64_t deadline =
      dp::platform::monotonic_ns() + std::int64_t(a.num("deadline_ms", 20000)) * 1000000;
  bool stopped = false;
  while (dp::platform::monotonic_ns() < deadline) {
    while (auto l = io().poll_line()) {
      if (*l == "stop") stopped = true;
    }
    if (stopped || io().eof()) break;
    std::optional<dp::Frame> f = use_latest ? sub->latest() : sub->next(50ms);
    if (!f) {
      if (use_latest) std::this_thread::sleep_for(200us);
      continue;
    }
    v.check(*f);
    if (hold_all) {
      kept.push_back(*f);
      if (kept.size() == hold_all) {
        say("holding " + std::to_string(kept.size()));
        while (io().read_line(-1ms)) {
        }
        return 0;  // stdin closed: leave without releasing
      }
      continue;
    }
    if (hold_first && !first) {
      first = *f;
      say("holding 1");
      continue;
    }
    if (hold.count()) {
      std::this_thread::sleep_for(hold);
      v.recheck(*f);
    }
    sub->release(*f);
    if (last && f->seq >= last) break;
  }
  auto c = sub->counters();
  auto j = v.to_json();
  j["received"] = c.received;
  j["missed"] = c.missed;
  j["dropped"] = c.dropped;
  j["reconnects"] = c.reconnects;
  j["cuts"] = c.cuts;
  j["invalidated"] = c.invalidated;
  const auto state = sub->state();
  j["state"] = state == dp::Subscriber::State::connected ? "connected"
               : state == dp::Subscriber::State::cut_off ? "cut_off"
                                                          : "producer_gone";
  if (first) {
    j["held_valid"] = sub->is_valid(*first);
    sub->release(*first);
  }
  say("result " + j.dump());
  return 0;
}

int node_only(const Args& a) {
  dp::NodeOptions no;
  no.name = a.node;
  no.domain = a.domain;
  dp::Node node(no);
  node.set_running();
  say("ready " + std::to_string(::getpid()));
  while (auto l = io().read_line(-1ms)) {
    if (*l == "stop") break;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  ::signal(SIGPIPE, SIG_IGN);
  Args a;
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s producer|consumer|node DOMAIN NODE [STREAM] [key=value...]\n",
                 argv[0]);
    return 64;
  }
  a.role = argv[1];
  a.domain = argv[2];
  a.node = argv[3];
  int i = 4;
  if (a.role != "node") {
    if (argc < 5) return 64;
    a.stream = argv[i++];
  }
  for (; i < argc; ++i) {
    std::string s = argv[i];
    auto eq = s.find('=');
    if (eq == std::string::npos) return 64;
    a.kv[s.substr(0, eq)] = s.substr(eq + 1);
  }
  try {
    if (a.role == "producer") return producer(a);
    if (a.role == "consumer") return consumer(a);
    if (a.role == "node") return node_only(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dp_test_helper %s %s: %s\n", a.role.c_str(), a.node.c_str(), e.what());
    say(std::string("error ") + e.what());
    return 4;
  }
  return 64;
}
