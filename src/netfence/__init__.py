"""netfence: per-user and per-session network policy for Linux logins.

Kept import-free on purpose: the PAM hook imports this package on every login.
"""

__version__ = "0.1.0"
