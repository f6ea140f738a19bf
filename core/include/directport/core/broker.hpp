// The broker: a node's socket thread that authenticates peers and hands out named descriptors
// (DESIGN §3). Connections stay open for the peer's whole life: EOF is the liveness signal.
//
// Messages are JSON objects with an "op" key (bounded to 64 KiB) plus up to 16 descriptors.
// Built-in ops: "hello" (ABI handshake) and "get" (named descriptors). Other ops are served
// by handlers the owner registers before start(). Handlers run on the broker thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "directport/platform/process.hpp"
#include "directport/platform/socket.hpp"

namespace dp {

struct Connection;  // one accepted peer (broker.cpp)

// Connections a broker keeps open at once; a peer beyond it gets an error and is closed, so that
// a client that leaks connections cannot exhaust the node's descriptors.
inline constexpr std::size_t kMaxBrokerConnections = 256;

struct BrokerReply {
  nlohmann::json body;
  std::vector<int> fds;  // borrowed; must stay open until the handler returns
};

struct PeerInfo {
  std::uint64_t connection_id = 0;
  platform::PeerCredentials credentials;
  std::string client_name;  // from "hello"
};

class Broker {
 public:
  using Handler = std::function<BrokerReply(const PeerInfo&, const nlohmann::json& request,
                                            std::vector<platform::UniqueFd>& fds)>;
  using DisconnectHandler = std::function<void(const PeerInfo&)>;
  using TickHandler = std::function<void()>;

  struct Options {
    std::string socket_name;  // abstract-namespace name
    std::string node_name;
    std::vector<std::uint32_t> allow_uids;  // besides our own uid
    std::chrono::milliseconds tick{100};
    std::size_t max_connections = kMaxBrokerConnections;
  };

  explicit Broker(Options opts);
  ~Broker();  // stops the thread
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  // Descriptors served by "get". The broker keeps its own duplicate.
  void register_fd(const std::string& name, const platform::UniqueFd& fd);
  void on(const std::string& op, Handler h);
  void on_disconnect(DisconnectHandler h);
  void on_tick(TickHandler h);
  // Closes connection `connection_id` on the broker thread's next turn (any thread may ask), as
  // if the peer had gone: the disconnect handler runs. An unknown id is ignored.
  void disconnect(std::uint64_t connection_id);

  void start();
  void stop() noexcept;
  const std::string& socket_name() const { return opts_.socket_name; }
  std::size_t connection_count() const { return connections_.load(); }
  // Peers refused: another uid, or over max_connections.
  std::uint64_t refused_count() const { return refused_.load(); }

 private:
  void run() noexcept;
  bool serve(Connection& c);

  Options opts_;
  platform::LocalSocket listener_;
  platform::UniqueFd wake_;
  std::mutex mu_;
  std::map<std::string, platform::UniqueFd> fds_;
  std::map<std::string, Handler> handlers_;
  DisconnectHandler on_disconnect_;
  TickHandler on_tick_;
  std::vector<std::uint64_t> to_close_;  // disconnect(), under mu_
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<std::size_t> connections_{0};
  std::atomic<std::uint64_t> refused_{0};
};

// A client connection to a broker. Validates the server before trusting it: same uid (or one
// allowed) and the pid the manifest names.
class BrokerClient {
 public:
  struct Reply {
    nlohmann::json body;
    std::vector<platform::UniqueFd> fds;
  };

  static BrokerClient connect(const std::string& socket_name, const std::string& client_name,
                              const platform::ProcessIdentity& expected_server,
                              std::chrono::milliseconds timeout = std::chrono::milliseconds(2000));

  // Sends a request and waits for its reply. Throws PeerGoneError on EOF, Error carrying the
  // broker's message on {"op":"error"}, TimeoutError after `timeout`.
  Reply request(const nlohmann::json& body, const std::vector<int>& fds = {},
                std::chrono::milliseconds timeout = std::chrono::milliseconds(2000));
  // Descriptors registered under `names`, in order.
  std::vector<platform::UniqueFd> get(const std::vector<std::string>& names);
  bool peer_gone() { return sock_.peer_closed(); }
  int native_handle() const { return sock_.fd(); }
  const nlohmann::json& welcome() const { return welcome_; }

 private:
  platform::LocalSocket sock_;
  nlohmann::json welcome_;
};

// Parses a peer message: a JSON object with a string "op". Throws ValidationError otherwise.
nlohmann::json parse_message(const std::string& bytes);
// Checks a "hello" request (ABI version, client name) and returns the client's name. Throws
// ValidationError saying what is wrong.
std::string parse_hello(const nlohmann::json& req);
// A fresh broker socket name for `node` in `domain`, unique per process instance.
std::string broker_socket_name(const std::string& domain, const std::string& node);

}  // namespace dp
