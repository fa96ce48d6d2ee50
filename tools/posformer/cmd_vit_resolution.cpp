// posformer vit-resolution: accuracy of ViT models (trained at one image size) on images resized
// up or down to other sizes (the patch grid grows), one row per model, into CSV, a markdown table
// and a matplotlib plot (docs/vision.md, resolution extrapolation).
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "common.h"
#include "posformer/core/io.h"
#include "posformer/core/runtime.h"
#include "posformer/posenc/vision.h"
#include "posformer/train/images.h"
#include "posformer/train/trainer.h"

namespace posformer::cli {

namespace {
const char* kResolutionPlot = R"PY(
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
src, out = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(src)))
fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
for name in dict.fromkeys(r["model"] for r in rows):
    rs = [r for r in rows if r["model"] == name]
    ax.plot([int(r["size"]) for r in rs], [100 * float(r["accuracy"]) for r in rs], "o-",
            label="%s (%s)" % (rs[0]["position"], name))
ax.set_xlabel("image size at evaluation (trained at %s)" % rows[0]["trained_size"])
ax.set_ylabel("test accuracy (%)"); ax.grid(alpha=0.3); ax.legend(fontsize=7)
fig.tight_layout(); fig.savefig(out)
print("wrote", out)
)PY";

// Every image of `set` resized to size x size, bilinear with align_corners=False (as
// torch.nn.functional.interpolate), one channel plane at a time.
ImageSet resized(const ImageSet& set, int64_t size) {
  if (size == set.H && size == set.W) return set;
  ImageSet out = set;
  out.H = out.W = size;
  out.pixels.assign(static_cast<size_t>(set.n * set.C * size * size), 0.0f);
  for (int64_t i = 0; i < set.n * set.C; ++i)
    resize_grid(set.pixels.data() + i * set.H * set.W, set.H, set.W, 1, size, size, false,
                out.pixels.data() + i * size * size);
  return out;
}
}  // namespace

Command add_vit_resolution(CLI::App& root) {
  auto* app = root.add_subcommand(
      "vit-resolution",
      "accuracy of arch vit models on images resized to other sizes (CSV, markdown, plot)");
  struct Opts {
    std::vector<std::string> models;
    std::string data = "fashion-mnist-test", out;
    std::vector<int64_t> sizes;
    int64_t max_images = 0;
    std::string python = "/usr/bin/python3";
    int threads = 0;
  };
  auto o = std::make_shared<Opts>();
  app->add_option("MODELS", o->models, "arch vit model directories")->required();
  app->add_option("--data", o->data, "image data spec (default fashion-mnist-test)");
  app->add_option("--sizes", o->sizes, "square image sizes, multiples of every patch size")
      ->required();
  app->add_option("--max-images", o->max_images, "the first N images (0 = all)");
  app->add_option("--out", o->out, "output prefix: PREFIX.csv, PREFIX.md, PREFIX.png")->required();
  app->add_option("--python", o->python, "python interpreter with matplotlib");
  add_threads_option(app, o->threads);
  return {app, [=]() {
            set_threads(o->threads);
            std::ostringstream csv, md;
            csv << "model,position,trained_size,size,accuracy,loss,images\n";
            md << "| model | position | trained at |";
            for (int64_t s : o->sizes) md << " " << s << " |";
            md << "\n|---|---|---|";
            for (size_t i = 0; i < o->sizes.size(); ++i) md << "---|";
            md << "\n";
            std::unique_ptr<ImageSet> base;
            for (const std::string& dir : o->models) {
              const Transformer m = Transformer::load(dir);
              const ModelConfig& c = m.config();
              PF_CHECK(c.is_vit(), "[vit-resolution] ", dir, " is arch ", c.arch, ", not vit");
              if (!base)
                base =
                    std::make_unique<ImageSet>(load_image_data(o->data, c.channels, o->max_images));
              PF_CHECK(base->C == c.channels, "[vit-resolution] ", dir, " takes ", c.channels,
                       " channels, the data has ", base->C);
              std::string pos = c.position.type;
              if (pos == "rope_2d") pos += " " + c.position.axial_layout;
              if (pos == "learned_2d") pos += " " + c.position.interpolation;
              md << "| " << dir << " | " << pos << " | " << c.image_h << "x" << c.image_w << " |";
              for (int64_t s : o->sizes) {
                PF_CHECK(s >= c.patch_size && s % c.patch_size == 0, "[vit-resolution] size ", s,
                         " is not a multiple of ", dir, "'s patch_size ", c.patch_size);
                const ImageSet set = resized(*base, s);
                std::vector<int64_t> rows(static_cast<size_t>(set.n));
                for (int64_t i = 0; i < set.n; ++i) rows[i] = i;
                std::string cell;
                try {
                  const ClassifyEval e = evaluate_images(m, set, rows, 64);
                  csv << dir << "," << pos << "," << c.image_h << "," << s << "," << e.accuracy
                      << "," << e.loss << "," << e.count << "\n";
                  char buf[32];
                  std::snprintf(buf, sizeof buf, "%.2f%%", 100.0 * e.accuracy);
                  cell = buf;
                } catch (const Error& e) {  // e.g. a 1-D learned table shorter than the grid
                  cell = "n/a";
                  std::fprintf(stderr, "vit-resolution: %s at %lld: %s\n", dir.c_str(),
                               (long long)s, e.what());
                }
                md << " " << cell << " |";
                std::printf("%-30s %-28s %4lld  %s\n", dir.c_str(), pos.c_str(), (long long)s,
                            cell.c_str());
                std::fflush(stdout);
              }
              md << "\n";
            }
            atomic_write_file(o->out + ".csv", csv.str());
            atomic_write_file(o->out + ".md", md.str());
            const std::string script = o->out + ".plot.py";
            atomic_write_file(script, kResolutionPlot);
            const std::string a = o->out + ".csv", b = o->out + ".png";
            const pid_t pid = fork();
            PF_CHECK(pid >= 0, "[vit-resolution] fork failed");
            if (pid == 0) {
              execl(o->python.c_str(), o->python.c_str(), script.c_str(), a.c_str(), b.c_str(),
                    static_cast<char*>(nullptr));
              std::perror("posformer vit-resolution: cannot run python");
              _exit(127);
            }
            int status = 0;
            waitpid(pid, &status, 0);
            std::filesystem::remove(script);
            PF_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                     "[vit-resolution] matplotlib failed (see the message above)");
            return 0;
          }};
}

}  // namespace posformer::cli
