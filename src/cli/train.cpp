// qwenvl-adapter train: train the adapter and the tower's tail on the positions task or the query-count ablation's
// reconstruction task (stage 10, docs/training.md).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <malloc.h>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "io/checkpoint.hpp"
#include "io/safetensors_writer.hpp"
#include "stages/01_feature_input.hpp"
#include "stages/02_sincos.hpp"
#include "stages/10_training.hpp"

namespace qwenvl::cli {

namespace {
const char* kTrainHelp =
    "usage: qwenvl-adapter train --out DIR [--task positions|reconstruct] [--steps S] [--batch B] [--lr LR]\n"
    "                            [--warmup W] [--seed N] [--width E] [--heads H] [--queries Q] [--keys L]\n"
    "                            [--no-positions]\n"
    "                            [--save-every S] [--log-every S] [--until S] [--resume]\n"
    "\n"
    "Trains the adapter and the tower's tail (the readable stages, src/stages/) with AdamW (betas 0.9 and 0.98,\n"
    "weight decay 0.05), gradient-norm clipping at 1.0 and a cosine schedule with linear warm-up, from upstream's\n"
    "initialisation, on one of two tasks (docs/training.md):\n"
    "  positions    (the default) every query must give the mean of the patch features in its own cell of the key\n"
    "               grid; needs --keys >= --queries\n"
    "  reconstruct  the query-count ablation's task: the Q outputs, resized bicubically from their grid to the key\n"
    "               grid, must give back the patches: one target of one shape for every Q (--queries may exceed --keys)\n"
    "\n"
    "  --out DIR        where the checkpoint goes: DIR/adapter.safetensors (the checkpoint's tensor names: `run`,\n"
    "                   `info` and `--trace` read it), DIR/adamw-state.safetensors (the optimiser's moments) and\n"
    "                   DIR/loss.csv (step, loss, lr, grad_norm, seconds); both files rewritten atomically\n"
    "  --steps S        total steps (default 600)       --batch B   images per step (default 16)\n"
    "  --lr LR          peak learning rate (default 1e-2)   --warmup W  warm-up steps (default 50)\n"
    "  --seed N         initialisation and data (default 1)\n"
    "  --width E        E = Kv (default 32)   --heads H (default 4)   --queries Q (default 16)   --keys L (default 64)\n"
    "  --no-positions   train without the 2-D position tables (both zero)\n"
    "  --save-every S   write the checkpoint every S steps (default 100) and at the end\n"
    "  --log-every S    print a progress line every S steps (default 25)\n"
    "  --until S        stop after step S, with its checkpoint written (the schedule is still --steps long)\n"
    "  --resume         continue the run in DIR from its last checkpoint, to --steps in all: its task, seed, sizes,\n"
    "                   positions, batch, warm-up and learning rate come from the checkpoint (a flag may repeat them)\n"
    "About 5 s with the defaults. Then: qwenvl-adapter run --weights DIR/adapter.safetensors --heads H ...\n";

// The side of the square grid of `count` positions (stage 01's grid_side), as a usage error naming the flag.
std::size_t side_of(const std::string& flag, std::size_t count) {
    try {
        return grid_side(count, ("train: " + flag).c_str());
    } catch (const std::invalid_argument& e) {
        throw UsageError(e.what());
    }
}

double parse_positive(const std::string& flag, const std::string& text) {
    std::size_t used = 0;
    double value = 0.0;
    try {
        value = std::stod(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != text.size() || !(value > 0.0) || !std::isfinite(value))
        throw UsageError("train: " + flag + " takes a positive number, not '" + text + "'");
    return value;
}

// The checkpoint: every trainable tensor under its checkpoint name, and the position table the run used as
// pos_embed (zeros with --no-positions), so that `run` computes what training computed.
std::map<std::string, xt::xarray<float>> checkpoint_tensors(const AdapterWeights& w, const TowerTail& tail) {
    std::map<std::string, xt::xarray<float>> out;
    for (const auto& [name, value] : trainable_parameters(w, tail)) out[kDefaultPrefix + name] = value;
    out[std::string(kDefaultPrefix) + "attn_pool.pos_embed"] = w.pos_embed;
    return out;
}

std::map<std::string, xt::xarray<float>> optimiser_tensors(const AdamW& opt) {
    std::map<std::string, xt::xarray<float>> out;
    for (const auto& [name, value] : opt.m) out["m." + name] = value;
    for (const auto& [name, value] : opt.v) out["v." + name] = value;
    return out;
}

// `meta`: the run's settings (seed, heads, task, positions, keys, batch, warm-up, learning rate), which --resume reads.
void save(const std::string& dir, const AdapterWeights& w, const TowerTail& tail, const AdamW& opt,
          std::map<std::string, std::string> meta) {
    meta["step"] = std::to_string(opt.step);
    meta["generator"] = "qwenvl-adapter train";
    // The optimiser's state first, then the weights: each file is replaced whole (write_safetensors_f32 renames a
    // complete temporary file), and resume checks that both come from the same step.
    write_safetensors_f32(dir + "/adamw-state.safetensors", optimiser_tensors(opt), meta);
    write_safetensors_f32(dir + "/adapter.safetensors", checkpoint_tensors(w, tail), meta);
}
}  // namespace

int train_command(const std::vector<std::string>& argv) {
    const Args args = parse_args("train", argv,
                                 {"--out", "--task", "--steps", "--batch", "--lr", "--warmup", "--seed", "--width", "--heads",
                                  "--queries", "--keys", "--save-every", "--log-every", "--until"},
                                 {"--no-positions", "--resume"});
    if (args.help) return std::printf("%s", kTrainHelp), 0;
    // Every step allocates and frees the same tensors, some of 128 KiB and more (a batch of 16 images of 64 x 32
    // features is 128 KiB). glibc's malloc would map each such block afresh and unmap it on free, and give the top of
    // its heap back to the system, so every step paid the first-touch page faults again (docs/performance.md's page
    // faults). Kept in the heap, the step reuses its memory: 300 steps at the notebooks' size fault 1,000 pages
    // instead of 163,000, and a step takes 8.6 to 10 ms instead of 13 to 15 (docs/performance.md#training).
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    const std::string dir = args.required("train", "--out");
    auto count = [&](const std::string& flag, std::size_t fallback) {
        return args.has(flag) ? parse_count("train", flag, args.get(flag)) : fallback;
    };
    const std::size_t steps = count("--steps", 600);
    std::size_t batch = count("--batch", 16), warmup = count("--warmup", 50);
    const std::size_t until = count("--until", steps);
    const std::size_t save_every = count("--save-every", 100), log_every = count("--log-every", 25);
    auto seed = static_cast<unsigned>(count("--seed", 1));
    double lr = args.has("--lr") ? parse_positive("--lr", args.get("--lr")) : 1e-2;
    bool positions = !args.flags.at("--no-positions");
    const bool resume = args.flags.at("--resume");
    if (until > steps) throw UsageError("train: --until must not exceed --steps");
    std::size_t n_keys = count("--keys", 64), grid_k = side_of("--keys", n_keys);
    std::string task = args.has("--task") ? args.get("--task") : "positions";
    if (task != "positions" && task != "reconstruct")
        throw UsageError("train: --task is positions or reconstruct, not '" + task + "'");

    AdapterWeights w;
    TowerTail tail;
    AdapterConfig c;
    AdamW optimiser;
    if (resume) {
        WeightFiles files;
        files.add(dir + "/adapter.safetensors");
        WeightFiles state;
        state.add(dir + "/adamw-state.safetensors");
        const LoadedAdapter loaded = load_adapter(files, kDefaultPrefix, std::stoul(files.metadata("heads")), true);
        w = loaded.weights;
        tail = loaded.tail;
        c = loaded.config;
        for (const auto& [name, value] : trainable_parameters(w, tail)) {
            for (const char* moment : {"m.", "v."}) {
                const TensorEntry& e = state.entry(moment + name);
                xt::xarray<float> t = xt::xarray<float>::from_shape(e.shape);
                state.read_into(moment + name, 0, t.size(), t.data());
                (moment[0] == 'm' ? optimiser.m : optimiser.v).push_back({name, t});
            }
        }
        optimiser.step = static_cast<std::size_t>(std::stoul(state.metadata("step")));
        if (files.metadata("step") != state.metadata("step"))
            throw InputError(dir, "adapter.safetensors (step " + files.metadata("step") + ") and adamw-state.safetensors (step " +
                                      state.metadata("step") + ") are from different steps");
        seed = static_cast<unsigned>(std::stoul(files.metadata("seed")));
        const std::string saved_task = files.metadata("task");
        if (args.has("--task") && task != saved_task)
            throw UsageError("train: the run in " + dir + " trains the " + saved_task + " task, not " + task);
        task = saved_task;
        positions = files.metadata("positions") == "yes";
        if (args.flags.at("--no-positions") && positions)
            throw UsageError("train: the run in " + dir + " trains with the position tables; leave out --no-positions");
        // The run's keys, batch, warm-up and learning rate come from its checkpoint; a flag may repeat them.
        auto from_checkpoint = [&](const std::string& flag, const std::string& key, auto& value, auto parse) {
            const std::string text = files.metadata(key);
            const auto saved = parse(text);
            if (args.has(flag) && value != saved)
                throw UsageError("train: the run in " + dir + " has " + flag + " " + text + "; give the same or leave it out");
            value = saved;
        };
        auto as_count = [](const std::string& flag) {
            return [flag](const std::string& text) { return parse_count("train", flag, text); };
        };
        from_checkpoint("--keys", "keys", n_keys, as_count("--keys"));
        grid_k = side_of("--keys", n_keys);
        from_checkpoint("--batch", "batch", batch, as_count("--batch"));
        from_checkpoint("--warmup", "warmup", warmup, as_count("--warmup"));
        from_checkpoint("--lr", "lr", lr, [](const std::string& text) { return parse_positive("--lr", text); });
        if (optimiser.step >= steps) throw UsageError("train: the run in " + dir + " is already at step " +
                                                      std::to_string(optimiser.step) + " of --steps " + std::to_string(steps));
    } else {
        c.embed_dim = c.kv_dim = count("--width", 32);
        c.num_heads = count("--heads", 4);
        c.n_queries = count("--queries", 16);
        c.grid_q = side_of("--queries", c.n_queries);
        if (c.embed_dim % 4 != 0) throw UsageError("train: --width must be divisible by 4 (the sin-cos table)");
        if (c.embed_dim % c.num_heads != 0) throw UsageError("train: --heads must divide --width");
        init_upstream(w, tail, c, seed);
        w.pos_embed = positions ? sincos_2d(c.embed_dim, c.grid_q) : Matrix(xt::zeros<float>({c.n_queries, c.embed_dim}));
    }
    if (warmup >= steps) throw UsageError("train: --warmup must be smaller than --steps");
    optimiser.config.lr = lr;
    optimiser.config.warmup_steps = warmup;
    optimiser.config.total_steps = steps;
    char lr_text[32];
    std::snprintf(lr_text, sizeof lr_text, "%.17g", lr);
    const std::map<std::string, std::string> settings = {
        {"task", task}, {"seed", std::to_string(seed)}, {"heads", std::to_string(c.num_heads)},
        {"positions", positions ? "yes" : "no"}, {"keys", std::to_string(n_keys)}, {"batch", std::to_string(batch)},
        {"warmup", std::to_string(warmup)}, {"lr", lr_text}};
    if (task == "positions" && grid_k < c.grid_q)
        throw UsageError("train: --keys must be at least --queries (one cell per query)");
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (!std::filesystem::is_directory(dir)) throw InputError(dir, "cannot be made a folder (" + ec.message() + ")");

    std::ofstream log(dir + "/loss.csv", resume ? std::ios::app : std::ios::trunc);
    if (!log) throw InputError(dir + "/loss.csv", "cannot write");
    if (!resume) log << "step,loss,lr,grad_norm,seconds\n";
    std::printf("training on the %s task %s the 2-D position tables: E = %zu, H = %zu, %zu queries, %zu keys, "
                "batch %zu, steps %zu to %zu\n", task.c_str(), positions ? "with" : "WITHOUT", c.embed_dim, c.num_heads, c.n_queries,
                n_keys, batch, optimiser.step, steps);
    // The reconstruct task's read-out, (L, Q), made once for the run.
    const Matrix readout = task == "reconstruct" ? readout_matrix(c.grid_q, grid_k) : Matrix();
    const auto start = std::chrono::steady_clock::now();
    const std::size_t first = optimiser.step;
    while (optimiser.step < until) {
        const std::size_t step = optimiser.step;
        std::mt19937 rng(seed * 1000003u + static_cast<unsigned>(step));  // the batch of a step, also on resume
        StepResult r;
        if (task == "positions") {
            const TaskBatch b = positions_task(batch, grid_k, c.grid_q, c.embed_dim, rng);
            r = train_step(w, tail, c, b.x, b.target, optimiser);
        } else {
            const TaskBatch b = reconstruct_task(batch, grid_k, c.embed_dim, rng);
            r = readout_train_step(w, tail, c, b.x, readout, b.target, optimiser);
        }
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        log << step << ',' << r.loss << ',' << r.lr << ',' << r.grad_norm << ',' << seconds << '\n';
        if (optimiser.step % log_every == 0 || optimiser.step == until) {
            const double rate = static_cast<double>(optimiser.step - first) / seconds;
            std::printf("step %5zu/%zu  loss %.5f  lr %.2e  grad norm %.3f  %.1f steps/s  %.0f s left\n",
                        optimiser.step, steps, r.loss, r.lr, r.grad_norm, rate,
                        static_cast<double>(until - optimiser.step) / rate);
            std::fflush(stdout);
        }
        if (optimiser.step % save_every == 0 || optimiser.step == until) {
            log.flush();
            save(dir, w, tail, optimiser, settings);
        }
    }
    std::printf("wrote %s/adapter.safetensors, %s/adamw-state.safetensors and %s/loss.csv\n", dir.c_str(), dir.c_str(),
                dir.c_str());
    return 0;
}

}  // namespace qwenvl::cli
