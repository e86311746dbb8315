// The sampler: greedy, or seeded temperature / top-k / top-p sampling — bit for bit runtime_py/sampling.py
// (whose docstring states the algorithm; Sampler.java is the third copy): greedy lowest-index ties,
// (logit desc, index asc) order, float64 weights and left-to-right sums, SplitMix64 draws.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace gemma_edge {

// java.util.SplittableRandom(seed).nextDouble()'s sequence.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  double next_double();

 private:
  uint64_t state_;
};

// Index of the largest logit, lowest index on ties; BadInput naming the first NaN.
int64_t argmax(const float* logits, size_t n);

class Sampler {
 public:
  // temperature and top_p are float32 values (widened exactly to float64 where used); BadInput for a NaN
  // temperature or top_p outside (0, 1].
  Sampler(float temperature = 0.0f, int64_t top_k = 0, float top_p = 1.0f, uint64_t seed = 0);
  bool is_greedy() const { return temperature_ <= 0.0 || top_k_ == 1; }
  // The next token from last-position logits [n]; one draw per non-greedy pick.
  int64_t operator()(const float* logits, size_t n);

 private:
  double temperature_, top_p_;
  int64_t top_k_;
  SplitMix64 rng_;
  std::vector<int64_t> order_;  // reused per pick
  std::vector<double> run_;
};

}  // namespace gemma_edge
