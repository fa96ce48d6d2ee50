#include "posformer/train/extrapolation.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "posformer/core/io.h"
#include "posformer/core/runtime.h"
#include "posformer/model/config_fields.h"
#include "posformer/model/transformer.h"
#include "posformer/train/checkpoint.h"
#include "posformer/train/data.h"
#include "posformer/train/tokenizer.h"
#include "posformer/train/trainer.h"

namespace posformer {
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

template <class Cfg>
std::string type_names(const std::vector<ConfigEntry<Cfg>>& entries) {
  std::string s;
  for (const auto& e : entries) s += (s.empty() ? "" : ", ") + e.type;
  return s;
}

template <class Cfg>
bool known_type(const std::vector<ConfigEntry<Cfg>>& entries, const std::string& t) {
  for (const auto& e : entries)
    if (e.type == t) return true;
  return false;
}

int64_t resolved_warmup(const StudySpec& s) {
  return s.warmup >= 0 ? s.warmup : std::min<int64_t>(100, s.steps / 10);
}

int64_t resolved_ckpt_every(const StudySpec& s) {
  return s.ckpt_every > 0 ? s.ckpt_every : std::clamp<int64_t>(s.steps / 10, 1, 100);
}

// Everything that decides what a model learns; a rerun in the same DIR must match it.
json training_spec(const StudySpec& s, const ModelConfig& base) {
  return json{{"base_config", config_to_json(base)},
              {"train_len", s.train_len},
              {"steps", s.steps},
              {"batch", s.batch},
              {"warmup", resolved_warmup(s)},
              {"lr", s.lr},
              {"seed", s.seed},
              {"data", s.data},
              {"val_fraction", s.val_fraction}};
}

// What a model's rows were measured under: lengths, tokens and its eval-time variants (a new
// variant, e.g. a RoPE scaling, re-evaluates finished models without retraining them).
json eval_spec(const StudySpec& s, const ModelConfig& cfg) {
  json names = json::array();
  for (const EvalVariant& v : eval_variants(cfg, s.rope_scalings)) names.push_back(v.name);
  return json{{"eval_lens", s.eval_lens}, {"eval_tokens", s.eval_tokens}, {"variants", names}};
}

json read_json(const std::string& path) {
  const std::string text = read_file(path, size_t{1} << 28);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(str("[extrapolate] ", path, " is not valid JSON (", e.what(),
                    "); delete it to start the study over"));
  }
}

// Refuses a DIR whose study.json holds another training spec, naming the differing fields.
void check_study_dir(const std::string& dir, const json& spec) {
  const std::string path = dir + "/study.json";
  if (!fs::exists(path)) {
    atomic_write_file(path, spec.dump(2) + "\n");
    return;
  }
  json old = read_json(path);
  // The base config as this build writes it back: a field added to the config format since
  // (with its default) is not a change of settings.
  if (old.contains("base_config")) try {
      old["base_config"] = config_to_json(parse_config(old["base_config"]));
    } catch (const Error&) {
    }
  if (old == spec) return;
  std::string diff;
  for (const auto& [k, v] : spec.items()) {
    const json o = old.contains(k) ? old.at(k) : json();
    if (o == v) continue;
    std::string there = o.dump(), here = v.dump();
    if (k == "base_config") there = "(another config)", here = "(this config)";
    diff += str(diff.empty() ? "" : "; ", k, ": ", there, " there, ", here, " now");
  }
  throw Error(str("[extrapolate] ", dir, " holds a study trained with other settings (", diff,
                  "); rerun with the same settings to resume it, or choose another --out"));
}

// The last training loss and validation loss of a run (its metrics.jsonl), for the manifest.
json train_summary(const std::string& run_dir) {
  json out{{"steps", 0}, {"last_loss", nullptr}, {"val_loss", nullptr}};
  std::istringstream in(read_file(run_dir + "/metrics.jsonl", size_t{1} << 30));
  std::string line;
  while (std::getline(in, line)) {
    try {
      const json j = json::parse(line);
      if (j.contains("val_loss")) out["val_loss"] = j["val_loss"];
      if (j.contains("loss")) out["last_loss"] = j["loss"], out["steps"] = j.value("step", 0);
      if (j.contains("tokens_per_s")) out["tokens_per_s"] = j["tokens_per_s"];
    } catch (const json::exception&) {
    }
  }
  return out;
}

