#!/usr/bin/python3
"""`train` killed at random moments, resumed each time, ends where an uninterrupted run ends, byte for byte.

    /usr/bin/python3 tests/training/kill_and_resume.py build/release/qwenvl-adapter [--kills 30] [--seed 1]

Run by ctest (tests/CMakeLists.txt), in a temporary folder under TMPDIR (the build folder there). Three parts:
  1. SIGTERM, then SIGINT, during a run: each stops `train` after the step under way with exit status 130, a
     one-line message naming the signal and the step, and a checkpoint of that step; --resume then finishes the run.
  2. SIGKILL at --kills random moments (start-up, a step, a save: the checkpoint is written every step), each
     followed by `--resume` (or, when the kill came before the first checkpoint, a new run with --force). No resume
     may fail.
  3. Both runs' checkpoints equal the uninterrupted run's byte for byte; every loss.csv holds each step once, in
     order; no temporary file is left.
The random moments come from --seed; a failure prints it.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

RUN = ["--steps", "200", "--warmup", "10", "--width", "32", "--heads", "4", "--queries", "16", "--keys", "64",
       "--batch", "8", "--log-every", "1"]


def fail(message, seed):
    print("FAILED (seed %d): %s" % (seed, message))
    sys.exit(1)


def start(cli, folder, extra, log):
    return subprocess.Popen([cli, "train", "--out", folder] + extra, stdout=log, stderr=subprocess.STDOUT)


def checkpoint_step(path):
    """The step recorded in a safetensors checkpoint's metadata (its JSON header)."""
    import json
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return int(json.loads(f.read(size))["__metadata__"]["step"])


def loss_steps(folder):
    with open(os.path.join(folder, "loss.csv")) as f:
        rows = f.read().splitlines()
    return [int(row.split(",")[0]) for row in rows[1:]]


def check_folder(folder, straight, steps, what, seed):
    with open(os.path.join(folder, "adapter.safetensors"), "rb") as f:
        if f.read() != straight:
            fail(what + ": the final checkpoint differs from the uninterrupted run's", seed)
    if loss_steps(folder) != list(range(steps)):
        fail(what + ": loss.csv does not hold steps 0 to %d once each: %s" % (steps - 1, loss_steps(folder)), seed)
    left = [name for name in os.listdir(folder) if ".partial-" in name]
    if left:
        fail(what + ": temporary files left: %s" % left, seed)


