// Image data (train/images.h): IDX and PNG readers on small crafted files, their errors, the
// split, epochs and augmentation, and exact resume of the batcher.
#include <gtest/gtest.h>
#include <png.h>
#include <zlib.h>

#include <string>
#include <vector>

#include "posformer/train/images.h"
#include "test_util.h"

using namespace posformer;

namespace {
std::string be32(uint32_t v) {
  return {char(v >> 24), char((v >> 16) & 255), char((v >> 8) & 255), char(v & 255)};
}
// IDX images file: n images of h x w, pixel (i, y, x) = (i * 7 + y * w + x) % 256.
std::string idx_images(uint32_t n, uint32_t h, uint32_t w) {
  std::string s = be32(0x803) + be32(n) + be32(h) + be32(w);
  for (uint32_t i = 0; i < n * h * w; ++i) s += char(((i / (h * w)) * 7 + i % (h * w)) % 256);
  return s;
}
std::string idx_labels(uint32_t n) {
  std::string s = be32(0x801) + be32(n);
  for (uint32_t i = 0; i < n; ++i) s += char(i % 3);
  return s;
}
void write_gz(const std::string& path, const std::string& data) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, data.data(), static_cast<unsigned>(data.size()));
  gzclose(f);
}
void write_png(const std::string& path, int w, int h, int channels, uint8_t base) {
  png_image img{};
  img.version = PNG_IMAGE_VERSION;
  img.width = w, img.height = h;
  img.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  std::vector<uint8_t> px(static_cast<size_t>(w * h * channels));
  for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>(base + i);
  ASSERT_TRUE(png_image_write_to_file(&img, path.c_str(), 0, px.data(), 0, nullptr));
}
}  // namespace

TEST(Idx, ReadsPlainAndGzipAndChecksPixels) {
  pf_test::TempDir dir("idx_ok");
  pf_test::write_text(dir.file("i"), idx_images(5, 3, 4));
  pf_test::write_text(dir.file("l"), idx_labels(5));
  write_gz(dir.file("i.gz"), idx_images(5, 3, 4));
  write_gz(dir.file("l.gz"), idx_labels(5));
  for (const auto& [i, l] : std::vector<std::pair<std::string, std::string>>{
           {dir.file("i"), dir.file("l")}, {dir.file("i.gz"), dir.file("l.gz")}}) {
    ImageSet s = read_idx(i, l);
    ASSERT_EQ(s.n, 5);
    EXPECT_EQ(s.C, 1);
    EXPECT_EQ(s.H, 3);
    EXPECT_EQ(s.W, 4);
    EXPECT_FLOAT_EQ(s.pixels[2 * 12 + 5], float((2 * 7 + 5) % 256) / 255.0f);
    EXPECT_EQ(s.labels[4], 1);
    EXPECT_EQ(s.num_classes(), 3);
  }
  EXPECT_EQ(read_idx(dir.file("i.gz"), dir.file("l"), 2).n, 2);
}

TEST(Idx, BadFilesGiveClearErrors) {
  pf_test::TempDir dir("idx_bad");
  pf_test::write_text(dir.file("l"), idx_labels(5));
  pf_test::write_text(dir.file("i"), idx_images(5, 3, 4));
  std::string bad = idx_images(5, 3, 4);
  bad[3] = 0x01;
  pf_test::write_text(dir.file("magic"), bad);
  pf_test::expect_error([&] { read_idx(dir.file("magic"), dir.file("l")); },
                        {"magic", "bad magic 0x00000801", "0x00000803"});
  pf_test::write_text(dir.file("trunc"), idx_images(5, 3, 4).substr(0, 16 + 50));
  pf_test::expect_error([&] { read_idx(dir.file("trunc"), dir.file("l")); },
                        {"trunc", "truncated", "50 data bytes", "60"});
  pf_test::write_text(dir.file("head"), idx_images(5, 3, 4).substr(0, 10));
  pf_test::expect_error([&] { read_idx(dir.file("head"), dir.file("l")); },
                        {"head", "truncated header"});
  pf_test::write_text(dir.file("l4"), idx_labels(4));
  pf_test::expect_error([&] { read_idx(dir.file("i"), dir.file("l4")); }, {"5 images", "4 labels"});
  pf_test::expect_error([&] { read_idx(dir.file("nope"), dir.file("l")); },
                        {"nope", "no such file"});
  write_gz(dir.file("i.gz"), idx_images(5, 3, 4));  // a gzip cut in the middle
  std::string gz;
  {
    std::ifstream f(dir.file("i.gz"), std::ios::binary);
    gz.assign(std::istreambuf_iterator<char>(f), {});
  }
  pf_test::write_text(dir.file("cut.gz"), gz.substr(0, gz.size() / 2));
  pf_test::expect_error([&] { read_idx(dir.file("cut.gz"), dir.file("l")); }, {"cut.gz"});
}

