"""The strict input language every user-written config is read with: YAML in the core schema, data only
(strict_yaml.py), and typed, bounded fields (fields.py). The manifest, the scenario entries, the launcher and
the claims file are all checked through these. Torch-free."""
