// qwenvl-adapter train: train the adapter and the tower's tail on the positions task or the query-count ablation's
// reconstruction task (stage 10, docs/training.md).
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include "cli/args.hpp"
#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "io/checkpoint.hpp"
#include "io/safetensors_writer.hpp"
#include "stages/01_feature_input.hpp"
#include "stages/02_sincos.hpp"
#include "fast/train.hpp"
#include "stages/10_training.hpp"

namespace qwenvl::cli {

namespace {
const char* kTrainHelp =
    "usage: qwenvl-adapter train --out DIR [--task positions|reconstruct] [--steps S] [--batch B] [--lr LR]\n"
    "                            [--min-lr LR] [--warmup W] [--seed N] [--width E] [--kv Kv] [--heads H]\n"
    "                            [--queries Q] [--keys L] [--no-positions] [--save-every S] [--log-every S] [--until S]\n"
    "                            [--resume] [--force] [--readable]\n"
    "\n"
    "Trains the adapter and the tower's tail (the fast path, src/fast/) with the paper's optimiser (Qwen-VL,\n"
    "appendix: AdamW with betas 0.9 and 0.98, eps 1e-6, weight decay 0.05, gradient-norm clipping at 1.0, a linear\n"
    "warm-up, then a cosine decay to a minimum learning rate), from upstream's initialisation, on one of two tasks\n"
    "(docs/training.md):\n"
    "  positions    (the default) every query must give the mean of the patch features in its own cell of the key\n"
    "               grid; needs --keys >= --queries\n"
    "  reconstruct  the query-count ablation's task: the Q outputs, resized bicubically from their grid to the key\n"
    "               grid, must give back the patches: one target of one shape for every Q (--queries may exceed --keys)\n"
    "\n"
    "  --out DIR        the run's folder: DIR/adapter.safetensors, the checkpoint (the weights under the checkpoint's\n"
    "                   names, which `run`, `info` and `--trace` read, with the optimiser's moments and the run's\n"
    "                   settings: one file, replaced whole and synced to the disk at each save) and DIR/loss.csv\n"
    "                   (step, loss, lr, grad_norm, seconds of training, resumed sessions added up). A new run\n"
    "                   needs an empty or new DIR, or --force\n"
    "  --steps S        total steps (default 600)       --batch B   images per step (default 16)\n"
    "  --lr LR          peak learning rate (default 1e-2)   --warmup W  warm-up steps (default 50)\n"
    "  --min-lr LR      where the cosine ends (default LR / 200, the paper's stage-1 ratio 1e-6 / 2e-4)\n"
    "  --seed N         initialisation and data (default 1)\n"
    "  --width E        E (default 32)   --heads H (default 4)   --queries Q (default 16)   --keys L (default 64)\n"
    "  --kv Kv          the features' width (default E: no kv_proj); otherwise kv_proj (E, Kv) is trained too, and\n"
    "                   the target's Kv channels are repeated across E (channel c is channel c mod Kv). Qwen-VL's\n"
    "                   size: --width 4096 --kv 1664 --heads 32 --queries 256 --keys 1024\n"
    "  --no-positions   train without the 2-D position tables (both zero)\n"
    "  --save-every S   write the checkpoint every S steps (default 100) and at the end\n"
    "  --log-every S    print a progress line every S steps (default 25)\n"
    "  --until S        stop after step S, with its checkpoint written (the schedule is still --steps long)\n"
    "  --resume         continue the run in DIR from its checkpoint: every setting above except --save-every,\n"
    "                   --log-every and --until comes from the checkpoint; a flag may repeat one, and a flag that\n"
    "                   differs is refused. loss.csv is cut back to the checkpoint's step\n"
    "  --force          start a new run in DIR even though DIR holds a run (its checkpoint and log are replaced)\n"
    "  --readable       run the readable stages (src/stages/) instead of the fast path: the same step, within float32\n"
    "                   rounding, many times slower; either may resume the other's run\n"
    "Ctrl-C (SIGINT) or SIGTERM: the step under way finishes, the checkpoint is written, exit status 130.\n"
    "About 3 s with the defaults. Then: qwenvl-adapter run --weights DIR/adapter.safetensors --input X.npy ...\n";

// The settings a run's checkpoint records (its metadata), by flag; --resume takes them from there.
const std::vector<std::pair<std::string, std::string>> kSettings = {
    {"--task", "task"},   {"--seed", "seed"},   {"--width", "width"},   {"--kv", "kv"},   {"--heads", "heads"},
    {"--queries", "queries"}, {"--keys", "keys"}, {"--no-positions", "positions"}, {"--batch", "batch"},
    {"--warmup", "warmup"}, {"--lr", "lr"},     {"--min-lr", "min_lr"}, {"--steps", "steps"}};

// The side of the square grid of `count` positions (stage 01's grid_side), as a usage error naming the flag.
std::size_t side_of(const std::string& flag, std::size_t count) {
    try {
        return grid_side(count, ("train: " + flag).c_str());
    } catch (const std::invalid_argument& e) {
        throw UsageError(e.what());
    }
}

// A number for `flag`: positive, or also 0 when `zero_ok`; UsageError otherwise.
double parse_number(const std::string& flag, const std::string& text, bool zero_ok = false) {
    std::size_t used = 0;
    double value = 0.0;
    try {
        value = std::stod(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != text.size() || !(value > 0.0 || (zero_ok && value == 0.0)) || !std::isfinite(value))
        throw UsageError("train: " + flag + " takes a " + (zero_ok ? "non-negative" : "positive") + " number, not '" +
                         text + "'");
    return value;
}

std::string number_text(double value) {
    char text[32];
    std::snprintf(text, sizeof text, "%.17g", value);
    return text;
}

// A flag's value as the checkpoint records it, so that "1e-2" and "0.01" are the same setting.
std::string canonical(const Args& args, const std::string& flag) {
    if (flag == "--no-positions") return "no";
    const std::string text = args.get(flag);
    if (flag == "--task") {
        if (text != "positions" && text != "reconstruct")
            throw UsageError("train: --task is positions or reconstruct, not '" + text + "'");
        return text;
    }
    if (flag == "--lr") return number_text(parse_number(flag, text));
    if (flag == "--min-lr") return number_text(parse_number(flag, text, true));
    const std::size_t value = parse_count("train", flag, text);
    if (flag == "--seed" && value > 4294967295u)  // the generators take 32 bits: a larger seed would wrap around
        throw UsageError("train: --seed takes a whole number from 1 to 4294967295, not '" + text + "'");
    return std::to_string(value);
}

bool given(const Args& args, const std::string& flag) {
    return flag == "--no-positions" ? args.flags.at(flag) : args.has(flag);
}

// The checkpoint: every trainable tensor under its checkpoint name, the position table the run used as pos_embed
// (zeros with --no-positions), so that `run` computes what training computed, and AdamW's moments as
// adamw.m.<name> and adamw.v.<name> (names no reader of the adapter looks for).
std::map<std::string, xt::xarray<float>> checkpoint_tensors(const AdapterWeights& w, const TowerTail& tail,
                                                            const AdamW& opt) {
    std::map<std::string, xt::xarray<float>> out;
    for (const auto& [name, value] : trainable_parameters(w, tail)) out[kDefaultPrefix + name] = value;
    out[std::string(kDefaultPrefix) + "attn_pool.pos_embed"] = w.pos_embed;
    for (const auto& [name, value] : opt.m) out["adamw.m." + name] = value;
    for (const auto& [name, value] : opt.v) out["adamw.v." + name] = value;
    return out;
}

// One file, written whole beside its old self, synced, then renamed over it (write_atomically): a kill at any
// moment leaves the previous checkpoint or this one, never a mixture.
void save(const std::string& dir, const AdapterWeights& w, const TowerTail& tail, const AdamW& opt,
          std::map<std::string, std::string> meta) {
    meta["step"] = std::to_string(opt.step);
    meta["generator"] = "qwenvl-adapter train";
    write_safetensors_f32(dir + "/adapter.safetensors", checkpoint_tensors(w, tail, opt), meta);
}

// A killed run's temporary files (NAME.partial-PID, write_atomically's) in DIR.
void remove_partial_files(const std::string& dir) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
        const std::string name = entry.path().filename().string();
        if (name.find(".partial-") != std::string::npos) std::filesystem::remove(entry.path(), ec);
    }
}

// loss.csv holds a row per step done; after a kill, rows of steps past the checkpoint. They are done again on
// resume, so the log is cut back to its rows of steps 0, 1, ... up to the checkpoint's `step` (a row cut short by the
// kill, or anything after the steps stop following one another, goes too). Returns the number of rows kept, and in
// `seconds` the last kept row's time (0 when none), from which the resumed run's times go on.
std::size_t cut_loss_log(const std::string& path, std::size_t step, double& seconds) {
    seconds = 0.0;
    const std::string header = "step,loss,lr,grad_norm,seconds";
    std::ifstream in(path);
    std::string text = header + "\n", line;
    std::size_t next = 0;
    if (std::getline(in, line) && line != header) in.seekg(0);  // a log without its header: every line is a row
    while (next < step && std::getline(in, line)) {
        std::size_t used = 0, row_step = 0;
        try {
            row_step = std::stoul(line, &used);
        } catch (const std::exception&) {
            break;
        }
        if (used >= line.size() || line[used] != ',' || row_step != next || std::count(line.begin(), line.end(), ',') != 4)
            break;
        text += line + "\n";
        ++next;
        try {
            seconds = std::stod(line.substr(line.rfind(',') + 1));
        } catch (const std::exception&) {
            seconds = 0.0;
        }
    }
    write_atomically(path, [&](std::ofstream& out) { out << text; });
    return next;
}

// One train at a time in a folder: a lock on the folder itself (flock(2), released when the process ends, however
// it ends), so that a second run cannot remove the first one's temporary files or write over its checkpoint.
void lock_folder(const std::string& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw InputError(dir, "cannot be opened as a folder");
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0)
        throw InputError(dir, "another train is running in this folder");
    // the descriptor stays open, and the lock held, until the process ends
}

