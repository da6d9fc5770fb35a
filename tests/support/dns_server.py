"""A DNS server that knows no names, for the demo, the integration tests and
the start-up benchmark."""

from __future__ import annotations

import socket
import threading


class NxDomainDnsServer:
    """A UDP DNS server on loopback that answers NXDOMAIN to every query.

    Pointing the module's `dns_servers` at it keeps every lookup on this
    machine, and gives a fast, definite answer instead of a timeout.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((host, 0))
        self._socket.settimeout(0.2)
        self.address = f"{host}:{self._socket.getsockname()[1]}"
        self.queries = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name="nxdomain-dns", daemon=True
        )

    def start(self) -> NxDomainDnsServer:
        self._thread.start()
        return self

    def _serve(self) -> None:
        import dns.exception
        import dns.message
        import dns.rcode

        while not self._stopping.is_set():
            try:
                data, peer = self._socket.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            reply = dns.message.make_response(query)
            reply.set_rcode(dns.rcode.NXDOMAIN)
            self.queries += 1
            try:
                self._socket.sendto(reply.to_wire(), peer)
            except OSError:
                continue

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        self._socket.close()

    def __enter__(self) -> NxDomainDnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
