"""Runs agent episodes through the trajectory manager: one proxy session per episode.

For every episode the runner has a session (shared `group_id` within a GRPO group; a group's
sessions are made in one admin call), runs the agent against the session's base URL under a time
limit and scores the answer; once its whole group has answered, one admin call posts the group's
rewards and finishes its sessions, which puts them on the finished-episode stream the trainer
reads. An episode that fails (the agent crashes or times out, the reward is not a finite number)
gets reward 0 and a logged reason and is finished as discarded so it never trains (as is one
without any LLM call). A run whose episodes mostly fail stops (`FailureWatch`).
Failures of the proxy itself (admin calls) raise `ServiceError`: those are not the agent's fault.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from seamless.agent.api import AgentContext, Sampling, ScoredAnswer, shared_http_client
from seamless.agent.specs import call_agent, resolve_agent, resolve_reward
from seamless.config import RolloutConfig
from seamless.agent.tasks import Task
from seamless.errors import ServiceError

log = logging.getLogger("seamless.agents")


Span = tuple[float, float]
"""(start, end), wall clock (time.time())."""


class Slots:
    """At most `limit` episodes at once, admitted first come, first served: a group takes its
    episodes' slots in one go, and each episode gives its slot back when it ends."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.free = limit
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def take(self, count: int = 1) -> None:
        if not 0 < count <= self.limit:
            raise ValueError(f"cannot take {count} of {self.limit} slots at once")
        if not self._waiting and self.free >= count:
            self.free -= count
            return
        admitted = asyncio.get_running_loop().create_future()
        self._waiting.append((count, admitted))
        try:
            await admitted
        except asyncio.CancelledError:
            if admitted.done() and not admitted.cancelled():
                self.give(count)  # admitted just as it was cancelled: the slots go to the next
            self._admit()
            raise

    def give(self, count: int = 1) -> None:
        self.free += count
        self._admit()

    def _admit(self) -> None:
        while self._waiting and (self._waiting[0][1].done() or self._waiting[0][0] <= self.free):
            count, admitted = self._waiting.popleft()
            if not admitted.done():  # else its taker was cancelled while waiting
                self.free -= count
                admitted.set_result(None)


@dataclass(frozen=True, slots=True)
class EpisodeTimes:
    """When an episode was in each of its phases (the step profile reads them beside the proxy's
    call clock). A GRPO group's episodes share their session and finish spans (one call each)."""

    admission: Span
    """Waiting for one of the runner's `concurrency` slots."""
    session: Span
    """Creating its session on the trajectory manager."""
    agent: Span
    """The agent running (its LLM calls inside)."""
    reward: Span
    """Scoring the answer (and posting the reward, when that is a call of its own)."""
    finish: Span
    """Finishing the session (on the stream); (end, end) when it is left open."""

    @property
    def started(self) -> float:
        return min(self.admission[0], self.session[0])

    @property
    def ended(self) -> float:
        return max(self.reward[1], self.finish[1])


@dataclass(frozen=True, slots=True)
class EpisodeResult:
    """How one episode ended."""

    session_id: str
    group_id: str
    task_id: str
    reward: float
    answer: str
    """The agent's final answer text ("" when it failed)."""
    error: str | None
    """Why the episode failed (agent crash, timeout, bad return, a reward function that raised or
    returned a non-finite number); None when it answered. A failed episode never trains."""
    num_llm_calls: int
    """Calls the proxy recorded for the session (one per returned choice)."""
    wall_time_s: float
    """Seconds of its own phases: session set-up, agent, reward, finish (not the waits for a slot or
    for the rest of its group)."""
    finished: bool
    """Whether the session was finished (so it is on the training stream)."""
    times: EpisodeTimes | None = None


