"""The course's answers exercises (tests/course/CMakeLists.txt): right answers pass, wrong ones fail with a reason.

  answers_test.py port-lab    CHECKER WORKDIR           the port lab (lesson 9): the true answers are read from the
                                                        generator that wrote the dumps (tests/reference/make_fixtures.py)
  answers_test.py query-count CHECKER WORKDIR ADAPTER   the mini-project (lesson 8): the six runs of lesson 8 made with
                                                        `train`, their answers computed here from the loss.csv files
Writes only under WORKDIR (in the build folder). Exit status 0 when every case behaves, 1 otherwise.
"""
import ast
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATOR = os.path.join(HERE, "..", "reference", "make_fixtures.py")
FAILURES = []


def run(checker, exercise, *args):
    done = subprocess.run([checker, exercise, *args], capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


def expect(what, status, out, want_status, *phrases):
    missing = [p for p in phrases if p not in out]
    if status != want_status or missing:
        FAILURES.append("%s: exit %d (expected %d), missing %s\n%s" % (what, status, want_status, missing, out))


def generator_value(name):
    """A list assigned at the top level of the generator, read without running it (no torch needed)."""
    tree = ast.parse(open(GENERATOR).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit("answers_test.py: %s not found in %s" % (name, GENERATOR))


def port_lab(checker, work):
    bugs = generator_value("PORT_LAB_BUGS")
    mysteries = generator_value("PORT_LAB_MYSTERIES")
    first_stage = {code: stage for code, stage, _, _ in bugs}
    truth = []
    for mistake in mysteries:
        code = mistake.replace("_", "-").replace("1e5", "1e-5")
        truth.append((first_stage[code], code))

    def answers_file(overrides):
        path = os.path.join(work, "port_lab.txt")
        with open(path, "w") as f:
            for n, (stage, code) in enumerate(truth, start=1):
                stage, code = overrides.get(n, (stage, code))
                f.write("mystery-%d  stage: %s  bug: %s\n" % (n, stage, code))
        return path

    stages = ["pos_q", "pos_k", "ln_q", "query_in", "q", "kv_proj", "ln_kv", "key_in", "k", "v", "scores",
              "attn_weights", "attended", "out", "ln_post", "proj"]
    for n, (stage, code) in enumerate(truth, start=1):
        exercise = "port-%d" % n
        status, out = run(checker, exercise, "--answers", answers_file({}))
        expect(exercise + " with the true answer", status, out, 0, "PASSED", "first parts at " + stage)
        for other, other_stage, _, _ in bugs:  # the right stage, every other bug
            if other == code:
                continue
            status, out = run(checker, exercise, "--answers", answers_file({n: (stage, other)}))
            expect("%s naming %s" % (exercise, other), status, out, 1, "the stage is right", other)
        for wrong in stages:  # the true bug, every other stage
            if wrong == stage:
                continue
            status, out = run(checker, exercise, "--answers", answers_file({n: (wrong, code)}))
            expect("%s naming stage %s" % (exercise, wrong), status, out, 1, "is not the first stage")
        status, out = run(checker, exercise, "--answers", answers_file({n: ("?", "?")}))
        expect(exercise + " unanswered", status, out, 1, "no answer yet", "the bugs to choose from")
        status, out = run(checker, exercise, "--answers", answers_file({n: (stage, "?")}))
        expect(exercise + " with the stage alone", status, out, 1, "the stage is right", "the bugs to choose from")


# Lesson 8's runs (docs/course/lesson-8-query-count.md gives the same commands).
QUERY_COUNTS = [4, 16, 36, 64, 100]
TRAIN = ["train", "--task", "reconstruct", "--keys", "64", "--width", "16", "--heads", "2", "--steps", "1000",
         "--warmup", "50", "--batch", "8", "--log-every", "1000"]


def final_loss(folder):
    with open(os.path.join(folder, "loss.csv")) as f:
        rows = [line.split(",") for line in f.read().splitlines()[1:] if line]
    assert len(rows) == 1000, (folder, len(rows))
    losses = [float(r[1]) for r in rows]
    return sum(losses[-100:]) / 100


def query_count(checker, work, adapter):
    runs = os.path.join(work, "query-count")
    shutil.rmtree(runs, ignore_errors=True)
    for q in QUERY_COUNTS:
        subprocess.run([adapter, *TRAIN, "--queries", str(q), "--out", os.path.join(runs, "q%d" % q)], check=True,
                       capture_output=True)
    subprocess.run([adapter, *TRAIN, "--queries", "64", "--no-positions", "--out", os.path.join(runs, "q64-no-positions")],
                   check=True, capture_output=True)
    loss = {q: final_loss(os.path.join(runs, "q%d" % q)) for q in QUERY_COUNTS}
    without = final_loss(os.path.join(runs, "q64-no-positions"))
    ranking = sorted(QUERY_COUNTS, key=lambda q: loss[q])
    truth = {"q1": str(ranking[0]), "q2": ",".join(map(str, ranking)), "q3": "yes" if without > loss[64] else "no",
             "q4": str(sum(loss[q] < without for q in QUERY_COUNTS)), "q5": "yes" if loss[100] < loss[64] else "no"}
    wrong = {"q1": str(ranking[-1]), "q2": ",".join(map(str, reversed(ranking))),
             "q3": "no" if truth["q3"] == "yes" else "yes", "q4": str((int(truth["q4"]) + 1) % 6),
             "q5": "no" if truth["q5"] == "yes" else "yes"}
    path = os.path.join(work, "10_query_count.txt")

    def write(answers):
        with open(path, "w") as f:
            f.write("# written by tests/course/answers_test.py\n")
            for question, answer in answers.items():
                f.write("%s: %s\n" % (question, answer))

    write(truth)
    status, out = run(checker, "10-query-count", "--answers", path, "--runs", runs)
    expect("10-query-count with the runs' answers %s" % truth, status, out, 0, "PASSED")
    for question in truth:
        write({**truth, question: wrong[question]})
        status, out = run(checker, "10-query-count", "--answers", path, "--runs", runs)
        expect("10-query-count with a wrong %s" % question, status, out, 1, question + ":", "is not what your runs show")
    status, out = run(checker, "10-query-count", "--answers", path, "--runs", os.path.join(work, "no-runs"))
    expect("10-query-count without the runs", status, out, 1, "loss.csv is missing")


def main():
    mode, checker, work = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(work, exist_ok=True)
    if mode == "port-lab":
        port_lab(checker, work)
    else:
        query_count(checker, work, sys.argv[4])
    for failure in FAILURES:
        print("FAIL", failure)
    print("%s: %s" % (mode, "%d failures" % len(FAILURES) if FAILURES else "every case behaves"))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
