"""Job callbacks: once a job ends, its ``callback_url`` is POSTed the job's state and
counts, signed, and retried with backoff until the receiver answers 2xx.

The signature: header ``X-Emi-Signature: sha256=<hex>``, the HMAC-SHA256 of the exact
body bytes under the operator's secret (``--callback-secret-file``); header
``X-Emi-Job`` names the job. A receiver recomputes the HMAC over the body it got and
compares in constant time. Delivery state is in the job table, so a callback still
pending when the service stops is sent after the next start.

Targets on loopback, private, link-local or reserved addresses are refused unless the
operator allows them (``--callback-allow``); a name is resolved once per attempt and
the request goes to the address checked. ``last_error`` says "refused: ..." or
"failed: ..." in the service's own words, never what a receiver answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import threading

from pydantic import BaseModel

from service.jobs import Job, JobTable

log = logging.getLogger("emi.service")
SIGNATURE_HEADER = "X-Emi-Signature"
ATTEMPT_DEADLINE_S = 10.0  # one attempt, connect to last header byte


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Emi-Signature`` value of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def callback_body(body: BaseModel) -> bytes:
    """The bytes of a callback (its kind's ``JobEnded`` model; keys sorted)."""
    return json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()


LABEL = r"[a-z0-9_]([a-z0-9_-]{0,62})"
HOST_NAME = re.compile(rf"^(?=.{{1,253}}$){LABEL}(\.{LABEL})*\.?$")
NOT_PUBLIC = (
    "refused: {host} is not a public address (loopback, private, link-local or reserved); "
    "the operator allows such targets with --callback-allow"
)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (and a router may reach): mapped
    (``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``), NAT64 (``64:ff9b::/96``,
    ``64:ff9b:1::/48``), 6to4 (``2002::/16``) and Teredo (``2001::/32``: server and
    client)."""
    found = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        found.append(low32)
    if any(address in network for network in _NAT64):
        found.append(low32)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a callback may go to ``address`` without the operator allowing it: a
    global unicast address, and every IPv4 address it embeds one too."""
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        return all(is_public(inner) for inner in embedded_ipv4(address))
    return True


def allowed(host: str, addresses: list, allow: list[str]) -> bool:
    """Whether the operator allows ``host`` (a name or address) or one of its
    ``addresses`` (--callback-allow: names, addresses or networks such as 10.0.0.0/8)."""
    host = host.strip("[]").lower().rstrip(".")
    for entry in allow:
        entry = entry.strip().lower().rstrip(".")
        if entry == host:
            return True
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if any(a in network for a in addresses):
            return True
    return False


def check_callback_url(url: str, allow: list[str] = ()) -> str | None:
    """Why ``url`` cannot be a callback (None: it can). Names are resolved when the
    callback is sent (and checked again then); an address given literally is checked
    here."""
    import httpx

    if not isinstance(url, str) or any(c.isspace() or ord(c) < 32 or c == "\x7f" for c in url):
        return "not a URL (it holds spaces or control characters)"
    try:
        parsed = httpx.URL(url)
        parsed.port  # noqa: B018 - a bad port raises
    except Exception as err:  # httpx raises several kinds for malformed URLs
        return f"not a URL ({type(err).__name__})"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "give an http:// or https:// URL with a host"
    if parsed.userinfo:
        return "give a URL without a user name or password (callbacks are signed instead)"
    address = _address(parsed.host)
    if address is None and not HOST_NAME.match(parsed.host.lower()):
        return f"{parsed.host!r} is not a host name"
    if parsed.host.lower().rstrip(".") == "localhost" and not allowed(parsed.host, [], allow):
        return NOT_PUBLIC.format(host=parsed.host)
    private = address is not None and not is_public(address)
    if private and not allowed(parsed.host, [address], allow):
        return NOT_PUBLIC.format(host=parsed.host)
    return None


def resolve_target(url: str, allow: list[str]) -> tuple[str, dict, str | None]:
    """``(url to connect to, its extensions, why refused)``: the host resolved once, every
    address checked, and the request pinned to the address checked (the ``Host`` and TLS
    name stay the URL's), so a name that resolves elsewhere a moment later is not
    followed."""
    import socket

    import httpx

    why = check_callback_url(url, allow)
    if why:
        return url, {}, why
    parsed = httpx.URL(url)
    host = parsed.host
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return url, {}, f"failed: the host name {host!r} does not resolve"
    addresses = [_address(info[4][0]) for info in infos]
    addresses = [a for a in addresses if a is not None]
    if not addresses:
        return url, {}, f"failed: the host name {host!r} does not resolve"
    if not allowed(host, addresses, allow) and not all(is_public(a) for a in addresses):
        return url, {}, NOT_PUBLIC.format(host=host)
    first = addresses[0]
    pinned = parsed.copy_with(host=str(first))
    return str(pinned), ({"sni_hostname": host} if _address(host) is None else {}), None


class CallbackSender:
    """Delivers callbacks on one event loop (a thread of its own): each delivery is a
    task with its own per-attempt deadline, so a receiver that trickles bytes holds up
    only its own job's callback. A failed attempt is retried later with a doubling
    delay (a timer on the loop; nothing waits meanwhile)."""

    def __init__(
        self,
        table: JobTable,
        secret: bytes | None,
        *,
        attempts: int,
        backoff_s: float,
        deadline_s: float = ATTEMPT_DEADLINE_S,
        allow: list[str] = (),
    ) -> None:
        self.table = table
        self.secret = secret
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.deadline_s = deadline_s
        self.allow = list(allow)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emi-callbacks", daemon=True)
        self._busy: set[str] = set()  # jobs with a delivery under way (loop thread only)
        self._tasks: set[asyncio.Task] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._stopping = False

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        for job in self.table.pending_callbacks():  # left pending by the last run
            self._submit(job.id)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def stop(self) -> None:
        """Stop sending (a callback awaiting its retry stays pending: sent after the next
        start)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def halt() -> None:
            self._stopping = True
            for timer in self._timers:
                timer.cancel()
            for task in self._tasks:
                task.cancel()
            loop.call_later(0.05, loop.stop)

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(halt)
        self._thread.join(timeout=self.deadline_s + 1)

    def send(self, job: Job) -> None:
        if job.callback and job.callback.get("status") == "pending":
            self._submit(job.id)

    def _submit(self, job_id: str) -> None:
        """Start ``job_id``'s delivery on the loop (from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
            loop.call_soon_threadsafe(self._begin, job_id)

    def _begin(self, job_id: str) -> None:
        """On the loop: one delivery per job at a time."""
        if self._stopping or job_id in self._busy:
            return
        self._busy.add(job_id)
        task = self._loop.create_task(self._deliver(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _later(self, job_id: str, delay_s: float) -> None:
        """On the loop: deliver ``job_id`` again after ``delay_s``."""
        if self._stopping:
            return

        def due() -> None:
            self._timers.discard(timer)
            self._begin(job_id)

        timer = self._loop.call_later(delay_s, due)
        self._timers.add(timer)

    async def _deliver(self, job_id: str) -> None:
        job = None
        try:
            job = await asyncio.to_thread(self.table.get, job_id)
            if job is not None and job.callback and job.callback.get("status") == "pending":
                await self._attempt(job)
        except asyncio.CancelledError:
            raise
        except Exception:  # never lose the sender
            log.exception("job %s: callback delivery failed", job_id)
            with contextlib.suppress(Exception):
                state = {
                    **((job and job.callback) or {}),
                    "status": "failed",
                    "last_error": "failed: the service could not send it",
                }
                self.table.set_callback(job_id, state)
        finally:
            self._busy.discard(job_id)

    async def _attempt(self, job: Job) -> None:
        """One delivery attempt of ``job``'s callback; a failure schedules the next."""
        state = dict(job.callback)
        state["attempts"] = state.get("attempts", 0) + 1
        target, extensions, refused = await asyncio.to_thread(
            resolve_target, state["url"], self.allow
        )
        if refused and refused.startswith("refused"):  # no retry changes an address class
            state.update(status="failed", last_error=refused)
            await asyncio.to_thread(self.table.set_callback, job.id, state)
            log.warning("job %s: callback %s", job.id, refused)
            return
        why = refused or await self._post(job, target, extensions)
        if why is None:
            state.update(status="delivered", last_error=None)
            await asyncio.to_thread(self.table.set_callback, job.id, state)
            log.info("job %s: callback delivered (attempt %d)", job.id, state["attempts"])
            return
        state["last_error"] = why
        if state["attempts"] >= self.attempts:
            state["status"] = "failed"
            await asyncio.to_thread(self.table.set_callback, job.id, state)
            log.error("job %s: callback given up after %d attempts", job.id, state["attempts"])
            return
        await asyncio.to_thread(self.table.set_callback, job.id, state)
        delay = self.backoff_s * 2 ** (state["attempts"] - 1)
        log.warning("job %s: callback %s; retrying in %.1f s", job.id, why, delay)
        self._later(job.id, delay)

    async def _post(self, job: Job, target: str, extensions: dict) -> str | None:
        """POST the signed body to ``target`` within the attempt's deadline; None when
        the receiver answered 2xx, else why not (never what the receiver said)."""
        import httpx

        body = callback_body(self.table.kinds.ended(job))
        headers = {"Content-Type": "application/json", "X-Emi-Job": job.id}
        host = httpx.URL(job.callback["url"]).netloc.decode("ascii")
        headers["Host"] = host
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)

        async def post() -> int:
            timeout = httpx.Timeout(self.deadline_s)
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
                request = client.build_request(
                    "POST", target, content=body, headers=headers, extensions=extensions
                )
                response = await client.send(request, stream=True)  # the status only
                await response.aclose()
                return response.status_code

        try:
            status = await asyncio.wait_for(post(), self.deadline_s)
        except (TimeoutError, asyncio.TimeoutError, httpx.TimeoutException):
            return f"failed: no whole answer within {self.deadline_s:g} s"
        except httpx.HTTPError:
            return "failed: could not connect or the connection broke"
        if 200 <= status < 300:
            return None
        return f"failed: the receiver answered HTTP {status}"