class AgentRunner:
    """Runs episodes of one agent with at most `concurrency` at once."""

    def __init__(self, proxy_url: str, admin_key: str, agent_spec: str, concurrency: int = 32,
                 timeout_s: float = 120.0, sampling: Sampling | None = None, *,
                 reward_spec: str | None = None, max_turns: int = 4, model: str = "policy",
                 admin_timeout_s: float = 60.0):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.proxy_url = proxy_url.rstrip("/")
        self.agent_spec = agent_spec
        self.agent = resolve_agent(agent_spec)
        self.reward_fn = resolve_reward(reward_spec)
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.sampling = sampling or Sampling()
        self.max_turns = max_turns
        self.model = model
        self._headers = {"Authorization": f"Bearer {admin_key}"}
        self._admin_timeout_s = admin_timeout_s
        # an httpx client and a semaphore belong to one event loop; the sync wrapper makes a new
        # loop per call, so both are (re)made for the loop they are used on
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._slots: Slots | None = None
        self._http: Any = None  # the agents' shared connection pool (AgentContext.http)

    @classmethod
    def from_config(cls, proxy_url: str, admin_key: str, rollout: RolloutConfig) -> AgentRunner:
        """A runner with the recipe's agent, concurrency, timeout, sampling and reward."""
        return cls(proxy_url, admin_key, rollout.agent, rollout.agent_concurrency, rollout.agent_timeout_s,
                   Sampling(rollout.temperature, rollout.max_tokens, rollout.top_p),
                   reward_spec=rollout.reward, max_turns=rollout.max_turns, model=rollout.model_name)

    # --- public async API ---------------------------------------------------------------------

    async def run_groups(self, tasks: Sequence[Task], group_size: int, *, sampling: Sampling | None = None,
                         metadata: dict[str, Any] | None = None, finish: bool = True) -> list[list[EpisodeResult]]:
        """One GRPO group of `group_size` episodes per task, all concurrently (up to the limit)."""
        return list(await asyncio.gather(*(
            self.run_group(task, group_size, sampling=sampling, metadata=metadata, finish=finish)
            for task in tasks)))

    async def run_group(self, task: Task, group_size: int, *, group_id: str | None = None,
                        sampling: Sampling | None = None, metadata: dict[str, Any] | None = None,
                        finish: bool = True) -> list[EpisodeResult]:
        """`group_size` episodes of one task sharing a group id (generated when not given). Their
        sessions are made in one admin call and, when `finish`, rewarded and finished in one: the
        trainer takes whole groups anyway, and per-episode calls cost the proxy more CPU than the
        LLM call itself on short episodes (scripts/bench_episodes.py)."""
        group_id = group_id or f"g-{uuid.uuid4().hex[:16]}"
        if not finish:
            return list(await asyncio.gather(*(
                self.run_episode(task, group_id=group_id, sampling=sampling, metadata=metadata, finish=False)
                for _ in range(group_size))))
        client, slots = self._loop_state()
        asked = time.time()
        together = group_size <= slots.limit  # admitted at once; else an episode at a time
        made = await self._admin(client, "POST", "/sessions/batch", {
            "count": group_size, "group_id": group_id, "task_id": task.task_id, "metadata": self._metadata(metadata),
            "start_together": together})
        session = (asked, time.time())

        sessions = made["sessions"]
        started = 0

        async def one(info: dict[str, Any], admitted: float) -> _Played:
            nonlocal started
            started += 1
            try:
                return await self._play(task, info, group_id, sampling, admission=(session[1], admitted))
            finally:
                slots.give()

        async def alone(info: dict[str, Any]) -> _Played:
            await slots.take()
            return await one(info, time.time())

        if together:
            # the group starts together, so its first calls reach the proxy together and can go to
            # vLLM as one request with n choices (proxy.coalesce_window_ms)
            await slots.take(len(sessions))
            admitted = time.time()
            try:
                played = await asyncio.gather(*(one(info, admitted) for info in sessions))
            except asyncio.CancelledError:
                # an episode cancelled before its first step never ran `one`, so never gave its
                # slot back (gather raises this only once every episode is done)
                slots.give(len(sessions) - started)
                raise
        else:
            played = await asyncio.gather(*(alone(info) for info in sessions))
        return await self._finish(client, played, session)

    async def run_episode(self, task: Task, *, group_id: str, sampling: Sampling | None = None,
                          metadata: dict[str, Any] | None = None, finish: bool = True) -> EpisodeResult:
        """One episode in its own session: run, score, then reward and finish it (when `finish`;
        otherwise only post the reward and leave it open, as evaluation does)."""
        client, slots = self._loop_state()
        queued = time.time()
        await slots.take()
        try:
            admission = (queued, time.time())
            info = await self._admin(client, "POST", "/sessions", {
                "group_id": group_id, "task_id": task.task_id, "metadata": self._metadata(metadata)})
            session = (admission[1], time.time())
            played = await self._play(task, info, group_id, sampling, admission=admission)
            if finish:
                [result] = await self._finish(client, [played], session)
                return result
            posted = await self._admin(client, "POST", f"/sessions/{played.session_id}/reward", {"reward": played.reward})
            done = time.time()
            return played.result(posted.get("num_turns", 0), session, (played.reward_span[0], done), (done, done),
                                 finished=False)
        finally:
            slots.give()

    async def _play(self, task: Task, info: dict[str, Any], group_id: str, sampling: Sampling | None,
                    admission: Span) -> _Played:
        """Run the agent on its session and score its answer."""
        ctx = AgentContext(base_url=info["base_url"], api_key=info["api_key"], session_id=info["session_id"],
                           group_id=group_id, sampling=sampling or self.sampling, model=self.model,
                           max_turns=self.max_turns, timeout_s=self.timeout_s, http=self._http)
        started = time.time()
        answer, error = await self._answer(task, ctx)
        answered = time.time()
        reward, error = self._score(task, answer, error)
        answer = answer.text if isinstance(answer, ScoredAnswer) else answer
        if error:
            log.warning("episode %s (task %s, group %s) failed, not trained: the agent %s",
                        ctx.session_id, task.task_id, group_id, error)
        return _Played(task.task_id, ctx.session_id, group_id, answer, reward, error, admission,
                       (started, answered), (answered, time.time()))

    async def _finish(self, client: httpx.AsyncClient, played: Sequence[_Played], session: Span) -> list[EpisodeResult]:
        """Reward and finish episodes in one call; a failed one (or one without an LLM call) is
        finished as discarded: its group completes, but it never trains."""
        asked = time.time()
        ends = await self._admin(client, "POST", "/sessions/finish", {"episodes": [
            {"session_id": p.session_id, "reward": p.reward, **({"discard": p.error} if p.error else {})}
            for p in played]})
        span = (asked, time.time())
        return [p.result(end["num_turns"], session, p.reward_span, span, finished=True)
                for p, end in zip(played, ends["episodes"])]

    def _metadata(self, metadata: dict[str, Any] | None) -> dict[str, Any]:
        return {"agent": self.agent_spec, **(metadata or {})}

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._http is not None:
            await self._http.close_pool()
        self._client, self._slots, self._loop, self._http = None, None, None, None

    # --- sync wrapper -------------------------------------------------------------------------

    def run_groups_sync(self, tasks: Sequence[Task], group_size: int, **kwargs: Any) -> list[list[EpisodeResult]]:
        """`run_groups` for code without an event loop (runs one to completion, then closes it)."""
        async def main() -> list[list[EpisodeResult]]:
            try:
                return await self.run_groups(tasks, group_size, **kwargs)
            finally:
                await self.aclose()
        return asyncio.run(main())

    # --- internals ----------------------------------------------------------------------------

    def _loop_state(self) -> tuple[httpx.AsyncClient, Slots]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._client = httpx.AsyncClient(timeout=self._admin_timeout_s, headers=self._headers)
            self._slots = Slots(self.concurrency)
            self._http = shared_http_client(self.timeout_s)
        return self._client, self._slots

    async def _answer(self, task: Task, ctx: AgentContext) -> tuple[str | ScoredAnswer, str | None]:
        """The agent's answer, or ("", reason) when it crashed, timed out or returned garbage. Only an
        agent that scores itself (an environment's rubric) gets the reference answer."""
        seen = task if getattr(self.agent, "scores_itself", False) else task.without_answer()
        try:
            async with asyncio.timeout(self.timeout_s):
                return await call_agent(self.agent, seen, ctx), None
        except TimeoutError:
            return "", f"timed out after {self.timeout_s:g} s (rollout.agent_timeout_s)"
        except Exception as exc:  # any agent bug ends only its own episode
            return "", f"crashed: {type(exc).__name__}: {exc}"

    def _score(self, task: Task, answer: str | ScoredAnswer, error: str | None) -> tuple[float, str | None]:
        if error is not None:
            return 0.0, error
        try:
            reward = float(answer.reward if isinstance(answer, ScoredAnswer) else self.reward_fn(task, answer))
        except Exception as exc:
            return 0.0, f"answered but the reward function raised {type(exc).__name__}: {exc}"
        if not math.isfinite(reward):  # one bad score must not end the run, nor train
            return 0.0, f"answered but the reward function returned {reward} (not a finite number)"
        return reward, None

    async def _admin(self, client: httpx.AsyncClient, method: str, path: str,
                     body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.proxy_url + path
        deadline, delay = time.monotonic() + self._admin_timeout_s, 0.2
        while True:
            try:
                response = await client.request(method, url, json=body)
            except httpx.HTTPError as exc:
                raise ServiceError(f"trajectory manager at {self.proxy_url} did not answer {method} {path}: "
                                   f"{exc!r}; is the proxy running?") from exc
            # 503: the proxy's Redis is away (restarting); ride it out rather than end the run
            if response.status_code != 503 or time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)
        if response.status_code >= 300:
            raise ServiceError(f"trajectory manager refused {method} {path} with {response.status_code}: "
                               f"{response.text[:300]}")
        return response.json()