StudyRow base_row(const StudyModel& m, const std::string& variant, int64_t train_len, int64_t L) {
  StudyRow r;
  r.model = m.name, r.position = m.position, r.attention = m.attention, r.variant = variant;
  r.train_len = train_len, r.eval_len = L;
  return r;
}

}  // namespace

void validate(const StudySpec& s) {
  PF_CHECK(!s.config_path.empty(), "[extrapolate] --config BASE (a decoder config) is required");
  PF_CHECK(!s.out_dir.empty(), "[extrapolate] --out DIR is required");
  PF_CHECK(!s.positions.empty(), "[extrapolate] --positions needs at least one position type");
  PF_CHECK(!s.attentions.empty(), "[extrapolate] --attention needs at least one attention type");
  std::set<std::string> seen;
  for (const auto& p : s.positions) {
    PF_CHECK(known_type(position_config_entries(), p), "[extrapolate] --positions: unknown type \"",
             p, "\" (known: ", type_names(position_config_entries()), ")");
    PF_CHECK(seen.insert(p).second, "[extrapolate] --positions lists \"", p, "\" twice");
  }
  seen.clear();
  for (const auto& a : s.attentions) {
    PF_CHECK(known_type(attention_config_entries(), a),
             "[extrapolate] --attention: unknown type \"", a,
             "\" (known: ", type_names(attention_config_entries()), ")");
    PF_CHECK(seen.insert(a).second, "[extrapolate] --attention lists \"", a, "\" twice");
  }
  seen.clear();
  for (const auto& r : s.rope_scalings) {
    PF_CHECK(r != "none",
             "[extrapolate] --rope-scalings: \"none\" (the model as trained) is "
             "always scored; give it alone for no scaling, or list scalings");
    ops::parse_rope_scaling_type(r, "[extrapolate] --rope-scalings");
    PF_CHECK(seen.insert(r).second, "[extrapolate] --rope-scalings lists \"", r, "\" twice");
  }
  PF_CHECK(s.train_len >= 2 && s.train_len <= (1 << 20),
           "[extrapolate] --train-len must be in [2, 2^20], got ", s.train_len);
  PF_CHECK(!s.eval_lens.empty(), "[extrapolate] --eval-lens needs at least one length");
  for (size_t i = 0; i < s.eval_lens.size(); ++i) {
    PF_CHECK(s.eval_lens[i] >= 1 && s.eval_lens[i] <= (1 << 20),
             "[extrapolate] --eval-lens must be in [1, 2^20], got ", s.eval_lens[i]);
    PF_CHECK(i == 0 || s.eval_lens[i] > s.eval_lens[i - 1],
             "[extrapolate] --eval-lens must be increasing, got ", s.eval_lens[i - 1], " then ",
             s.eval_lens[i]);
  }
  PF_CHECK(s.steps >= 1, "[extrapolate] --steps must be >= 1, got ", s.steps);
  PF_CHECK(s.batch >= 1 && s.batch <= 4096, "[extrapolate] --batch must be in [1, 4096], got ",
           s.batch);
  PF_CHECK(std::isfinite(s.lr) && s.lr > 0, "[extrapolate] --lr must be > 0, got ", s.lr);
  PF_CHECK(s.val_fraction > 0 && s.val_fraction <= 0.5,
           "[extrapolate] --val-fraction must be in (0, 0.5] (the study scores held-out text), "
           "got ",
           s.val_fraction);
  PF_CHECK(s.eval_tokens >= 1, "[extrapolate] --eval-tokens must be >= 1, got ", s.eval_tokens);
  PF_CHECK(s.eval_tokens >= s.eval_lens.back(), "[extrapolate] --eval-tokens (", s.eval_tokens,
           ") must cover at least one window of the longest --eval-lens (", s.eval_lens.back(),
           ")");
  PF_CHECK(!s.data.empty(), "[extrapolate] --data FILE... (or default) is required");
}

