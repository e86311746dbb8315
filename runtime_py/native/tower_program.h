// What the vision and the audio programs share: loading a tower's .pte only once its bytes are the manifest's, and
// telling whether this process still maps it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <executorch/extension/module/module.h>

namespace gemma_edge {

// `path` (the manifest's files.<role>: `bytes` long, SHA-256 `sha256`) resolved, checked byte for byte — before
// ExecuTorch parses any of it — then loaded with internal-consistency verification and its `method` loaded.
// BadInput naming the file (and `method_key`, the manifest field that names the method) for any failure.
// `path` is rewritten to the real path (a mapping is found by it); `verify_s` gets the checks' time.
std::unique_ptr<executorch::extension::module::Module> load_tower_program(std::string& path, int64_t bytes,
                                                                          const std::string& sha256,
                                                                          const std::string& role,
                                                                          const std::string& method,
                                                                          const std::string& method_key,
                                                                          double* verify_s);

// Whether /proc/self/maps holds a mapping of `path` (a real path).
bool process_maps(const std::string& path);

// "[1, 45, 160]", for messages.
std::string shape_text(executorch::runtime::Span<const int32_t> sizes);

}  // namespace gemma_edge
