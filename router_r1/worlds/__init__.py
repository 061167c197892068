"""Data sources behind one protocol, `router_r1.worlds.base.World`: the simulator (`sim/`),
replay tables (`replay/`) and QA sets (`qa`). `data.kind` picks one (`base.make_world`); a user's
own world is one class named by `data: {kind: custom, world: "pkg.module:Class"}`."""
