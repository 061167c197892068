"""Data sources: the simulator (`sim/`), replay tables (`replay/`) and QA sets (`qa`); the
training questions and their stream (`base`)."""
