"""`learner.num_learners` data-parallel learner actors behind one driver-side handle.

The driver talks to a `LearnerGroup` as it would to one learner. Collective calls (`sft_step`,
`update`, `save_checkpoint`, `load_checkpoint`) go to every rank, each with the whole batch (put
into the object store once); the learners train on their shards in a torch.distributed group and
stay identical, so the group returns rank 0's result. Calls that need one copy of the weights
(`publish_weights`, `state_dict`, `save_policy`, `version`, the tokenizer) go to rank 0 alone,
except under `learner.sharding: fsdp2`, where the full weights are gathered by every rank together:
`publish_weights`, `state_dict` and `save_policy` go to every rank, and rank 0 answers.
"""
from __future__ import annotations

from typing import Any

from router_r1.infra.config import RunConfig
from router_r1.rl.batch import TrajectoryBatch


class LearnerGroup:
    """N learner actors of `learner_cls` (actors.learner.Learner), joined into one process group.

    rank0: rank 0's actor handle (tokenizer, weights, tests); actors: every rank's, in rank order.
    Every method blocks until all ranks it called have answered and returns rank 0's answer; a
    rank that fails raises at once, not after its peers time out in a collective."""

    def __init__(self, learner_cls: type, cfg: RunConfig, tokenizer_corpus: list[str] | None = None):
        import ray

        lc = cfg.learner
        remote = ray.remote(learner_cls).options(num_cpus=lc.num_cpus, num_gpus=lc.num_gpus,
                                                 resources=dict(lc.resources) or None, max_restarts=0)
        corpus = ray.put(tokenizer_corpus) if tokenizer_corpus is not None else None
        self.actors = [remote.remote(cfg, corpus) for _ in range(lc.num_learners)]
        self.rank0 = self.actors[0]
        n = len(self.actors)
        self._gathered = lc.sharding == "fsdp2" and n > 1  # full weights need every rank
        if n > 1:
            addr, port = ray.get(self.rank0.rendezvous_address.remote())
            self._all([a.init_process_group.remote(rank, n, addr, port) for rank, a in enumerate(self.actors)])

    def __len__(self) -> int:
        return len(self.actors)

    @staticmethod
    def _all(refs: list) -> Any:
        """Rank 0's result once every rank has answered; the first rank to fail raises at once
        (its peers may be blocked in a collective that will never complete)."""
        import ray

        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
        return ray.get(refs[0])

    def _collective(self, method: str, *args: Any) -> Any:
        return self._all([getattr(a, method).remote(*args) for a in self.actors])

    def _full_weights(self, method: str, *args: Any) -> Any:
        """Rank 0's answer to a call that reads the whole weights: every rank's under FSDP2."""
        import ray

        return self._collective(method, *args) if self._gathered else ray.get(getattr(self.rank0, method).remote(*args))

    # -- every rank ------------------------------------------------------------------------------
    def sft_step(self, batch: TrajectoryBatch) -> dict[str, float]:
        import ray

        return self._collective("sft_step", ray.put(batch))

    def update(self, batch: TrajectoryBatch) -> dict[str, float]:
        import ray

        return self._collective("update", ray.put(batch))

    def save_checkpoint(self, path: str, extra: dict[str, Any] | None = None) -> str:
        return self._collective("save_checkpoint", path, extra)  # rank 0 writes; the others wait

    def load_checkpoint(self, path: str) -> dict[str, Any]:
        return self._collective("load_checkpoint", path)

    def write_storage_tokens(self, folder: str, token: str) -> list[tuple[str, str]]:
        """Every rank's (path, node) of its token file (the shared-storage check)."""
        import ray

        refs = [a.write_storage_token.remote(folder, token) for a in self.actors]
        self._all(refs)  # a failing rank raises at once
        return ray.get(refs)

    # -- rank 0 ----------------------------------------------------------------------------------
    def publish_weights(self) -> list:
        """[ref] of rank 0's weights, put into the object store by rank 0 (ranks are identical)."""
        return self._full_weights("publish_weights")

    def last_publish(self) -> dict[str, float]:
        import ray

        return ray.get(self.rank0.last_publish.remote())

    def version(self) -> int:
        import ray

        return ray.get(self.rank0.version.remote())

    def state_dict(self) -> dict:
        return self._full_weights("state_dict")

    def save_policy(self, path: str) -> str:
        return self._full_weights("save_policy", path)

    def kill(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