TEST(Png, ReadsDirectoryAndRefusesBadInput) {
  pf_test::TempDir dir("png");
  write_png(dir.file("a.png"), 4, 3, 3, 10);
  write_png(dir.file("b.png"), 4, 3, 1, 20);  // gray, read as RGB (channels replicated)
  pf_test::write_text(dir.file("labels.txt"), "# file label\na.png 2\n\nb.png 0\n");
  ImageSet s = read_png_dir(dir.path, dir.file("labels.txt"), 3);
  ASSERT_EQ(s.n, 2);
  EXPECT_EQ(s.H, 3);
  EXPECT_EQ(s.W, 4);
  // a.png pixel (y=1, x=2) channel 1 = base + (1*4+2)*3 + 1
  EXPECT_FLOAT_EQ(s.pixels[(1 * 3 + 1) * 4 + 2], float(10 + (1 * 4 + 2) * 3 + 1) / 255.0f);
  EXPECT_FLOAT_EQ(s.pixels[12 * 3 + 5], float(20 + 5) / 255.0f);  // b: gray -> every channel
  EXPECT_EQ(s.labels, (std::vector<int32_t>{2, 0}));
  pf_test::write_text(dir.file("not.png"), "hello, not a png");
  pf_test::write_text(dir.file("l2.txt"), "not.png 1\n");
  pf_test::expect_error([&] { read_png_dir(dir.path, dir.file("l2.txt"), 1); },
                        {"not.png", "not a readable PNG"});
  write_png(dir.file("c.png"), 5, 3, 1, 0);
  pf_test::write_text(dir.file("l3.txt"), "a.png 1\nc.png 1\n");
  pf_test::expect_error([&] { read_png_dir(dir.path, dir.file("l3.txt"), 1); },
                        {"c.png", "3x5", "3x4", "one size"});
  pf_test::write_text(dir.file("l4.txt"), "a.png one\n");
  pf_test::expect_error([&] { read_png_dir(dir.path, dir.file("l4.txt"), 1); },
                        {"line 1", "FILE LABEL"});
  std::string png;
  {
    std::ifstream f(dir.file("a.png"), std::ios::binary);
    png.assign(std::istreambuf_iterator<char>(f), {});
  }
  pf_test::write_text(dir.file("cut.png"), png.substr(0, png.size() - 20));
  pf_test::write_text(dir.file("l5.txt"), "cut.png 1\n");
  pf_test::expect_error([&] { read_png_dir(dir.path, dir.file("l5.txt"), 3); }, {"cut.png"});
}

// Every train image once per epoch, a new order each epoch, augmentation keeps the size and
// stays the identity without it, and a batcher restored from state() continues identically.
TEST(ImageBatcher, EpochsShuffleAugmentAndResume) {
  ImageSet s;
  s.n = 10, s.C = 1, s.H = 4, s.W = 4;
  for (int64_t i = 0; i < s.n * 16; ++i) s.pixels.push_back(float(i));
  for (int64_t i = 0; i < s.n; ++i) s.labels.push_back(int32_t(i));
  const ImageSplit sp = split_images(s.n, 0.3, 5);
  EXPECT_EQ(sp.train.size() + sp.val.size(), 10u);
  EXPECT_FALSE(sp.val.empty());
  EXPECT_EQ(split_images(s.n, 0.3, 5).val, sp.val);
  ImageBatcher b(s, sp.train, 1, Augment{});
  std::vector<std::vector<int32_t>> epochs(2);
  std::vector<int32_t> lab;
  for (int e = 0; e < 2; ++e)
    for (size_t got = 0; got < sp.train.size();) {
      Tensor t = b.next(3, lab);
      for (int64_t i = 0; i < t.dim(0); ++i)  // no augmentation: pixels are the image's own
        EXPECT_EQ(t.data<float>()[i * 16], float(lab[i] * 16));
      epochs[e].insert(epochs[e].end(), lab.begin(), lab.end());
      got += lab.size();
    }
  EXPECT_NE(epochs[0], epochs[1]);
  for (auto& e : epochs) {
    std::sort(e.begin(), e.end());
    std::vector<int32_t> want(sp.train.begin(), sp.train.end());
    EXPECT_EQ(e, want);
  }
  ImageBatcher a(s, sp.train, 9, Augment{1, true}), c(s, sp.train, 9, Augment{1, true});
  for (int i = 0; i < 4; ++i) a.next(2, lab);
  c.set_state(a.state());
  bool changed = false;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> la, lc;
    Tensor ta = a.next(2, la), tc = c.next(2, lc);
    EXPECT_EQ(la, lc);
    EXPECT_TRUE(pf_test::bit_equal(ta, tc));
    EXPECT_EQ(ta.dim(2), 4);
    for (int64_t k = 0; k < ta.dim(0); ++k)
      changed = changed || ta.data<float>()[k * 16 + 5] != float(la[k] * 16 + 5);
  }
  EXPECT_TRUE(changed);  // crop / flip moved pixels
}
