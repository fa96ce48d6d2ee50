// Image data: IDX (gzip through zlib) and PNG (libpng) readers, split, batches (train/images.h).
#include "posformer/train/images.h"

#include <png.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "posformer/core/error.h"
#include "posformer/core/random.h"

namespace posformer {

int64_t ImageSet::num_classes() const {
  int32_t m = -1;
  for (int32_t l : labels) m = std::max(m, l);
  return m + 1;
}

namespace {
double sample_normal(uint64_t& s) {  // Box-Muller
  const double u1 = 1.0 - uniform01(s), u2 = uniform01(s);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

double sample_gamma(double a, uint64_t& s) {  // shape a >= 1, scale 1: Marsaglia & Tsang (2000)
  const double d = a - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {  // accepts with probability > 0.95
    double x, v;
    do {
      x = sample_normal(s);
      v = 1.0 + c * x;
    } while (v <= 0.0);
    v = v * v * v;
    const double u = 1.0 - uniform01(s);
    if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
    if (std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return d * v;
  }
}

// log of a Gamma(a) draw, a > 0; below 1 through Gamma(a) = Gamma(a + 1) U^(1/a), in logs so
// that tiny shapes (whose draws underflow) still give the right Beta
double sample_log_gamma(double a, uint64_t& s) {
  if (a >= 1.0) return std::log(sample_gamma(a, s));
  const double u = 1.0 - uniform01(s);
  return std::log(sample_gamma(a + 1.0, s)) + std::log(u) / a;
}
}  // namespace

double sample_beta(double a, double b, uint64_t& s) {
  PF_CHECK(a > 0 && b > 0 && std::isfinite(a) && std::isfinite(b),
           "[images] Beta parameters must be finite and > 0, got ", a, ", ", b);
  const double lx = sample_log_gamma(a, s), ly = sample_log_gamma(b, s);
  return 1.0 / (1.0 + std::exp(ly - lx));  // X / (X + Y)
}

Tensor ImageSet::gather(const std::vector<int64_t>& rows, std::vector<int32_t>* labels_out) const {
  const int64_t px = C * H * W;
  Tensor t({static_cast<int64_t>(rows.size()), C, H, W});
  if (labels_out) labels_out->clear();
  for (size_t i = 0; i < rows.size(); ++i) {
    PF_CHECK(rows[i] >= 0 && rows[i] < n, "[images] image ", rows[i], " outside [0, ", n, ")");
    std::copy_n(pixels.data() + rows[i] * px, px, t.data<float>() + static_cast<int64_t>(i) * px);
    if (labels_out) labels_out->push_back(labels[rows[i]]);
  }
  return t;
}

namespace {

// The whole file, gunzipped when it is gzip (zlib reads plain files unchanged).
std::vector<uint8_t> read_maybe_gz(const std::string& path) {
  PF_CHECK(std::filesystem::is_regular_file(path), "[idx] ", path, ": no such file");
  std::unique_ptr<gzFile_s, int (*)(gzFile)> f(gzopen(path.c_str(), "rb"), gzclose);
  PF_CHECK(f, "[idx] cannot open ", path);
  std::vector<uint8_t> out;
  std::vector<uint8_t> buf(1 << 16);
  for (;;) {
    const int n = gzread(f.get(), buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int err = 0;
      const char* msg = gzerror(f.get(), &err);
      throw Error(str("[idx] ", path, ": corrupt gzip data (", msg, ")"));
    }
    if (n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + n);
    PF_CHECK(out.size() <= (size_t{1} << 32), "[idx] ", path, ": larger than 4 GiB uncompressed");
  }
  int err = 0;
  const char* msg = gzerror(f.get(), &err);
  PF_CHECK(err == Z_OK || err == Z_BUF_ERROR, "[idx] ", path, ": corrupt or truncated gzip data (",
           msg, ")");
  return out;
}

uint32_t be32(const std::vector<uint8_t>& b, size_t at) {
  return (uint32_t(b[at]) << 24) | (uint32_t(b[at + 1]) << 16) | (uint32_t(b[at + 2]) << 8) |
         uint32_t(b[at + 3]);
}

// Header dims of an IDX file of unsigned bytes with `ndim` dims; checks the payload size.
std::vector<int64_t> idx_dims(const std::vector<uint8_t>& b, int ndim, const std::string& path) {
  const uint32_t want = 0x0800u | static_cast<uint32_t>(ndim);
  PF_CHECK(b.size() >= 4, "[idx] ", path, ": ", b.size(), " bytes, too short for an IDX header");
  const uint32_t magic = be32(b, 0);
  PF_CHECK(
      magic == want, "[idx] ", path, ": bad magic 0x",
      [&] {
        char s[16];
        std::snprintf(s, sizeof s, "%08x", magic);
        return std::string(s);
      }(),
      ", expected 0x0000080", ndim, " (unsigned bytes, ", ndim, " dims)");
  const size_t head = 4 + 4 * static_cast<size_t>(ndim);
  PF_CHECK(b.size() >= head, "[idx] ", path, ": truncated header (", b.size(), " bytes, needs ",
           head, ")");
  std::vector<int64_t> dims;
  uint64_t count = 1;
  for (int i = 0; i < ndim; ++i) {
    dims.push_back(be32(b, 4 + 4 * i));
    count *= static_cast<uint64_t>(dims.back());
  }
  PF_CHECK(b.size() - head >= count, "[idx] ", path, ": truncated: ", b.size() - head,
           " data bytes, the header promises ", count);
  PF_CHECK(b.size() - head == count, "[idx] ", path, ": ", b.size() - head - count,
           " bytes after the ", count, " the header promises");
  return dims;
}

}  // namespace

ImageSet read_idx(const std::string& images_path, const std::string& labels_path, int64_t limit) {
  const std::vector<uint8_t> ib = read_maybe_gz(images_path), lb = read_maybe_gz(labels_path);
  const std::vector<int64_t> id = idx_dims(ib, 3, images_path), ld = idx_dims(lb, 1, labels_path);
  PF_CHECK(id[0] == ld[0], "[idx] ", images_path, " holds ", id[0], " images but ", labels_path,
           " holds ", ld[0], " labels");
  PF_CHECK(id[1] >= 1 && id[2] >= 1, "[idx] ", images_path, ": image size ", id[1], "x", id[2]);
  ImageSet s;
  s.n = limit > 0 ? std::min(limit, id[0]) : id[0];
  s.C = 1, s.H = id[1], s.W = id[2];
  const int64_t px = s.H * s.W;
  s.pixels.resize(static_cast<size_t>(s.n * px));
  for (int64_t i = 0; i < s.n * px; ++i) s.pixels[i] = static_cast<float>(ib[16 + i]) / 255.0f;
  s.labels.assign(lb.begin() + 8, lb.begin() + 8 + s.n);
  return s;
}

namespace {
// One PNG as 8-bit gray (channels 1) or RGB (3) through libpng's simplified API.
std::vector<uint8_t> read_png(const std::string& path, int64_t channels, int64_t& H, int64_t& W) {
  png_image img{};
  img.version = PNG_IMAGE_VERSION;
  PF_CHECK(png_image_begin_read_from_file(&img, path.c_str()), "[png] ", path,
           ": not a readable PNG (", img.message, ")");
  img.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  std::vector<uint8_t> px(PNG_IMAGE_SIZE(img));
  const bool ok = png_image_finish_read(&img, nullptr, px.data(), 0, nullptr);
  const std::string msg = img.message;
  png_image_free(&img);
  PF_CHECK(ok, "[png] ", path, ": corrupt PNG (", msg, ")");
  H = img.height, W = img.width;
  return px;
}
}  // namespace

ImageSet read_png_dir(const std::string& dir, const std::string& labels_file, int64_t channels) {
  PF_CHECK(channels == 1 || channels == 3, "[png] channels must be 1 (gray) or 3 (RGB), got ",
           channels);
  std::ifstream in(labels_file);
  PF_CHECK(in, "[png] cannot open labels file ", labels_file);
  ImageSet s;
  s.C = channels;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos || line[0] == '#') continue;
    std::istringstream ls(line);
    std::string file, extra;
    int64_t label = -1;
    PF_CHECK((ls >> file >> label) && !(ls >> extra) && label >= 0 && label < (1 << 20), "[png] ",
             labels_file, " line ", lineno, ": expected \"FILE LABEL\" (label >= 0), got \"", line,
             "\"");
    int64_t H = 0, W = 0;
    const std::vector<uint8_t> px = read_png(dir + "/" + file, channels, H, W);
    if (s.n == 0) s.H = H, s.W = W;
    PF_CHECK(H == s.H && W == s.W, "[png] ", dir, "/", file, " is ", H, "x", W,
             ", the first image is ", s.H, "x", s.W, " (all images must have one size)");
    for (int64_t c = 0; c < channels; ++c)  // interleaved HWC -> CHW
      for (int64_t i = 0; i < H * W; ++i)
        s.pixels.push_back(static_cast<float>(px[i * channels + c]) / 255.0f);
    s.labels.push_back(static_cast<int32_t>(label));
    ++s.n;
  }
  PF_CHECK(s.n > 0, "[png] ", labels_file, " lists no images");
  return s;
}

const char* const kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

ImageSet load_image_data(const std::string& spec, int64_t channels, int64_t limit) {
  const auto two = [&](const std::string& rest) {
    const size_t c = rest.find(',');
    PF_CHECK(c != std::string::npos && c > 0 && c + 1 < rest.size(), "[images] data spec \"", spec,
             "\" needs two paths separated by a comma");
    return std::pair<std::string, std::string>{rest.substr(0, c), rest.substr(c + 1)};
  };
  ImageSet s;
  if (spec == "fashion-mnist" || spec == "default" || spec == "fashion-mnist-test") {
    const std::string d = kFashionMnistDir, p = spec == "fashion-mnist-test" ? "t10k" : "train";
    PF_CHECK(std::filesystem::is_directory(d), "[images] ", d,
             " not found: install Debian's dataset-fashion-mnist (scripts/setup.sh)");
    s = read_idx(d + "/" + p + "-images-idx3-ubyte.gz", d + "/" + p + "-labels-idx1-ubyte.gz",
                 limit);
  } else if (spec.rfind("idx:", 0) == 0) {
    const auto [i, l] = two(spec.substr(4));
    s = read_idx(i, l, limit);
  } else if (spec.rfind("png:", 0) == 0) {
    const auto [dir, l] = two(spec.substr(4));
    s = read_png_dir(dir, l, channels);
    if (limit > 0 && limit < s.n) {
      s.n = limit;
      s.pixels.resize(static_cast<size_t>(s.n * s.C * s.H * s.W));
      s.labels.resize(static_cast<size_t>(s.n));
    }
  } else {
    throw Error(str("[images] unknown data spec \"", spec,
                    "\" (expected fashion-mnist, fashion-mnist-test, idx:IMAGES,LABELS or "
                    "png:DIR,LABELS)"));
  }
  PF_CHECK(s.C == channels, "[images] ", spec, " has ", s.C, " channel(s), the model takes ",
           channels);
  return s;
}

ImageSet read_png_files(const std::vector<std::string>& files, int64_t channels) {
  PF_CHECK(channels == 1 || channels == 3, "[png] channels must be 1 (gray) or 3 (RGB), got ",
           channels);
  PF_CHECK(!files.empty(), "[png] no image files given");
  ImageSet s;
  s.C = channels;
  for (const std::string& f : files) {
    int64_t H = 0, W = 0;
    const std::vector<uint8_t> px = read_png(f, channels, H, W);
    if (s.n == 0) s.H = H, s.W = W;
    PF_CHECK(H == s.H && W == s.W, "[png] ", f, " is ", H, "x", W, ", the first image is ", s.H,
             "x", s.W, " (all images must have one size)");
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t i = 0; i < H * W; ++i)
        s.pixels.push_back(static_cast<float>(px[i * channels + c]) / 255.0f);
    s.labels.push_back(0);
    ++s.n;
  }
  return s;
}

