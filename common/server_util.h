// Small helpers every server binary of the project shares: termination signals and
// the gRPC options that all servers and channels use.
#ifndef SHARDVEC_COMMON_SERVER_UTIL_H_
#define SHARDVEC_COMMON_SERVER_UTIL_H_

#include <memory>
#include <string>

#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace shardvec {

// Routes SIGINT and SIGTERM to a self-pipe instead of their default action (which
// would kill the process from whichever thread, an OpenBLAS worker say, the kernel
// picks). Call first thing in main().
void InstallTerminationHandler();

// Waits until SIGINT or SIGTERM arrives; returns its number.
int WaitForTerminationSignal();

// Like WaitForTerminationSignal, for at most `timeout`; 0 if none arrived.
int WaitForTerminationSignalFor(absl::Duration timeout);

// libgomp reads OMP_WAIT_POLICY once, when it loads. Its default busy-waiting workers
// compete with OpenBLAS's threads for the same cores (batch-256 Flat search ran 4-6x
// slower on 2 cores, bench/RESULTS.md), so servers set it to PASSIVE and re-execute
// themselves once. Call first thing in main(); returns only if no re-exec was needed
// or it failed.
void EnsurePassiveOpenMp(char** argv);

// Server builder with the project's message size limits.
void ConfigureServerBuilder(grpc::ServerBuilder* builder);

// Serves `service` on host:port (0: any free port), prints "<name> ready on
// HOST:PORT" on stdout, and blocks until SIGINT/SIGTERM, then shuts down. Returns the
// process exit code (1 if it cannot listen).
int ServeUntilSignal(const std::string& name, const std::string& host, int port, grpc::Service* service);

// An insecure channel to host:port with the project's message size limits.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address);

}  // namespace shardvec

#endif  // SHARDVEC_COMMON_SERVER_UTIL_H_