std::vector<StudyModel> study_models(const StudySpec& s, const ModelConfig& base) {
  PF_CHECK(base.arch == Arch::Decoder,
           "[extrapolate] the study trains causal language models: --config must have arch "
           "decoder, got ",
           base.arch);
  PF_CHECK(base.head == Head::Lm, "[extrapolate] --config needs an LM head (head: lm)");
  const bool name_attention = s.attentions.size() > 1 || s.attentions[0] != "softmax";
  std::vector<StudyModel> out;
  for (const auto& a : s.attentions)
    for (const auto& p : s.positions) {
      StudyModel m;
      m.position = p, m.attention = a;
      m.name = name_attention ? p + "+" + a : p;
      m.cfg = base;
      m.cfg.position.type = p;
      m.cfg.attention.type = a;
      if (a != base.attention.type) m.cfg.attention.scale.reset();  // linear family: no scale
      try {
        validate_config(m.cfg);
        Transformer declared(m.cfg);  // the registries refuse combinations here
        if (p == "learned")
          PF_CHECK(base.max_len >= s.train_len,
                   "[extrapolate] position 'learned' needs max_len >= ", "--train-len ",
                   s.train_len, ", the config has ", base.max_len);
      } catch (const Error& e) {
        m.refused = e.what();
      }
      out.push_back(std::move(m));
    }
  return out;
}

std::vector<EvalVariant> eval_variants(const ModelConfig& trained,
                                       const std::vector<std::string>& rope_scalings) {
  std::vector<EvalVariant> v;
  v.push_back({"none", [](const ModelConfig& c, int64_t, int64_t) { return c; }});
  if (trained.position.type != "rope" ||
      trained.position.scaling.type != ops::RopeScalingType::None)
    return v;
  for (const std::string& name : rope_scalings) {
    const ops::RopeScalingType t =
        ops::parse_rope_scaling_type(name, "[extrapolate] --rope-scalings");
    v.push_back(
        {str("rope:", name),
         [t](const ModelConfig& c, int64_t L, int64_t train_len) -> std::optional<ModelConfig> {
           ModelConfig out = c;
           out.position.scaling.type = t;
           out.position.scaling.original_len = train_len;
           out.position.scaling.factor =
               t == ops::RopeScalingType::DynamicNtk
                   ? 1.0
                   : std::max(1.0, static_cast<double>(L) / static_cast<double>(train_len));
           return out;
         }});
  }
  return v;
}

json row_to_json(const StudyRow& r) {
  return json{{"model", r.model},       {"position", r.position}, {"attention", r.attention},
              {"variant", r.variant},   {"status", r.status},     {"train_len", r.train_len},
              {"eval_len", r.eval_len}, {"windows", r.windows},   {"tokens", r.tokens},
              {"loss", r.loss},         {"ppl", r.ppl},           {"bpb", r.bpb}};
}

StudyRow row_from_json(const json& j) {
  StudyRow r;
  try {
    r.model = j.at("model"), r.position = j.at("position"), r.attention = j.at("attention");
    r.variant = j.at("variant"), r.status = j.at("status");
    r.train_len = j.at("train_len"), r.eval_len = j.at("eval_len");
    r.windows = j.at("windows"), r.tokens = j.at("tokens");
    r.loss = j.at("loss"), r.ppl = j.at("ppl"), r.bpb = j.at("bpb");
  } catch (const json::exception& e) {
    throw Error(str("[extrapolate] a manifest row is malformed: ", e.what()));
  }
  return r;
}

