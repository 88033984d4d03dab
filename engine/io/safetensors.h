// Reading and writing the safetensors format, the tensor file format of Hugging Face's
// `safetensors` package (https://github.com/huggingface/safetensors):
//
//   u64 N (little-endian) | N bytes of UTF-8 JSON header | byte buffer
//
// The header maps each tensor name to {"dtype": "F32"|"F64"|"F16"|"BF16"|"I64", "shape": [...],
// "data_offsets": [begin, end]} (byte offsets relative to the buffer start) and may hold
// "__metadata__": {string: string}. Tensor data is row-major, little-endian, and the tensors
// cover the buffer exactly (no gaps, no overlaps, nothing after the last one), as the reference
// implementation requires. Files written here load with `safetensors.torch.load_file` and files
// written by `safetensors.torch.save_file` load here (tests/test_io_safetensors.cpp).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/tensor.h"

namespace mt::io {

// name -> tensor, in a chosen order (a checkpoint's order is its parameters' order).
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

struct SafetensorsContents {
  NamedTensors tensors;                         // in file order (position in the byte buffer)
  std::map<std::string, std::string> metadata;  // the header's "__metadata__", if any

  // The tensor called `name`, or nullptr.
  const Tensor* find(const std::string& name) const;
};

// One header entry, as stored (see read_safetensors_header).
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  uint64_t begin = 0;  // byte offsets into the buffer, [begin, end)
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // in file order
  std::map<std::string, std::string> metadata;  // without the checksum entry
  uint64_t buffer_offset = 0;  // file offset of the byte buffer (8 + header length)
  // CRC-32 of the byte buffer, where the writer recorded one (metadata "metatape.crc32").
  bool has_data_crc32 = false;
  uint32_t data_crc32 = 0;
};

// Writes `tensors` (CPU tensors of any strides; distinct, non-empty names other than
// "__metadata__") in the given order, with `metadata` as the header's "__metadata__" plus the
// entry "metatape.crc32": the CRC-32 (8 hex digits) of the byte buffer, which the readers check
// (a file with changed bytes is refused, not loaded with wrong values) and leave out of the
// metadata they return; other readers ignore it. The header is padded with spaces to a multiple of 8 bytes, so the buffer starts
// 8-byte aligned in the file; tensors follow each other without gaps. The write is atomic: the
// file is written to a temporary file in the same folder, flushed to disk (fsync) and renamed
// over `path`; on any error the temporary file is removed and `path` is left as it was.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Reads and validates the whole file: new CPU tensors, in file order; with a checksum entry,
// the data must match it. Every error is an mt::Error that names the file, the problem and how
// to fix it.
SafetensorsContents load_safetensors(const std::string& path);

// CRC-32 (zlib's, as the checksum entry uses) of n bytes, continuing from `crc` (0 to start).
uint32_t crc32_of_bytes(const void* data, size_t n, uint32_t crc = 0);

// Reads and validates the header only (names, dtypes, shapes, offsets and metadata) without
// reading tensor data.
SafetensorsHeader read_safetensors_header(const std::string& path);

// The format's dtype names ("F32", ...) and back; the parser accepts exactly these five.
const char* safetensors_dtype_name(DType dtype);

}  // namespace mt::io
