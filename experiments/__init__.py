"""Research drivers, kept as history and reproducible; not part of the core.

Each module here runs one experiment recorded in docs/ (its command, its table) over the core
(`router_r1/`) and the `router-r1` pipelines, and may be run again to check the numbers. Nothing
in the core, the actors, the Serve applications or the pipelines imports from here (the layers of
docs/architecture.md): an experiment's own measurements live beside its driver, and a lever that
an experiment added and that did not earn its place is removed from the core, its docs rows kept
as history with the commit that still has it.

- `unseen.py`: `router-r1 unseen`, a model unseen in training (docs/results_simulator.md);
  `unseen_measures.py`: its per-domain call shares and descriptor-reading figures.
"""
