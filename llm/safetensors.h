// Reader for the safetensors format: an 8-byte little-endian header length, a JSON
// header {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {...}}, then the raw little-endian tensor bytes. Files are mapped
// read-only; views stay valid while the Checkpoint lives.
//
//   auto ckpt = llm::Checkpoint::Open("/models/llama-3.2-1b");  // one or sharded files
//   const llm::TensorView* w = (*ckpt)->Find("model.embed_tokens.weight");
//   std::vector<float> rows = llm::ToFloat32(*w);
#ifndef SHARDVEC_LLM_SAFETENSORS_H_
#define SHARDVEC_LLM_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace shardvec::llm {

enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };
size_t DTypeSize(DType t);
const char* DTypeName(DType t);  // "F32", "BF16", ... as in the header

struct TensorView {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // not necessarily aligned
  size_t nbytes = 0;
  int64_t numel() const;
};

// One .safetensors file, mapped. INVALID_ARGUMENT (naming the file and tensor) for a
// header that is not valid JSON, offsets outside the file, overlapping tensors, a byte
// count that does not match dtype x shape, or an unknown dtype.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const TensorView* Find(const std::string& name) const;  // nullptr when absent
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint folder: model.safetensors, or the files listed by
// model.safetensors.index.json ("weight_map"), or every *.safetensors in the folder.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);
  const TensorView* Find(const std::string& name) const;
  std::vector<std::string> Names() const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
};

// Converts F32/F16/BF16 (and F64) tensors to float32; other dtypes give an empty vector.
std::vector<float> ToFloat32(const TensorView& t);
// Rows [row_begin, row_end) and columns [col_begin, col_end) of a 2-D tensor as float32
// (the slices tensor parallelism takes).
std::vector<float> SliceToFloat32(const TensorView& t, int64_t row_begin, int64_t row_end,
                                  int64_t col_begin, int64_t col_end);

// Writes tensors (float32 or bf16 given as raw bytes) as a safetensors file; used by
// tests and by the benchmark's random checkpoints.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors);

}  // namespace shardvec::llm

#endif  // SHARDVEC_LLM_SAFETENSORS_H_
