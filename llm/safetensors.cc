#include "llm/safetensors.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace shardvec::llm {
namespace {

using nlohmann::json;

// A header larger than this is certainly corrupt (real checkpoints have a few MB at most).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DTypeInfo {
  DType type;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::kF32, "F32", 4},   {DType::kF16, "F16", 2}, {DType::kBF16, "BF16", 2},
    {DType::kF64, "F64", 8},   {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},   {DType::kI8, "I8", 1},   {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1},
};

bool ParseDType(const std::string& name, DType* out) {
  for (const DTypeInfo& d : kDTypes) {
    if (name == d.name) {
      *out = d.type;
      return true;
    }
  }
  return false;
}

float Bf16ToFloat(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float F16ToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);  // rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal half: normalise the mantissa.
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400) == 0);
    bits = sign | (static_cast<uint32_t>(112 - e) << 23) | ((mant & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Element i of a tensor of a floating dtype, as float32.
inline float LoadFloat(const uint8_t* p, DType t) {
  switch (t) {
    case DType::kF32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case DType::kBF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return Bf16ToFloat(h);
    }
    case DType::kF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return F16ToFloat(h);
    }
    case DType::kF64: {
      double d;
      std::memcpy(&d, p, 8);
      return static_cast<float>(d);
    }
    default:
      return 0.0f;
  }
}

bool IsFloating(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kF64;
}

void ConvertRun(const uint8_t* src, DType t, size_t n, float* dst) {
  if (t == DType::kF32) {
    std::memcpy(dst, src, n * 4);
    return;
  }
  const size_t es = DTypeSize(t);
  for (size_t i = 0; i < n; ++i) dst[i] = LoadFloat(src + i * es, t);
}

absl::Status Bad(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

size_t DTypeSize(DType t) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.type == t) return d.size;
  }
  return 0;
}

const char* DTypeName(DType t) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.type == t) return d.name;
  }
  return "?";
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat("cannot stat ", path, ": ", std::strerror(err)));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return Bad(path, absl::StrCat("file of ", size, " bytes is too short for a header length"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);
  if (map == MAP_FAILED) {
    return absl::InternalError(absl::StrCat("cannot mmap ", path, ": ", std::strerror(map_err)));
  }
  file->map_ = map;
  file->map_size_ = size;
  const uint8_t* base = static_cast<const uint8_t*>(map);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  if (header_len == 0 || header_len > kMaxHeaderBytes || header_len > size - 8) {
    return Bad(path, absl::StrCat("header length ", header_len, " does not fit the file of ", size,
                                  " bytes"));
  }
  const char* header_begin = reinterpret_cast<const char*>(base + 8);
  const json header =
      json::parse(header_begin, header_begin + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return Bad(path, "header is not a JSON object");
  }
  const uint8_t* data = base + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  // (begin, end, name) of every tensor, to check that they tile the data area.
  std::vector<std::tuple<uint64_t, uint64_t, std::string>> extents;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return Bad(path, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return Bad(path, absl::StrCat("__metadata__.", m.key(), " is not a string"));
        }
        file->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = absl::StrCat("tensor \"", name, "\": ");
    if (!v.is_object()) return Bad(path, where + "entry is not an object");
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) return Bad(path, where + "dtype is missing");
    TensorView view;
    if (!ParseDType(dt->get<std::string>(), &view.dtype)) {
      return Bad(path, where + "unknown dtype \"" + dt->get<std::string>() + "\"");
    }
    if (sh == v.end() || !sh->is_array()) return Bad(path, where + "shape is missing");
    // Overflow-safe element count: stop as soon as it exceeds what the file could hold.
    uint64_t numel = 1;
    for (const json& d : *sh) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0)) {
        return Bad(path, where + "shape has a negative or non-integer dimension");
      }
      const uint64_t dim = d.get<uint64_t>();
      view.shape.push_back(static_cast<int64_t>(dim));
      if (dim != 0 && numel > data_size / dim) {
        return Bad(path, where + "shape is larger than the file");
      }
      numel *= dim;
    }
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      return Bad(path, where + "data_offsets must be two non-negative integers");
    }
    const uint64_t begin = (*off)[0].get<uint64_t>();
    const uint64_t end = (*off)[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return Bad(path, absl::StrCat(where, "data_offsets [", begin, ", ", end,
                                    "] are outside the data area of ", data_size, " bytes"));
    }
    const uint64_t expected = numel * DTypeSize(view.dtype);
    if (end - begin != expected) {
      return Bad(path, absl::StrCat(where, "holds ", end - begin, " bytes but ",
                                    DTypeName(view.dtype), " x shape needs ", expected));
    }
    view.data = data + begin;
    view.nbytes = static_cast<size_t>(expected);
    extents.emplace_back(begin, end, name);
    file->tensors_.emplace(name, std::move(view));
  }
  std::sort(extents.begin(), extents.end());
  uint64_t cursor = 0;
  for (const auto& [begin, end, name] : extents) {
    if (begin < cursor) {
      return Bad(path, absl::StrCat("tensor \"", name, "\": data_offsets overlap another tensor"));
    }
    if (begin > cursor) {
      return Bad(path, absl::StrCat("tensor \"", name, "\": gap of ", begin - cursor,
                                    " bytes before its data_offsets"));
    }
    cursor = end;
  }
  if (cursor != data_size) {
    return Bad(path, absl::StrCat(data_size - cursor, " trailing bytes after the last tensor"));
  }
  return file;
}

