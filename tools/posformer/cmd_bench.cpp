// posformer bench attention: time, GFLOP/s and peak extra memory of attention variants.
// With --error: the approximation error of approximate variants against exact softmax instead.
//
// Every case (variant, T, mask) runs in a fresh process (this binary re-executed with --one):
// the allocator keeps freed memory (runtime.h), so only a fresh process shows how much memory
// one call really needs. The child warms up oneDNN and the thread pool on a tiny call, allocates
// q, k, v, out and their gradients, resets the peak resident size (/proc/self/clear_refs),
// runs forward (keeping what backward needs) and backward once and reports the growth of the
// peak over the resident size before the call; then it times forward alone and backward alone
// (median of --reps after one warm-up) and prints one JSON line.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "common.h"
#include "posformer/attention/variant.h"
#include "posformer/core/peak.h"
#include "posformer/core/runtime.h"
#include "posformer/model/config.h"

namespace posformer::cli {
namespace {

struct CaseOpts {
  std::string variant = "softmax";
  int64_t B = 1, H = 12, Hkv = 0, D = 64, T = 512, reps = 5;
  bool causal = false, backward = true;
  bool bf16 = false;  // --precision bf16: the fused softmax forward's bfloat16 products
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// One case in this process: one JSON line on stdout.
nlohmann::json run_case(const CaseOpts& o) {
  using clock = std::chrono::steady_clock;
  nlohmann::json r = {
      {"variant", o.variant}, {"T", o.T},        {"causal", o.causal},      {"B", o.B},
      {"heads", o.H},         {"head_dim", o.D}, {"threads", num_threads()}};
  const int64_t Hkv = o.Hkv > 0 ? o.Hkv : o.H;
  r["kv_heads"] = Hkv;
  r["precision"] = o.bf16 ? "bf16" : "f32";
  PF_CHECK(o.H % Hkv == 0, "[bench] --kv-heads ", Hkv, " must divide --heads ", o.H);
  const StackGeom geom{"bench.", 1, o.H * o.D, o.H, Hkv, o.D, o.T, o.causal, false};
  PositionConfig pc;
  pc.type = o.variant == "linear_rope" ? "rope" : "none";  // linear_rope rotates inside
  auto pe = make_position_encoding(pc, geom);
  AttentionConfig ac;
  ac.type = o.variant;
  std::unique_ptr<Attention> att;
  try {
    if (o.causal) {  // a variant with no causal form (nystrom): not a failure, nothing to time
      StackGeom full = geom;
      full.causal = false;
      if (!make_attention(ac, full, *pe)->caps().causal) {
        r["skipped"] = "no causal form";
        return r;
      }
    }
    att = make_attention(ac, geom, *pe);
  } catch (const Error& e) {
    r["error"] = e.what();
    return r;
  }
  std::vector<ParamSpec> specs;
  att->declare(specs);
  for (const ParamSpec& s : specs)
    PF_CHECK(s.buffer, "[bench] attention '", o.variant,
             "' has parameters; bench attention runs parameter-free variants only");
  ParamStore buffers;  // performer's random features (default n_features and seed)
  att->init_buffers(buffers, 0);
  auto make_desc = [&](int64_t T, std::vector<float>& q, std::vector<float>& k,
                       std::vector<float>& v, std::vector<float>& out) {
    AttnDesc a;
    a.B = o.B, a.Tq = T, a.Tk = T, a.H = o.H, a.Hkv = Hkv, a.D = o.D;
    a.ldq = a.ldo = o.H * o.D, a.ldk = a.ldv = Hkv * o.D;
    q.resize(size_t(o.B * T * a.ldq)), out.resize(q.size());
    k.resize(size_t(o.B * T * a.ldk)), v.resize(k.size());
    std::mt19937 rng(11);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (auto* x : {&q, &k, &v})
      for (float& e : *x) e = nd(rng);
    a.q = q.data(), a.k = k.data(), a.v = v.data(), a.out = out.data();
    a.scale = static_cast<float>(1.0 / std::sqrt(double(o.D)));
    a.causal = o.causal;
    a.self_attention = true;
    a.params = &buffers;
    a.bf16 = o.bf16;
    return a;
  };
  auto run_backward = [&](const AttnDesc& a, const AttnSaved& saved, std::vector<float>& dout,
                          std::vector<float>& dq, std::vector<float>& dk, std::vector<float>& dv) {
    AttnGrads g;
    g.dout = dout.data(), g.lddo = a.ldo, g.dq = dq.data(), g.dk = dk.data(), g.dv = dv.data();
    att->backward(a, saved, g, nullptr);
  };
  // warm-up: oneDNN kernels (their first call allocates scratch buffers, which are not the
  // call's own memory) and the OpenMP pool, on small calls: T = 16 and 64, on either side of the
  // fused kernel's switch of its backward from micro-kernels to sgemm (48 keys), and 256, where a
  // causal backward's second query block reaches sgemm (its first, all diagonal, runs on the
  // micro-kernels)
  for (int64_t T : {int64_t{16}, int64_t{64}, int64_t{256}}) {
    std::vector<float> q, k, v, out;
    AttnDesc a = make_desc(T, q, k, v, out);
    std::unique_ptr<AttnSaved> saved;
    att->forward(a, &saved);
    std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
    if (o.backward) run_backward(a, *saved, out, dq, dk, dv);
  }
  std::vector<float> q, k, v, out;
  AttnDesc a = make_desc(o.T, q, k, v, out);
  std::vector<float> dout(out.size(), 0.01f), dq(q.size()), dk(k.size()), dv(v.size());
  // peak memory of one training call (forward keeping its state + backward), beyond the inputs,
  // outputs and gradients allocated above
  const bool can_reset = reset_peak_rss();
  const double rss0 = proc_status_bytes("VmRSS");
  {
    std::unique_ptr<AttnSaved> saved;
    att->forward(a, o.backward ? &saved : nullptr);
    if (o.backward) run_backward(a, *saved, dout, dq, dk, dv);
  }
  const double hwm = proc_status_bytes("VmHWM");
  if (can_reset && rss0 >= 0 && hwm >= 0) r["extra_mib"] = std::max(0.0, hwm - rss0) / (1 << 20);
  // times
  std::vector<double> fwd, bwd;
  for (int64_t i = 0; i <= o.reps; ++i) {
    auto t0 = clock::now();
    att->forward(a, nullptr);
    const double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    if (i) fwd.push_back(ms);
  }
  if (o.backward) {
    std::unique_ptr<AttnSaved> saved;
    att->forward(a, &saved);
    for (int64_t i = 0; i <= o.reps; ++i) {
      auto t0 = clock::now();
      run_backward(a, *saved, dout, dq, dk, dv);
      const double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
      if (i) bwd.push_back(ms);
    }
  }
  const AttnCost cost = att->cost(a);
  r["forward_ms"] = median(fwd);
  if (cost.forward_flops > 0) r["forward_gflops"] = cost.forward_flops / (median(fwd) * 1e6);
  if (o.backward) {
    r["backward_ms"] = median(bwd);
    if (cost.backward_flops > 0) r["backward_gflops"] = cost.backward_flops / (median(bwd) * 1e6);
  }
  r["inputs_mib"] = double((q.size() + k.size() + v.size() + out.size()) * 2 * sizeof(float)) /
                    (1 << 20);  // q, k, v, out and their gradients
  return r;
}

// This program's path (popen's shell would make /proc/self/exe the shell).
std::string self_exe() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  PF_CHECK(n > 0, "[bench] cannot read /proc/self/exe");
  return std::string(buf, static_cast<size_t>(n));
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : s + ",") {
    if (ch == ',' || ch == ' ') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  return out;
}

std::string fmt(const nlohmann::json& r, const char* key, const char* f) {
  if (!r.contains(key)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, r[key].get<double>());
  return buf;
}

// ---- --error: relative error of an approximate variant against exact softmax (docs/attention.md)

// The config field that sets a variant's approximation size (the x axis of the sweep); a new
// approximate variant adds one line here.
const char* size_field(const std::string& variant) {
  if (variant == "nystrom") return "n_landmarks";
  if (variant == "performer") return "n_features";
  return nullptr;
}

// "nystrom" or "nystrom:pinv_iterations=20:..." -> the attention object of a config (parsed and
// validated by the config parser, so every field a variant has can be set), plus `size`.
AttentionConfig error_series_config(const std::string& series, const char* field, int64_t size,
                                    int64_t H, int64_t D) {
  std::vector<std::string> parts;
  std::string cur;
  for (char ch : series + ":") {
    if (ch == ':') {
      parts.push_back(cur), cur.clear();
    } else {
      cur += ch;
    }
  }
  nlohmann::json a = {{"type", parts[0]}, {field, size}};
  for (size_t i = 1; i < parts.size(); ++i) {
    const size_t eq = parts[i].find('=');
    PF_CHECK(eq != std::string::npos && eq > 0, "[bench] --variants: '", parts[i], "' in '", series,
             "' is not field=value");
    const std::string key = parts[i].substr(0, eq), val = parts[i].substr(eq + 1);
    try {
      a[key] = nlohmann::json::parse(val);
    } catch (const nlohmann::json::exception&) {
      a[key] = val;
    }
  }
  const nlohmann::json cfg = {
      {"arch", "encoder"}, {"d_model", H * D}, {"n_heads", H}, {"attention", a}};
  return parse_config(cfg).attention;
}

// Fixed-seed inputs [T, H*D] (B = 1); v ~ N(0, 1). iid: q, k ~ N(0, 1). clustered: rows of q
// and k are one of 32 random centres (a "vocabulary") plus noise 0.3, scaled by 1.5: a query
// attends sharply to the keys of its cluster, wherever they are. smooth: q, k are smooth in the
// position (random sinusoids, periods 16 .. T/8, plus noise 0.3): a query attends to nearby
// keys, as position-driven heads do.
void error_inputs(const std::string& kind, int64_t T, int64_t W, std::vector<float>& q,
                  std::vector<float>& k, std::vector<float>& v) {
  std::mt19937 rng(1234);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  q.resize(size_t(T * W)), k.resize(q.size()), v.resize(q.size());
  for (float& e : v) e = nd(rng);
  if (kind == "iid") {
    for (float& e : q) e = nd(rng);
    for (float& e : k) e = nd(rng);
    return;
  }
  if (kind == "smooth") {  // q, k: 16 random sinusoids of the position per dim, plus noise 0.3
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    std::vector<float> w(16), ph(size_t(16 * W)), amp(size_t(16 * W));
    for (float& e : w) e = 6.2831853f / std::exp(std::log(16.0f) + u(rng) * std::log(T / 8.0f));
    for (float& e : ph) e = 6.2831853f * u(rng);
    for (float& e : amp) e = nd(rng) / std::sqrt(8.0f);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < W; ++i) {
        float x = 0.0f;
        for (int f = 0; f < 16; ++f) x += amp[f * W + i] * std::cos(w[f] * t + ph[f * W + i]);
        q[t * W + i] = x + 0.3f * nd(rng), k[t * W + i] = x + 0.3f * nd(rng);
      }
    return;
  }
  PF_CHECK(kind == "clustered", "[bench] --inputs: '", kind, "' is not iid, clustered or smooth");
  std::vector<float> centres(size_t(32 * W));
  for (float& e : centres) e = nd(rng);
  std::uniform_int_distribution<int> pick(0, 31);
  for (int64_t t = 0; t < T; ++t) {
    const int c = pick(rng);
    for (int64_t i = 0; i < W; ++i) {
      const float x = centres[c * W + i];
      q[t * W + i] = 1.5f * (x + 0.3f * nd(rng));
      k[t * W + i] = 1.5f * (x + 0.3f * nd(rng));
    }
  }
}

// One row per (series, inputs, T, size): ||out - softmax||_F / ||softmax||_F over all heads.
int run_error(const std::vector<std::string>& series, const std::vector<int64_t>& Ts,
              const std::vector<int64_t>& sizes, const std::vector<std::string>& inputs, int64_t H,
              int64_t D, const std::string& csv_path) {
  std::FILE* csv = nullptr;
  if (!csv_path.empty()) {
    csv = std::fopen(csv_path.c_str(), "w");
    PF_CHECK(csv, "[bench] cannot write ", csv_path);
    std::fprintf(csv, "series,variant,size_field,size,inputs,T,heads,head_dim,rel_err\n");
  }
  std::printf("attention approximation error vs exact softmax: %lld heads x D %lld, fp32\n",
              (long long)H, (long long)D);
  std::printf("%-28s %-10s %6s %-14s %8s %12s\n", "series", "inputs", "T", "size field", "size",
              "rel error");
  const int64_t W = H * D;
  for (const std::string& se : series) {
    const std::string variant = se.substr(0, se.find(':'));
    const char* field = size_field(variant);
    PF_CHECK(field, "[bench] --error: attention '", variant,
             "' has no approximation size to sweep (variants with one: nystrom, performer)");
    for (const std::string& kind : inputs)
      for (int64_t T : Ts) {
        std::vector<float> q, k, v;
        error_inputs(kind, T, W, q, k, v);
        AttnDesc a;
        a.B = 1, a.Tq = a.Tk = T, a.H = a.Hkv = H, a.D = D;
        a.ldq = a.ldk = a.ldv = a.ldo = W;
        a.q = q.data(), a.k = k.data(), a.v = v.data();
        a.scale = static_cast<float>(1.0 / std::sqrt(double(D)));
        std::vector<float> exact(q.size()), out(q.size());
        a.out = exact.data();
        attention_forward(a);
        for (int64_t size : sizes) {
          const AttentionConfig ac = error_series_config(se, field, size, H, D);
          const StackGeom geom{"bench.", 1, W, H, H, D, T, false, false};
          PositionConfig pc;
          pc.type = "none";
          auto pe = make_position_encoding(pc, geom);
          auto att = make_attention(ac, geom, *pe);
          std::vector<ParamSpec> specs;
          att->declare(specs);
          for (const ParamSpec& sp : specs)
            PF_CHECK(sp.buffer, "[bench] --error: '", se,
                     "' has trained weights (a conv, say); measure the approximation without them");
          ParamStore buffers;  // performer's random features, drawn as at init (draw 0)
          att->init_buffers(buffers, 0);
          a.params = &buffers;
          a.out = out.data();
          att->forward(a, nullptr);
          double num = 0, den = 0;
          for (size_t i = 0; i < out.size(); ++i) {
            const double d = double(out[i]) - exact[i];
            num += d * d, den += double(exact[i]) * exact[i];
          }
          const double rel = std::sqrt(num / den);
          std::printf("%-28s %-10s %6lld %-14s %8lld %12.4e\n", se.c_str(), kind.c_str(),
                      (long long)T, field, (long long)size, rel);
          std::fflush(stdout);
          if (csv)
            std::fprintf(csv, "%s,%s,%s,%lld,%s,%lld,%lld,%lld,%.6e\n", se.c_str(), variant.c_str(),
                         field, (long long)size, kind.c_str(), (long long)T, (long long)H,
                         (long long)D, rel);
        }
      }
  }
  if (csv) std::fclose(csv);
  return 0;
}

// `bench peak`: the fp32 FMA peak on the widest vectors the CPU has (posformer/core/peak.h).
Command add_peak(CLI::App* bench) {
  auto* app = bench->add_subcommand(
      "peak", "fp32 FMA peak, GFLOP/s, on the widest vector ISA the CPU has (runtime dispatch)");
  struct PeakOpts {
    int threads = 0, reps = 5;
    bool json = false, bf16 = false;
  };
  auto o = std::make_shared<PeakOpts>();
  app->add_flag("--bf16", o->bf16,
                "also the AVX512-BF16 dot-product peak (vdpbf16ps; 0 where the CPU lacks it), "
                "the rate of `bench attention --precision bf16`'s products");
  add_threads_option(app, o->threads);
  app->add_option("--reps", o->reps, "timed runs, best reported (default 5)")
      ->check(CLI::Range(1, 1000));
  app->add_flag("--json", o->json, "one JSON object instead of the line");
  return {app, [o] {
            set_threads(o->threads);
            const Fp32Peak p = measure_fp32_peak(num_threads(), o->reps);
            const double bf = o->bf16 ? measure_bf16_dot_peak(num_threads(), o->reps) : -1;
            if (o->json) {
              nlohmann::json j{{"gflops", p.gflops},
                               {"isa", p.isa},
                               {"lanes", p.lanes},
                               {"chains", p.chains},
                               {"threads", p.threads}};
              if (bf >= 0) j["bf16_dot_gflops"] = bf;
              std::cout << j.dump() << std::endl;
            } else {
              std::printf("%.2f %s (%d fp32 lanes x %d FMA chains x %d threads)\n", p.gflops,
                          p.isa.c_str(), p.lanes, p.chains, p.threads);
              if (bf > 0)
                std::printf(
                    "%.2f bf16 dot products (AVX512-BF16 vdpbf16ps, 12 chains x %d "
                    "threads)\n",
                    bf, p.threads);
              else if (bf == 0)
                std::printf("bf16 dot products: this CPU has no AVX512-BF16\n");
            }
            return 0;
          }};
}

}  // namespace

