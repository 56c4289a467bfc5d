"""Talking to the daemon and hearing from it: the control socket (server, client and one
class per command), diagnostics on stderr, Prometheus metrics and systemd's notify
protocol.
"""
