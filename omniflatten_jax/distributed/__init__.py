"""Many hosts and devices: joining a cluster, the mesh, shared paths and locks, the chips.

Owns `hosts` (joining, who writes, `agree`: hosts prove they hold the same values),
`sharding` (the mesh, logical-axis rules, the attention kernel's context), `paths` (local
folders or ``gs://`` alike), `locks` (one run per stage folder) and `accelerators` (what each
chip offers, for plans and MFU). May import `config` only; the model's placement on a mesh is
`model.placement`.
"""
