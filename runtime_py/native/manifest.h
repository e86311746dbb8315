// The bundle's manifest.json read by the native host itself (gemma_edge/contract/bundle_format.py is the
// schema; this reader checks every field the host uses the same way, and names the field it refuses).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "loop.h"

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

// The manifest's `vision` entry: the vision program (files.vision) of the same checkpoint, one method per
// image budget.
struct VisionEntry {
  std::vector<int> budgets;             // sorted, distinct, each a supported budget
  std::map<int, std::string> methods;   // budget -> the program method that encodes at it
  int hidden_size = 0;                  // soft-token width: config.hidden_size
  int patch_dim = 0;                    // pixel_values' last dimension
  ImageTokens image_tokens;
  std::string quantization;             // 8da8w | 8da4w | none
  int block_q = 0;                      // query rows per attention block; 0: null (unblocked)
};

// The manifest's `audio` entry: the audio program (files.audio) of the same checkpoint, one method dynamic in the
// clip length. Read and checked as bundle_format._check_audio does; this host does not run audio yet.
struct AudioEntry {
  std::string method;        // the program method that encodes a clip
  int max_tokens = 0;        // soft tokens of the longest clip (750: 30 s)
  int hidden_size = 0;       // soft-token width: config.hidden_size
  int64_t boa = 0, audio = 0, eoa = 0;  // the ids that frame a clip: boa, one audio per soft token, eoa
  std::string quantization;  // 8da8w | 8da4w | none
};

struct Manifest {
  std::string dir;    // the bundle folder
  std::string where;  // dir/manifest.json, for messages
  std::map<std::string, BundleFile> files;  // role -> file (program, ple, tokenizer, onnx)
  std::string prefill_method, decode_method;  // the program method that plays each role
  int max_context = 0, prefill_chunk = 0, vocab_size = 0, num_layers = 0, ple_dim = 0;
  std::string model_hash;
  int64_t bos_token_id = 0;
  int64_t pad_token_id = 0;  // 0 when the manifest's is null (the row fetched at an image placeholder)
  std::vector<int64_t> eos_token_ids;
  std::optional<std::string> chat_template;  // a jinja template, when the checkpoint had one
  int program_revision = 0;                  // export.program_revision (0: not recorded)
  std::optional<VisionEntry> vision;         // present exactly when files.vision is
  std::optional<AudioEntry> audio;           // present exactly when files.audio is

  const BundleFile& file(const std::string& role) const;  // BadInput naming files.<role> when absent
  bool has_file(const std::string& role) const { return files.count(role) != 0; }
};

// Reads and validates BUNDLE_DIR/manifest.json; BadInput names the file and the first wrong field.
Manifest read_manifest(const std::string& bundle_dir);

}  // namespace gemma_edge
