"""`wholecall serve`: the recorder as a network service (process tree, HTTP/JSON API, webhooks, drain)."""
