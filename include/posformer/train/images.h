// Image data for arch vit (docs/vision.md): labelled images as float pixels in [0, 1].
//
//   IDX (MNIST / Fashion-MNIST, Debian's dataset-fashion-mnist in /usr/share/datasets):
//     images file: int32 big-endian magic 0x00000803 (unsigned bytes, 3 dims), n, rows, cols,
//                  then n*rows*cols bytes;  labels file: magic 0x00000801, n, then n bytes.
//     Either file may be gzip-compressed (read through zlib; plain files pass unchanged).
//     Bad magic, a truncated file, trailing bytes, or a label/image count mismatch: Error
//     naming the file and what was found.
//   PNG directory: a labels file with one "FILE LABEL" per line (FILE relative to the
//     directory, LABEL an integer class index; blank lines and lines starting with '#'
//     skipped); images read with libpng, converted to 8-bit gray (channels 1) or RGB
//     (channels 3), all of one size. A file that is not a PNG, is corrupt, or has another size:
//     Error naming it.
//
// Pixels [n, C, H, W] = byte / 255. Splitting, shuffling and augmentation:
//   split_images:  image i goes to validation when u(seed, i) < val_fraction (a hash of the
//                  seed and the index; deterministic, at least one image each side when n >= 2
//                  and val_fraction > 0).
//   ImageBatcher:  epochs over a set in an order shuffled per epoch (Fisher-Yates with a
//                  splitmix64 stream seeded from (seed, epoch)); optional augmentation of the
//                  image at (epoch, position in epoch), drawn from a stream seeded from
//                  (seed, epoch, position): random crop (pad `crop_pad` zero pixels on each
//                  side, take an H x W window at a uniform offset) and horizontal flip with
//                  probability 1/2; random erasing; then batch mixing (mixup / CutMix, below)
//                  from a stream seeded from (seed, epoch, batch start). Everything follows from
//                  (epoch, position), so state() / set_state() continue exactly (resume).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "posformer/core/tensor.h"

namespace posformer {

struct ImageSet {
  int64_t n = 0, C = 0, H = 0, W = 0;
  std::vector<float> pixels;    // [n, C, H, W] in [0, 1]
  std::vector<int32_t> labels;  // [n]
  int64_t num_classes() const;  // max label + 1
  // Images [rows.size(), C, H, W] and their labels.
  Tensor gather(const std::vector<int64_t>& rows, std::vector<int32_t>* labels_out) const;
};

// limit > 0 keeps the first `limit` images.
ImageSet read_idx(const std::string& images_path, const std::string& labels_path,
                  int64_t limit = 0);
ImageSet read_png_dir(const std::string& dir, const std::string& labels_file, int64_t channels);
// Listed PNG files (labels 0), for prediction.
ImageSet read_png_files(const std::vector<std::string>& files, int64_t channels);
// A data spec: "fashion-mnist" / "default" (the training set of Debian's dataset-fashion-mnist),
// "fashion-mnist-test" (its test set), "idx:IMAGES,LABELS", "png:DIR,LABELS".
ImageSet load_image_data(const std::string& spec, int64_t channels, int64_t limit = 0);
extern const char* const kFashionMnistDir;  // /usr/share/datasets/fashion-mnist

struct ImageSplit {
  std::vector<int64_t> train, val;  // indices into the set
};
ImageSplit split_images(int64_t n, double val_fraction, uint64_t seed);

struct Augment {
  int64_t crop_pad = 0;  // 0 = no random crop
  bool flip = false;     // random horizontal flip
  // Random erasing (Zhong et al. 2017), after crop and flip: with this probability a rectangle
  // of area 2%-40% of the image and aspect ratio in [0.3, 3.3] (log-uniform) at a random place
  // is filled with uniform random values in [0, 1) (every channel). 0 = off.
  double erase = 0.0;
  // Batch mixing (mixup, Zhang et al. 2018; CutMix, Yun et al. 2019; timm's Mixup in "batch"
  // mode), after the per-image steps above: with probability mix_prob a batch of n images is
  // mixed with itself reversed (image i with image j = n - 1 - i) under one
  // lambda ~ Beta(alpha, alpha) (0 = off). mixup blends the pixels, lambda x_i + (1 - lambda)
  // x_j; CutMix copies a box of x_j into x_i (sides H sqrt(1 - lambda) and W sqrt(1 - lambda),
  // centre uniform over the image, clipped at the border) and sets lambda = 1 - box area / (H W).
  // With both alphas > 0 a mixed batch uses CutMix with probability 1/2. The loss then targets
  // lambda q(y_i) + (1 - lambda) q(y_j) (ForwardOptions::mix_labels).
  double mixup = 0.0, cutmix = 0.0, mix_prob = 1.0;
  bool mixing() const { return (mixup > 0 || cutmix > 0) && mix_prob > 0; }
};

// How ImageBatcher::next mixed a batch: partner_labels[i] = y_j of image i's partner, empty when
// the batch was not mixed (then lambda = 1).
struct BatchMix {
  std::vector<int32_t> partner_labels;
  float lambda = 1.0f;
  bool cutmix = false;
};

// A Beta(a, b) draw (a, b > 0) from the splitmix64 stream s: X / (X + Y) with X ~ Gamma(a),
// Y ~ Gamma(b) (Marsaglia-Tsang; shapes below 1 through Gamma(a + 1) U^(1/a)).
double sample_beta(double a, double b, uint64_t& s);

class ImageBatcher {
 public:
  ImageBatcher(const ImageSet& set, std::vector<int64_t> rows, uint64_t seed, Augment aug);
  // The next `batch` images of the current epoch (a new shuffled epoch starts when one ends;
  // a batch never spans two epochs, so the last batch of an epoch may be smaller). With batch
  // mixing on (Augment::mixing) `mix` is required and says how the batch was mixed.
  Tensor next(int64_t batch, std::vector<int32_t>& labels, BatchMix* mix = nullptr);
  int64_t epoch() const { return epoch_; }
  std::string state() const;  // {"epoch":E,"pos":P}
  void set_state(const std::string& s);

 private:
  void start_epoch();
  void mix_batch(Tensor& t, int64_t n, const std::vector<int32_t>& labels, BatchMix& mix) const;
  const ImageSet& set_;
  std::vector<int64_t> rows_, order_;
  uint64_t seed_;
  Augment aug_;
  int64_t epoch_ = 0, pos_ = 0;
};

}  // namespace posformer
