"""The pod command a plan prints: the user's overrides kept, planning-only ones dropped, the plan's
choices (incl. teacher dtype, microbatches, split, mode) written out."""
import shlex

from configs import toy_cond
from tools import podcmd

ARGV = ["launch/main.py", "--config=configs/ddbm_e2h64.py", "--workdir=plans/x",
        "--config.mode=compile", "--config.aot.topology=v6e:4x4", "--config.aot.search=True",
        "--config.distill.rounds=20000", "--config.teacher.checkpoint=gs://b/t/teacher",
        "--config.mesh.fsdp=2", "--config.eval.student_steps", "(1, 2)"]


def test_user_overrides_are_kept_and_planning_ones_dropped():
  assert podcmd.config_file(ARGV) == "configs/ddbm_e2h64.py"
  user = podcmd.user_overrides(ARGV, chosen=["mesh.fsdp", "mesh.data"])
  assert user == ["--config.distill.rounds=20000", "--config.teacher.checkpoint=gs://b/t/teacher",
                  "--config.eval.student_steps=(1, 2)"]


def test_the_plan_writes_out_every_choice_that_decides_the_program():
  c = toy_cond.get_config()
  c.distill.teacher_dtype, c.distill.microbatches, c.distill.split_round = "bfloat16", 2, True
  plan = podcmd.plan_overrides(c, "round", chips=16, fsdp=4, remat="full", per_chip=8,
                               batch_key="distill.batch_size")
  # the toy MLP has no remat: none is written
  assert plan == ["--config.mesh.data=4", "--config.mesh.fsdp=4",
                  "--config.distill.batch_size=128", "--config.distill.teacher_dtype=bfloat16",
                  "--config.distill.microbatches=2", "--config.distill.split_round=True",
                  "--config.mode=distill"]
  cmd = podcmd.pod_command("configs/toy_cond.py", "v6e:4x4",
                           podcmd.user_overrides(ARGV, podcmd.keys(plan)) + plan)
  words = shlex.split(cmd)
  assert words[:4] == ["TPU_NAME=<v6e-4x4", "slice>", "ZONE=<zone>", "WORKDIR=gs://<bucket>/<run>"]
  assert words[4:6] == ["launch/tpu_pod.sh", "configs/toy_cond.py"]
  assert "--config.eval.student_steps=(1, 2)" in words  # quoted: one word for the shell
  assert "--config.mesh.fsdp=2" not in words and "--config.mesh.fsdp=4" in words
  assert words[-1] == "--config.mode=distill"
