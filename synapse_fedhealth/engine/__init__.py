"""The network engine: find the server as peers do, probe what they would
connect to, under one `Deadline`. Judging lives in `synapse_fedhealth.checks`."""