const TensorView* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  std::vector<std::string> paths;
  const std::string single = dir + "/model.safetensors";
  const std::string index = dir + "/model.safetensors.index.json";
  if (FileExists(index)) {
    auto text = ReadTextFile(index);
    if (!text.ok()) return text.status();
    const json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) return Bad(index, "not a JSON object");
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object()) return Bad(index, "weight_map is missing");
    std::set<std::string> files;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string()) {
        return Bad(index, absl::StrCat("weight_map.", it.key(), " is not a string"));
      }
      const std::string f = it.value().get<std::string>();
      if (f.empty() || f.find('/') != std::string::npos) {
        return Bad(index, absl::StrCat("weight_map.", it.key(), " names \"", f,
                                       "\", not a file in the folder"));
      }
      files.insert(f);
    }
    for (const std::string& f : files) paths.push_back(dir + "/" + f);
  } else if (FileExists(single)) {
    paths.push_back(single);
  } else {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) {
      return absl::NotFoundError(absl::StrCat("cannot open folder ", dir));
    }
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      const std::string ext = ".safetensors";
      if (name.size() > ext.size() &&
          name.compare(name.size() - ext.size(), ext.size(), ext) == 0) {
        paths.push_back(dir + "/" + name);
      }
    }
    ::closedir(d);
    std::sort(paths.begin(), paths.end());
    if (paths.empty()) {
      return absl::NotFoundError(absl::StrCat("no .safetensors files in ", dir));
    }
  }
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  std::set<std::string> seen;
  for (const std::string& p : paths) {
    auto f = SafetensorsFile::Open(p);
    if (!f.ok()) return f.status();
    for (const auto& [name, view] : (*f)->tensors()) {
      if (!seen.insert(name).second) {
        return Bad(p, absl::StrCat("tensor \"", name, "\" also appears in another file"));
      }
    }
    ckpt->files_.push_back(std::move(*f));
  }
  return ckpt;
}

const TensorView* Checkpoint::Find(const std::string& name) const {
  for (const auto& f : files_) {
    if (const TensorView* v = f->Find(name)) return v;
  }
  return nullptr;
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> names;
  for (const auto& f : files_) {
    for (const auto& [name, view] : f->tensors()) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<float> ToFloat32(const TensorView& t) {
  if (!IsFloating(t.dtype)) return {};
  std::vector<float> out(static_cast<size_t>(t.numel()));
  ConvertRun(t.data, t.dtype, out.size(), out.data());
  return out;
}

std::vector<float> SliceToFloat32(const TensorView& t, int64_t row_begin, int64_t row_end,
                                  int64_t col_begin, int64_t col_end) {
  if (!IsFloating(t.dtype) || t.shape.size() != 2) return {};
  const int64_t rows = t.shape[0], cols = t.shape[1];
  if (row_begin < 0 || row_end > rows || row_begin > row_end || col_begin < 0 || col_end > cols ||
      col_begin > col_end) {
    return {};
  }
  const int64_t out_cols = col_end - col_begin;
  std::vector<float> out(static_cast<size_t>((row_end - row_begin) * out_cols));
  const size_t es = DTypeSize(t.dtype);
  for (int64_t r = row_begin; r < row_end; ++r) {
    ConvertRun(t.data + (r * cols + col_begin) * es, t.dtype, static_cast<size_t>(out_cols),
               out.data() + (r - row_begin) * out_cols);
  }
  return out;
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors) {
  json header = json::object();
  uint64_t offset = 0;
  std::set<std::string> names;
  for (const TensorToWrite& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__" || !names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("WriteSafetensors: tensor name \"", t.name, "\" is empty or repeated"));
    }
    uint64_t numel = 1;
    json shape = json::array();
    for (int64_t d : t.shape) {
      if (d < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("WriteSafetensors: tensor \"", t.name, "\" has a negative dimension"));
      }
      numel *= static_cast<uint64_t>(d);
      shape.push_back(d);
    }
    if (numel * DTypeSize(t.dtype) != t.bytes.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("WriteSafetensors: tensor \"", t.name, "\" has ", t.bytes.size(), " bytes, ",
                       DTypeName(t.dtype), " x shape needs ", numel * DTypeSize(t.dtype)));
    }
    header[t.name] = {{"dtype", DTypeName(t.dtype)},
                      {"shape", shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  // Pad with spaces so the data area starts 8-byte aligned, as the reference writer does.
  while ((text.size() + 8) % 8 != 0) text.push_back(' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InternalError(absl::StrCat("cannot create ", path));
  uint8_t len[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const TensorToWrite& t : tensors) {
    out.write(reinterpret_cast<const char*>(t.bytes.data()),
              static_cast<std::streamsize>(t.bytes.size()));
  }
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("write to ", path, " failed"));
  return absl::OkStatus();
}

}  // namespace shardvec::llm
