"""Mixtures: the YAML spec, sampling rates, the position -> example sampler, and `build`.

    spec = load_mixture("data_mixtures/superni_sample.yaml")
    plan = plan_mixture(spec)           # HeldOutError if it would train on held-out tasks
    plan.summary()                      # rates, expected and realised examples, hash
    plan.iter_examples(start=1000)      # resume at any position in O(1)
    build_mixture(plan, "out/mix")      # a Hugging Face dataset, byte-for-byte reproducible
"""

from mixtune.mixtures.build import build_mixture
from mixtune.mixtures.plan import COLUMNS, MixturePlan, PlanTask, plan_mixture
from mixtune.mixtures.rates import apportion, mixing_rates, nest
from mixtune.mixtures.spec import MixtureSpec, load_mixture

__all__ = ["COLUMNS", "MixturePlan", "MixtureSpec", "PlanTask", "apportion", "build_mixture", "load_mixture",
           "mixing_rates", "nest", "plan_mixture"]
