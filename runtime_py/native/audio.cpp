#include "audio.h"

#include <sndfile.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "errors.h"

namespace gemma_edge {

int audio_mel_frames(int64_t samples) {
  const int64_t n = std::min<int64_t>(std::max<int64_t>(samples, 0), kAudioMaxSamples);
  return n < kAudioMinSamples ? 0 : int((n - kAudioMinSamples) / kAudioHop + 1);
}

int audio_soft_tokens(int64_t samples) {
  const int f = audio_mel_frames(samples);
  return f == 0 ? 0 : (f - 1) / 4 + 1;
}

int audio_program_frames(int64_t samples) {
  const int blocks = (audio_mel_frames(samples) + 3 + kAudioBlockRows - 1) / kAudioBlockRows;
  return kAudioBlockRows * blocks - 3;
}

std::vector<std::pair<int64_t, int64_t>> audio_split_samples(int64_t samples) {
  std::vector<std::pair<int64_t, int64_t>> pieces;
  for (int64_t s = 0; s < samples; s += kAudioMaxSamples) {
    const int64_t e = std::min<int64_t>(s + kAudioMaxSamples, samples);
    if (audio_soft_tokens(e - s) > 0) pieces.emplace_back(s, e);
  }
  return pieces;
}

DecodedAudio read_wav(const std::string& path) {
  SF_INFO info{};
  SNDFILE* f = sf_open(path.c_str(), SFM_READ, &info);
  if (!f)
    throw BadInput(path + ": expected a WAV file (RIFF/WAVE, PCM 8/16/24/32-bit or float): " + sf_strerror(nullptr));
  struct Close {
    SNDFILE* f;
    ~Close() { sf_close(f); }
  } close{f};
  const int major = info.format & SF_FORMAT_TYPEMASK, sub = info.format & SF_FORMAT_SUBMASK;
  // libsndfile reads many containers; the contract (and the Python host's scipy reader) takes WAV only
  if (major != SF_FORMAT_WAV && major != SF_FORMAT_WAVEX)
    throw BadInput(path + ": expected a WAV file (RIFF/WAVE, PCM 8/16/24/32-bit or float), found another audio "
                   "container (libsndfile format 0x" + [&] { char b[16]; std::snprintf(b, sizeof b, "%x", major);
                                                           return std::string(b); }() + ")");
  const int subs[] = {SF_FORMAT_PCM_U8, SF_FORMAT_PCM_16, SF_FORMAT_PCM_24, SF_FORMAT_PCM_32, SF_FORMAT_FLOAT,
                      SF_FORMAT_DOUBLE};
  if (std::find(std::begin(subs), std::end(subs), sub) == std::end(subs))
    throw BadInput(path + ": expected WAV samples as PCM 8/16/24/32-bit or float, found another encoding "
                   "(compressed, or 8-bit signed)");
  if (info.frames <= 0 || info.channels < 1) throw BadInput(path + ": expected audio samples, found none");
  if (info.samplerate <= 0)
    throw BadInput(path + ": sample rate: expected a positive number of Hz, found " + std::to_string(info.samplerate));
  DecodedAudio a;
  a.rate = info.samplerate;
  a.channels = info.channels;
  a.frames = info.frames;
  // normalised floats: integer PCM over 2^(bits-1) (8-bit unsigned centred first), exactly the Python host's scaling
  sf_command(f, SFC_SET_NORM_FLOAT, nullptr, SF_TRUE);
  a.interleaved.resize(size_t(info.frames) * size_t(info.channels));
  const sf_count_t got = sf_readf_float(f, a.interleaved.data(), info.frames);
  if (got != info.frames)
    throw BadInput(path + ": expected " + std::to_string(info.frames) + " frames (the header's), read " +
                   std::to_string(got) + " (a truncated file)");
  return a;
}

namespace {

// I0, the modified Bessel function of order 0, by its power series: for the Kaiser window's β = 5 the terms
// fall below 1e-17 of the sum within 30 steps.
double bessel_i0(double x) {
  double sum = 1, term = 1;
  const double q = x * x / 4;
  for (int k = 1; k < 200; ++k) {
    term *= q / (double(k) * double(k));
    sum += term;
    if (term < sum * 1e-17) break;
  }
  return sum;
}

// scipy.signal.firwin(numtaps, cutoff, window=('kaiser', beta)): a windowed-sinc low-pass, scaled to unit DC gain.
std::vector<double> firwin_kaiser(int numtaps, double cutoff, double beta) {
  const double alpha = 0.5 * (numtaps - 1), pi = M_PI;
  std::vector<double> h(static_cast<size_t>(numtaps));
  const double i0_beta = bessel_i0(beta);
  for (int n = 0; n < numtaps; ++n) {
    const double m = n - alpha, x = cutoff * m;
    const double sinc = x == 0 ? 1.0 : std::sin(pi * x) / (pi * x);
    const double r = (n - alpha) / alpha;
    h[size_t(n)] = cutoff * sinc * (bessel_i0(beta * std::sqrt(1 - r * r)) / i0_beta);
  }
  const double s = std::accumulate(h.begin(), h.end(), 0.0);
  for (double& v : h) v /= s;
  return h;
}

// scipy's upfirdn output length for a filter of len_h taps over n_in samples
int64_t upfirdn_len(int64_t len_h, int64_t n_in, int64_t up, int64_t down) {
  const int64_t nt = (n_in + (len_h + (-len_h % up + up) % up) / up - 1) * up;
  return nt / down + (nt % down > 0);
}

}  // namespace

std::vector<double> resample_poly(const std::vector<double>& x, int up, int down) {
  const int g = std::gcd(up, down);
  up /= g;
  down /= g;
  if (up == 1 && down == 1) return x;
  const int64_t n_in = int64_t(x.size());
  const int64_t n_out = (n_in * up) / down + ((n_in * up) % down != 0);
  const int max_rate = std::max(up, down);
  const int half_len = 10 * max_rate;
  std::vector<double> h = firwin_kaiser(2 * half_len + 1, 1.0 / max_rate, 5.0);
  for (double& v : h) v *= up;
  // zero-pad the filter so the output samples sit at its centre (resample_poly's n_pre_pad / n_post_pad)
  const int64_t n_pre_pad = down - half_len % down;
  int64_t n_post_pad = 0;
  const int64_t n_pre_remove = (half_len + n_pre_pad) / down;
  while (upfirdn_len(int64_t(h.size()) + n_pre_pad + n_post_pad, n_in, up, down) < n_out + n_pre_remove) ++n_post_pad;
  std::vector<double> hp(size_t(n_pre_pad), 0.0);
  hp.insert(hp.end(), h.begin(), h.end());
  hp.resize(hp.size() + size_t(n_post_pad), 0.0);
  const int64_t len_h = int64_t(hp.size());
  // upfirdn: y[i] = Σ_k hp[k] · u[i·down − k], u the input with up − 1 zeros after each sample; only the taps that
  // meet a real sample are summed, newest sample first
  std::vector<double> y(static_cast<size_t>(n_out));
  for (int64_t i = 0; i < n_out; ++i) {
    const int64_t t = (i + n_pre_remove) * down;  // the position in the upsampled signal
    int64_t k = t % up, xi = t / up;               // the first tap that meets a sample, and that sample
    double acc = 0;
    for (; k < len_h && xi >= 0; k += up, --xi)
      if (xi < n_in) acc += hp[size_t(k)] * x[size_t(xi)];
    y[size_t(i)] = acc;
  }
  return y;
}

std::vector<float> to_mono_16k(const DecodedAudio& a, const std::string& where) {
  if (a.rate <= 0)
    throw BadInput(where + ": sample rate: expected a positive number of Hz, found " + std::to_string(a.rate));
  if (a.channels < 1 || a.interleaved.size() != size_t(a.frames) * size_t(a.channels))
    throw BadInput(where + ": samples: expected frames × channels values, found " +
                   std::to_string(a.interleaved.size()));
  for (float v : a.interleaved)
    if (!std::isfinite(v)) throw BadInput(where + ": samples: expected finite values, found NaN or infinity");
  // the channels' mean in float64, rounded to float32 (numpy's mean(axis=1, dtype=float64).astype(float32))
  std::vector<float> mono(size_t(a.frames));
  for (int64_t i = 0; i < a.frames; ++i) {
    double s = 0;
    for (int c = 0; c < a.channels; ++c) s += double(a.interleaved[size_t(i * a.channels + c)]);
    mono[size_t(i)] = a.channels == 1 ? a.interleaved[size_t(i)] : float(s / a.channels);
  }
  if (a.rate == kAudioSampleRate) return mono;
  const std::vector<double> y = resample_poly(std::vector<double>(mono.begin(), mono.end()), kAudioSampleRate, a.rate);
  return std::vector<float>(y.begin(), y.end());
}

std::vector<AudioClip> prepare_audio(const std::vector<float>& samples, const std::string& where) {
  const auto pieces = audio_split_samples(int64_t(samples.size()));
  if (pieces.empty())
    throw BadInput(where + ": audio: " + std::to_string(samples.size()) + " samples make no soft token (expected at "
                   "least " + std::to_string(kAudioMinSamples) + ", 10 ms at 16000 Hz)");
  std::vector<AudioClip> clips;
  for (auto [a, b] : pieces) {
    AudioClip c;
    c.start = a;
    c.samples = b - a;
    c.mel_frames = audio_mel_frames(c.samples);
    c.program_frames = audio_program_frames(c.samples);
    c.soft_tokens = audio_soft_tokens(c.samples);
    c.rows.assign(size_t(c.program_frames) * kAudioHop, 0.0f);
    std::copy_n(samples.begin() + a, size_t(c.mel_frames) * kAudioHop, c.rows.begin());
    c.valid.assign(size_t(c.program_frames), 0.0f);
    std::fill_n(c.valid.begin(), c.mel_frames, 1.0f);
    clips.push_back(std::move(c));
  }
  return clips;
}

}  // namespace gemma_edge
