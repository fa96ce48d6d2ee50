// posformer plot: loss curves of a run (metrics.jsonl) to PNG, drawn by matplotlib;
// posformer plot rope-decay: RoPE's long-range decay bound (SPEC.md 3) with the scalings
// overlaid, computed here (CSV) and drawn by matplotlib.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "common.h"
#include "posformer/core/io.h"
#include "posformer/ops/rope.h"

namespace posformer::cli {

namespace {
// Reads RUN/metrics.jsonl; draws training loss (raw and smoothed) and validation loss vs step,
// and the learning rate on a second axis.
const char* kPlotScript = R"PY(
import json, math, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
metrics, out, title = sys.argv[1], sys.argv[2], sys.argv[3]
steps, loss, lr, vsteps, vloss = [], [], [], [], []
with open(metrics) as f:
    for line in f:
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "val_loss" in r:
            vsteps.append(r["step"]); vloss.append(r["val_loss"])
        elif r.get("loss") is not None:
            steps.append(r["step"]); loss.append(r["loss"]); lr.append(r.get("lr", float("nan")))
if not steps:
    sys.exit("no training steps recorded in " + metrics)
fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
ax.plot(steps, loss, color="#9ecae1", lw=0.8, label="train loss")
k = max(1, len(loss) // 50)
sm = [sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1]) for i in range(len(loss))]
ax.plot(steps, sm, color="#08519c", lw=1.6, label="train loss (moving avg %d)" % k)
if vloss:
    ax.plot(vsteps, vloss, "o-", color="#d94801", lw=1.6, ms=4, label="validation loss")
ax.set_xlabel("step"); ax.set_ylabel("cross-entropy (nats/token)"); ax.grid(alpha=0.3)
ax2 = ax.twinx(); ax2.plot(steps, lr, color="#969696", lw=1, ls="--", label="learning rate")
ax2.set_ylabel("learning rate")
h1, l1 = ax.get_legend_handles_labels(); h2, l2 = ax2.get_legend_handles_labels()
ax.legend(h1 + h2, l1 + l2, loc="upper right", fontsize=8)
ax.set_title(title)
fig.tight_layout(); fig.savefig(out)
print("wrote", out)
)PY";
// Reads the decay CSV (distance, then one column per scaling); draws every column vs distance.
const char* kDecayScript = R"PY(
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
path, out, title = sys.argv[1], sys.argv[2], sys.argv[3]
with open(path) as f:
    rows = list(csv.reader(f))
head, data = rows[0], [[float(v) for v in r] for r in rows[1:]]
fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
for c in range(1, len(head)):
    ax.plot([r[0] for r in data], [r[c] for r in data], lw=1.8 if c == 1 else 1.1,
            color="black" if c == 1 else None, label=head[c])
ax.set_xlabel("relative distance m"); ax.set_ylabel("relative upper bound f(m)")
ax.grid(alpha=0.3); ax.legend(fontsize=8); ax.set_title(title, fontsize=10)
fig.tight_layout(); fig.savefig(out)
print("wrote", out)
)PY";

// Runs `python script args...`; throws naming what failed.
void run_python(const std::string& python, const std::vector<std::string>& argv) {
  const pid_t pid = fork();
  PF_CHECK(pid >= 0, "[plot] fork failed");
  if (pid == 0) {
    std::vector<char*> a{const_cast<char*>(python.c_str())};
    for (const std::string& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    execv(python.c_str(), a.data());
    std::perror("posformer plot: cannot run python");
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  PF_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "[plot] matplotlib failed (install python3-matplotlib; see the message above)");
}

struct DecayOpts {
  int64_t dim = 128, max_distance = 256, original_len = 0;
  double base = 10000.0, factor = 4.0;
  std::string out = "rope_decay.png";
};

// The CSV: distance, then f(m) for plain RoPE and each scaling (dynamic_ntk at current length
// max_distance + 1; YaRN's mscale, a constant factor on every score, left out).
std::string decay_csv(const DecayOpts& o) {
  using T = ops::RopeScalingType;
  const T kinds[] = {T::None, T::Linear, T::Ntk, T::DynamicNtk, T::Yarn, T::Llama3};
  std::vector<std::vector<double>> thetas;
  std::ostringstream csv;
  csv.precision(17);
  csv << "distance";
  for (T k : kinds) {
    ops::RopeScaling s;
    s.type = k, s.factor = o.factor, s.original_len = o.original_len;
    thetas.push_back(ops::rope_frequencies(o.dim, o.base, s, o.max_distance + 1).theta);
    csv << "," << ops::rope_scaling_name(k);
  }
  csv << "\n";
  for (int64_t m = 0; m <= o.max_distance; ++m) {
    csv << m;
    for (const auto& th : thetas) csv << "," << ops::rope_decay_bound(th, static_cast<double>(m));
    csv << "\n";
  }
  return csv.str();
}

}  // namespace

