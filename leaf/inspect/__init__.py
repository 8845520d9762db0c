"""`leaf inspect` (activation patching over an analyze folder's confounder spans) and `leaf saliency` (one text's
per-token attribution as a picture): the research views on top of `leaf.hooks`."""

from leaf.inspect.sweep import DEFAULT_COMPONENTS, InspectConfig, default_layers, run_inspect

__all__ = ["DEFAULT_COMPONENTS", "InspectConfig", "default_layers", "run_inspect"]
