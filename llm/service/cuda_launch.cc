#include "llm/service/cuda_launch.h"

#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "common/process.h"
#include "llm/cuda/cuda_model.h"
#include "llm/cuda/nccl_comm.h"

namespace shardvec::llm {
namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

int RunCuda(const CudaLaunch& l) {
  std::vector<int> gpus = l.gpus;
  if (gpus.empty()) {
    for (int r = 0; r < l.tp; ++r) gpus.push_back(r);
  }
  if (static_cast<int>(gpus.size()) != l.tp) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("gpus: ", gpus.size(), " devices given for tp = ", l.tp)));
  }
  if (l.rank < 0 || l.rank >= l.tp) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("rank: ", l.rank, " outside [0, ", l.tp, ")")));
  }
  absl::StatusOr<CudaDType> dtype = ParseCudaDType(l.dtype);
  if (!dtype.ok()) return Fail(dtype.status());
  CudaModelOptions mo;
  mo.device = gpus[l.rank];
  mo.dtype = *dtype;
  mo.max_slots = l.max_slots;
  mo.max_seq_len = l.max_seq_len;

  if (l.tp == 1) {
    absl::StatusOr<std::unique_ptr<Model>> model = CudaModel::Load(l.model_dir, mo);
    if (!model.ok()) return Fail(model.status());
    return l.serve(model->get());
  }

  // Rank 0 makes the NCCL id and starts one follower process per further rank; NCCL's
  // init then blocks until all ranks have joined.
  std::string id = l.nccl_id;
  std::vector<std::unique_ptr<ChildProcess>> followers;
  if (l.rank == 0) {
    absl::StatusOr<std::string> made = NewNcclId();
    if (!made.ok()) return Fail(made.status());
    id = *made;
    for (int r = 1; r < l.tp; ++r) {
      std::vector<std::string> argv = {l.argv0};
      argv.insert(argv.end(), l.follower_prefix_args.begin(), l.follower_prefix_args.end());
      const std::vector<std::string> flags = {
          "--model", l.model_dir, "--device", "cuda", "--dtype", l.dtype,
          "--tp", absl::StrCat(l.tp), "--gpus", absl::StrJoin(gpus, ","),
          "--max-batch", absl::StrCat(l.max_slots), "--max-seq-len", absl::StrCat(l.max_seq_len),
          "--rank", absl::StrCat(r), "--nccl-id", id};
      argv.insert(argv.end(), flags.begin(), flags.end());
      absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Start(argv);
      if (!child.ok()) return Fail(child.status());
      followers.push_back(*std::move(child));
    }
  } else if (id.empty()) {
    return Fail(absl::InvalidArgumentError("nccl-id: a follower rank needs rank 0's NCCL id"));
  }
  absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm =
      NcclCommunicator::Create(l.rank, l.tp, id, mo.device);
  if (!comm.ok()) return Fail(comm.status());
  absl::StatusOr<std::unique_ptr<Model>> model = CudaModel::Load(l.model_dir, mo, comm->get());
  if (!model.ok()) return Fail(model.status());
  if (l.rank != 0) {
    absl::Status s = (*model)->FollowerLoop();
    if (!s.ok()) return Fail(s);
    return 0;
  }
  const int rc = l.serve(model->get());
  if (absl::Status s = (*model)->StopFollowers(); !s.ok()) LogInfo("stop followers: %s", s.ToString());
  for (std::unique_ptr<ChildProcess>& f : followers) {
    const int status = f->Wait(absl::Seconds(30));
    if (status == -1) LogInfo("a follower rank did not exit; stopping it");
  }
  return rc;  // ChildProcess's destructor stops any follower still running
}

}  // namespace shardvec::llm