ImageSplit split_images(int64_t n, double val_fraction, uint64_t seed) {
  PF_CHECK(val_fraction >= 0 && val_fraction < 1, "[images] val_fraction must be in [0, 1), got ",
           val_fraction);
  ImageSplit sp;
  for (int64_t i = 0; i < n; ++i) {
    uint64_t st = seed * 0x9e3779b97f4a7c15ull ^ static_cast<uint64_t>(i);
    const double u = uniform01(st);
    (u < val_fraction ? sp.val : sp.train).push_back(i);
  }
  if (n >= 2 && val_fraction > 0 && sp.val.empty())
    sp.val.push_back(sp.train.back()), sp.train.pop_back();
  if (n >= 2 && sp.train.empty()) sp.train.push_back(sp.val.back()), sp.val.pop_back();
  return sp;
}

ImageBatcher::ImageBatcher(const ImageSet& set, std::vector<int64_t> rows, uint64_t seed,
                           Augment aug)
    : set_(set), rows_(std::move(rows)), seed_(seed), aug_(aug) {
  PF_CHECK(!rows_.empty(), "[images] no images to draw batches from");
  PF_CHECK(aug.crop_pad >= 0 && aug.crop_pad <= std::min(set.H, set.W), "[images] crop padding ",
           aug.crop_pad, " outside [0, ", std::min(set.H, set.W), "]");
  PF_CHECK(aug.erase >= 0 && aug.erase <= 1, "[images] erasing probability ", aug.erase,
           " outside [0, 1]");
  PF_CHECK(
      std::isfinite(aug.mixup) && aug.mixup >= 0 && std::isfinite(aug.cutmix) && aug.cutmix >= 0,
      "[images] mixup / CutMix alpha must be finite and >= 0 (0 = off), got ", aug.mixup, " / ",
      aug.cutmix);
  PF_CHECK(aug.mix_prob >= 0 && aug.mix_prob <= 1, "[images] mixing probability ", aug.mix_prob,
           " outside [0, 1]");
  start_epoch();
}

