"""The plan file: schema, validation and expansion into analyses (standard library + PyYAML)."""

from scalable_assoc.plan.schema import ExposureSpec, FdrSpec, LayerSpec, OlsOptions, Plan, Preprocess, load_plan, parse_plan

__all__ = ["ExposureSpec", "FdrSpec", "LayerSpec", "OlsOptions", "Plan", "Preprocess", "load_plan", "parse_plan"]
