"""One file per paper: the training-form module, its deploy form, its fold and its registration.

Conventions shared by every layer here:

* ``switch_to_deploy()`` (RepVGG / timm) turns the module into its deploy form in
  place: exact, float64-checked, idempotent.
* Layers that fold into a single convolution (CoC, DO-Conv) also offer
  ``to_conv2d() -> nn.Conv2d``; ``deploy.fold.fold.fold_model`` swaps them for it, so the
  folded network is indistinguishable from its plain twin.
* The exact deploy rewrites (``deploy.layers.rewrite_blocks``) live with their layer too:
  ``absorb_batchnorm(bn)``, ``rewritten()`` and ``input_split``, found by ``deploy.fold.rewrite``.
* Each file ends with one ``register_conv_kind(...)`` call (``deploy.layers.registry``);
  importing this package registers the built-in kinds, one import per file below.
"""

# The order below is the registration order (the zoo's order): the baseline first, then the papers.
# isort: off
from deploy.layers import plain  # noqa: F401
from deploy.layers import coc  # noqa: F401
from deploy.layers import doconv  # noqa: F401
from deploy.layers import ic  # noqa: F401
from deploy.layers import scconv  # noqa: F401
from deploy.layers import spconv  # noqa: F401
# isort: on