void ImageBatcher::start_epoch() {
  order_ = rows_;
  uint64_t st = seed_ ^ (0xa0761d6478bd642full * static_cast<uint64_t>(epoch_ + 1));
  for (size_t i = order_.size(); i > 1; --i)  // Fisher-Yates
    std::swap(order_[i - 1], order_[splitmix64(st) % i]);
}

Tensor ImageBatcher::next(int64_t batch, std::vector<int32_t>& labels, BatchMix* mix) {
  PF_CHECK(batch >= 1, "[images] batch size must be >= 1, got ", batch);
  PF_CHECK(mix || !aug_.mixing(), "[images] batch mixing is on: next() needs a BatchMix");
  if (mix) *mix = BatchMix{};
  if (pos_ >= static_cast<int64_t>(order_.size())) ++epoch_, pos_ = 0, start_epoch();
  const int64_t n = std::min<int64_t>(batch, static_cast<int64_t>(order_.size()) - pos_);
  std::vector<int64_t> rows(order_.begin() + pos_, order_.begin() + pos_ + n);
  Tensor t = set_.gather(rows, &labels);
  if (aug_.crop_pad > 0 || aug_.flip) {
    const int64_t C = set_.C, H = set_.H, W = set_.W, P = aug_.crop_pad;
    std::vector<float> tmp(static_cast<size_t>(C * H * W));
    for (int64_t i = 0; i < n; ++i) {
      uint64_t st = seed_ ^ (0xe7037ed1a0b428dbull * static_cast<uint64_t>(epoch_ + 1)) ^
                    (0x8ebc6af09c88c6e3ull * static_cast<uint64_t>(pos_ + i + 1));
      const int64_t dy = P ? static_cast<int64_t>(splitmix64(st) % (2 * P + 1)) - P : 0;
      const int64_t dx = P ? static_cast<int64_t>(splitmix64(st) % (2 * P + 1)) - P : 0;
      const bool flip = aug_.flip && (splitmix64(st) & 1);
      float* img = t.data<float>() + i * C * H * W;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t y = 0; y < H; ++y)
          for (int64_t x = 0; x < W; ++x) {  // out(y, x) = in(y + dy, x' + dx), zero outside
            const int64_t sx = (flip ? W - 1 - x : x) + dx, sy = y + dy;
            tmp[(c * H + y) * W + x] =
                sy >= 0 && sy < H && sx >= 0 && sx < W ? img[(c * H + sy) * W + sx] : 0.0f;
          }
      std::copy(tmp.begin(), tmp.end(), img);
    }
  }
  if (aug_.erase > 0) {
    const int64_t C = set_.C, H = set_.H, W = set_.W;
    for (int64_t i = 0; i < n; ++i) {  // its own stream per (epoch, image slot)
      uint64_t st = seed_ ^ (0x589965cc75374cc3ull * static_cast<uint64_t>(epoch_ + 1)) ^
                    (0x1d8e4e27c47d124full * static_cast<uint64_t>(pos_ + i + 1));
      if (uniform01(st) >= aug_.erase) continue;
      for (int attempt = 0; attempt < 10; ++attempt) {  // a rectangle that fits
        const double area = (0.02 + 0.38 * uniform01(st)) * static_cast<double>(H * W);
        const double ratio =
            std::exp(std::log(0.3) + (std::log(1 / 0.3) - std::log(0.3)) * uniform01(st));
        const auto h = static_cast<int64_t>(std::lround(std::sqrt(area * ratio)));
        const auto w = static_cast<int64_t>(std::lround(std::sqrt(area / ratio)));
        if (h < 1 || w < 1 || h > H || w > W) continue;
        const auto y0 = static_cast<int64_t>(splitmix64(st) % static_cast<uint64_t>(H - h + 1));
        const auto x0 = static_cast<int64_t>(splitmix64(st) % static_cast<uint64_t>(W - w + 1));
        float* img = t.data<float>() + i * C * H * W;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t y = y0; y < y0 + h; ++y)
            for (int64_t x = x0; x < x0 + w; ++x)
              img[(c * H + y) * W + x] = static_cast<float>(uniform01(st));
        break;
      }
    }
  }
  if (aug_.mixing()) mix_batch(t, n, labels, *mix);
  pos_ += n;
  return t;
}