StudyResult run_study(const StudySpec& s, const std::atomic<bool>* stop) {
  validate(s);
  const ModelConfig base = load_config(s.config_path);
  const std::vector<StudyModel> models = study_models(s, base);
  const std::string dir = s.out_dir;
  std::error_code ec;
  fs::create_directories(dir + "/configs", ec);
  PF_CHECK(!ec, "[extrapolate] cannot create ", dir, ": ", ec.message());
  fs::create_directories(dir + "/models", ec);
  PF_CHECK(!ec, "[extrapolate] cannot create ", dir, "/models: ", ec.message());
  check_study_dir(dir, training_spec(s, base));
  const std::string manifest_path = dir + "/manifest.json";
  json manifest = fs::exists(manifest_path) ? read_json(manifest_path)
                                            : json{{"version", 1}, {"models", json::object()}};
  PF_CHECK(manifest.contains("models") && manifest["models"].is_object(), "[extrapolate] ",
           manifest_path, " has no models object; delete it to start the study over");

  // The held-out tokens every model is scored on (the trainer holds out the same documents).
  set_threads(s.threads);
  std::unique_ptr<Tokenizer> tok = make_byte_tokenizer();
  std::vector<std::string> files = s.data;
  if (files.size() == 1 && files[0] == "default") files = default_corpus_files();
  const Corpus corpus = load_corpus(files, *tok, s.val_fraction, s.seed);
  StudyResult res;
  res.held_out_tokens =
      std::min<int64_t>(s.eval_tokens, std::max<int64_t>(0, corpus.val_tokens - 1));
  if (res.held_out_tokens < s.eval_tokens)
    res.notes.push_back(str("the held-out split has ", corpus.val_tokens, " tokens, fewer than ",
                            "--eval-tokens ", s.eval_tokens,
                            ": every length is scored on the first ", res.held_out_tokens,
                            " (raise --val-fraction or give more data)"));
  for (int64_t L : s.eval_lens) {
    const int64_t w = res.held_out_tokens / L;
    if (w == 0)
      res.notes.push_back(str("length ", L, ": not measured, the held-out text has only ",
                              res.held_out_tokens, " scored tokens (no whole window)"));
    else if (w < 4)
      res.notes.push_back(str("length ", L, ": only ", w, " window", w > 1 ? "s" : "",
                              " of held-out text; its perplexity is noisy"));
  }

  const bool tty = s.progress && isatty(STDERR_FILENO);
  const auto t0 = std::chrono::steady_clock::now();
  double train_seconds = 0;
  int64_t n_trained = 0;
  const int64_t n = static_cast<int64_t>(models.size());
  for (int64_t k = 0; k < n; ++k) {
    const StudyModel& m = models[k];
    if (!m.refused.empty()) {
      res.notes.push_back(str(m.name, ": skipped, ", m.refused));
      StudyRow r = base_row(m, "none", s.train_len, 0);
      r.status = "skipped: " + m.refused;
      res.rows.push_back(r);
      if (s.progress)
        std::fprintf(stderr, "[%lld/%lld] %s: skipped (%s)\n", (long long)k + 1, (long long)n,
                     m.name.c_str(), m.refused.c_str());
      continue;
    }
    const std::string run_dir = dir + "/models/" + m.name;
    json& entry = manifest["models"][m.name];
    const bool finished = entry.is_object() && entry.value("finished", false);
    if (finished && entry.value("eval", json()) == eval_spec(s, m.cfg)) {
      for (const auto& j : entry.at("rows")) res.rows.push_back(row_from_json(j));
      res.reused.push_back(m.name);
      if (s.progress)
        std::fprintf(stderr, "[%lld/%lld] %s: finished earlier (manifest), not retrained\n",
                     (long long)k + 1, (long long)n, m.name.c_str());
      continue;
    }
    // Train (or resume) the model.
    if (!finished) {
      if (s.progress) {
        const double el =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::string eta;
        if (n_trained > 0)
          eta = "  study ETA ~" + fmt_duration(train_seconds / n_trained * (n - k));
        std::fprintf(
            stderr, "[%lld/%lld] %s: training %lld steps (batch %lld x %lld)  elapsed %s%s\n",
            (long long)k + 1, (long long)n, m.name.c_str(), (long long)s.steps, (long long)s.batch,
            (long long)s.train_len, fmt_duration(el).c_str(), eta.c_str());
      }
      const auto tm0 = std::chrono::steady_clock::now();
      const std::string cfg_path = dir + "/configs/" + m.name + ".json";
      atomic_write_file(cfg_path, config_to_json(m.cfg).dump(2) + "\n");
      remove_scratch(run_dir);
      TrainResult tr;
      if (fs::exists(run_dir) && !latest_checkpoint(run_dir).empty()) {
        if (s.progress)
          std::fprintf(stderr, "  resuming %s from its newest checkpoint\n", run_dir.c_str());
        tr = resume(run_dir, 0, s.threads, s.progress, stop);
      } else {
        fs::remove_all(run_dir, ec);  // killed before its first checkpoint: start over
        TrainOptions o;
        o.config_path = cfg_path;
        o.data = s.data;
        o.out_dir = run_dir;
        o.steps = s.steps, o.batch = s.batch, o.seq_len = s.train_len;
        o.lr = s.lr, o.warmup = resolved_warmup(s), o.seed = s.seed;
        o.val_fraction = s.val_fraction;
        o.eval_every = 0;  // validation at the end; the study scores every length after
        o.ckpt_every = resolved_ckpt_every(s), o.keep_last = 1;
        o.threads = s.threads, o.progress = s.progress;
        tr = train(o, stop);
      }
      if (tr.interrupted) {
        res.interrupted = true;
        break;
      }
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - tm0).count();
      train_seconds += secs, ++n_trained;
      entry = json{{"finished", false}, {"train", train_summary(run_dir)}};
      entry["train"]["seconds_last_session"] = secs;
      res.trained.push_back(m.name);
    } else {
      res.notes.push_back(
          str(m.name, ": evaluated again (the eval lengths, tokens or variants changed)"));
    }
    // Evaluate the trained weights under every variant at every length.
    Transformer trained = Transformer::load(run_dir);
    set_threads(s.threads);
    std::vector<StudyRow> rows;
    const auto te0 = std::chrono::steady_clock::now();
    for (const EvalVariant& v : eval_variants(trained.config(), s.rope_scalings)) {
      for (int64_t L : s.eval_lens) {
        if (stop && stop->load()) break;
        StudyRow r = base_row(m, v.name, s.train_len, L);
        const int64_t mp = trained.position(true)->max_position();
        const int64_t windows = res.held_out_tokens / L;
        std::optional<ModelConfig> vc = v.config(trained.config(), L, s.train_len);
        if (mp >= 0 && L > mp + 1) {
          r.status = str("n/a: learned table ends at max_len ", mp + 1);
        } else if (windows == 0) {
          r.status = "n/a: held-out data too short";
        } else if (!vc) {
          r.status = "n/a: variant does not apply";
        } else {
          if (s.progress)
            std::fprintf(stderr, "%s[%lld/%lld] %s: eval %s length %lld (%lld windows)%s",
                         tty ? "\r" : "", (long long)k + 1, (long long)n, m.name.c_str(),
                         v.name.c_str(), (long long)L, (long long)windows, tty ? "    " : "\n");
          const auto ws = eval_windows(corpus.val_docs, L, windows);
          Evaluation e;
          if (config_to_json(*vc) == config_to_json(trained.config())) {
            e = evaluate_windows(trained, Objective::Clm, ws, *tok);
          } else {
            std::optional<Transformer> variant;
            try {
              variant.emplace(*vc);
            } catch (const Error& err) {
              r.status = str("n/a: ", err.what());
              rows.push_back(r);
              continue;
            }
            variant->set_weights(trained.params().all(), run_dir + " (" + v.name + ")");
            e = evaluate_windows(*variant, Objective::Clm, ws, *tok);
          }
          r.loss = e.loss, r.ppl = e.ppl, r.bpb = e.bpb, r.tokens = e.tokens, r.windows = windows;
        }
        rows.push_back(r);
      }
    }
    if (stop && stop->load()) {
      res.interrupted = true;
      break;
    }
    if (s.progress) {
      std::string line;
      for (const auto& r : rows)
        if (r.variant == "none")
          line += r.status == "ok" ? str("  ", r.eval_len, ": ", std::round(r.ppl * 100) / 100)
                                   : str("  ", r.eval_len, ": n/a");
      std::fprintf(
          stderr, "%s[%lld/%lld] %s: perplexity%s  (eval %s)\n", tty ? "\r" : "", (long long)k + 1,
          (long long)n, m.name.c_str(), line.c_str(),
          fmt_duration(
              std::chrono::duration<double>(std::chrono::steady_clock::now() - te0).count())
              .c_str());
    }
    json jr = json::array();
    for (const auto& r : rows) jr.push_back(row_to_json(r));
    entry["finished"] = true;
    entry["eval"] = eval_spec(s, m.cfg);
    entry["rows"] = jr;
    atomic_write_file(manifest_path, manifest.dump(1) + "\n");
    res.rows.insert(res.rows.end(), rows.begin(), rows.end());
  }
  return res;
}

