"""The controller registry (name -> Controller class)."""

from harness.registry import Registry

CONTROLLERS: Registry = Registry("controller")
