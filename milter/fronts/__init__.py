"""The fronts: each turns one protocol into transactions (``milter.transaction``) and the
decisions back into that protocol's replies. Only the daemon imports them."""
