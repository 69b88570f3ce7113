"""One file per paper: the training-form module, its deploy form and its fold.

Conventions shared by every layer here:

* ``switch_to_deploy()`` (RepVGG / timm) turns the module into its deploy form in
  place: exact, float64-checked, idempotent.
* Layers that fold into a single convolution (CoC, DO-Conv) also offer
  ``to_conv2d() -> nn.Conv2d``; ``deploy.fold.fold_model`` swaps them for it, so the
  folded network is indistinguishable from its plain twin.
"""
