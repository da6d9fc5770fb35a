"""Support code for the tests, the demo and the benchmarks: a real Synapse as
a child process and a DNS server that knows no names. Not part of the
installed package."""
