"""calico-crd-hook: bring a cluster's Calico CRDs and Tiers to a target Calico version."""

__version__ = "0.1.0"
