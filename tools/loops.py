"""How many times each loop of a compiled program runs, so that an estimate counts every step.

XLA's cost analysis counts the body of a loop once. The programs compile mode plans hold loops:
- the IBMD round: its L critic steps in a ``scan`` (``steps.make_ibmd_steps``; unrolled only where
  the mesh's devices are CPUs, never for a TPU slice: ``api.round_program``); a multi-step
  generator's chain in a ``scan`` (``ibmd.generate_for_training``: 'full_chain' runs its N calls
  in one, 'dmd2' N − 1 calls without gradient in one and the last call after it); gradient
  accumulation's microbatches in a ``scan`` around each step (``steps.microbatched``);
- the teacher step: its microbatches;
- the samplers: their NFE (teacher) or N (student) steps in a ``scan`` (``samplers.sample``).

Per generator image, a round's critic step and generator step cost, in network forwards
(bench/flops.py: a forward is F = W + A, weights and attention core; a backward for the weights
2W + 2A, for the input only W + 2A; rematerialisation adds R to each differentiated network):

  critic step     N·F_g + F_t + (2W_t + 2A_t) + R_t                         (critic trained)
  generator step  N·F_g + n_grad·(2W_g + 2A_g + R_g) + 2·(F_t + W_t + 2A_t) + 2·R_t
                  (teacher and critic differentiated for their input; n_grad = N for
                  'full_chain', 1 for 'dmd2')

"as run" counts every loop iteration; "as XLA counts" counts each loop body once: N generator
calls become 1 ('full_chain') or 2 ('dmd2': the chain's body and the last call), and a step
inside M microbatches is 1/M of itself. A round runs L critic steps and one generator step, so

  XLA's count of a fused round   = (critic_xla + gen_xla) per image × images
  what the round runs            = (L·critic_run + gen_run) per image × images

and the factor between them (``round_factor``) scales XLA's FLOPs, bytes and collective bytes
(a loop body's bytes and collectives are assumed to repeat with it, as its FLOPs do). A split
round's two programs are scaled each by its own factor (``split_factors``).

The network figures come from bench/flops.py's UNet walk for a UNet (checked against XLA there and
against every recorded compile in docs/tpu_table.md: XLA's count ÷ this model's "as XLA counts"
is 1.00–1.09); any other network (the toy MLP) counts every network as one forward unit
(F = W = 1, A = R = 0: the forward-equivalents of bench/flops.py).
"""
from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Net:
  """One network's forward per image: weights (convolutions, dense) and attention-core FLOPs, and
  what its backward recomputes under the run's remat policy."""
  weights: float
  attention: float = 0.0
  remat: float = 0.0

  @property
  def forward(self) -> float:
    return self.weights + self.attention

  @property
  def backward_all(self) -> float:  # input and weight gradients
    return 2 * self.weights + 2 * self.attention + self.remat

  @property
  def backward_input(self) -> float:  # input gradient only (frozen teacher, critic in L_theta)
    return self.weights + 2 * self.attention + self.remat


@dataclasses.dataclass(frozen=True)
class RoundShape:
  critic_steps: int = 5
  n_steps: int = 1
  multistep: str = "full_chain"
  microbatches: int = 1


def round_shape(config) -> RoundShape:
  d = config.distill
  return RoundShape(int(d.critic_steps), int(d.get("n_steps", 1)),
                    str(d.get("multistep", "full_chain")), int(d.get("microbatches", 1)))


def networks(config, remat: Optional[str] = None) -> tuple[Net, Net, str]:
  """(teacher/critic, generator, source) for the config's network; `remat` overrides
  config.model.remat."""
  m = config.model
  if str(m.get("name", "")) != "unet":
    return Net(1.0), Net(1.0), "forward units (no FLOP model for this network)"
  flops = _flops_module()
  cfg = dict(m)
  size = int(cfg.get("image_size") or config.data.image_size)
  data_ch = int(config.data.channels)
  teacher_in = data_ch * (2 if _concat_xt(config) else 1)
  z = int(config.distill.get("z_channels", -1))
  gen_in = teacher_in + (data_ch if z == -1 else z)
  policy = str(remat if remat is not None else cfg.get("remat", "none"))
  out = []
  for cin in (teacher_in, gen_in):
    f = flops.unet_forward_flops(cfg, size, cin, exact_padding=True)
    out.append(Net(f["weights"], f["attention"], flops.remat_recompute(f, policy)))
  return out[0], out[1], "UNet FLOP model (bench/flops.py)"


def _concat_xt(config) -> bool:
  """Whether the networks see x_T concatenated to x_t (config.conditional: DDBM/DBIM)."""
  return bool(config.get("conditional", True))


def _flops_module():
  try:  # bench/ moved under tools/ (tools-apart); the old place as a fallback
    from tools.bench import flops  # pylint: disable=g-import-not-at-top
  except ImportError:
    from bench import flops  # pylint: disable=g-import-not-at-top
  return flops


def step_flops(t: Net, g: Net, shape: RoundShape) -> dict:
  """Per generator image: critic and generator step FLOPs as run and as XLA counts them."""
  n = shape.n_steps
  dmd2 = shape.multistep == "dmd2" and n > 1
  n_grad = 1 if (dmd2 or n == 1) else n
  calls_xla = 2 if dmd2 else 1  # generator calls XLA counts (chain body, and dmd2's last call)
  grad_xla = 1

  def critic(calls):
    return calls * g.forward + t.forward + t.backward_all

  def gen(calls, grads):
    return calls * g.forward + grads * g.backward_all + 2 * (t.forward + t.backward_input)

  m = shape.microbatches
  return {"critic_run": critic(n), "gen_run": gen(n, n_grad),
          "critic_xla": critic(calls_xla) / m, "gen_xla": gen(calls_xla, grad_xla) / m}


def round_factor(s: dict, critic_steps: int) -> float:
  """What a fused round runs ÷ what XLA counted (one critic step, the generator step)."""
  return (critic_steps * s["critic_run"] + s["gen_run"]) / (s["critic_xla"] + s["gen_xla"])


def split_factors(s: dict, critic_steps: int) -> tuple[float, float]:
  """(critic program, generator program): what each runs ÷ what XLA counted in it."""
  return critic_steps * s["critic_run"] / s["critic_xla"], s["gen_run"] / s["gen_xla"]


def round_loops(config, remat: Optional[str] = None) -> dict:
  """The round's loop accounting for a config: per-image step FLOPs (as run / as XLA counts), the
  fused factor, the split factors, and where the network figures came from."""
  shape = round_shape(config)
  t, g, source = networks(config, remat)
  s = step_flops(t, g, shape)
  return dict(s, critic_steps=shape.critic_steps, n_steps=shape.n_steps,
              multistep=shape.multistep, microbatches=shape.microbatches,
              factor=round_factor(s, shape.critic_steps),
              split=split_factors(s, shape.critic_steps), source=source)


def program_factor(name: str, config, count: Optional[int] = None) -> float:
  """How many times a program's loop body runs per call, for the programs that are one loop:
  the teacher step (its microbatches), a sampler (its NFE or steps, `count`)."""
  if name == "teacher_step":
    return float(config.teacher.get("microbatches", 1))
  if name in ("teacher_sampler", "student"):
    return float(count or 1)
  raise ValueError(f"no loop factor for program {name!r}; the round uses round_loops")
