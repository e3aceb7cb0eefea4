#include "common/server_util.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/validate.h"

namespace shardvec {
namespace {

int g_signal_pipe[2] = {-1, -1};

void OnTerminationSignal(int sig) {
  const char c = static_cast<char>(sig);
  ssize_t ignored = ::write(g_signal_pipe[1], &c, 1);
  (void)ignored;
}

}  // namespace

void InstallTerminationHandler() {
  if (g_signal_pipe[0] >= 0) return;
  if (::pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return;
  struct sigaction action {};
  action.sa_handler = OnTerminationSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
}

int WaitForTerminationSignalFor(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    char c = 0;
    if (::read(g_signal_pipe[0], &c, 1) == 1) return c;
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return 0;
    pollfd p{g_signal_pipe[0], POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(left) + 1, 1000)));
  }
}

int WaitForTerminationSignal() {
  while (true) {
    if (int sig = WaitForTerminationSignalFor(absl::Hours(1)); sig != 0) return sig;
  }
}

void EnsurePassiveOpenMp(char** argv) {
  const char* policy = ::getenv("OMP_WAIT_POLICY");
  if (policy != nullptr && std::strlen(policy) > 0) return;  // the user's choice stands
  ::setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  ::execv("/proc/self/exe", argv);
}

void ConfigureServerBuilder(grpc::ServerBuilder* builder) {
  builder->SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder->SetMaxSendMessageSize(kMaxMessageBytes);
}

int ServeUntilSignal(const std::string& name, const std::string& host, int port, grpc::Service* service) {
  grpc::ServerBuilder builder;
  ConfigureServerBuilder(&builder);
  int bound = 0;
  builder.AddListeningPort(absl::StrCat(host, ":", port), grpc::InsecureServerCredentials(), &bound);
  builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound == 0) {
    std::fprintf(stderr, "error: cannot listen on %s:%d\n", host.c_str(), port);
    return 1;
  }
  std::printf("%s ready on %s:%d\n", name.c_str(), host.c_str(), bound);
  std::fflush(stdout);
  int sig = WaitForTerminationSignal();
  LogInfo("%s %s:%d: signal %d, shutting down", name, host, bound, sig);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return 0;
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // A restarted shard is found again within a second, not after gRPC's default
  // backoff of up to two minutes.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

}  // namespace shardvec
