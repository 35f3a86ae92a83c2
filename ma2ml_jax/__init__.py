"""ma2ml_jax: multi-agent automated machine learning (MA2ML, CVPR 2023) and its baselines in JAX.

    from ma2ml_jax import search, config
    result = search.run(config.base_config(), "runs/mine")              # train proxy networks
    result = search.run(config.base_config(), "runs/mine", objective=fn)  # or your own function

Modules: `search` (the driver), `config` (every config key), `data`, `stream`, `spaces`, `augment`,
`models`, `proxy` (proxy-network training), `evaluate`, `cost`, `rewards`, `agents`.
"""

__version__ = "0.1.0"
