"""The SMTP front: a before-queue proxy on aiosmtpd."""