std::string results_csv(const std::vector<StudyRow>& rows) {
  std::ostringstream o;
  o << "model,position,attention,variant,train_len,eval_len,status,loss,ppl,bits_per_byte,"
       "windows,tokens\n";
  char buf[160];
  for (const auto& r : rows) {
    if (r.eval_len == 0) {  // a skipped model: one row, no length
      std::string st = r.status;
      for (char& c : st)
        if (c == ',' || c == '"' || c == '\n') c = ' ';
      o << r.model << "," << r.position << "," << r.attention << "," << r.variant << ","
        << r.train_len << ",," << st << ",,,,0,0\n";
      continue;
    }
    if (r.status == "ok")
      std::snprintf(buf, sizeof buf, "ok,%.6f,%.6f,%.6f,%lld,%lld", r.loss, r.ppl, r.bpb,
                    (long long)r.windows, (long long)r.tokens);
    else
      std::snprintf(buf, sizeof buf, "%s,,,,0,0", r.status.c_str());
    o << r.model << "," << r.position << "," << r.attention << "," << r.variant << ","
      << r.train_len << "," << r.eval_len << "," << buf << "\n";
  }
  return o.str();
}

std::string results_markdown(const StudySpec& s, const StudyResult& r) {
  std::ostringstream o;
  char buf[64];
  // Rows: (model, variant) in order of appearance.
  std::vector<std::pair<std::string, std::string>> keys;
  std::map<std::pair<std::string, std::string>, std::map<int64_t, const StudyRow*>> cell;
  std::map<std::string, std::string> skipped;
  for (const auto& row : r.rows) {
    if (row.eval_len == 0) {
      skipped[row.model] = row.status;
      keys.push_back({row.model, row.variant});
      continue;
    }
    auto k = std::make_pair(row.model, row.variant);
    if (!cell.count(k)) keys.push_back(k);
    cell[k][row.eval_len] = &row;
  }
  const bool variants = std::any_of(r.rows.begin(), r.rows.end(),
                                    [](const StudyRow& x) { return x.variant != "none"; });
  auto header = [&]() {
    o << "| model" << (variants ? " | eval variant" : "");
    for (int64_t L : s.eval_lens) o << " | " << L << (L == s.train_len ? " (train)" : "");
    o << " |\n|---" << (variants ? "|---" : "");
    for (size_t i = 0; i < s.eval_lens.size(); ++i) o << "|---:";
    o << "|\n";
  };
  o << "Perplexity on held-out text (lower is better) by evaluation length; trained at length "
    << s.train_len << ", " << s.steps << " steps of batch " << s.batch << ".\n\n";
  header();
  for (const auto& k : keys) {
    o << "| " << k.first << (variants ? " | " + k.second : "");
    if (skipped.count(k.first)) {
      for (size_t i = 0; i < s.eval_lens.size(); ++i) o << " | skipped";
      o << " |\n";
      continue;
    }
    for (int64_t L : s.eval_lens) {
      const auto it = cell[k].find(L);
      if (it == cell[k].end() || it->second->status != "ok") {
        o << " | n/a";
      } else {
        std::snprintf(buf, sizeof buf, "%.3f", it->second->ppl);
        o << " | " << buf;
      }
    }
    o << " |\n";
  }
  // Ratio to the perplexity at the training length (or the first length).
  o << "\nPerplexity relative to the same model at length " << s.train_len
    << " (1.00 = no degradation):\n\n";
  header();
  for (const auto& k : keys) {
    if (skipped.count(k.first)) continue;
    o << "| " << k.first << (variants ? " | " + k.second : "");
    const auto ref = cell[k].find(s.train_len);
    for (int64_t L : s.eval_lens) {
      const auto it = cell[k].find(L);
      if (ref == cell[k].end() || ref->second->status != "ok" || it == cell[k].end() ||
          it->second->status != "ok") {
        o << " | n/a";
      } else {
        std::snprintf(buf, sizeof buf, "%.2f", it->second->ppl / ref->second->ppl);
        o << " | " << buf;
      }
    }
    o << " |\n";
  }
  o << "\nEvery length scores the same first " << r.held_out_tokens
    << " tokens of the held-out split, as non-overlapping windows of that length.\n";
  if (!r.notes.empty()) {
    o << "\nNotes:\n\n";
    for (const auto& n : r.notes) o << "- " << n << "\n";
  }
  return o.str();
}

}  // namespace posformer
