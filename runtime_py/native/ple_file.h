// The `.ple` flash file (ple_store/FORMAT.md) read natively: header checks, one batched fetch per prompt.
//
// The third reader of the format, beside ple_store/reader.py and the Android demo's Java core; all three
// decode a row to the same float32 values ((q · s) · embed_scale, in float32) and count I/O the same way.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace gemma_edge {

// A file or field that does not match the format: the message names the file, the field, expected and found.
struct PleFormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct FetchStats {
  int64_t tokens = 0;
  int64_t unique_rows = 0;
  int64_t bytes_requested = 0;  // unique_rows · row_bytes
  int64_t pages_touched = 0;    // distinct pages covered by the unique rows
  int64_t read_calls = 0;       // pread calls (one per run of rows adjacent in the file)
  double wall_s = 0.0;
};

// Not thread-safe: one fetch at a time (the host fetches from its one generation loop).
class PleFile {
 public:
  // Opens and checks: a regular file (a FIFO or device is refused by type, never waited on), every header
  // field against FORMAT.md and the file's size, the header CRC, and the identity recomputed (SHA-256 of
  // header[0, 144) and the checksum table). `identity_hex`, when not empty, is the manifest's identity of
  // the file: a .ple of another export is refused.
  PleFile(const std::string& path, const std::string& identity_hex);
  ~PleFile();
  PleFile(const PleFile&) = delete;
  PleFile& operator=(const PleFile&) = delete;

  // The rows of `ids` as float32 [n, L, P] into `out` (n · L · P floats): every unique row's read is
  // announced to the kernel at once (POSIX_FADV_WILLNEED over each run of adjacent rows), then read.
  // Each row is checked before it is decoded: against the CRC-32 stored after it (flags ROW_CRC), or, in a
  // minor-0 file, its data block against the checksum table the first time a fetch touches the block.
  // A mismatch throws PleFormatError naming the file, the row (or block), expected and found.
  FetchStats fetch(const int64_t* ids, size_t n, float* out);

  uint32_t vocab_size() const { return vocab_size_; }
  uint32_t num_layers() const { return num_layers_; }
  uint32_t ple_dim() const { return ple_dim_; }
  size_t row_values() const { return size_t(num_layers_) * ple_dim_; }
  const std::string& path() const { return path_; }

 private:
  uint64_t row_offset(int64_t t) const;
  void decode_row(const uint8_t* stored, float* out) const;
  void check_block(uint32_t b);  // minor-0 files: block b against the checksum table, once

  std::string path_;
  int fd_ = -1;
  uint32_t vocab_size_ = 0, num_layers_ = 0, ple_dim_ = 0, dtype_ = 0, group_size_ = 0;
  uint32_t row_bytes_ = 0, row_stride_ = 0, rows_per_group_ = 0, group_bytes_ = 0, block_groups_ = 0;
  uint32_t record_bytes_ = 0;  // row_bytes, + 4 for the CRC-32 after each row when flags has ROW_CRC
  bool row_crc_ = false;
  uint64_t data_offset_ = 0, checksum_offset_ = 0;
  float embed_scale_ = 1.0f;
  std::vector<uint32_t> block_crcs_;  // the checksum table, read at open
  std::vector<bool> block_ok_;        // minor-0 files: blocks a fetch has checked
  std::vector<uint8_t> stored_;       // reused read buffer: unique rows · record_bytes
};

}  // namespace gemma_edge