// The files a train run writes in its folder: a new run may start over them without --force when no checkpoint is
// among them (a run stopped before its first checkpoint: nothing to resume, nothing to lose).
bool only_a_runs_leftovers(const std::string& dir) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
        const std::string name = entry.path().filename().string();
        if (name != "loss.csv" && name.find(".partial-") == std::string::npos) return false;
    }
    return true;
}

// SIGINT and SIGTERM ask the loop to stop after the step under way; the handlers are the default ones again when
// this goes.
volatile std::sig_atomic_t stop_signal = 0;
struct StopOnSignal {
    struct sigaction old_int {}, old_term {};
    StopOnSignal() {
        stop_signal = 0;
        struct sigaction ask {};
        ask.sa_handler = [](int signal) { stop_signal = signal; };
        sigemptyset(&ask.sa_mask);
        sigaction(SIGINT, &ask, &old_int);
        sigaction(SIGTERM, &ask, &old_term);
    }
    ~StopOnSignal() {
        sigaction(SIGINT, &old_int, nullptr);
        sigaction(SIGTERM, &old_term, nullptr);
    }
};
}  // namespace

int train_command(const std::vector<std::string>& argv) {
    std::vector<std::string> options = {"--out", "--save-every", "--log-every", "--until"};
    for (const auto& [flag, key] : kSettings)
        if (flag != "--no-positions") options.push_back(flag);
    const Args args = parse_args("train", argv, options, {"--no-positions", "--resume", "--force", "--readable"});
    if (args.help) return std::printf("%s", kTrainHelp), 0;
    // Every step allocates and frees the same tensors, some of 128 KiB and more (a batch of 16 images of 64 x 32
    // features is 128 KiB): kept in the heap (keep_freed_memory), the step reuses its memory: 300 steps at the
    // notebooks' size fault 1,000 pages instead of 163,000, and a step of two images at E = 4096, 256 queries, 1024
    // keys takes 3.9 s instead of 11.6 (medians of steps 2 to 6; docs/performance.md#training).
    keep_freed_memory();
    const std::string dir = args.required("train", "--out");
    const std::string checkpoint = dir + "/adapter.safetensors";
    const bool resume = args.flags.at("--resume");
    const bool readable = args.flags.at("--readable");
    if (resume && args.flags.at("--force")) throw UsageError("train: --resume continues a run, --force replaces it: give one");

    // The run's settings, as the checkpoint records them: from the flags and the defaults for a new run, from the
    // checkpoint on --resume (where a flag that says otherwise is refused).
    std::map<std::string, std::string> settings;
    WeightFiles files;
    if (resume) {
        if (!std::filesystem::exists(checkpoint))
            throw InputError(checkpoint, std::filesystem::exists(dir + "/loss.csv")
                                             ? "not found: the run was stopped before its first checkpoint; start it again without --resume"
                                             : "not found: there is no run to resume");
        files.add(checkpoint);
        for (const auto& [flag, key] : kSettings) {
            std::string saved;
            try {
                saved = files.metadata(key);
            } catch (const InputError&) {
                if (key != "kv") throw InputError(checkpoint, "records no '" + key + "' setting: not a checkpoint of this train");
                saved = settings.at("width");  // a run from before --kv: its features were E wide
            }
            // the recorded value, checked as the flag would be: a damaged checkpoint is named, not blamed on a flag
            Args recorded;
            if (flag == "--no-positions") recorded.flags[flag] = true;
            else recorded.values[flag] = {saved};
            try {
                if (flag == "--no-positions" ? saved != "yes" && saved != "no" : canonical(recorded, flag) != saved)
                    throw UsageError("not in the form train writes");
            } catch (const UsageError&) {
                throw InputError(checkpoint, "records " + key + " '" + saved + "', which train does not write");
            }
            if (given(args, flag) && canonical(args, flag) != saved)
                throw UsageError("train: the run in " + dir + (flag == "--no-positions"
                                                                   ? std::string(" trains with the position tables; leave out --no-positions")
                                                                   : " has " + flag + " " + saved + "; give the same or leave it out"));
            settings[key] = saved;
        }
    } else {
        const std::map<std::string, std::string> defaults = {
            {"task", "positions"}, {"seed", "1"}, {"width", "32"}, {"heads", "4"}, {"queries", "16"}, {"keys", "64"},
            {"positions", "yes"}, {"batch", "16"}, {"warmup", "50"}, {"lr", number_text(1e-2)}, {"steps", "600"}};
        for (const auto& [flag, key] : kSettings)
            if (given(args, flag)) settings[key] = canonical(args, flag);
            else if (key != "min_lr" && key != "kv") settings[key] = defaults.at(key);
        if (!settings.count("kv")) settings["kv"] = settings["width"];
        if (!settings.count("min_lr")) settings["min_lr"] = number_text(std::stod(settings["lr"]) / 200.0);
    }
    auto count = [&](const std::string& key) { return parse_count("train", "the " + key, settings.at(key)); };
    const std::string task = settings.at("task");
    const auto seed = static_cast<unsigned>(count("seed"));
    const bool positions = settings.at("positions") == "yes";
    const std::size_t steps = count("steps"), batch = count("batch"), warmup = count("warmup");
    const std::size_t n_keys = count("keys"), grid_k = side_of("--keys", n_keys);
    const double lr = std::stod(settings.at("lr")), min_lr = std::stod(settings.at("min_lr"));
    const std::size_t until = args.has("--until") ? parse_count("train", "--until", args.get("--until")) : steps;
    const std::size_t save_every = args.has("--save-every") ? parse_count("train", "--save-every", args.get("--save-every")) : 100;
    const std::size_t log_every = args.has("--log-every") ? parse_count("train", "--log-every", args.get("--log-every")) : 25;
    // A combination of settings that cannot run: the flags' mistake for a new run, the checkpoint's for a resumed one.
    auto refuse = [&](const std::string& problem) {
        if (resume) throw InputError(checkpoint, "records settings that cannot run: " + problem);
        throw UsageError("train: " + problem);
    };
    if (until > steps) throw UsageError("train: --until must not exceed --steps");
    if (warmup >= steps) refuse("--warmup must be smaller than --steps");
    if (min_lr > lr) refuse("--min-lr must not exceed --lr");

    AdapterConfig c;
    c.embed_dim = count("width");
    c.kv_dim = count("kv");
    c.num_heads = count("heads");
    c.n_queries = count("queries");
    c.grid_q = side_of("--queries", c.n_queries);
    if (c.embed_dim % 4 != 0) refuse("--width must be divisible by 4 (the sin-cos table)");
    if (c.embed_dim % c.num_heads != 0) refuse("--heads must divide --width");
    if (task == "positions" && grid_k < c.grid_q) refuse("--keys must be at least --queries (one cell per query)");

    AdapterWeights w;
    TowerTail tail;
    AdamW optimiser;
    if (resume) {
        const LoadedAdapter loaded = load_adapter(files, kDefaultPrefix, c.num_heads, true);
        if (loaded.config.embed_dim != c.embed_dim || loaded.config.n_queries != c.n_queries || loaded.config.kv_dim != c.kv_dim)
            throw InputError(checkpoint, "its tensors' shapes do not match its recorded width, kv and queries");
        w = loaded.weights;
        tail = loaded.tail;
        c = loaded.config;
        for (const auto& [name, value] : trainable_parameters(w, tail)) {
            for (const char* moment : {"m.", "v."}) {
                const std::string stored = std::string("adamw.") + moment + name;
                const TensorEntry& e = files.entry(stored);
                if (e.shape != shape_of(value)) throw InputError(checkpoint, stored + " does not have its parameter's shape");
                xt::xarray<float> t = xt::xarray<float>::from_shape(e.shape);
                files.read_into(stored, 0, t.size(), t.data());
                (moment[0] == 'm' ? optimiser.m : optimiser.v).push_back({name, t});
            }
        }
        optimiser.step = parse_count("train", "the checkpoint's step", files.metadata("step"));
        if (optimiser.step >= steps)
            throw UsageError("train: the run in " + dir + " is already at step " + std::to_string(optimiser.step) + " of " +
                             std::to_string(steps));
        if (optimiser.step >= until)
            throw UsageError("train: the run in " + dir + " is already at step " + std::to_string(optimiser.step) +
                             "; --until must be later");
    } else {
        std::error_code ec;
        if (std::filesystem::is_directory(dir) && !std::filesystem::is_empty(dir, ec) && !args.flags.at("--force") &&
            !only_a_runs_leftovers(dir))
            throw UsageError("train: " + dir + " is not empty; continue its run with --resume, or replace it with --force");
        init_upstream(w, tail, c, seed);
        w.pos_embed = positions ? sincos_2d(c.embed_dim, c.grid_q) : Matrix(xt::zeros<float>({c.n_queries, c.embed_dim}));
    }
    optimiser.config.lr = lr;
    optimiser.config.min_lr = min_lr;
    optimiser.config.warmup_steps = warmup;
    optimiser.config.total_steps = steps;
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (!std::filesystem::is_directory(dir)) throw InputError(dir, "cannot be made a folder (" + ec.message() + ")");
    lock_folder(dir);
    remove_partial_files(dir);  // a killed run's

    const std::string log_path = dir + "/loss.csv";
    double seconds_before = 0.0;  // the training time the log's kept rows took, in earlier sessions of the run
    if (resume) {
        const std::size_t rows = cut_loss_log(log_path, optimiser.step, seconds_before);
        if (rows < optimiser.step)
            std::fprintf(stderr, "qwenvl-adapter: train: warning: %s holds the rows of steps 0 to %zu only; the rows up to "
                                 "the checkpoint's step %zu are lost, and the log goes on from there\n",
                         log_path.c_str(), rows == 0 ? 0 : rows - 1, optimiser.step);
    }
    std::ofstream log(log_path, resume ? std::ios::app : std::ios::trunc);
    if (!log) throw InputError(log_path, "cannot write");
    if (!resume) log << "step,loss,lr,grad_norm,seconds\n";
    std::printf("training on the %s task %s the 2-D position tables: E = %zu, %sH = %zu, %zu queries, %zu keys, "
                "batch %zu, steps %zu to %zu\n", task.c_str(), positions ? "with" : "WITHOUT", c.embed_dim,
                c.kv_dim == c.embed_dim ? "" : ("Kv = " + std::to_string(c.kv_dim) + ", ").c_str(), c.num_heads, c.n_queries,
                n_keys, batch, optimiser.step, steps);
    std::fflush(stdout);
    // The reconstruct task's read-out, (L, Q), made once for the run.
    const Matrix readout = task == "reconstruct" ? readout_matrix(c.grid_q, grid_k) : Matrix();
    const StopOnSignal stop;
    const auto start = std::chrono::steady_clock::now();
    const std::size_t first = optimiser.step;
    while (optimiser.step < until) {
        const std::size_t step = optimiser.step;
        std::mt19937 rng(seed * 1000003u + static_cast<unsigned>(step));  // the batch of a step, also on resume
        StepResult r;
        if (task == "positions") {
            const TaskBatch b = positions_task(batch, grid_k, c.grid_q, c.kv_dim, rng);
            const Tensor3 target = tile_channels(b.target, c.embed_dim);
            r = readable ? train_step(w, tail, c, b.x, target, optimiser) : fast::train_step(w, tail, c, b.x, target, optimiser);
        } else {
            const TaskBatch b = reconstruct_task(batch, grid_k, c.kv_dim, rng);
            const Tensor3 target = tile_channels(b.target, c.embed_dim);
            r = readable ? readout_train_step(w, tail, c, b.x, readout, target, optimiser)
                         : fast::readout_train_step(w, tail, c, b.x, readout, target, optimiser);
        }
        if (!std::isfinite(r.loss) || !std::isfinite(r.grad_norm)) {
            log.flush();
            throw InputError(dir, "the loss became " + std::string(std::isnan(r.loss) ? "NaN" : "infinite") + " at step " +
                                      std::to_string(step) + " (a learning rate too high?); the checkpoint of the last " +
                                      "saved step is kept, and nothing of this step is written");
        }
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        log << step << ',' << r.loss << ',' << r.lr << ',' << r.grad_norm << ',' << seconds_before + seconds << '\n';
        if (optimiser.step % log_every == 0 || optimiser.step == until) {
            const double rate = static_cast<double>(optimiser.step - first) / seconds;
            std::printf("step %5zu/%zu  loss %.5f  lr %.2e  grad norm %.3f  %.1f steps/s  %.0f s left\n",
                        optimiser.step, steps, r.loss, r.lr, r.grad_norm, rate,
                        static_cast<double>(until - optimiser.step) / rate);
            std::fflush(stdout);
        }
        if (optimiser.step % save_every == 0 || optimiser.step == until || stop_signal) {
            log.flush();
            save(dir, w, tail, optimiser, settings);
        }
        if (stop_signal) {
            std::fprintf(stderr, "qwenvl-adapter: train: stopped by %s after step %zu, its checkpoint written; continue "
                                 "with: qwenvl-adapter train --out %s --resume\n",
                         stop_signal == SIGINT ? "SIGINT" : "SIGTERM", optimiser.step, dir.c_str());
            return 130;
        }
    }
    std::printf("wrote %s and %s/loss.csv\n", checkpoint.c_str(), dir.c_str());
    return 0;
}

}  // namespace qwenvl::cli
