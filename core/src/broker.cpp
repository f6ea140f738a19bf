#include "directport/core/broker.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <random>

#include "directport/core/error.hpp"
#include "directport/core/json_input.hpp"
#include "directport/core/names.hpp"
#include "directport/core/protocol.hpp"

namespace dp {

struct Connection {
  PeerInfo peer;
  platform::LocalSocket sock;
  bool greeted = false;
};

nlohmann::json parse_message(const std::string& bytes) {
  if (bytes.size() > platform::kMaxMessageBytes) throw ValidationError("message over the 64 KiB bound");
  auto j = parse_json_input(bytes, "message");
  if (j.is_discarded()) throw ValidationError("message is not valid JSON");
  if (!j.is_object()) throw ValidationError("message must be a JSON object");
  auto it = j.find("op");
  if (it == j.end() || !it->is_string()) throw ValidationError("message lacks a string 'op'");
  return j;
}

std::string parse_hello(const nlohmann::json& req) {
  auto abi = req.find("abi");
  // Compare as JSON numbers: converting an out-of-range number to an integer type is undefined.
  if (abi == req.end() || !abi->is_number_unsigned() || abi->get<std::uint64_t>() != protocol::kAbiVersion) {
    throw ValidationError("client speaks ABI " + (abi == req.end() ? std::string("(none)") : abi->dump()) +
                          ", this node speaks " + std::to_string(protocol::kAbiVersion));
  }
  std::string client = "anonymous";
  if (auto it = req.find("client"); it != req.end()) {
    if (!it->is_string()) throw ValidationError("hello: 'client' must be a string");
    client = it->get<std::string>();
  }
  if (client.size() > kMaxNameLength * 2) throw ValidationError("hello: client name too long");
  return client;
}

std::string broker_socket_name(const std::string& domain, const std::string& node) {
  validate_name("domain", domain);
  validate_name("node name", node);
  // Abstract socket names must fit sun_path (107 bytes): the domain and node (up to 48
  // characters each) are folded into a 64-bit FNV-1a hash. The manifest records the name, so
  // nobody needs to recompute it.
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (char c : domain + "/" + node) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  std::random_device rd;
  char buf[96];
  std::snprintf(buf, sizeof buf, "dp.%u.%016llx.%lld.%08x%08x", platform::current_uid(),
                static_cast<unsigned long long>(h), static_cast<long long>(platform::self_identity().pid), rd(), rd());
  return buf;
}

Broker::Broker(Options opts) : opts_(std::move(opts)) {
  listener_ = platform::LocalSocket::listen(opts_.socket_name);
  wake_ = platform::UniqueFd(DP_POSIX_CHECK(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd"));
}

Broker::~Broker() { stop(); }

void Broker::register_fd(const std::string& name, const platform::UniqueFd& fd) {
  std::lock_guard<std::mutex> lock(mu_);
  fds_[name] = fd.dup();
}

void Broker::on(const std::string& op, Handler h) {
  std::lock_guard<std::mutex> lock(mu_);
  handlers_[op] = std::move(h);
}
void Broker::on_disconnect(DisconnectHandler h) { on_disconnect_ = std::move(h); }
void Broker::on_tick(TickHandler h) { on_tick_ = std::move(h); }

void Broker::start() {
  DP_EXPECTS(!thread_.joinable(), "broker already started");
  thread_ = std::thread([this] { run(); });
}

void Broker::disconnect(std::uint64_t connection_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    to_close_.push_back(connection_id);
  }
  std::uint64_t one = 1;
  if (::write(wake_.get(), &one, sizeof one) < 0) log_cleanup_failure("waking the broker thread");
}

void Broker::stop() noexcept {
  if (!thread_.joinable()) return;
  stop_ = true;
  std::uint64_t one = 1;
  if (::write(wake_.get(), &one, sizeof one) < 0) log_cleanup_failure("waking the broker thread");
  thread_.join();
}

// Serves one readable connection; false when it must be closed.
bool Broker::serve(Connection& c) {
  std::optional<platform::Message> m;
  try {
    m = c.sock.receive(std::chrono::milliseconds(0));
  } catch (const TimeoutError&) {
    return true;  // spurious wake-up
  } catch (const Error& e) {
    std::fprintf(stderr, "directport: broker %s: dropping peer pid %lld: %s\n",
                 opts_.node_name.c_str(), static_cast<long long>(c.peer.credentials.pid), e.what());
    return false;
  }
  if (!m) return false;  // EOF
  BrokerReply reply;
  bool keep = true;
  try {
    auto req = parse_message(m->bytes);
    auto op = req["op"].get<std::string>();
    if (op == "hello") {
      c.peer.client_name = parse_hello(req);
      c.greeted = true;
      reply.body = {{"op", "welcome"}, {"node", opts_.node_name}, {"abi", protocol::kAbiVersion},
                    {"pid", platform::self_identity().pid}, {"connection", c.peer.connection_id}};
    } else if (!c.greeted) {
      throw ValidationError("the first message must be 'hello'");
    } else if (op == "get") {
      auto names = req.at("names");
      if (!names.is_array() || names.size() > platform::kMaxMessageFds) {
        throw ValidationError("'names' must be an array of at most 16 strings");
      }
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& n : names) {
        if (!n.is_string()) throw ValidationError("'names' must hold strings");
        auto it = fds_.find(n.get<std::string>());
        if (it == fds_.end()) throw ValidationError("no descriptor named '" + n.get<std::string>() + "'");
        reply.fds.push_back(it->second.get());
      }
      reply.body = {{"op", "fds"}, {"names", names}};
    } else {
      Handler h;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = handlers_.find(op);
        if (it == handlers_.end()) throw ValidationError("unknown op '" + op + "'");
        h = it->second;
      }
      reply = h(c.peer, req, m->fds);
    }
  } catch (const nlohmann::json::exception& e) {
    reply = {{{"op", "error"}, {"message", std::string("malformed request: ") + e.what()}}, {}};
    keep = c.greeted;  // a peer that fails the handshake is dropped
  } catch (const Error& e) {
    reply = {{{"op", "error"}, {"message", e.what()}}, {}};
    keep = c.greeted;  // a peer that fails the handshake is dropped
  } catch (const std::exception& e) {
    reply = {{{"op", "error"}, {"message", std::string("internal error serving the request: ") + e.what()}}, {}};
    keep = c.greeted;
  }
  try {
    // A peer that does not read its replies is dropped rather than allowed to stall the broker
    // (and with it the heartbeat).
    c.sock.send(reply.body.dump(), reply.fds, /*nonblocking=*/true);
  } catch (const Error&) {
    return false;
  }
  return keep;
}

