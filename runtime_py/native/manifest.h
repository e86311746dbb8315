// The bundle's manifest.json read by the native host itself (gemma_edge/contract/bundle_format.py is the
// schema; this reader checks every field the host uses the same way, and names the field it refuses).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace gemma_edge {

// REQUIRED_KEYS of bundle_format.py: a manifest without one is not an export (tests/test_native.py checks
// that this list and the Python one refuse the same manifests).
extern const char* const kManifestRequiredKeys[12];

struct BundleFile {
  std::string path;      // absolute: the bundle folder joined with the manifest's relative path
  int64_t bytes = 0;
  std::string sha256;    // 64 lowercase hex digits
  std::string identity;  // files.ple only: the .ple header's identity
};

struct Manifest {
  std::string dir;    // the bundle folder
  std::string where;  // dir/manifest.json, for messages
  std::map<std::string, BundleFile> files;  // role -> file (program, ple, tokenizer, onnx)
  std::string prefill_method, decode_method;  // the program method that plays each role
  int max_context = 0, prefill_chunk = 0, vocab_size = 0, num_layers = 0, ple_dim = 0;
  int64_t bos_token_id = 0;
  std::vector<int64_t> eos_token_ids;
  std::optional<std::string> chat_template;  // a jinja template, when the checkpoint had one
  int program_revision = 0;                  // export.program_revision (0: not recorded)

  const BundleFile& file(const std::string& role) const;  // BadInput naming files.<role> when absent
  bool has_file(const std::string& role) const { return files.count(role) != 0; }
};

// Reads and validates BUNDLE_DIR/manifest.json; BadInput names the file and the first wrong field.
Manifest read_manifest(const std::string& bundle_dir);

}  // namespace gemma_edge