def wait_for_steps(path, count, process):
    """Until the run's output (one line a step) has shown `count` steps, or the process has ended."""
    while process.poll() is None:
        with open(path) as f:
            if f.read().count("\nstep ") >= count:
                return
        time.sleep(0.002)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("cli")
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    steps = int(RUN[RUN.index("--steps") + 1])
    with tempfile.TemporaryDirectory() as tmp:
        log = open(os.path.join(tmp, "train.log"), "w+")
        began = time.monotonic()
        straight = os.path.join(tmp, "straight")
        if subprocess.run([args.cli, "train", "--out", straight] + RUN + ["--save-every", "1"], stdout=log,
                          stderr=subprocess.STDOUT).returncode != 0:
            fail("the uninterrupted run failed", args.seed)
        whole = time.monotonic() - began
        with open(os.path.join(straight, "adapter.safetensors"), "rb") as f:
            straight_bytes = f.read()
        # a start-up: a run of one step
        began = time.monotonic()
        subprocess.run([args.cli, "train", "--out", os.path.join(tmp, "one")] + RUN + ["--until", "1"], stdout=log,
                       stderr=subprocess.STDOUT)
        startup = time.monotonic() - began
        step_time = whole / steps

        # 1. SIGTERM and SIGINT finish the step, save, and exit 130.
        stopped = os.path.join(tmp, "stopped")
        for number, (sig, name) in enumerate(((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT"))):
            path = os.path.join(tmp, name + ".log")
            out = open(path, "w+")
            process = start(args.cli, stopped, (RUN if number == 0 else ["--resume"]) + ["--save-every", "1000"], out)
            wait_for_steps(path, 3, process)
            process.send_signal(sig)
            code = process.wait()
            out.seek(0)
            text = out.read()
            if code != 130:
                fail("%s: exit status %s, not 130; output:\n%s" % (name, code, text), args.seed)
            step = checkpoint_step(os.path.join(stopped, "adapter.safetensors"))
            if ("stopped by %s after step %d, its checkpoint written" % (name, step)) not in text:
                fail("%s: no message naming the signal and step %d:\n%s" % (name, step, text), args.seed)
            if loss_steps(stopped) != list(range(step)):
                fail("%s: loss.csv does not end at the checkpoint's step %d" % (name, step), args.seed)
        if subprocess.run([args.cli, "train", "--out", stopped, "--resume"], stdout=log,
                          stderr=subprocess.STDOUT).returncode != 0:
            fail("the resume after the signals failed", args.seed)
        check_folder(stopped, straight_bytes, steps, "after SIGTERM and SIGINT", args.seed)

        # 2. SIGKILL at random moments, a resume after each. The moments follow the run's own progress: every sixth
        # kill comes at a random moment of the start-up; the others after the process has shown 1 to 4 more steps, at
        # a random moment of the step (its save included) that follows. On a loaded machine this script may see the
        # lines late and the run may get further, or end: a run that ends is checked like the last, and the kills
        # go on in a new run, until there have been --kills of them.
        kills, runs = 0, 0
        moments, reached = [], []  # each kill's delay after its trigger, and the checkpoint's step after it
        killed = None              # the run's folder, None between runs
        while kills < args.kills or killed is not None:
            if killed is None:
                killed = os.path.join(tmp, "killed-%d" % runs)
            checkpoint = os.path.join(killed, "adapter.safetensors")
            has_checkpoint = os.path.exists(checkpoint)
            done = has_checkpoint and checkpoint_step(checkpoint) == steps   # killed after its last save
            if not done and kills >= args.kills:  # the last run: resumed to its end
                final = subprocess.run([args.cli, "train", "--out", killed, "--resume", "--save-every", "1"],
                                       capture_output=True, text=True)
                if final.returncode != 0:
                    fail("the last resume failed: " + final.stderr, args.seed)
                done = True
            if done:
                check_folder(killed, straight_bytes, steps, "after %d kills" % kills, args.seed)
                killed, runs = None, runs + 1
                continue
            extra = (["--resume", "--log-every", "1"] if has_checkpoint else RUN + ["--force"]) + ["--save-every", "1"]
            process = subprocess.Popen([args.cli, "train", "--out", killed] + extra, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, bufsize=0)  # unbuffered: each line as it comes
            lines = []
            if kills % 6 == 0:
                moment = rng.uniform(0.0, startup)
            else:
                wanted, seen = rng.randint(1, 4), 0
                while seen < wanted:
                    line = process.stdout.readline()
                    if not line:
                        break
                    lines.append(line.decode())
                    seen += line.startswith(b"step ")
                moment = rng.uniform(0.0, step_time)
            time.sleep(moment)
            if process.poll() is None:
                process.kill()
                kills += 1
                moments.append(moment)
            lines.append(process.stdout.read().decode())
            process.wait()
            process.stdout.close()
            if process.returncode not in (0, -signal.SIGKILL):
                fail("train failed (status %s) after %d kills; its output:\n%s" % (process.returncode, kills,
                                                                                 "".join(lines)), args.seed)
            if os.path.exists(checkpoint):
                reached.append(checkpoint_step(checkpoint))
        if len(set(reached)) < args.kills // 3:
            fail("the kills left checkpoints of only %d different steps: they came too early to test a resume"
                 % len(set(reached)), args.seed)
        print("ok: SIGTERM and SIGINT stopped and resumed; %d kills (%.1f to %.1f ms after a start or a step, the whole "
              "run %.2f s), each resumed; checkpoints of %d different steps from %d to %d between them; %d killed "
              "run(s), each finished equal to the uninterrupted run's checkpoint (seed %d)"
              % (kills, 1000 * min(moments), 1000 * max(moments), whole, len(set(reached)), min(reached), max(reached),
                 runs, args.seed))


if __name__ == "__main__":
    main()
