// A child process started from argv, with its stdout on a pipe so the parent can wait
// for a readiness line. Used by `shardvec local up` and by the end-to-end tests.
// The child gets SIGKILL if the parent dies, so no server outlives its launcher.
// Not thread-safe; the destructor stops the child.
#ifndef SHARDVEC_COMMON_PROCESS_H_
#define SHARDVEC_COMMON_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace shardvec {

class ChildProcess {
 public:
  // stderr goes to `stderr_path` (appended) when given, else to the parent's stderr.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(const std::vector<std::string>& argv,
                                                             const std::string& stderr_path = "");
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Reads stdout until a line contains `needle`; returns that line. Fails when the
  // child exits or closes stdout first, or at the deadline.
  absl::StatusOr<std::string> WaitForLine(const std::string& needle, absl::Duration timeout);

  // Reads what is left of stdout until the child closes it or the deadline passes.
  std::string ReadRest(absl::Duration timeout);

  pid_t pid() const { return pid_; }
  bool Running();
  void Signal(int sig);
  // Waits for exit up to `timeout`; returns the wait status, or -1 if still running.
  int Wait(absl::Duration timeout);
  // SIGTERM, then SIGKILL after `grace`; returns the wait status.
  int Stop(absl::Duration grace = absl::Seconds(10));

 private:
  ChildProcess(pid_t pid, int stdout_fd) : pid_(pid), stdout_fd_(stdout_fd) {}

  pid_t pid_;
  int stdout_fd_;
  bool exited_ = false;
  int wait_status_ = 0;
  std::string buffer_;
};

// The path of the running executable.
std::string SelfExecutable();

}  // namespace shardvec

#endif  // SHARDVEC_COMMON_PROCESS_H_
