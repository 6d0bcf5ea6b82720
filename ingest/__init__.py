"""Media in: RTP/SRTP over UDP into the legs' sample positions.

This package owns the wire (RTP headers, SRTP, batch receive) and the per-leg playout
core (re-ordering, loss, SSRC changes, telephone events) that turns packets into a gap-free
sample stream on the call's clock. It imports nothing else from the project: the shell that
writes into the shm rings and talks to the controller sits on top of it.
"""
