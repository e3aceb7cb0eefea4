// A uniform, streaming reader of vector files for bulk ingestion. Memory stays bounded
// by the batch size whatever the file size:
//
//   auto source = VectorSource::Open("base.fbin");
//   if (!source.ok()) return source.status();
//   SourceBatch batch;
//   for (;;) {
//     absl::Status s = (*source)->Next(4096, &batch);
//     if (!s.ok()) return s;
//     if (batch.vectors.rows == 0) break;
//     ...  // rows batch.first_row .. batch.first_row + batch.vectors.rows - 1
//   }
//
// Formats, chosen by extension (case-insensitive); all are little-endian:
//   .fvecs  .bvecs       TEXMEX: per row an int32 dim, then dim float32 / uint8
//   .fbin .u8bin .i8bin  big-ann-benchmarks: int32 n, int32 d, then n*d float32/uint8/int8
//   .npy                 NumPy v1-v3, 2-D, C order; dtype <f4, or <f8 <f2 |u1 |i1 converted
//   .hdf5 .h5            ann-benchmarks: the 2-D float dataset SourceOptions::hdf5_dataset
//   .jsonl               {"id": 17, "vector": [...], "text": "...", "metadata": {"k": "v"}}
//                        per line; see JSONL below
// Integer components are converted to float exactly. NaN/Inf are passed through (the
// server validates). Structural problems are INVALID_ARGUMENT "<path>: row <r>: ..." or
// "<path>: ..." for the header; a file that cannot be opened is NOT_FOUND. Rows count
// from 0 (for JSONL, blank lines are not rows; messages add the 1-based line number).
//
// JSONL: "vector" and "id" (an integer in [0, 2^64-2]) are each on every row or on none;
// "text" is a string, and "vector" an array (null or "" / null = none); a file without
// vectors is text for a collection with an embedder (dim() is 0, and every row needs a
// non-empty "text"); "metadata" is an object whose string values are kept, numbers and
// booleans become their JSON text (2.50 -> "2.5", true -> "true"), and null values drop
// the key. Other keys are refused, so typos are not silently lost.
#ifndef SHARDVEC_COMMON_VECTOR_SOURCE_H_
#define SHARDVEC_COMMON_VECTOR_SOURCE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/vecs_io.h"

namespace shardvec {

struct SourceBatch {
  int64_t first_row = 0;                                     // row number of vectors.row(0) in the file
  FloatMatrix vectors;                                       // rows x dim, float32
  std::vector<uint64_t> ids;                                 // empty: the caller uses row numbers
  std::vector<std::string> texts;                            // empty, or one payload text per row ("" = none)
  std::vector<std::map<std::string, std::string>> metadata;  // empty, or one per row
};

struct SourceOptions {
  // ann-benchmarks files hold "train" and "test" (vectors) and "neighbors" (integers,
  // refused).
  std::string hdf5_dataset = "train";
};

// A file of vectors, read in batches. Each format is one implementation in
// vector_source.cc; the caller owns the source, which owns its open file. Not
// thread-safe. After Next returns an error the source is unusable.
class VectorSource {
 public:
  // Picks the format by extension. Unknown extension -> INVALID_ARGUMENT naming the
  // file and listing the formats. Header problems are reported here, not by Next.
  static absl::StatusOr<std::unique_ptr<VectorSource>> Open(const std::string& path,
                                                            const SourceOptions& options = {});

  VectorSource() = default;
  VectorSource(const VectorSource&) = delete;
  VectorSource& operator=(const VectorSource&) = delete;
  virtual ~VectorSource() = default;

  // Components per vector; known after Open (0 only for an empty JSONL file or one of
  // texts without vectors).
  virtual int dim() const = 0;
  // Rows in the file; -1 when unknown until read (JSONL, except 0 for one without records).
  virtual int64_t total_rows() const = 0;
  // "fvecs", "bvecs", "fbin", "u8bin", "i8bin", "npy", "hdf5" or "jsonl".
  virtual const char* format() const = 0;
  // Replaces *out with up to max_rows (>= 1) next rows; out->vectors.rows == 0 at the
  // end. A truncated last row is an error naming its row.
  virtual absl::Status Next(int64_t max_rows, SourceBatch* out) = 0;
};

// The integer dataset `name` of an HDF5 file, whole (e.g. ann-benchmarks'
// "neighbors", the ground truth of "test"). UNIMPLEMENTED in portable builds.
absl::StatusOr<IntMatrix> ReadHdf5Ints(const std::string& path, const std::string& name);

}  // namespace shardvec

#endif  // SHARDVEC_COMMON_VECTOR_SOURCE_H_
