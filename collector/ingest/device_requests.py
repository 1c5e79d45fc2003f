"""The queue both per-device request/answer exchanges share (inclusion_answers.py,
resume_answers.py): a clock publishes a request on its own ``…/request`` topic and reads the
answer on its own answer topic.

Requests are queued by the MQTT thread (:meth:`DeviceRequests.receive`: cheap, bounded; any
thread) and answered on the ingest thread (:meth:`DeviceRequests.process`), after the punches
already handed to the store. Only the topic names the device (the broker's ACL lets a device
write only its own request topic): a request that does not parse, or whose body names another
device, is dropped with a warning and answered with nothing. A ledger outage propagates out of
:meth:`process` (the ingest loop rides it out; the clock asks again).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from wire.errors import WireError

log = logging.getLogger(__name__)

MAX_QUEUED = 256

Publish = Callable[[str, bytes], object]


class _Request(Protocol):
    @property
    def device(self) -> str: ...


_Req = TypeVar("_Req", bound=_Request)
_Ans = TypeVar("_Ans")


class DeviceRequests(ABC, Generic[_Req, _Ans]):
    """Queue and answer one kind of request. Subclasses parse a request (:meth:`parse`),
    build its answer (:meth:`build`, or None), say where and how it is published
    (:meth:`outgoing`) and name themselves (``what``, for the log lines); ``counts`` has at
    least answered, dropped and bad."""

    what = "device"

    def __init__(self, publish: Publish, counts: tuple[str, ...] = ()) -> None:
        self._publish = publish
        self._lock = threading.Lock()
        self._inbox: deque[tuple[str, bytes]] = deque()
        self.counts = dict.fromkeys(("answered", *counts, "dropped", "bad"), 0)

    @abstractmethod
    def parse(self, payload: bytes) -> _Req:
        """The request in ``payload``; WireError if it is not one."""

    @abstractmethod
    def device_of(self, topic: str) -> str | None:
        """The device whose request topic ``topic`` is, or None."""

    @abstractmethod
    def build(self, device: str, request: _Req) -> _Ans | None:
        """The answer to a request of ``device``, or None (logged) when there is none."""

    @abstractmethod
    def outgoing(self, answer: _Ans) -> tuple[str, bytes]:
        """(answer topic, payload) of an answer."""

    def receive(self, topic: str, payload: bytes) -> None:
        """Queue one request (cheap; any thread)."""
        with self._lock:
            if len(self._inbox) >= MAX_QUEUED:
                self.counts["dropped"] += 1
                return
            self._inbox.append((topic, payload))

    def process(self) -> int:
        """Answer the requests received so far; return how many."""
        n = 0
        while True:
            with self._lock:
                if not self._inbox:
                    return n
                topic, payload = self._inbox.popleft()
            n += 1
            answer = self.answer(topic, payload)
            if answer is not None:
                self._publish(*self.outgoing(answer))

    def answer(self, topic: str, payload: bytes) -> _Ans | None:
        """The answer to one message, or None (logged) when it is not a request of the
        topic's device or has no answer."""
        found = self._request(topic, payload)
        return None if found is None else self.build(*found)

    def _request(self, topic: str, payload: bytes) -> tuple[str, _Req] | None:
        device = self.device_of(topic)
        try:
            req = self.parse(payload)
        except WireError as e:
            self.counts["bad"] += 1
            log.warning("%s request on %s ignored: %s", self.what, topic[:120], e)
            return None
        if device is None or req.device != device:
            self.counts["bad"] += 1
            log.warning("%s request for device %s on %s ignored", self.what, req.device,
                        topic[:120])
            return None
        return device, req