Command add_bench(CLI::App& root) {
  auto* bench = root.add_subcommand("bench", "micro-benchmarks");
  bench->require_subcommand(1);
  auto* app = bench->add_subcommand(
      "attention",
      "time, GFLOP/s and peak extra memory of attention variants (each case in a fresh process)");
  struct Opts {
    CaseOpts c;
    std::string variants = "softmax", seq_lens = "128,512,2048", masks = "both";
    bool forward_only = false, json = false;
    std::string precision = "f32";
    bool error = false;
    std::string sweep = "8,16,32,64,128,256", inputs = "iid,clustered,smooth", csv;
    int64_t one_T = 0;
    bool one = false;
    int threads = 0;
  };
  auto o = std::make_shared<Opts>();
  const Command peak = add_peak(bench);
  app->add_option("--variants", o->variants, "comma-separated attention types (default softmax)");
  app->add_option("--heads", o->c.H, "query heads (default 12)")->check(CLI::Range(1, 4096));
  app->add_option("--kv-heads", o->c.Hkv, "key/value heads (default: --heads)")
      ->check(CLI::Range(0, 4096));
  app->add_option("--head-dim", o->c.D, "head dim D (default 64)")->check(CLI::Range(1, 4096));
  app->add_option("--batch", o->c.B, "sequences (default 1)")->check(CLI::Range(1, 4096));
  app->add_option("--seq-lens", o->seq_lens, "comma-separated T (default 128,512,2048)");
  app->add_option("--masks", o->masks, "causal | full | both (default both)")
      ->check(CLI::IsMember({"causal", "full", "both"}));
  app->add_option("--reps", o->c.reps, "timed repetitions per case, median (default 5)")
      ->check(CLI::Range(1, 1000));
  app->add_flag("--forward-only", o->forward_only, "time the forward only");
  app->add_option("--precision", o->precision,
                  "f32 (default) or bf16: the fused softmax forward's products on bfloat16 q, k, "
                  "v and P with float32 sums (AVX512-BF16 where present, a slow portable loop "
                  "elsewhere); softmax only, implies --forward-only")
      ->check(CLI::IsMember({"f32", "bf16"}));
  app->add_flag("--json", o->json, "one JSON object per case instead of the table");
  app->add_flag("--error", o->error,
                "approximation error against exact softmax instead of timing (T default 1024)");
  app->add_option("--sweep", o->sweep,
                  "--error: comma-separated sizes of each variant's approximation (nystrom: "
                  "n_landmarks, performer: n_features; default 8,16,32,64,128,256)");
  app->add_option("--inputs", o->inputs, "--error: iid, clustered, smooth (default all)");
  app->add_option("--csv", o->csv, "--error: also write the rows to this CSV file");
  add_threads_option(app, o->threads);
  // internal: run one case in this process
  auto* one = app->add_flag("--one", o->one, "run one case (internal)");
  one->group("");
  app->add_option("--one-T", o->one_T, "")->group("");
  app->add_flag("--one-causal", o->c.causal, "")->group("");
  return {
      bench, [=]() {
        if (peak.app->parsed()) return peak.run();
        set_threads(o->threads);
        if (o->one) {
          CaseOpts c = o->c;
          c.bf16 = o->precision == "bf16";
          c.variant = o->variants, c.T = o->one_T, c.backward = !o->forward_only && !c.bf16;
          std::cout << run_case(c).dump() << std::endl;
          return 0;
        }
        std::vector<int64_t> Ts;
        const std::string seq_lens =
            o->error && app->count("--seq-lens") == 0 ? std::string("1024") : o->seq_lens;
        for (const std::string& t : split_list(seq_lens)) {
          char* end = nullptr;
          const long long v = std::strtoll(t.c_str(), &end, 10);
          PF_CHECK(end && *end == 0 && v >= 1 && v <= (1 << 20), "[bench] --seq-lens: '", t,
                   "' is not a length in 1..1048576");
          Ts.push_back(v);
        }
        const std::vector<std::string> variants = split_list(o->variants);
        const bool bf16 = o->precision == "bf16";
        if (bf16)
          for (const std::string& v : variants)
            PF_CHECK(v == "softmax",
                     "[bench] --precision bf16 applies to the fused softmax only; "
                     "--variants has '",
                     v, "'");
        PF_CHECK(!(bf16 && o->error),
                 "[bench] --precision bf16 times the forward; it does not "
                 "apply to --error");
        PF_CHECK(!variants.empty() && !Ts.empty(),
                 "[bench] --variants and --seq-lens need "
                 "at least one entry");
        if (o->error) {
          std::vector<int64_t> sizes;
          for (const std::string& t : split_list(o->sweep)) {
            char* end = nullptr;
            const long long v = std::strtoll(t.c_str(), &end, 10);
            PF_CHECK(end && *end == 0 && v >= 1 && v <= (1 << 20), "[bench] --sweep: '", t,
                     "' is not a size in 1..1048576");
            sizes.push_back(v);
          }
          return run_error(variants, Ts, sizes, split_list(o->inputs), o->c.H, o->c.D, o->csv);
        }
        std::vector<bool> masks;
        if (o->masks != "causal") masks.push_back(false);
        if (o->masks != "full") masks.push_back(true);
        int failed = 0;
        if (!o->json) {
          std::printf(
              "attention: B %lld, %lld heads (%lld kv) x D %lld, %s, %d threads, "
              "CPU: %s\n",
              (long long)o->c.B, (long long)o->c.H, (long long)(o->c.Hkv ? o->c.Hkv : o->c.H),
              (long long)o->c.D,
              bf16 ? (attention_bf16_native() ? "bf16 products (AVX512-BF16), forward only"
                                              : "bf16 products (portable loop), forward only")
                   : "fp32",
              num_threads(), cpu_features().c_str());
          std::printf("%-10s %7s %-6s %11s %9s %11s %9s %11s\n", "variant", "T", "mask",
                      "forward ms", "GFLOP/s", "backward ms", "GFLOP/s", "extra MiB");
        }
        for (const std::string& var : variants)
          for (bool causal : masks)
            for (int64_t T : Ts) {
              std::vector<std::string> args = {self_exe(),   "bench",
                                               "attention",  "--one",
                                               "--variants", var,
                                               "--one-T",    std::to_string(T),
                                               "--heads",    std::to_string(o->c.H),
                                               "--kv-heads", std::to_string(o->c.Hkv),
                                               "--head-dim", std::to_string(o->c.D),
                                               "--batch",    std::to_string(o->c.B),
                                               "--reps",     std::to_string(o->c.reps),
                                               "--threads",  std::to_string(o->threads)};
              if (causal) args.push_back("--one-causal");
              if (o->forward_only) args.push_back("--forward-only");
              if (bf16) args.insert(args.end(), {"--precision", "bf16"});
              std::string cmd;
              for (const std::string& a : args) cmd += "'" + a + "' ";
              FILE* p = ::popen(cmd.c_str(), "r");
              PF_CHECK(p, "[bench] cannot start a benchmark process");
              std::string all;
              char buf[4096];
              while (std::fgets(buf, sizeof buf, p)) all += buf;
              const int rc = ::pclose(p);
              nlohmann::json r;
              try {
                r = nlohmann::json::parse(all.substr(all.rfind('{')));
              } catch (...) {
                r = {{"variant", var},
                     {"T", T},
                     {"causal", causal},
                     {"error", str("case process failed (exit ", rc, ")")}};
              }
              failed += r.contains("error");
              if (o->json) {
                std::cout << r.dump() << std::endl;
                continue;
              }
              if (r.contains("error") || r.contains("skipped")) {
                std::printf(
                    "%-10s %7lld %-6s  %s\n", var.c_str(), (long long)T, causal ? "causal" : "full",
                    r.contains("error") ? r["error"].get<std::string>().c_str()
                                        : ("n/a: " + r["skipped"].get<std::string>()).c_str());
                continue;
              }
              std::printf(
                  "%-10s %7lld %-6s %11s %9s %11s %9s %11s\n", var.c_str(), (long long)T,
                  causal ? "causal" : "full", fmt(r, "forward_ms", "%.3f").c_str(),
                  fmt(r, "forward_gflops", "%.1f").c_str(), fmt(r, "backward_ms", "%.3f").c_str(),
                  fmt(r, "backward_gflops", "%.1f").c_str(), fmt(r, "extra_mib", "%.1f").c_str());
              std::fflush(stdout);
            }
        if (failed) std::cerr << "posformer: error: [bench] " << failed << " case(s) failed\n";
        return failed ? 1 : 0;
      }};
}

}  // namespace posformer::cli
