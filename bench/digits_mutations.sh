#!/usr/bin/env bash
# Breaks IBMD's generator loss on purpose, one mutation at a time, and runs the default suite's
# reduced digits test (tests/test_digits.py -k reduced) against each, in a throw-away git worktree
# of HEAD (this checkout is never edited). Prints one line per mutation: the test's exit code
# (1 = red, the mutation is caught) and its FD line. ~2.5 min per mutation on 2 free cores.
#   bench/digits_mutations.sh [nocritic signflip stopgrad_xt]
set -uo pipefail
cd "$(dirname "$0")/.."
PY="$(pwd)/${IBMD_VENV:-.venv}/bin/python"
WT="$(mktemp -d /tmp/ibmd_mutation_XXXXXX)"
git worktree add -q --detach "$WT" HEAD
trap 'git worktree remove --force "$WT"' EXIT
for name in "${@:-nocritic signflip stopgrad_xt}"; do
  for m in $name; do
    git -C "$WT" checkout -q ibmd_jax/ibmd.py
    "$PY" - "$WT/ibmd_jax/ibmd.py" "$m" <<'PY'
import sys
path, name = sys.argv[1], sys.argv[2]
s = open(path).read()
ret = "    return teacher_term - self.critic_weight * critic_term, {"
xt = "    t, x_t = self._bridge_point(x0, xT, k_pt)\n"
new = {"nocritic": s.replace(ret, "    return teacher_term, {"),
       "signflip": s.replace(ret, "    return -(teacher_term - self.critic_weight * critic_term), {"),
       "stopgrad_xt": s.replace(xt, xt + "    x_t = jax.lax.stop_gradient(x_t)\n")}[name]
assert new != s, f"{name}: the code it mutates has changed; update this script"
open(path, "w").write(new)
PY
    (cd "$WT" && "$PY" -m pytest -q -p no:xdist tests/test_digits.py -k reduced -s > "$WT/$m.log" 2>&1)
    echo "$m: exit $? ($(grep -o 'reduced digits run.*never updated {.value.: [0-9.]*' "$WT/$m.log" | head -1))"
  done
done