void ImageBatcher::mix_batch(Tensor& t, int64_t n, const std::vector<int32_t>& labels,
                             BatchMix& mix) const {
  uint64_t st = seed_ ^ (0x2545f4914f6cdd1dull * static_cast<uint64_t>(epoch_ + 1)) ^
                (0xd6e8feb86659fd93ull * static_cast<uint64_t>(pos_ + 1));
  if (uniform01(st) >= aug_.mix_prob) return;
  const bool cut = aug_.cutmix > 0 && (aug_.mixup <= 0 || (splitmix64(st) & 1));
  const double alpha = cut ? aug_.cutmix : aug_.mixup;
  double lam = sample_beta(alpha, alpha, st);
  const int64_t C = set_.C, H = set_.H, W = set_.W, px = C * H * W;
  const Tensor orig = t.clone();  // partners are read from the unmixed batch
  const float* src = orig.data<float>();
  float* dst = t.data<float>();
  if (cut) {
    const double r = std::sqrt(1.0 - lam);
    const auto ch = static_cast<int64_t>(static_cast<double>(H) * r);
    const auto cw = static_cast<int64_t>(static_cast<double>(W) * r);
    const auto cy = static_cast<int64_t>(splitmix64(st) % static_cast<uint64_t>(H));
    const auto cx = static_cast<int64_t>(splitmix64(st) % static_cast<uint64_t>(W));
    const int64_t y0 = std::clamp<int64_t>(cy - ch / 2, 0, H),
                  y1 = std::clamp<int64_t>(cy + ch / 2, 0, H);
    const int64_t x0 = std::clamp<int64_t>(cx - cw / 2, 0, W),
                  x1 = std::clamp<int64_t>(cx + cw / 2, 0, W);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = n - 1 - i;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t y = y0; y < y1; ++y)
          std::copy(src + j * px + (c * H + y) * W + x0, src + j * px + (c * H + y) * W + x1,
                    dst + i * px + (c * H + y) * W + x0);
    }
    lam = 1.0 - static_cast<double>((y1 - y0) * (x1 - x0)) / static_cast<double>(H * W);
  } else {
    const auto a = static_cast<float>(lam), b = static_cast<float>(1.0 - lam);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = n - 1 - i;
      for (int64_t k = 0; k < px; ++k) dst[i * px + k] = a * src[i * px + k] + b * src[j * px + k];
    }
  }
  mix.partner_labels.assign(labels.rbegin(), labels.rend());
  mix.lambda = static_cast<float>(lam);
  mix.cutmix = cut;
}

std::string ImageBatcher::state() const {
  return nlohmann::json{{"epoch", epoch_}, {"pos", pos_}}.dump();
}

void ImageBatcher::set_state(const std::string& s) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(s);
    epoch_ = j.at("epoch").get<int64_t>(), pos_ = j.at("pos").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(str("[images] bad batcher state ", s, ": ", e.what()));
  }
  PF_CHECK(epoch_ >= 0 && pos_ >= 0 && pos_ <= static_cast<int64_t>(rows_.size()),
           "[images] batcher state ", s, " does not fit ", rows_.size(), " images");
  start_epoch();
}

}  // namespace posformer
