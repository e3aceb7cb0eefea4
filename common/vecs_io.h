// Readers and writers for the .fvecs / .ivecs formats of the TEXMEX corpus: each row
// is a little-endian int32 dimension d followed by d float32 (fvecs) or int32 (ivecs).
// Errors name the file, the row and the problem.
#ifndef SHARDVEC_COMMON_VECS_IO_H_
#define SHARDVEC_COMMON_VECS_IO_H_

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace shardvec {

template <typename T>
struct Matrix {
  int64_t rows = 0;
  int dim = 0;
  std::vector<T> data;  // row-major, rows * dim

  const T* row(int64_t i) const { return data.data() + i * dim; }
};

using FloatMatrix = Matrix<float>;
using IntMatrix = Matrix<int32_t>;

// Streams rows of one .fvecs or .ivecs file; every row must have the first row's
// dimension. Not thread-safe.
template <typename T>
class VecsReader {
 public:
  static absl::StatusOr<std::unique_ptr<VecsReader>> Open(const std::string& path);
  ~VecsReader();

  // Replaces *out with up to max_rows next rows; out->rows == 0 at end of file.
  absl::Status Next(int64_t max_rows, Matrix<T>* out);

  int dim() const { return dim_; }
  // Rows in the file, from its size (exact for a well-formed file).
  int64_t total_rows() const { return total_rows_; }
  int64_t rows_read() const { return row_; }

 private:
  VecsReader(std::string path, std::FILE* f, int dim, int64_t total_rows)
      : path_(std::move(path)), file_(f), dim_(dim), total_rows_(total_rows) {}

  std::string path_;
  std::FILE* file_;
  int dim_;
  int64_t total_rows_;
  int64_t row_ = 0;
};

using FvecsReader = VecsReader<float>;
using IvecsReader = VecsReader<int32_t>;

absl::StatusOr<FloatMatrix> ReadFvecs(const std::string& path);
absl::StatusOr<IntMatrix> ReadIvecs(const std::string& path);
absl::Status WriteFvecs(const std::string& path, const FloatMatrix& m);
absl::Status WriteIvecs(const std::string& path, const IntMatrix& m);

}  // namespace shardvec

#endif  // SHARDVEC_COMMON_VECS_IO_H_
