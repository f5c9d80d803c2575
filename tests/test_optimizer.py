"""Optimizer parity with the reference stack (Hugging Face schedules, torch AdamW + clipping)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import base
from editseq import optimizer

torch = pytest.importorskip("torch")
transformers_optimization = pytest.importorskip("transformers.optimization")

HF_SCHEDULES = {
    "linear": "get_linear_schedule_with_warmup",
    "cosine": "get_cosine_schedule_with_warmup",
    "constant": "get_constant_schedule_with_warmup",
}


def _opt_config(**overrides) -> ml_collections.ConfigDict:
  config = base.get_config().optimizer
  config.update(overrides)
  return config


def _hf_learning_rates(kind, peak, warmup, total):
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([param], lr=peak)
  kwargs = {"num_warmup_steps": warmup}
  if kind != "constant":
    kwargs["num_training_steps"] = total
  sched = getattr(transformers_optimization, HF_SCHEDULES[kind])(opt, **kwargs)
  rates = []
  for _ in range(total):
    rates.append(opt.param_groups[0]["lr"])
    opt.step()
    sched.step()
  return np.array(rates)


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("warmup_steps,warmup_ratio,total", [(10, 0.0, 50), (-1, 0.001, 1200),
                                                            (0, 0.0, 7), (-1, 0.3, 11)])
def test_schedule_matches_transformers(kind, warmup_steps, warmup_ratio, total):
  config = _opt_config(schedule=kind, warmup_steps=warmup_steps, warmup_ratio=warmup_ratio,
                       learning_rate=3e-4)
  ours = jax.vmap(optimizer.learning_rate_schedule(config, total))(jnp.arange(total))
  warmup = optimizer.num_warmup_steps(config, total)
  np.testing.assert_allclose(np.asarray(ours), _hf_learning_rates(kind, 3e-4, warmup, total),
                             rtol=1e-5, atol=1e-6 * 3e-4)  # float32 near the end of decay


def test_warmup_ratio_rounds_up_like_the_trainer():
  assert optimizer.num_warmup_steps(_opt_config(warmup_steps=-1, warmup_ratio=0.001), 1200) == 2
  assert optimizer.num_warmup_steps(_opt_config(warmup_steps=5, warmup_ratio=0.5), 1200) == 5


def test_unknown_schedule_is_rejected():
  with pytest.raises(ValueError, match="schedule"):
    optimizer.learning_rate_schedule(_opt_config(schedule="step"), 10)


def test_decay_mask_follows_logical_axes():
  axes = {
      "embed": ("vocab", "embed"),
      "layers": {"attn_q": ("layers", "embed", "heads", "head_dim"),
                 "norm": ("layers", "embed"),
                 "bias": ("mlp",)},
      "final_norm": ("embed",),
  }
  assert optimizer.weight_decay_mask(axes) == {
      "embed": True,
      "layers": {"attn_q": True, "norm": False, "bias": False},
      "final_norm": False,
  }


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_adamw_matches_torch_adamw_with_clipping_and_mask(clip):
  """Five updates of our optimizer equal torch's AdamW (+ clip_grad_norm_) with param groups."""
  rng = np.random.default_rng(0)
  shapes = {"w": (6, 4), "scale": (4,)}
  params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
           for _ in range(5)]
  config = _opt_config(learning_rate=1e-2, schedule="linear", warmup_steps=2, weight_decay=0.1,
                       b1=0.9, b2=0.95, eps=1e-8, grad_clip_norm=clip)
  tx = optimizer.make_optimizer(config, total_steps=5, decay_mask={"w": True, "scale": False})

  ours = jax.tree.map(jnp.asarray, params)
  state = tx.init(ours)
  for g in grads:
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, ours)
    ours = jax.tree.map(lambda p, u: p + u, ours, updates)

  theirs = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
  opt = torch.optim.AdamW([{"params": [theirs["w"]], "weight_decay": 0.1},
                           {"params": [theirs["scale"]], "weight_decay": 0.0}],
                          lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
  sched = transformers_optimization.get_linear_schedule_with_warmup(opt, 2, 5)
  for g in grads:
    for k, p in theirs.items():
      p.grad = torch.tensor(g[k])
    if clip:
      torch.nn.utils.clip_grad_norm_(list(theirs.values()), clip)
    opt.step()
    sched.step()
  for k in shapes:
    np.testing.assert_allclose(np.asarray(ours[k]), theirs[k].detach().numpy(),
                               rtol=1e-5, atol=1e-6)