void Broker::run() noexcept {
  std::vector<std::unique_ptr<Connection>> conns;
  std::uint64_t next_id = 1;
  auto drop = [&](std::size_t i) {
    auto c = std::move(conns[i]);
    conns.erase(conns.begin() + static_cast<std::ptrdiff_t>(i));
    connections_ = conns.size();
    // On our own shutdown the peers are alive: closing tells them, and nobody may write their
    // fences on their behalf.
    if (on_disconnect_ && c->greeted && !stop_) {
      try {
        on_disconnect_(c->peer);
      } catch (const std::exception& e) {
        log_cleanup_failure(std::string("broker disconnect handler: ") + e.what());
      }
    }
  };
  auto last_tick = std::chrono::steady_clock::now();
  // After a failed accept (out of descriptors), the pending connection stays and the listener
  // stays readable: leave it alone for a tick rather than spin on it.
  auto listen_again = last_tick;
  bool accept_failing = false;  // log the first failure of a streak only
  while (!stop_) {
    // Connections closed by disconnect() (which adds to the list, then wakes us; the wake-up is
    // cleared after the poll below, before the list is looked at again: none is lost).
    std::vector<std::uint64_t> to_close;
    {
      std::lock_guard<std::mutex> lock(mu_);
      to_close.swap(to_close_);
    }
    if (!to_close.empty()) {
      for (std::size_t i = conns.size(); i-- > 0;) {
        if (std::find(to_close.begin(), to_close.end(), conns[i]->peer.connection_id) != to_close.end()) drop(i);
      }
      continue;
    }
    std::vector<pollfd> pfds;
    pfds.push_back({wake_.get(), POLLIN, 0});
    const bool listening = std::chrono::steady_clock::now() >= listen_again;
    pfds.push_back({listening ? listener_.fd() : -1, POLLIN, 0});
    for (auto& c : conns) pfds.push_back({c->sock.fd(), POLLIN, 0});
    int rc = ::poll(pfds.data(), pfds.size(), static_cast<int>(opts_.tick.count()));
    if (rc < 0 && errno != EINTR) {
      log_cleanup_failure("broker poll failed");
      break;
    }
    if (rc > 0 && (pfds[0].revents & POLLIN)) {
      std::uint64_t drained;
      while (::read(wake_.get(), &drained, sizeof drained) > 0) {
      }
    }
    auto now = std::chrono::steady_clock::now();
    if (now - last_tick >= opts_.tick && on_tick_) {
      last_tick = now;
      try {
        on_tick_();
      } catch (const std::exception& e) {
        log_cleanup_failure(std::string("broker tick: ") + e.what());
      }
    }
    if (rc <= 0) continue;
    const std::size_t polled = pfds.size() - 2;  // connections accepted below were not polled
    if (pfds[1].revents & POLLIN) {
      try {
        while (auto s = listener_.accept()) {
          auto c = std::make_unique<Connection>();
          c->sock = std::move(*s);
          c->peer.connection_id = next_id++;
          c->peer.credentials = c->sock.peer_credentials();
          if (!platform::authorize_peer(c->peer.credentials, platform::current_uid(), opts_.allow_uids)) {
            ++refused_;
            std::fprintf(stderr, "directport: broker %s: refused pid %lld uid %u (not our uid, not allowed)\n",
                         opts_.node_name.c_str(), static_cast<long long>(c->peer.credentials.pid),
                         c->peer.credentials.uid);
            try {
              c->sock.send(nlohmann::json{{"op", "error"}, {"message", "uid " + std::to_string(c->peer.credentials.uid) + " is not allowed by this broker"}}.dump());
            } catch (const Error&) {
            }
            continue;
          }
          if (conns.size() >= opts_.max_connections) {
            if (refused_++ % 64 == 0) {  // one line per 64 refusals: a flood must not flood stderr
              std::fprintf(stderr, "directport: broker %s: refused pid %lld: %zu connections open (the bound)\n",
                           opts_.node_name.c_str(), static_cast<long long>(c->peer.credentials.pid), conns.size());
            }
            try {
              c->sock.send(nlohmann::json{{"op", "error"},
                                          {"message", "broker of '" + opts_.node_name + "' has " +
                                                          std::to_string(conns.size()) +
                                                          " connections open, its bound: try again later"}}
                               .dump(),
                           {}, /*nonblocking=*/true);
            } catch (const Error&) {
            }
            continue;
          }
          conns.push_back(std::move(c));
          connections_ = conns.size();
        }
        accept_failing = false;
      } catch (const Error& e) {
        if (!accept_failing) log_cleanup_failure(std::string("broker accept: ") + e.what());
        accept_failing = true;
        listen_again = std::chrono::steady_clock::now() + opts_.tick;
      }
    }
    // Walk backwards so that erasing keeps the pollfd indices valid.
    for (std::size_t i = polled; i-- > 0;) {
      auto ev = pfds[i + 2].revents;
      if (!ev) continue;
      if ((ev & (POLLIN)) ? !serve(*conns[i]) : true) drop(i);
    }
  }
  while (!conns.empty()) drop(conns.size() - 1);
}

