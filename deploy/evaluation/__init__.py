"""Evaluate: a deployed artifact's accuracy on the user's images, with intervals, against another."""
