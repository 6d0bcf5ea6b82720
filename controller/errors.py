"""The spec's module-level exceptions, importable as `controller.Hangup` / `controller.Error`."""


class Error(Exception):
    """A recorder call failed: bad argument, wrong call state, conflicting activity, or a failed job."""


class Hangup(Exception):
    """The call is IDLE (hung up): the recorder cannot act on it."""
