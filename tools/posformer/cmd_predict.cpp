// arch vit at the command line: posformer predict (labels and probabilities of images) and the
// image side of posformer eval (accuracy, per-class accuracy, confusion matrix as PNG).
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common.h"
#include "posformer/core/io.h"
#include "posformer/core/runtime.h"
#include "posformer/train/images.h"
#include "posformer/train/trainer.h"

namespace posformer::cli {

namespace {
// Draws CSV [true][predicted] counts as a heat map with the counts written in the cells.
const char* kConfusionScript = R"PY(
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
src, out, title = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [[int(v) for v in r] for r in csv.reader(open(src))]
K = len(rows)
fig, ax = plt.subplots(figsize=(1.0 + 0.6 * K, 0.8 + 0.6 * K), dpi=120)
ax.imshow(rows, cmap="Blues")
top = max(max(r) for r in rows) or 1
for i in range(K):
    for j in range(K):
        ax.text(j, i, rows[i][j], ha="center", va="center", fontsize=7,
                color="white" if rows[i][j] > top / 2 else "black")
ax.set_xticks(range(K)); ax.set_yticks(range(K))
ax.set_xlabel("predicted class"); ax.set_ylabel("true class"); ax.set_title(title, fontsize=9)
fig.tight_layout(); fig.savefig(out)
print("wrote", out)
)PY";

void run_python(const std::string& python, const std::string& script,
                const std::vector<std::string>& args) {
  const pid_t pid = fork();
  PF_CHECK(pid >= 0, "[eval] fork failed");
  if (pid == 0) {
    std::vector<char*> argv{const_cast<char*>(python.c_str()), const_cast<char*>(script.c_str())};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(python.c_str(), argv.data());
    std::perror("posformer eval: cannot run python");
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  std::filesystem::remove(script);
  PF_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "[eval] matplotlib failed (install python3-matplotlib; see the message above)");
}
}  // namespace

int eval_vit(const std::string& dir, const std::string& data, int64_t max_images,
             const std::string& confusion_png, const std::string& python,
             const std::string& image_size, const RopeOverride& rope, bool flip_tta,
             const std::string& precision) {
  Transformer m = load_model(dir, rope, "eval");
  apply_inference_precision(m, precision, "eval");
  const ModelConfig& c = m.config();
  ImageSet set = load_image_data(data, c.channels, max_images);
  if (!image_size.empty()) {
    const auto [h, w] = parse_image_size(image_size, "eval");
    PF_CHECK(h % c.patch_size == 0 && w % c.patch_size == 0, "[eval] --image-size ", h, "x", w,
             " is not a multiple of the patch_size ", c.patch_size);
    set = resize_images(set, h, w);
  }
  PF_CHECK(set.num_classes() <= c.num_classes, "[eval] the data has label ", set.num_classes() - 1,
           ", the model has ", c.num_classes, " classes");
  std::vector<int64_t> rows(static_cast<size_t>(set.n));
  for (int64_t i = 0; i < set.n; ++i) rows[i] = i;
  const ClassifyEval e = evaluate_images(m, set, rows, 64, flip_tta);
  const int64_t K = c.num_classes;
  std::printf("%s on %s: %lld images (%lldx%lld), loss %.4f, accuracy %.2f%%", dir.c_str(),
              data.c_str(), (long long)e.count, (long long)set.H, (long long)set.W, e.loss,
              100.0 * e.accuracy);
  if (flip_tta) std::printf(" (test-time augmentation: flip)");
  if (c.position.scaling.type != ops::RopeScalingType::None)
    std::printf(" (rope scaling %s)", rope_scaling_label(c).c_str());
  std::printf("\n");
  std::printf("per-class accuracy:");
  for (int64_t k = 0; k < K; ++k)
    std::printf(" %lld:%.1f%%", (long long)k, 100 * e.class_accuracy[k]);
  std::printf("\nconfusion matrix (rows: true class, columns: predicted)\n");
  std::string csv;
  for (int64_t i = 0; i < K; ++i) {
    for (int64_t j = 0; j < K; ++j) {
      std::printf("%7lld", (long long)e.confusion[i * K + j]);
      csv += std::to_string(e.confusion[i * K + j]) + (j + 1 < K ? "," : "\n");
    }
    std::printf("\n");
  }
  const std::string csv_path = confusion_png.substr(0, confusion_png.rfind('.')) + ".csv";
  atomic_write_file(csv_path, csv);
  const std::string script = csv_path + ".py";
  atomic_write_file(script, kConfusionScript);
  char title[256];
  std::snprintf(title, sizeof title, "%s on %s: accuracy %.2f%%", dir.c_str(), data.c_str(),
                100.0 * e.accuracy);
  run_python(python, script, {csv_path, confusion_png, title});
  return 0;
}

Command add_predict(CLI::App& root) {
  auto* app = root.add_subcommand(
      "predict", "arch vit: the class and probabilities of each image (PNG files)");
  struct Opts {
    std::string dir;
    std::vector<std::string> images;
    int64_t top = 3;
    int threads = 0;
    RopeOverride rope;
  };
  auto o = std::make_shared<Opts>();
  app->add_option("MODEL", o->dir, "model directory (arch vit)")->required();
  app->add_option("--images", o->images, "PNG files (gray or RGB, as the model's channels)")
      ->required();
  app->add_option("--top", o->top, "classes listed per image, most probable first")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  add_threads_option(app, o->threads);
  add_rope_scaling_options(app, o->rope);
  return {app, [=]() {
            set_threads(o->threads);
            PF_CHECK(model_dir_config(o->dir).is_vit(), "[predict] ", o->dir, " is an arch ",
                     model_dir_config(o->dir).arch,
                     " model; predict classifies images with arch vit");
            const Transformer m = load_model(o->dir, o->rope, "predict");
            PF_CHECK(m.config().is_vit(), "[predict] ", o->dir, " is an arch ", m.config().arch,
                     " model; predict classifies images with arch vit");
            const ImageSet set = read_png_files(o->images, m.config().channels);
            std::vector<int64_t> rows(static_cast<size_t>(set.n));
            for (int64_t i = 0; i < set.n; ++i) rows[i] = i;
            const Tensor logits = m.classify(set.gather(rows, nullptr));
            const int64_t K = m.config().num_classes, top = std::min(o->top, K);
            for (int64_t b = 0; b < set.n; ++b) {
              const float* z = logits.data<float>() + b * K;
              const double mx = *std::max_element(z, z + K);
              std::vector<double> p(static_cast<size_t>(K));
              double s = 0;
              for (int64_t k = 0; k < K; ++k) s += p[k] = std::exp(z[k] - mx);
              std::vector<int64_t> idx(static_cast<size_t>(K));
              for (int64_t k = 0; k < K; ++k) idx[k] = k;
              std::stable_sort(idx.begin(), idx.end(),
                               [&](int64_t a, int64_t c) { return p[a] > p[c]; });
              std::printf("%s\tlabel %lld", o->images[b].c_str(), (long long)idx[0]);
              for (int64_t t = 0; t < top; ++t)
                std::printf("\t%lld:%.4f", (long long)idx[t], p[idx[t]] / s);
              std::printf("\n");
            }
            return 0;
          }};
}

}  // namespace posformer::cli
