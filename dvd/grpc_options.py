"""Channel and server options shared by every gRPC end: message size limits and keepalives.
Free of grpc-health and reflection, so clients (the language replica's embedding fetcher, the
gateway's pools, the bench clients) import it without the server's extras."""

from __future__ import annotations

MAX_MESSAGE_BYTES = 256 * 1024 * 1024


# Keepalive: a peer that stops answering (SIGSTOPped, a frozen VM, a cut cable) while calls are
# open is found within KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS and its calls fail UNAVAILABLE,
# so the gateway retries them elsewhere instead of waiting out the request deadline. Servers
# accept pings this often (their default minimum is 5 minutes: faster pings get a GOAWAY).
KEEPALIVE_TIME_MS = 5_000
KEEPALIVE_TIMEOUT_MS = 3_000


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES, client: bool = False) -> list[tuple[str, int]]:
    """Options for both ends: large messages, and keepalives so dead or hung peers are noticed.
    Clients also cap the reconnect backoff (gRPC's default grows to 120 s): a peer that was down
    while this process started, or restarted, is found again within seconds."""
    reconnect = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
                 ("grpc.max_reconnect_backoff_ms", 2_000)] if client else []
    accept_pings = [] if client else [("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
                                      ("grpc.http2.min_time_between_pings_ms", KEEPALIVE_TIME_MS // 2)]
    return reconnect + accept_pings + [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
