"""launch/tpu_pod.sh, dry run: the versions the plan was compiled with are installed, and this
shell's environment reaches the workers."""
import json
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dry(env, *args):
  e = {"PATH": os.environ["PATH"], "TPU_NAME": "pod", "ZONE": "z", "WORKDIR": "gs://b/run",
       "DRY_RUN": "1", **env}
  out = subprocess.run(["bash", os.path.join(REPO, "launch/tpu_pod.sh"), *args], env=e,
                       capture_output=True, text=True, check=True, cwd=REPO)
  return out.stdout


def test_pins_the_compiled_versions_and_passes_the_environment():
  # the versions the recorded plans were compiled with (docs/tpu_runs/*/aot.json)
  recorded = {json.load(open(os.path.join(REPO, "docs/tpu_runs", d, "aot.json")))["jax"]
              for d in os.listdir(os.path.join(REPO, "docs/tpu_runs"))}
  assert recorded == {"0.10.2"}
  cmd = _dry({"TFDS_DATA_DIR": "gs://b/tf ds", "POD_ENV": "MY_VAR", "MY_VAR": "7"},
             "configs/ddbm_e2h64.py", "--config.distill.batch_size=128")
  assert "'jax[tpu]==0.10.2'" in cmd and "'libtpu==0.0.42.1'" in cmd
  assert "-c constraints.txt" in cmd and ".[tfds,gcs]" in cmd
  # the local value, quoted, on the workers' command line (not ${TFDS_DATA_DIR:-} of the worker)
  assert "env TFDS_DATA_DIR=gs://b/tf\\ ds MY_VAR=7 python3 -m launch.main" in cmd
  assert "--workdir=gs://b/run" in cmd and "--config.distill.batch_size=128" in cmd
  assert "XLA_FLAGS" not in cmd  # unset here: not passed
  assert "scp" not in cmd
  synced = _dry({"SYNC": "1"}, "configs/toy_cond.py")
  assert "tar\n-C\n" in synced and "--exclude=.venv" in synced
  assert "scp\n" in synced and "tar -xzf /tmp/ibmd_jax_sync.tgz -C ~/ibmd_jax" in synced
  assert synced.rstrip().endswith("--config.distributed=True")  # no stray '' without overrides