Command add_plot(CLI::App& root) {
  auto* app = root.add_subcommand(
      "plot",
      "render a run's loss curves (metrics.jsonl) to PNG with matplotlib; `plot rope-decay`: "
      "RoPE's long-range decay bound with the scalings");
  auto dir = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto python = std::make_shared<std::string>("/usr/bin/python3");
  app->add_option("DIR", *dir, "run directory (from posformer train --out)");
  app->add_option("--out", *out, "PNG file (default: DIR/loss.png)");
  app->add_option("--python", *python, "python interpreter with matplotlib");
  auto* decay = app->add_subcommand(
      "rope-decay",
      "CSV + PNG of RoPE's long-range decay bound f(m) = (2/d) sum_j |sum_{i<j} e^{i m theta_i}| "
      "(SPEC 3) vs relative distance, plain and under each scaling (linear, ntk, dynamic_ntk, "
      "yarn, llama3)");
  auto d = std::make_shared<DecayOpts>();
  decay->add_option("--dim", d->dim, "rotated dim d (even, >= 4; default 128)")
      ->check(CLI::Range(int64_t{4}, int64_t{1} << 16));
  decay->add_option("--max-distance", d->max_distance, "largest relative distance (default 256)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  decay->add_option("--base", d->base, "RoPE base (default 10000)")
      ->check(CLI::Range(1.0 + 1e-9, 1e30));
  decay->add_option("--factor", d->factor, "scaling factor s of the overlaid scalings (default 4)")
      ->check(CLI::Range(1.0, 1e9));
  decay
      ->add_option("--original-len", d->original_len,
                   "trained length L0 of dynamic_ntk, yarn, llama3 (default max-distance / s)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  decay->add_option("--out", d->out,
                    "PNG file (the CSV beside it, .csv) or a directory (rope_decay.png and "
                    "rope_decay.csv in it); default ./rope_decay.png");
  decay->add_option("--python", *python, "python interpreter with matplotlib");
  return {
      app, [=]() {
        if (decay->parsed()) {
          DecayOpts o = *d;
          PF_CHECK(o.dim % 2 == 0, "[plot] --dim must be even, got ", o.dim);
          if (o.original_len == 0)
            o.original_len = std::max<int64_t>(
                1, static_cast<int64_t>(static_cast<double>(o.max_distance) / o.factor));
          std::filesystem::path png = o.out;
          if (std::filesystem::is_directory(png) || png.extension() != ".png")
            png = png / "rope_decay.png";
          if (png.has_parent_path()) std::filesystem::create_directories(png.parent_path());
          std::filesystem::path csv = png;
          csv.replace_extension(".csv");
          atomic_write_file(csv.string(), decay_csv(o));
          std::printf("wrote %s\n", csv.string().c_str());
          std::fflush(stdout);
          const std::string script = csv.string() + ".plot.py";
          atomic_write_file(script, std::string(kDecayScript));
          const std::string title = str("RoPE long-range decay bound, d=", o.dim, " base=", o.base,
                                        "; scalings s=", o.factor, " L0=", o.original_len,
                                        " (dynamic_ntk at length ", o.max_distance + 1, ")");
          try {
            run_python(*python, {script, csv.string(), png.string(), title});
          } catch (...) {
            std::filesystem::remove(script);
            throw;
          }
          std::filesystem::remove(script);
          return 0;
        }
        PF_CHECK(!dir->empty(),
                 "[plot] a run directory DIR is required (or `posformer plot rope-decay`)");
        const std::string metrics = *dir + "/metrics.jsonl";
        PF_CHECK(std::filesystem::exists(metrics), "[plot] ", metrics, " not found (is ", *dir,
                 " a training run directory?)");
        const std::string png = out->empty() ? *dir + "/loss.png" : *out;
        const std::string script = *dir + "/.plot_metrics.py";
        atomic_write_file(script, std::string(kPlotScript));
        const pid_t pid = fork();
        PF_CHECK(pid >= 0, "[plot] fork failed");
        if (pid == 0) {
          std::string title = "posformer run " + *dir;
          execl(python->c_str(), python->c_str(), script.c_str(), metrics.c_str(), png.c_str(),
                title.c_str(), static_cast<char*>(nullptr));
          std::perror("posformer plot: cannot run python");
          _exit(127);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        std::filesystem::remove(script);
        PF_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                 "[plot] matplotlib failed (install python3-matplotlib; see the message above)");
        return 0;
      }};
}

}  // namespace posformer::cli