// ---------------------------------------------------------------- client

BrokerClient BrokerClient::connect(const std::string& socket_name, const std::string& client_name,
                                   const platform::ProcessIdentity& expected_server,
                                   std::chrono::milliseconds timeout) {
  BrokerClient c;
  c.sock_ = platform::LocalSocket::connect(socket_name);
  auto cred = c.sock_.peer_credentials();
  if (cred.uid != platform::current_uid()) {
    throw ValidationError("broker @" + socket_name + " runs as uid " + std::to_string(cred.uid) +
                          ", not ours (" + std::to_string(platform::current_uid()) + "): refusing to trust it");
  }
  if (expected_server.pid != 0 && cred.pid != expected_server.pid) {
    throw ValidationError("broker @" + socket_name + " belongs to pid " + std::to_string(cred.pid) +
                          " but the manifest names pid " + std::to_string(expected_server.pid));
  }
  auto r = c.request({{"op", "hello"}, {"abi", protocol::kAbiVersion}, {"client", client_name}}, {}, timeout);
  if (r.body.value("op", "") != "welcome") throw ValidationError("broker answered hello with something else");
  c.welcome_ = std::move(r.body);
  return c;
}

BrokerClient::Reply BrokerClient::request(const nlohmann::json& body, const std::vector<int>& fds,
                                          std::chrono::milliseconds timeout) {
  try {
    sock_.send(body.dump(), fds);
  } catch (const SystemError& e) {
    if (e.error_code() == EPIPE || e.error_code() == ECONNRESET) throw PeerGoneError("broker went away");
    throw;
  }
  auto m = sock_.receive(timeout);
  if (!m) throw PeerGoneError("broker closed the connection");
  Reply r{parse_message(m->bytes), std::move(m->fds)};
  if (r.body["op"] == "error") {
    throw Error("broker refused '" + body.value("op", std::string("?")) + "': " +
                r.body.value("message", std::string("(no message)")));
  }
  return r;
}

std::vector<platform::UniqueFd> BrokerClient::get(const std::vector<std::string>& names) {
  auto r = request({{"op", "get"}, {"names", names}});
  if (r.fds.size() != names.size()) throw ValidationError("broker sent the wrong number of descriptors");
  return std::move(r.fds);
}

}  // namespace dp
