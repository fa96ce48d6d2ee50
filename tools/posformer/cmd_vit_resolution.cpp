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
#include "posformer/model/safetensors.h"
#include "posformer/posenc/vision.h"
#include "posformer/train/images.h"
#include "posformer/train/trainer.h"

namespace posformer::cli {

namespace {
const char* kResolutionPlot = R"PY(
import csv, os, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
src, out = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(src)))
keys = list(dict.fromkeys((r["model"], r.get("scaling", "none")) for r in rows))
fig, ax = plt.subplots(figsize=(10, 4.6), dpi=120)
colors = plt.get_cmap("tab20" if len(keys) > 10 else "tab10")
for n, key in enumerate(keys):
    rs = [r for r in rows if (r["model"], r.get("scaling", "none")) == key]
    sc = "" if key[1] == "none" else ", " + key[1]
    ax.plot([int(r["size"]) for r in rs], [100 * float(r["accuracy"]) for r in rs],
            "o-" if key[1] == "none" else "s--", color=colors(n),
            label="%s%s (%s)" % (rs[0]["position"], sc, os.path.basename(key[0].rstrip("/"))))
ax.set_xlabel("image size at evaluation (trained at %s)" % rows[0]["trained_size"])
ax.set_ylabel("test accuracy (%)"); ax.grid(alpha=0.3)
ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
fig.tight_layout(); fig.savefig(out)
print("wrote", out)
)PY";

// The model of `dir` under each scaling row: its own config (with the --rope-* override), then
// for a rope_2d model one row per --rope-scalings type (factor per axis: --rope-factor, else
// new over trained grid), sharing the weights read once.
std::vector<Transformer> variants(const std::string& dir, const RopeOverride& rope,
                                  const std::vector<std::string>& scalings) {
  ModelConfig cfg = model_dir_config(dir);
  PF_CHECK(cfg.is_vit(), "[vit-resolution] ", dir, " is arch ", cfg.arch, ", not vit");
  apply_rope_override(cfg, rope, "vit-resolution");
  std::vector<ModelConfig> cfgs{cfg};
  if (cfg.position.type == "rope_2d")
    for (const std::string& t : scalings) {
      ModelConfig c = cfg;
      c.position.scaling = {};
      c.position.scaling.type = ops::parse_rope_scaling_type(t, "[vit-resolution] --rope-scalings");
      const double f = rope.opts[1]->count() ? rope.factor : 0.0;
      c.position.axis_factor = {f, f};
      try {
        validate_config(c);
      } catch (const Error& e) {
        throw Error(str("[vit-resolution] --rope-scalings ", t, " for ", dir, ": ", e.what()));
      }
      cfgs.push_back(c);
    }
  const std::string wpath = dir + "/model.safetensors";
  const SafetensorsFile file = load_safetensors(wpath);
  std::vector<Transformer> out;
  for (const ModelConfig& c : cfgs) {
    out.emplace_back(c);
    out.back().set_weights(file.tensors, wpath);
  }
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
    RopeOverride rope;
    std::vector<std::string> rope_scalings;
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
  add_rope_scaling_options(app, o->rope);
  app->add_option("--rope-scalings", o->rope_scalings,
                  "rope_2d models also get one row per scaling, e.g. --rope-scalings linear ntk "
                  "yarn (factor per axis: --rope-factor, else new over trained grid)")
      ->delimiter(',');
  return {app, [=]() {
            set_threads(o->threads);
            std::ostringstream csv, md;
            csv << "model,position,trained_size,size,accuracy,loss,images,scaling\n";
            md << "| model | position | scaling | trained at |";
            for (int64_t s : o->sizes) md << " " << s << " |";
            md << "\n|---|---|---|---|";
            for (size_t i = 0; i < o->sizes.size(); ++i) md << "---|";
            md << "\n";
            std::unique_ptr<ImageSet> base;
            for (const std::string& dir : o->models) {
              for (const Transformer& m : variants(dir, o->rope, o->rope_scalings)) {
                const ModelConfig& c = m.config();
                if (!base)
                  base = std::make_unique<ImageSet>(
                      load_image_data(o->data, c.channels, o->max_images));
                PF_CHECK(base->C == c.channels, "[vit-resolution] ", dir, " takes ", c.channels,
                         " channels, the data has ", base->C);
                std::string pos = c.position.type;
                if (pos == "rope_2d") pos += " " + c.position.axial_layout;
                if (pos == "learned_2d") pos += " " + c.position.interpolation;
                const std::string sc = rope_scaling_label(c);
                md << "| " << dir << " | " << pos << " | " << sc << " | " << c.image_h << "x"
                   << c.image_w << " |";
                for (int64_t s : o->sizes) {
                  PF_CHECK(s >= c.patch_size && s % c.patch_size == 0, "[vit-resolution] size ", s,
                           " is not a multiple of ", dir, "'s patch_size ", c.patch_size);
                  const ImageSet set = resize_images(*base, s, s);
                  std::vector<int64_t> rows(static_cast<size_t>(set.n));
                  for (int64_t i = 0; i < set.n; ++i) rows[i] = i;
                  std::string cell;
                  try {
                    const ClassifyEval e = evaluate_images(m, set, rows, 64);
                    csv << dir << "," << pos << "," << c.image_h << "," << s << "," << e.accuracy
                        << "," << e.loss << "," << e.count << "," << sc << "\n";
                    char buf[32];
                    std::snprintf(buf, sizeof buf, "%.2f%%", 100.0 * e.accuracy);
                    cell = buf;
                  } catch (const Error& e) {  // e.g. a 1-D learned table shorter than the grid
                    cell = "n/a";
                    std::fprintf(stderr, "vit-resolution: %s at %lld: %s\n", dir.c_str(),
                                 (long long)s, e.what());
                  }
                  md << " " << cell << " |";
                  std::printf("%-30s %-24s %-14s %4lld  %s\n", dir.c_str(), pos.c_str(), sc.c_str(),
                              (long long)s, cell.c_str());
                  std::fflush(stdout);
                }
                md << "\n";
              }
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
