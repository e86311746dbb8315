// The runner library's error kinds: what an app shows its user (bad input) and what it reports as a fault.
#pragma once

#include <stdexcept>
#include <string>

namespace gemma_edge {

// Bad input — a flag, a file, a manifest field, a prompt — named in the message (file, field, expected and
// found). The CLI exits with status 2 on it; everything else is a failure of the run itself (status 1).
struct BadInput : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace gemma_edge
