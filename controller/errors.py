"""The spec's module-level exceptions, importable as `controller.Hangup` / `controller.Error`."""


class Error(Exception):
    """A recorder call failed: bad argument, wrong call state, conflicting activity, or a failed job."""


class Unavailable(Error):
    """An `Error` that is not the request's fault: the recorder cannot take a recording now
    (the recordings disk below its free-space watermark, or unreadable). The same request
    may succeed later; a service answers it 503 and counts it as a failed start."""


class Hangup(Exception):
    """The call is IDLE (hung up): the recorder cannot act on it."""
