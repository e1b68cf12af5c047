"""rnnjax: recurrent sequence models in JAX/Flax.

Importing the package is light (no TensorFlow, no Orbax); import the modules you need::

    from rnnjax import config, data, models, steps, train
"""

__version__ = "0.1.0"
