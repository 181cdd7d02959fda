#!/usr/bin/env bash
# Mutation testing with mutmut (pinned in the `test` extra), outside the default suite.
#
#   bash tests/mutation.sh                 # every module in MODULES below
#   bash tests/mutation.sh _io rundir      # some of them
#   SURVIVORS_ONLY=1 bash tests/mutation.sh models
#                                          # only the survivors of the last record, after
#                                          # adding tests; the other outcomes stand
#
# Each module's mutants run against that module's own tests (the table below), in a
# scratch copy of the working tree, so the checkout and its setup.cfg are never
# touched. mutmut signals its workers by process id, and a timed-out entry can
# outlive its process, so the run gets a private PID namespace where the system
# allows one (it never signals anything outside the run). Results go to
# tests/mutation/<module>.json; tests/MUTATION.md is rebuilt from all of them and
# from tests/mutation/equivalent.txt (survivors judged equivalent, with a reason).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PY=${PY:-$root/.venv/bin/python}

# module (path under keras_densenet/, without .py) -> the tests that own it.
declare -A TESTS=(
  [_io]="tests/test_io.py tests/test_rundir.py"
  [rundir]="tests/test_rundir.py"
  [_validation]="tests/test_validation.py"
  [architecture]="tests/test_architecture.py"
  [layers]="tests/test_layers.py tests/test_memory.py"
  [normalization]="tests/test_normalization.py"
  [recompute]="tests/test_memory.py"
  [models]="tests/test_models.py"
  [batchnorm]="tests/test_batchnorm.py"
  [weights]="tests/test_weights.py tests/test_weights_torch.py"
  [training/config]="tests/test_config.py"
  [training/callbacks]="tests/test_callbacks.py"
  [training/resume]="tests/test_resume.py"
  [training/recipe]="tests/test_recipe.py"
  [training/data]="tests/test_run_data.py"
  [training/finish]="tests/test_finish.py"
  [training/loop]="tests/test_loop.py"
  [export/folding]="tests/test_folding.py"
  [export/versions]="tests/test_versions.py"
  [export/inputs]="tests/test_inputs.py"
  [export/model]="tests/test_export_model.py"
  [export/serving]="tests/test_export_model.py"
  [export/predict]="tests/test_predict.py"
  [export/savedmodel]="tests/test_savedmodel.py"
  [export/tflite]="tests/test_tflite.py"
  [export/onnx]="tests/test_onnx.py"
)
# Modules that define Keras layers: mutmut 3.8.1 wraps every mutated method with
# functools.wraps, and Keras' Operation.__new__ reads
# `inspect.getfullargspec(cls.__init__)`, which does not follow __wrapped__, so the
# mutated module would not import ("IndexError: list index out of range" in
# keras/src/ops/operation.py). In the scratch copy their __init__ methods are marked
# `# pragma: no mutate` (mutation_report.py freeze-keras-inits): no mutants there, so
# no trampoline. (Their argument checks live in _validation and architecture.)
# The mutant processes are forked from mutmut's fork server after it has collected
# the tests, and a process forked after TensorFlow has run an op hangs in its first
# op (the parent's thread pools are not in the child). So collecting a mapped test
# file must run no TensorFlow op: build layers and models inside the tests, never in
# a parametrize list or at module level. (`python -c` with pytest --collect-only and
# a count of /proc/self/task before and after shows it: 3 threads is clean, 8 is not.)
# mutmut runs a mutant only against the tests that called the mutated function in
# their own process (its "stats" run): a test that checks a function only in a child
# process (a JAX or PyTorch backend, a C locale) must also call it in-process, or
# mutmut never runs it for that function's mutants. The child imports the scratch
# copy (conftest.same_package_env) and inherits the mutant's environment variable.
KERAS_LAYER_MODULES=(layers)
# presets.py is left out: its table is built when the module is imported, before
# mutmut switches a mutant on, so no test can see one (its counts are checked
# against ANCHORS.md in tests/test_architecture.py instead).
MODULES=(_io _validation rundir architecture layers recompute models batchnorm weights
         training/config training/callbacks training/resume training/recipe
         training/data training/finish training/loop
         export/folding export/versions export/inputs export/model export/serving
         export/predict export/savedmodel export/tflite export/onnx)

if [ $# -gt 0 ]; then selected=("$@"); else selected=("${MODULES[@]}"); fi
for m in "${selected[@]}"; do
  if [ -z "${TESTS[$m]:-}" ]; then
    echo "mutation.sh: unknown module '$m'; choose from: ${MODULES[*]}" >&2
    exit 2
  fi
done
"$PY" -c "import mutmut" 2>/dev/null || {
  echo "mutation.sh: mutmut is not installed in $PY; run 'bash .ci/setup' (the test extra pins it)" >&2
  exit 2
}

isolate=()
if unshare --pid --fork --mount-proc true 2>/dev/null; then
  isolate=(unshare --pid --fork --mount-proc)
fi

mkdir -p tests/mutation
for m in "${selected[@]}"; do
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  git ls-files -co --exclude-standard -z | tar --null -cf - -T - | tar -xf - -C "$work"
  for k in "${KERAS_LAYER_MODULES[@]}"; do
    if [ "$k" = "$m" ]; then
      "$PY" tests/mutation_report.py freeze-keras-inits "$work/keras_densenet/$m.py" >&2
    fi
  done
  # (mutmut reads a list from setup.cfg one item per line)
  {
    echo "only_mutate = keras_densenet/$m.py"
    echo "pytest_add_cli_args_test_selection ="
    for t in ${TESTS[$m]}; do echo "    $t"; done
    echo "process_isolation = forkserver"
  } >>"$work/setup.cfg"
  names=()
  if [ -n "${SURVIVORS_ONLY:-}" ]; then
    mapfile -t names < <("$PY" tests/mutation_report.py survivors "$m")
    if [ ${#names[@]} -eq 0 ]; then
      echo "mutation.sh: $m has no survivors to rerun" >&2
      rm -rf "$work"; trap - EXIT; continue
    fi
  fi
  echo "mutation.sh: keras_densenet/$m.py against ${TESTS[$m]}${names:+ (${#names[@]} survivors)}" >&2
  start=$(date +%s)
  (cd "$work" && TF_CPP_MIN_LOG_LEVEL=2 nice -n 10 "${isolate[@]}" "$PY" -m mutmut run --max-children 2 "${names[@]}" >mutmut.log 2>&1) || {
    tail -30 "$work/mutmut.log" >&2
    echo "mutation.sh: mutmut failed on $m (log above)" >&2
    exit 1
  }
  "$PY" tests/mutation_report.py record ${names:+--merge} "$m" "$work" "$(( $(date +%s) - start ))" "${TESTS[$m]}"
  rm -rf "$work"
  trap - EXIT
done
"$PY" tests/mutation_report.py render
