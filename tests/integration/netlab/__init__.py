"""A test lab of real network components, all on loopback or inside network
namespaces the tests create: an authoritative DNS server for a fake zone, a
private PKI, nginx as the reverse proxy, filtered ports, and a second Synapse
as a federation peer.

`netlab.lab.Lab` wires them together; `netlab.fixtures` offers them as pytest
fixtures. Nothing here sends a packet anywhere else.
"""
