// posformer plot: loss curves of a run (metrics.jsonl) to PNG, drawn by matplotlib.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "common.h"
#include "posformer/core/io.h"

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
}  // namespace

Command add_plot(CLI::App& root) {
  auto* app = root.add_subcommand(
      "plot", "render a run's loss curves (metrics.jsonl) to PNG with matplotlib");
  auto dir = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto python = std::make_shared<std::string>("/usr/bin/python3");
  app->add_option("DIR", *dir, "run directory (from posformer train --out)")->required();
  app->add_option("--out", *out, "PNG file (default: DIR/loss.png)");
  app->add_option("--python", *python, "python interpreter with matplotlib");
  return {app, [=]() {
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
            PF_CHECK(
                WIFEXITED(status) && WEXITSTATUS(status) == 0,
                "[plot] matplotlib failed (install python3-matplotlib; see the message above)");
            return 0;
          }};
}

}  // namespace posformer::cli
