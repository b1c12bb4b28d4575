"""Channels, credentials and errors shared by the service clients."""

import grpc

# Codes after which the same call may succeed if sent again (ABORTED: retry the
# whole transaction).
_RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
})


class Error(Exception):
    """A failed call: `code` (grpc.StatusCode), `message` (the server's details)."""

    def __init__(self, code, message, trailers=()):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.trailers = dict(trailers or ())

    @property
    def retryable(self):
        return self.code in _RETRYABLE

    @classmethod
    def from_rpc_error(cls, e):
        trailers = e.trailing_metadata() if hasattr(e, "trailing_metadata") else ()
        return cls(e.code(), e.details() or "", trailers)


class _Client:
    """Owns a channel and adds the bearer token to every call."""

    def __init__(self, target, *, token=None, root_certificates=None, private_key=None,
                 certificate_chain=None, timeout=30.0, options=None, channel=None):
        """target: "host:port" or "unix:/path".

        token: a bearer token, sent as `authorization: Bearer <token>`.
        root_certificates (PEM bytes) switches to TLS; private_key and
        certificate_chain add a client certificate (mutual TLS).
        timeout: default deadline in seconds for each call.
        channel: use this grpc.Channel instead of creating one.
        """
        if channel is not None:
            self._channel = channel
        elif root_certificates is not None or certificate_chain is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates,
                                                 private_key=private_key,
                                                 certificate_chain=certificate_chain)
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def _call(self, method, request, timeout):
        try:
            return method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as e:
            raise Error.from_rpc_error(e) from None

    def _deadline(self, timeout):
        return self.timeout if timeout is None else timeout

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
