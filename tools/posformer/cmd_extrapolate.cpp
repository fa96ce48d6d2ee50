// posformer extrapolate: the length-extrapolation study (train/extrapolation.h): one model per
// position encoding (and attention variant), perplexity at every eval length, CSV + markdown
// table + PNG plot; resumable after Ctrl-C or a kill.
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <filesystem>

#include "common.h"
#include "posformer/core/io.h"
#include "posformer/train/extrapolation.h"

namespace posformer::cli {

namespace {
std::atomic<bool> g_stop{false};
extern "C" void on_extrapolate_signal(int) {
  g_stop.store(true);
}

// Perplexity vs eval length from results.csv: log-x, log-y, one line per model (and variant),
// the training length marked.
const char* kExtrapolationPlot = R"PY(
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import LogFormatter, NullFormatter
src, out, train_len, title = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
lines = {}
with open(src) as f:
    for r in csv.DictReader(f):
        if r["status"] != "ok":
            continue
        key = r["model"] if r["variant"] == "none" else r["model"] + " (" + r["variant"] + ")"
        lines.setdefault(key, []).append((int(r["eval_len"]), float(r["ppl"])))
if not lines:
    sys.exit("no measured perplexities in " + src)
fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
for key, pts in lines.items():
    pts.sort()
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", lw=1.6, ms=4, label=key)
ax.axvline(train_len, color="#636363", ls="--", lw=1)
ax.text(train_len, 0.02, " train length %d" % train_len, transform=ax.get_xaxis_transform(),
        va="bottom", ha="left", fontsize=8, color="#636363")
ax.set_xscale("log", base=2); ax.set_yscale("log")
lens = sorted({p[0] for pts in lines.values() for p in pts} | {train_len})
ax.set_xticks(lens); ax.set_xticklabels([str(v) for v in lens])
ax.xaxis.set_minor_formatter(NullFormatter())
ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
ax.set_xlabel("evaluation length (tokens)"); ax.set_ylabel("perplexity (held-out text)")
ax.grid(alpha=0.3, which="both"); ax.legend(fontsize=8, loc="best")
ax.set_title(title, fontsize=10)
fig.tight_layout(); fig.savefig(out)
)PY";

int run_python(const std::string& python, const std::vector<std::string>& args) {
  const pid_t pid = fork();
  PF_CHECK(pid >= 0, "[extrapolate] fork failed");
  if (pid == 0) {
    std::vector<char*> argv{const_cast<char*>(python.c_str())};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(python.c_str(), argv.data());
    std::perror("posformer extrapolate: cannot run python");
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}
}  // namespace

Command add_extrapolate(CLI::App& root) {
  auto* app = root.add_subcommand(
      "extrapolate",
      "length-extrapolation study: one model per position encoding, perplexity vs eval length");
  auto s = std::make_shared<StudySpec>();
  auto quiet = std::make_shared<bool>(false);
  auto python = std::make_shared<std::string>("/usr/bin/python3");
  auto mem = std::make_shared<MemoryGuard>();
  app->add_option("--config", s->config_path,
                  "base model config (decoder); position.type and attention.type are set per "
                  "model")
      ->required();
  app->add_option("--positions", s->positions,
                  "position types, comma-separated (none,learned,sinusoidal,rope,alibi,t5,shaw,"
                  "xl,deberta)")
      ->delimiter(',')
      ->required();
  app->add_option("--attention", s->attentions,
                  "attention types, comma-separated (default softmax); one model per position x "
                  "attention")
      ->delimiter(',');
  app->add_option("--rope-scalings", s->rope_scalings,
                  "RoPE models are also scored under these scalings, each stretched to the "
                  "length scored (default linear,ntk,yarn,llama3; also dynamic_ntk; 'none': "
                  "only as trained)")
      ->delimiter(',');
  app->add_option("--train-len", s->train_len, "training sequence length");
  app->add_option("--eval-lens", s->eval_lens, "evaluation lengths, comma-separated, increasing")
      ->delimiter(',');
  app->add_option("--steps", s->steps, "optimizer steps per model");
  app->add_option("--batch", s->batch, "sequences per step");
  app->add_option("--lr", s->lr, "peak learning rate (cosine decay)");
  app->add_option("--warmup", s->warmup, "warmup steps (default: min(100, steps/10))");
  app->add_option("--seed", s->seed, "seed for init, data split and windows (same for all)");
  app->add_option("--data", s->data, "training text files, or 'default' (the default corpus)")
      ->required();
  app->add_option("--val-fraction", s->val_fraction,
                  "share of documents held out (the text every length is scored on)");
  app->add_option("--eval-tokens", s->eval_tokens,
                  "held-out tokens scored at every length (the same tokens for each)");
  app->add_option("--ckpt-every", s->ckpt_every,
                  "checkpoint every N steps (default: steps/10, within 1..100)");
  app->add_option("--out", s->out_dir, "study directory (rerun the same command to resume)")
      ->required();
  app->add_option("--python", *python, "python interpreter with matplotlib (for the plot)");
  app->add_flag("--quiet", *quiet, "no progress output");
  add_threads_option(app, s->threads);
  add_memory_options(app, *mem);
  return {app, [=]() {
            s->progress = !*quiet;
            if (s->rope_scalings == std::vector<std::string>{"none"}) s->rope_scalings.clear();
            validate(*s);
            for (const StudyModel& m : study_models(*s, load_config(s->config_path)))
              if (m.refused.empty())
                check_model_memory("extrapolate", m.cfg, ModelUse::Train, *mem);
            std::signal(SIGINT, on_extrapolate_signal);
            std::signal(SIGTERM, on_extrapolate_signal);
            const StudyResult r = run_study(*s, &g_stop);
            const std::string dir = s->out_dir;
            const std::string csv = dir + "/results.csv", md = dir + "/results.md";
            atomic_write_file(csv, results_csv(r.rows));
            const std::string table = results_markdown(*s, r);
            atomic_write_file(md, table);
            if (r.interrupted) {
              std::fprintf(stderr,
                           "\nextrapolate: interrupted; finished models are in %s/manifest.json, "
                           "the current one has a checkpoint. Rerun the same command to resume.\n",
                           dir.c_str());
              return 130;
            }
            std::printf("%s\n", table.c_str());
            // The plot: matplotlib over results.csv, as posformer plot does for loss curves.
            const std::string png = dir + "/extrapolation.png";
            const std::string script = dir + "/.plot_extrapolation.py";
            atomic_write_file(script, std::string(kExtrapolationPlot));
            const int rc = run_python(*python, {script, csv, png, std::to_string(s->train_len),
                                                "posformer extrapolate: " + dir});
            std::filesystem::remove(script);
            PF_CHECK(rc == 0,
                     "[extrapolate] matplotlib failed (install python3-matplotlib; see "
                     "the message above); the results are in ",
                     csv, " and ", md);
            // The best model at the longest length it was measured at.
            const StudyRow* best = nullptr;
            for (const auto& row : r.rows)
              if (row.status == "ok" && row.variant == "none" &&
                  (!best || row.eval_len > best->eval_len ||
                   (row.eval_len == best->eval_len && row.ppl < best->ppl)))
                best = &row;
            std::printf("results: %s  %s  %s\n", csv.c_str(), md.c_str(), png.c_str());
            if (best)
              std::printf("best at length %lld: %s (perplexity %.3f), model in %s/models/%s\n",
                          (long long)best->eval_len, best->model.c_str(), best->ppl, dir.c_str(),
                          best->model.c_str());
            return 0;
          }};
}

}  // namespace posformer::cli
