"""Nothing lost, nothing trained twice: every episode the agents finished, followed to the step that
trained it, checked at the end of a run against what the trainer's stream still holds.

An episode whose calls ran on a server that died (its node lost mid-run) is continued on the other
servers and finishes as any other; this ledger is how a run shows it: every finished episode is
trained exactly once, or still waits in the stream when the run ends (a GRPO group that was not
complete, an episode not read yet), and none is neither.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class EpisodeAudit:
    """The ledger's verdict at the end of a run (counts of episodes, by session)."""

    finished: int
    """Episodes the agents finished in this life of the run (a resumed run counts from its restart)."""
    trained: int
    """Distinct episodes trained."""
    waiting: int
    """Finished and still in the stream, untrained: their group was not complete when the run ended."""
    trained_twice: tuple[str, ...] = ()
    """Sessions trained in more than one step (or twice in one): must be empty."""
    lost: tuple[str, ...] = ()
    """Sessions finished but neither trained nor in the stream: must be empty."""
    from_before: int = 0
    """Trained episodes a previous life of the run finished (a resume's backlog)."""

    @property
    def ok(self) -> bool:
        return not self.trained_twice and not self.lost

    def line(self) -> str:
        verdict = "none lost, none trained twice" if self.ok else \
            f"{len(self.lost)} LOST, {len(self.trained_twice)} TRAINED TWICE"
        return (f"episodes: {self.finished} finished, {self.trained} trained once, {self.waiting} waiting in the "
                f"stream at the end; {verdict}")

    def as_dict(self) -> dict:
        return asdict(self) | {"trained_twice": list(self.trained_twice), "lost": list(self.lost), "ok": self.ok}


@dataclass
class EpisodeLedger:
    """Filled by the main loop as episodes finish and steps train them."""

    finished: set[str] = field(default_factory=set)
    trained: Counter = field(default_factory=Counter)

    def on_finished(self, session_ids: Iterable[str]) -> None:
        self.finished.update(session_ids)

    def on_trained(self, session_ids: Iterable[str]) -> None:
        self.trained.update(session_ids)

    def audit(self, in_stream: Iterable[str]) -> EpisodeAudit:
        """The verdict, given the sessions of every entry the stream still holds."""
        waiting = set(in_stream) - self.trained.keys()
        lost = self.finished - self.trained.keys() - waiting
        twice = tuple(sorted(sid for sid, n in self.trained.items() if n > 1))
        return EpisodeAudit(finished=len(self.finished), trained=len(self.trained), waiting=len(waiting),
                            trained_twice=twice, lost=tuple(sorted(lost)),
                            from_before=len(self.trained.keys() - self.finished))
