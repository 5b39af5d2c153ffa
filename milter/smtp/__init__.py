"""The SMTP front (aiosmtpd) and the downstream client."""
