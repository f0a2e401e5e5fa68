"""Built-in manifests, one YAML file each: `andromeda run --preset NAME` (runs/manifest.py reads them)."""