@dataclass(frozen=True, slots=True)
class _Played:
    """An episode whose agent has answered and been scored, not yet finished."""

    task_id: str
    session_id: str
    group_id: str
    answer: str
    reward: float
    error: str | None
    admission: Span
    agent: Span
    reward_span: Span

    def result(self, calls: int, session: Span, reward: Span, finish: Span, finished: bool) -> EpisodeResult:
        times = EpisodeTimes(self.admission, session, self.agent, reward, finish)
        return EpisodeResult(session_id=self.session_id, group_id=self.group_id, task_id=self.task_id,
                             reward=self.reward, answer=self.answer, error=self.error, num_llm_calls=calls,
                             wall_time_s=sum(b - a for a, b in (session, (self.agent[0], reward[1]), finish)),
                             finished=finished, times=times)


class FailureWatch:
    """Stops a run whose recent episodes mostly failed: failures (a typo'd agent, a reward function
    that raises, servers that are down) are not the policy's doing, and training on what is left
    of such a run would only hide them."""

    def __init__(self, window: int = 64, max_ratio: float = 0.5, min_episodes: int = 16) -> None:
        self.window, self.max_ratio, self.min_episodes = window, max_ratio, min_episodes
        self.recent: collections.deque[str | None] = collections.deque(maxlen=window)

    def add(self, episodes: Sequence[EpisodeResult]) -> None:
        """Count finished episodes; raises ServiceError naming the commonest cause past the limit."""
        self.recent.extend(e.error for e in episodes)
        failed = [error for error in self.recent if error is not None]
        if len(self.recent) >= self.min_episodes and len(failed) > self.max_ratio * len(self.recent):
            cause, count = collections.Counter(failed).most_common(1)[0]
            raise ServiceError(f"{len(failed)} of the last {len(self.recent)} episodes failed (none of them "
                               f"trains); the commonest cause ({count}x): the agent {cause}")


