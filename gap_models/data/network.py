"""Whether the tfds download host answers, directly or through the environment's HTTPS
proxy, within seconds (tfds itself retries for minutes before it gives up)."""

from __future__ import annotations

import socket
import threading
import urllib.parse
import urllib.request

from gap_models.config import DEFAULT_SOURCE

TFDS_HOST = ("download.microsoft.com", 443)
NETWORK_TIMEOUT_SECONDS = 10.0


class OfflineError(ConnectionError):
    """The download host is unreachable: permanent for this run, so not worth retrying."""


def proxied(host: tuple[str, int]) -> tuple[tuple[str, int], str]:
    """Where a connection to ``host`` really goes: the HTTPS proxy of the environment unless
    ``NO_PROXY`` exempts the host; with a few words saying so for messages."""
    proxy = urllib.request.getproxies().get("https")
    if not proxy or urllib.request.proxy_bypass(host[0]):
        return host, ""
    parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    address = (parsed.hostname or "", parsed.port or 8080)
    return address, f" through the proxy {parsed.hostname}:{address[1]} (HTTPS_PROXY)"


def check_network(
    host: tuple[str, int] = TFDS_HOST, timeout: float = NETWORK_TIMEOUT_SECONDS
) -> None:
    """Fail within ``timeout`` seconds (DNS included) when the download host is unreachable:
    directly, or through the HTTPS proxy the environment names (``HTTPS_PROXY``, honoured as
    tensorflow-datasets' own downloads honour it, ``NO_PROXY`` included)."""
    outcome: list[BaseException | None] = []
    target, through = proxied(host)

    def probe() -> None:
        try:
            socket.create_connection(target, timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome or outcome[0] is not None:
        reason = outcome[0] if outcome else f"no answer within {timeout:.0f} s"
        raise OfflineError(
            f"cannot reach {host[0]}{through} to download {DEFAULT_SOURCE} ({reason}). "
            "Without network, "
            "set the `source` parameter to a local copy of the photos: a .zip archive or folder "
            "of class folders (PetImages/{Cat,Dog}/*.jpg), e.g. "
            "source=../shared/data/kagglecatsanddogs_180px.zip"
        )
