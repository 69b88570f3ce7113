"""Load: model files become an eval-mode ``nn.Module`` (checkpoints, state_dicts, reference code's
checkpoints, ``.pt2`` archives audited before torch reads them, a user's own class)."""