class BackgroundGroups:
    """GRPO groups run by an `AgentRunner` on an event loop in a thread of their own, so episodes
    keep running while the caller's thread trains (asynchronous policies) or waits.

        with BackgroundGroups(runner) as groups:
            groups.start(task, group_size)
            for episodes in groups.wait_finished(timeout_s=0.5): ...
    """

    def __init__(self, runner: AgentRunner) -> None:
        self.runner = runner
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agents", daemon=True)
        self._pending: set[concurrent.futures.Future] = set()
        self.failures = FailureWatch()

    def __enter__(self) -> BackgroundGroups:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> int:
        """Groups started and not yet collected by `wait_finished`."""
        return len(self._pending)

    def start(self, task: Task, group_size: int) -> None:
        """Start one group of `group_size` episodes of `task` (returns at once)."""
        self._pending.add(asyncio.run_coroutine_threadsafe(self.runner.run_group(task, group_size), self._loop))

    def wait_finished(self, timeout_s: float) -> list[list[EpisodeResult]]:
        """Groups that finished, waiting up to `timeout_s` for the first; a group whose run failed
        (the proxy did not answer), or too many failed episodes (FailureWatch), raise ServiceError here."""
        if not self._pending:
            return []
        done, _ = concurrent.futures.wait(self._pending, timeout=timeout_s,
                                          return_when=concurrent.futures.FIRST_COMPLETED)
        self._pending -= done
        groups = [future.result() for future in done]
        for group in groups:
            self.failures.add(group)
        return groups

    def close(self) -> None:
        """Cancel the groups still running (their sessions stay unfinished: never trained) and stop."""
        if not self._thread.is_alive():
            return
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        asyncio.run_coroutine_threadsafe(self.runner.aclose(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
